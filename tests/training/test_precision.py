"""Precision choice (pure, fed with capabilities), refusal of bad values, and the autocast inferer."""

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from medtransfer.training import (
    PRECISIONS,
    Capabilities,
    PrecisionError,
    PrecisionInferer,
    RunDirectory,
    choose_precision,
    config_hash,
    detect_capabilities,
    resolve_precision,
)

CPU_BF16 = Capabilities(cpu_bf16=True, cpu_bf16_flags=("avx512_bf16",))
CPU_PLAIN = Capabilities(cpu_bf16=False)
GPU_BF16 = Capabilities(cpu_bf16=False, cuda=True, cuda_bf16=True, cuda_name="H100")
GPU_FP16 = Capabilities(cpu_bf16=False, cuda=True, cuda_bf16=False, cuda_name="V100")


@pytest.mark.parametrize(
    "device, capabilities, name, scaler",
    [
        ("cpu", CPU_BF16, "bf16", False),
        ("cpu", CPU_PLAIN, "fp32", False),
        ("cuda", GPU_BF16, "bf16", False),
        ("cuda:1", GPU_FP16, "fp16", True),
        ("mps", CPU_BF16, "fp32", False),
    ],
)
def test_auto_picks_the_hardware_precision(device, capabilities, name, scaler):
    choice = choose_precision("auto", device, capabilities)
    assert choice.name == name and choice.requested == "auto"
    assert choice.grad_scaler is scaler
    assert choice.dtype == {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    assert choice.amp_kwargs == ({} if name == "fp32" else {"dtype": choice.dtype})


def test_explicit_requests_are_kept_or_refused_with_a_reason():
    assert choose_precision("fp32", "cpu", CPU_BF16).name == "fp32"
    assert choose_precision("BF16", "cpu", CPU_BF16).name == "bf16"
    assert choose_precision("fp16", "cuda", GPU_BF16).name == "fp16"
    with pytest.raises(PrecisionError, match="fp16 is not offered on a CPU"):
        choose_precision("fp16", "cpu", CPU_BF16)
    with pytest.raises(PrecisionError, match="no native bf16.*emulated"):
        choose_precision("bf16", "cpu", CPU_PLAIN)
    with pytest.raises(PrecisionError, match="V100 has no native bf16"):
        choose_precision("bf16", "cuda", GPU_FP16)
    with pytest.raises(PrecisionError, match="CUDA is not available"):
        choose_precision("auto", "cuda", CPU_BF16)


def test_unknown_value_is_refused_with_the_valid_values():
    with pytest.raises(PrecisionError) as excinfo:
        choose_precision("half", "cpu", CPU_BF16)
    assert "unknown precision 'half'" in str(excinfo.value)
    assert all(value in str(excinfo.value) for value in PRECISIONS)


def test_detected_capabilities_are_consistent_with_this_machine():
    capabilities = detect_capabilities()
    assert capabilities.cuda == torch.cuda.is_available()
    if capabilities.cpu_bf16_flags:  # a flag alone is evidence only together with oneDNN's check
        assert set(capabilities.cpu_bf16_flags) <= {"amx_bf16", "avx512_bf16"}
    choice = resolve_precision("auto", "cpu", announce=False)
    assert choice.name == ("bf16" if capabilities.cpu_bf16 else "fp32")


def test_precision_inferer_gives_fp32_outputs_and_keeps_fp32_weights():
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 2, 3, padding=1)
    image = torch.randn(1, 1, 40, 40)
    bf16 = choose_precision("bf16", "cpu", CPU_BF16)
    seen = []

    def recording(window):
        out = network(window)
        seen.append(out.dtype)
        return out

    for inner in (SimpleInferer(), SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2, overlap=0.25)):
        seen.clear()
        out = PrecisionInferer(inner, bf16)(image, recording)
        assert out.dtype == torch.float32 and seen and set(seen) == {torch.bfloat16}
        reference = inner(image, network)
        assert torch.allclose(out, reference, atol=0.05) and not torch.equal(out, reference)
    assert all(p.dtype == torch.float32 for p in network.parameters())
    fp32 = choose_precision("fp32", "cpu", CPU_BF16)
    assert torch.equal(PrecisionInferer(SimpleInferer(), fp32)(image, network), network(image))
    assert PrecisionInferer(SlidingWindowInferer(roi_size=(16, 16)), fp32).roi_size == (16, 16)


def test_precision_is_part_of_the_configuration_hash(tmp_path):
    params = {"seed": 0, "precision": "bf16"}
    assert config_hash(params) != config_hash({**params, "precision": "fp32"})
    (tmp_path / "run").mkdir()
    first = RunDirectory(tmp_path / "run", params).prepare()
    first.checkpoint_path.write_bytes(b"unfinished")
    with pytest.raises(Exception, match=r"another configuration \(changed: precision\)"):
        RunDirectory(tmp_path / "run", {**params, "precision": "fp32"}).prepare()
    assert RunDirectory(tmp_path / "run", params).prepare().resumed
