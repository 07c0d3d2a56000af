"""NT-Xent (SimCLR) and the ConRec loss λ_rec·MSE + λ_con·NT-Xent."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Normalised temperature-scaled cross entropy of Chen et al. (2020), summed over both directions.

    z1[i] and z2[i] are two views of image i. For each of the 2B embeddings, the positive is its other view
    and the negatives are the remaining 2B − 2 embeddings; similarities are cosine / temperature, and an
    embedding is never compared with itself. As in ConRec's code (`utils/contrastive.py`:
    CE([ab, aa]) + CE([ba, bb])), the loss is the mean over the B anchors of view 1 *plus* the mean over the B
    anchors of view 2 — twice the mean over all 2B anchors, so λ_con keeps its published weight.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"NT-Xent needs two (batch, dim) embeddings of the same shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    batch = z1.shape[0]
    if batch < 2:
        raise ValueError(
            "the contrastive loss needs at least 2 images per batch (the other images are its negatives); "
            f"got a batch of {batch}: raise --batch_size"
        )
    embeddings = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = embeddings @ embeddings.T / temperature
    logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=logits.device), float("-inf"))
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(logits.device)
    per_anchor = F.cross_entropy(logits, positives, reduction="none")
    return per_anchor[:batch].mean() + per_anchor[batch:].mean()


class ConRecLoss(nn.Module):
    """λ_rec · MSE(reconstruction, clean view) + λ_con · NT-Xent(z₁, z₂); defaults of Dippel et al.: 100, 1, 0.5."""

    def __init__(self, lambda_rec: float = 100.0, lambda_con: float = 1.0, temperature: float = 0.5) -> None:
        super().__init__()
        self.lambda_rec, self.lambda_con, self.temperature = lambda_rec, lambda_con, temperature

    def forward(self, reconstructions, targets, z1, z2) -> dict[str, torch.Tensor]:
        reconstruction = F.mse_loss(reconstructions, targets)
        contrastive = nt_xent(z1, z2, self.temperature)
        total = self.lambda_rec * reconstruction + self.lambda_con * contrastive
        return {"loss": total, "reconstruction": reconstruction.detach(), "contrastive": contrastive.detach()}
