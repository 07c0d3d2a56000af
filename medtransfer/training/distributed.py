"""Multi-process training helpers (torchrun + DDP, the MONAI bundle convention): rank checks, wrapping, and a
final check that every replica ends with the same weights. Works on CPU with the gloo backend."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from medtransfer.atomic import save_json


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Only rank 0 writes files (run.json, weights, reports); every rank trains."""
    return rank() == 0


def device_for_rank() -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def init_process_group() -> str:
    """nccl on GPUs, gloo on CPU; a no-op when already initialised."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not is_distributed():
        dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(device_for_rank())
    return backend


def wrap(network: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around a network whose frozen parameters are already marked (DDP reads them)."""
    network = network.to(device)
    device_ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(network, device_ids=device_ids)


def weights_digest(network: nn.Module) -> str:
    module = network.module if hasattr(network, "module") else network
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_replicas(network: nn.Module, output_dir: str | Path) -> dict:
    """All ranks compare their weights; rank 0 writes `ddp_replicas.json`; differing replicas are an error."""
    mine = weights_digest(network)
    digests = [mine]
    if is_distributed():
        digests = [None] * dist.get_world_size()
        dist.all_gather_object(digests, mine)
    report = {"world_size": len(digests), "digests": digests, "identical": len(set(digests)) == 1}
    if is_main_process():
        save_json(Path(output_dir) / "ddp_replicas.json", report)
    if not report["identical"]:
        raise RuntimeError(f"DDP replicas ended with different weights: {digests}")
    return report


class ReplicaCheck:
    """Trainer handler: at COMPLETED, before anything reloads best weights, all ranks compare their weights."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = output_dir

    def attach(self, trainer) -> None:
        from ignite.engine import Events

        trainer.add_event_handler(Events.COMPLETED, lambda engine: check_replicas(engine.network, self.output_dir))


def finish() -> None:
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
