"""Numerical precision of a run: what the hardware offers, what a run uses, and the autocast around the network.

Three pieces, kept apart so that the choice can be tested on any machine:

- `detect_capabilities()` looks at the hardware once (CPU bf16 instructions, CUDA and its bf16 support);
- `choose_precision(requested, device_type, capabilities)` is a pure function of that answer;
- `PrecisionInferer` runs any MONAI inferer's network calls under `torch.autocast` and hands fp32 logits on,
  so losses and metrics are computed in fp32; the weights (and so `model.pt`) are never cast.

`auto` (the default) = bf16 autocast on a CPU with native bf16 (AMX-BF16 or AVX512-BF16), CUDA AMP on a GPU
(bf16 where the GPU supports it, otherwise fp16 with a gradient scaler), fp32 elsewhere. An explicit request
the hardware cannot serve is refused before training starts (`PrecisionError`): fp16 on a CPU (no fast fp16
kernels there), bf16 on a CPU or GPU without native bf16 (it would be emulated, i.e. slower than fp32).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer

logger = logging.getLogger("medtransfer.training")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# CPU flags (Linux /proc/cpuinfo names) that mean bf16 matrix/convolution instructions in hardware.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """A precision value that is unknown, or that this hardware cannot run natively."""


@dataclass(frozen=True)
class Capabilities:
    """What the hardware offers for reduced precision (the input of `choose_precision`)."""

    cpu_bf16: bool  # native bf16 on the CPU (AMX-BF16 or AVX512-BF16 and oneDNN bf16 kernels)
    cpu_bf16_flags: tuple[str, ...] = ()  # the CPU flags that say so (evidence, recorded in run.json)
    cuda: bool = False
    cuda_bf16: bool = False
    cuda_name: str | None = None


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: torch's own check below decides
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def detect_capabilities() -> Capabilities:
    """Look at this machine once: CPU bf16 instructions and oneDNN support, CUDA and its bf16 support."""
    cpuinfo = _cpu_flags()
    flags = tuple(flag for flag in CPU_BF16_FLAGS if flag in cpuinfo)
    try:  # oneDNN's own test; it also says yes for AVX512 without bf16 instructions (emulated), hence the flags
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = bool(flags)
    cuda = torch.cuda.is_available()
    return Capabilities(
        cpu_bf16=onednn_bf16 and (bool(flags) or not cpuinfo),  # no /proc/cpuinfo (not Linux): oneDNN decides
        cpu_bf16_flags=flags,
        cuda=cuda,
        cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        cuda_name=torch.cuda.get_device_name(0) if cuda else None,
    )


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses and why."""

    requested: str  # what the config asked for (auto, fp32, bf16, fp16)
    name: str  # what runs: fp32, bf16 or fp16
    device_type: str  # cpu or cuda
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None for fp32 (no autocast)."""
        return _DTYPES.get(self.name)

    @property
    def grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none."""
        return self.name == "fp16"

    @property
    def amp_kwargs(self) -> dict:
        """Arguments for MONAI's `amp_kwargs` (its CUDA autocast, used together with `grad_scaler`)."""
        return {"dtype": self.dtype} if self.dtype is not None else {}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def record(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.name == "fp32":
            return f"precision {self.name} (requested {self.requested}: {self.reason})"
        return (
            f"precision {self.name} autocast on {self.device_type} (requested {self.requested}: {self.reason}); "
            "weights, loss and metrics stay fp32"
        )


def check_precision(requested: str) -> str:
    value = str(requested).strip().lower()
    if value not in PRECISIONS:
        raise PrecisionError(f"unknown precision {requested!r}; valid values: {', '.join(PRECISIONS)}")
    return value


def choose_precision(requested: str, device_type: str, capabilities: Capabilities) -> PrecisionChoice:
    """The precision a run on `device_type` ('cpu' or 'cuda') uses, given what the hardware offers."""
    requested = check_precision(requested)
    device_type = "cuda" if str(device_type).startswith("cuda") else str(device_type)
    if device_type not in ("cpu", "cuda"):
        if requested in ("auto", "fp32"):
            return PrecisionChoice(requested, "fp32", device_type, f"no mixed precision on {device_type}")
        raise PrecisionError(f"precision {requested} is supported on cpu and cuda devices, not {device_type}")

    if device_type == "cuda":
        if not capabilities.cuda:
            raise PrecisionError("a cuda device was asked for but CUDA is not available")
        name = capabilities.cuda_name or "this GPU"
        if requested == "fp32":
            return PrecisionChoice(requested, "fp32", device_type, "requested")
        if requested == "bf16" and not capabilities.cuda_bf16:
            raise PrecisionError(
                f"precision bf16: {name} has no native bf16; use precision auto (fp16 with a gradient scaler) "
                "or fp32"
            )
        if requested == "auto":
            if capabilities.cuda_bf16:
                return PrecisionChoice(requested, "bf16", device_type, f"{name} supports bf16")
            return PrecisionChoice(requested, "fp16", device_type, f"{name} has no bf16: fp16 with a gradient scaler")
        return PrecisionChoice(requested, requested, device_type, "requested")

    # CPU
    evidence = "/".join(capabilities.cpu_bf16_flags) or "oneDNN"
    if requested == "fp16":
        raise PrecisionError(
            "precision fp16 is not offered on a CPU: CPUs have no fast fp16 convolutions, so it would train "
            "slower than fp32; use precision auto (bf16 where the CPU has it) or fp32"
        )
    if requested == "bf16":
        if not capabilities.cpu_bf16:
            raise PrecisionError(
                "precision bf16: this CPU has no native bf16 (neither AMX-BF16 nor AVX512-BF16), so bf16 would be "
                "emulated and slower than fp32; use precision auto or fp32"
            )
        return PrecisionChoice(requested, "bf16", device_type, f"requested; CPU has {evidence}")
    if requested == "auto" and capabilities.cpu_bf16:
        return PrecisionChoice(requested, "bf16", device_type, f"CPU has native bf16 ({evidence})")
    if requested == "auto":
        return PrecisionChoice(requested, "fp32", device_type, "CPU without native bf16")
    return PrecisionChoice(requested, "fp32", device_type, "requested")


_DETECTED: Capabilities | None = None


def resolve_precision(
    requested: str = "auto", device: str | torch.device = "cpu", capabilities: Capabilities | None = None,
    announce: bool = True,
) -> PrecisionChoice:
    """`choose_precision` on this machine (detected once per process), printed once at the start of a run."""
    global _DETECTED
    if capabilities is None:
        if _DETECTED is None:
            _DETECTED = detect_capabilities()
        capabilities = _DETECTED
    choice = choose_precision(requested, torch.device(device).type, capabilities)
    if announce:
        print(f"medtransfer: {choice.describe()}", flush=True)
    return choice


def _to_float(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() and output.dtype != torch.float32 else output
    if isinstance(output, Mapping):
        return type(output)({k: _to_float(v) for k, v in output.items()})
    if isinstance(output, Sequence) and not isinstance(output, str):
        return type(output)(_to_float(v) for v in output)
    return output


class PrecisionInferer(Inferer):
    """Runs `inferer`'s network calls under the chosen autocast and returns fp32 outputs.

    The autocast wraps each network call (every window of a sliding-window inferer), and each output is cast
    back to fp32 at once: the loss, the sliding-window accumulation and the metrics all see fp32.
    """

    def __init__(self, inferer: Callable, precision: PrecisionChoice) -> None:
        super().__init__()
        self.inferer = inferer
        self.precision = precision

    def __getattr__(self, name: str) -> Any:  # roi_size, sw_batch_size, ... of the wrapped inferer
        if name in ("inferer", "precision"):
            raise AttributeError(name)
        return getattr(self.inferer, name)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> Any:
        if self.precision.dtype is None:
            return self.inferer(inputs, network, *args, **kwargs)

        def autocast_network(window: torch.Tensor, *a: Any, **k: Any) -> Any:
            with self.precision.autocast():
                return _to_float(network(window, *a, **k))

        return self.inferer(inputs, autocast_network, *args, **kwargs)
