"""Pretraining objectives on the shared U-Net: what network, loss, data transforms and training step each uses.

| objective                   | network                          | input → target                          | trains               |
|-----------------------------|----------------------------------|-----------------------------------------|----------------------|
| segmentation                | the U-Net (2 classes)            | image → mask (source manifest, label_map)| encoder, decoder, head |
| classification              | encoder + GAP + MLP              | patch → class (manifest `class`, or derived from the mask) | encoder |
| reconstruction              | U-Net, 1 channel, sigmoid        | one random corruption of the image → the image | encoder, decoder, head |
| contrastive_reconstruction  | U-Net + attention pooling + projection | two views, each corrupted → the clean views; NT-Xent between views | encoder, decoder, head |

Reconstruction uses the skip connections but never the identity: the input is always corrupted (pixel
shuffling, non-linear intensity, in-painting or out-painting; Models Genesis), so copying the input through
the skips does not solve the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from monai.transforms import Compose
from torch import nn

from medtransfer.data.manifest import Manifest, ManifestError
from medtransfer.data.transforms import augmentation_transforms, load_transforms, train_transforms
from medtransfer.networks.unets import build_dynunet
from medtransfer.pretraining.losses import ConRecLoss
from medtransfer.pretraining.networks import ClassificationNetwork, ConRecNetwork, ReconstructionNetwork
from medtransfer.pretraining.views import PatchClassd, corrupted_input, two_views

OBJECTIVES = ("segmentation", "classification", "reconstruction", "contrastive_reconstruction")
# U-Net parts each objective trains (and so stores in pretrained.pt): what a transfer strategy can load from it
TRAINED_PARTS = {
    "segmentation": ("encoder", "decoder", "head"),
    "classification": ClassificationNetwork.trained_parts,
    "reconstruction": ReconstructionNetwork.trained_parts,
    "contrastive_reconstruction": ConRecNetwork.trained_parts,
}
NUM_DERIVED_CLASSES = 3


@dataclass
class Objective:
    name: str
    network: nn.Module
    unet: nn.Module
    loss: Any
    train_transforms: Compose
    trained_parts: tuple[str, ...]
    needs_labels: bool
    iteration_update: Callable | None = None
    details: dict = field(default_factory=dict)

    def drop_last(self, num_images: int, batch_size: int) -> bool:
        """The contrastive loss needs pairs of images: drop a last batch of one, when whole batches exist."""
        return self.name == "contrastive_reconstruction" and num_images >= batch_size


def _class_count(manifest: Manifest) -> int:
    """Classes from the manifest's `class` field if every training case has one; derived bins otherwise."""
    cases = manifest.content["training"]
    with_class = [case for case in cases if "class" in case]
    if not with_class:
        return NUM_DERIVED_CLASSES
    if len(with_class) != len(cases):
        missing = [case["id"] for case in cases if "class" not in case][:5]
        raise ManifestError(
            f"{manifest.path}: {len(cases) - len(with_class)} training cases have no 'class' field (e.g. {missing}); "
            "give every case a class, or none (classes are then derived from the masks)"
        )
    classes = sorted({int(case["class"]) for case in with_class})
    if classes != list(range(len(classes))):
        raise ManifestError(f"{manifest.path}: 'class' values must be 0..K-1, got {classes}")
    return len(classes)


def _require_labels(name: str, manifest: Manifest) -> None:
    if not manifest.has_labels:
        raise ManifestError(
            f"{manifest.path}: the {name} objective is supervised but the manifest has no labels; "
            "use reconstruction or contrastive_reconstruction for images without labels"
        )


def build_objective(
    name: str,
    manifest: Manifest,
    spatial_dims: int,
    patch_size: Sequence[int],
    filters: Sequence[int],
    init_seed: int | None = None,
    num_samples: int = 2,
    label_map: dict | None = None,
    lambda_rec: float = 100.0,
    lambda_con: float = 1.0,
    temperature: float = 0.5,
) -> Objective:
    """Everything a bundle overlay needs to pretrain with objective `name` on `manifest`."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown pretraining objective {name!r}; one of: {', '.join(OBJECTIVES)}")
    label_map = label_map if label_map is not None else manifest.label_map
    spacing = manifest.target_spacing
    channels = manifest.channels  # grey 1, RGB 3, MRI sequences: the network's input (and a reconstruction's output)
    if name == "segmentation":
        _require_labels(name, manifest)
        unet = build_dynunet(spatial_dims, in_channels=channels, filters=filters, init_seed=init_seed)
        from monai.losses import DiceCELoss

        chain = train_transforms(spatial_dims, patch_size, label_map, spacing, num_samples, channels=channels)
        return Objective(name, unet, unet, DiceCELoss(to_onehot_y=True, softmax=True), chain,
                         ("encoder", "decoder", "head"), True, details={"label_map": label_map})
    if name == "classification":
        _require_labels(name, manifest)
        classes = _class_count(manifest)
        unet = build_dynunet(spatial_dims, in_channels=channels, filters=filters, init_seed=init_seed)
        network = ClassificationNetwork(unet, spatial_dims, classes)
        chain = Compose(
            load_transforms(spatial_dims, label_map, spacing, channels=channels)
            + augmentation_transforms(patch_size, num_samples)
            + [PatchClassd()]
        )
        source = "manifest class field" if _has_class(manifest) else \
            "derived per patch: 0 no foreground, 1 foreground <= 5 %, 2 more"
        return Objective(name, network, unet, nn.CrossEntropyLoss(), chain, network.trained_parts, True,
                         details={"num_classes": classes, "class_source": source})
    unet = build_dynunet(spatial_dims, in_channels=channels, out_channels=channels, filters=filters,
                         init_seed=init_seed)  # reconstructs every input channel
    unlabelled = load_transforms(spatial_dims, None, spacing, with_label=False, channels=channels)
    if name == "reconstruction":
        from monai.transforms import RandSpatialCropSamplesd, SpatialPadd

        chain = Compose(unlabelled + [
            SpatialPadd(keys="image", spatial_size=list(patch_size)),
            RandSpatialCropSamplesd(keys="image", roi_size=list(patch_size), num_samples=num_samples,
                                    random_size=False),
            *corrupted_input(),
        ])
        network = ReconstructionNetwork(unet)
        return Objective(name, network, unet, nn.MSELoss(), chain, network.trained_parts, False,
                         details={"target": "clean image", "input": "one random corruption"})
    network = ConRecNetwork(unet, spatial_dims)
    loss = ConRecLoss(lambda_rec, lambda_con, temperature)
    chain = Compose(unlabelled + two_views(patch_size))
    return Objective(name, network, unet, loss, chain, network.trained_parts, False,
                     iteration_update=ConRecStep(loss),
                     details={"lambda_rec": lambda_rec, "lambda_con": lambda_con, "temperature": temperature,
                              "projection_dim": 128})


def _has_class(manifest: Manifest) -> bool:
    return any("class" in case for case in manifest.content["training"])


class ConRecStep:
    """One ConRec training iteration for MONAI's SupervisedTrainer (`iteration_update`)."""

    def __init__(self, loss: ConRecLoss) -> None:
        self.loss = loss

    def __call__(self, engine, batch) -> dict[str, torch.Tensor]:
        device = engine.state.device
        inputs = torch.cat([batch["input_1"], batch["input_2"]]).to(device)
        targets = torch.cat([batch["view_1"], batch["view_2"]]).to(device)
        if batch["input_1"].shape[0] < 2:
            raise ValueError(
                "the contrastive loss needs at least 2 images per batch (the other images are its negatives); "
                "got a batch of 1: raise --batch_size (or the data set has a single training image)"
            )
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        # through the trainer's inferer: the run's precision (autocast, fp32 outputs) applies here too
        reconstructions, embeddings = engine.inferer(inputs, engine.network)
        z1, z2 = embeddings.chunk(2)
        losses = self.loss(reconstructions, targets, z1, z2)
        losses["loss"].backward()
        engine.optimizer.step()
        return {"loss": losses["loss"].detach(), "reconstruction": losses["reconstruction"],
                "contrastive": losses["contrastive"]}
