"""`medtransfer bundle verify`: MONAI's own bundle checks, run offline and without executing the bundle's code.

Checks, each "passed" or the error text:

- ``files``: LICENSE, configs/metadata.json, docs/README.md are there.
- ``verify_metadata``: MONAI ``verify_metadata`` against MONAI's real metadata schema (draft 2019-09): the copy
  of the published file shipped here (``meta_schema.json``, no download), or the file given as ``schema``.
- ``verify_net_in_out``: MONAI ``verify_net_in_out`` with MONAI's default arguments (``n=1``: the smallest input
  the metadata's ``spatial_shape`` describes). By default it runs on a copy of the config that holds only
  the allow-listed ``network_def`` with literal arguments (see ``bundle_loading``), so verifying an untrusted
  bundle executes none of its code; ``trusted=True`` runs it on the bundle's own config.

For a bundle that carries weights (``models/model.pt``), i.e. one that ``medtransfer segment`` could use:

- ``safe_config``: the inference config passes the safe loader's allow-list (skipped when ``trusted``).
- ``weights_sha256``: every model file's sha256 matches ``files_sha256`` in the metadata.
- ``weights_only``: ``model.pt`` loads with ``torch.load(weights_only=True)`` (no pickled objects) and fits the
  network strictly.
- ``torchscript`` / ``onnx`` (when ``models/model.ts`` / ``models/model.onnx`` exist): after their checksum
  passes, they give the same mask as the PyTorch model on a seeded random volume (sliding windows of the
  bundle's patch size). ONNX needs onnxruntime; without it the check says "skipped".
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import torch

from medtransfer import registry
from medtransfer.inference.config_expressions import check_config_expressions
from medtransfer.networks.config import network_input_channels

# MONAI's published schema, byte for byte (see meta_schema.SOURCE.md); the URL Model Zoo metadata names.
SCHEMA_PATH = Path(__file__).with_name("meta_schema.json")
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
REQUIRED_FILES = (registry.METADATA, registry.LICENSE, registry.MODEL_CARD)
# Voxels where the PyTorch model's two best logits are closer than this are numerical ties, not disagreements.
TIE_MARGIN = 1e-4
SKIPPED = "skipped"


def _inference_config(bundle: Path) -> Path:
    try:
        return registry.inference_config(bundle)
    except registry.RegistryError as error:
        raise FileNotFoundError(str(error)) from None


def verify_metadata_offline(meta_file: Path, schema: str | Path | None = None) -> None:
    """MONAI `verify_metadata` against the real schema file (MONAI skips the download when the file exists)."""
    from monai.bundle import verify_metadata

    schema = Path(schema) if schema else SCHEMA_PATH
    if not schema.is_file():
        raise FileNotFoundError(f"metadata schema {schema} not found")
    with warnings.catch_warnings():  # "no hash value provided" for the schema: it is a local file
        warnings.simplefilter("ignore", UserWarning)
        verify_metadata(meta_file=str(meta_file), filepath=str(schema))


def _plain_data(value, where: str) -> None:
    """Refuse config syntax in metadata copied for MONAI's parser (``$`` would be evaluated there)."""
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        raise ValueError(f"metadata {where} = {value!r} is config syntax, not data")
    if isinstance(value, dict):
        for key, item in value.items():
            _plain_data(item, f"{where}::{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _plain_data(item, f"{where}[{index}]")


def verify_network(bundle: Path, trusted: bool = False) -> None:
    """MONAI `verify_net_in_out`: builds the network, feeds metadata-shaped input, checks channels and dtype."""
    from monai.bundle import verify_net_in_out

    from medtransfer.inference.bundle_loading import importable_network_def, read_config_file, safe_spec

    meta_file = bundle / registry.METADATA
    config_file = _inference_config(bundle)
    if trusted:
        verify_net_in_out(net_id="network_def", meta_file=str(meta_file), config_file=str(config_file),
                          device="cpu", bundle_root=str(bundle))
        return
    metadata = json.loads(meta_file.read_text())
    spec = safe_spec(bundle, read_config_file(config_file), config_file, metadata)
    formats = metadata.get("network_data_format")
    _plain_data(formats, "network_data_format")
    with tempfile.TemporaryDirectory() as folder:
        safe_config, safe_meta = Path(folder) / "network.json", Path(folder) / "metadata.json"
        safe_config.write_text(json.dumps({"network_def": importable_network_def(spec)}))
        safe_meta.write_text(json.dumps({"network_data_format": formats}))
        verify_net_in_out(net_id="network_def", meta_file=str(safe_meta), config_file=str(safe_config),
                          device="cpu")


def compare_masks(
    reference: torch.nn.Module,
    other: Callable,
    image: torch.Tensor,
    roi_size,
    sw_batch_size: int = 4,
    overlap: float = 0.25,
) -> dict:
    """Masks (argmax) of ``reference`` and ``other`` by sliding windows on ``image``; same unless beyond ties."""
    from monai.inferers import sliding_window_inference

    reference.eval()
    with torch.no_grad():
        expected = sliding_window_inference(image, list(roi_size), sw_batch_size, reference, overlap=overlap)
        got = sliding_window_inference(
            image, list(roi_size), sw_batch_size, lambda x: torch.as_tensor(other(x)), overlap=overlap
        )
    expected, got = torch.as_tensor(expected), torch.as_tensor(got)
    differ = expected.argmax(1) != got.argmax(1)
    top = expected.topk(2, dim=1).values
    beyond_ties = differ & ((top[:, 0] - top[:, 1]) > TIE_MARGIN)
    return {
        "voxels": int(differ.numel()),
        "differing_voxels": int(differ.sum()),
        "differing_beyond_ties": int(beyond_ties.sum()),
        "max_abs_logit_difference": float((expected - got).abs().max()),
        "same_mask": not bool(beyond_ties.any()),
    }


def onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: batch.detach().cpu().numpy().astype(np.float32)})[0])

    return run


def _network_with_weights(bundle: Path, trusted: bool) -> tuple[torch.nn.Module, list[int]]:
    from medtransfer.inference.bundle_loading import (
        BundleError, WEIGHTS_PATH, build_safe_network, read_config_file, read_metadata, safe_spec,
    )
    from medtransfer.training.weights import WeightsError, load_weights, read_state_dict

    config_file = _inference_config(bundle)
    if trusted:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(config_file))
        parser.read_meta(str(bundle / "configs" / "metadata.json"))
        parser["bundle_root"] = str(bundle)
        network = parser.get_parsed_content("network_def")
        roi_size = list(parser.get("patch_size") or [])
    else:
        spec = safe_spec(bundle, read_config_file(config_file), config_file, read_metadata(bundle))
        network, roi_size = build_safe_network(spec), spec.roi_size
    try:
        read_state_dict(bundle / WEIGHTS_PATH)
        load_weights(network, bundle / WEIGHTS_PATH)
    except WeightsError as error:
        raise BundleError(str(error)) from None
    return network.eval(), roi_size


def _weights_checks(bundle: Path, trusted: bool) -> dict[str, Callable[[], str | None]]:
    """Checks for a bundle with weights; a check returns None for "passed" or a "skipped: ..." text."""
    from medtransfer.inference.bundle_loading import (
        WEIGHTS_PATH, check_weights_checksum, read_config_file, read_metadata, safe_spec,
    )

    state: dict = {}

    def network():
        if "network" not in state:
            state["network"] = _network_with_weights(bundle, trusted)
        return state["network"]

    def safe_config():
        config_file = _inference_config(bundle)
        safe_spec(bundle, read_config_file(config_file), config_file, read_metadata(bundle))

    def checksums():
        metadata = read_metadata(bundle)
        for relative in (WEIGHTS_PATH, "models/model.ts", "models/model.onnx"):
            if (bundle / relative).exists():
                check_weights_checksum(bundle, metadata, relative, required=True)

    def random_volume(model, roi_size) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        channels = network_input_channels(model) or 1
        return torch.rand(1, channels, *[2 * s for s in roi_size], generator=generator)

    def export_check(relative: str, load: Callable) -> Callable[[], str | None]:
        def check():
            check_weights_checksum(bundle, read_metadata(bundle), relative, required=True)  # before loading it
            runner = load(bundle / relative)
            if isinstance(runner, str):
                return runner
            model, roi_size = network()
            result = compare_masks(model, runner, random_volume(model, roi_size), roi_size)
            if not result["same_mask"]:
                raise ValueError(
                    f"{relative} gives another mask than models/model.pt: {result['differing_beyond_ties']} of "
                    f"{result['voxels']} voxels differ (max logit difference {result['max_abs_logit_difference']:.3g})"
                )
            return None

        return check

    def load_onnx(path: Path):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return f"{SKIPPED}: onnxruntime is not installed (pip install onnxruntime)"
        return onnx_runner(path)

    checks: dict[str, Callable] = {}
    if not trusted:
        checks["safe_config"] = safe_config
    checks["weights_sha256"] = checksums
    checks["weights_only"] = lambda: (network(), None)[1]
    if (bundle / "models" / "model.ts").exists():
        checks["torchscript"] = export_check("models/model.ts", lambda p: torch.jit.load(str(p), map_location="cpu"))
    if (bundle / "models" / "model.onnx").exists():
        checks["onnx"] = export_check("models/model.onnx", load_onnx)
    return checks


@contextmanager
def _quiet_monai():
    """MONAI's bundle scripts log their arguments at INFO on their own handlers; a report is what we print."""
    from monai.bundle import scripts  # noqa: F401  (creates its loggers)

    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("monai")]
    loggers.append(logging.getLogger("monai"))
    levels = [item.level for item in loggers]
    for item in loggers:
        item.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)


def verify_bundle(bundle: str | Path, trusted: bool = False, schema: str | Path | None = None) -> dict:
    """Run every check; return {"bundle", "ok": bool, "checks": {name: "passed" | "skipped: ..." | error text}}.

    ``schema``: the metadata schema file (default: the shipped copy of MONAI's published schema)."""
    bundle = Path(bundle)
    checks: dict[str, str] = {}
    missing = [name for name in REQUIRED_FILES if not (bundle / name).is_file()]
    checks["files"] = "passed" if not missing else f"missing: {', '.join(missing)}"
    steps: dict[str, Callable] = {
        "verify_metadata": lambda: verify_metadata_offline(bundle / registry.METADATA, schema),
        "verify_net_in_out": lambda: verify_network(bundle, trusted),
        # every $ expression / _target_ / non-plain @ in any config file, against the project's allow-list
        "config_expressions": lambda: check_config_expressions(bundle, trusted),
    }
    if (bundle / "models" / "model.pt").exists():
        steps.update(_weights_checks(bundle, trusted))
    for name, check in steps.items():
        try:
            with redirect_stdout(io.StringIO()), _quiet_monai():
                outcome = check()
            checks[name] = outcome if isinstance(outcome, str) else "passed"
        except Exception as error:  # report every failing check, not only the first
            checks[name] = f"{type(error).__name__}: {error}"
    ok = all(v == "passed" or v.startswith(SKIPPED) for v in checks.values())
    return {"bundle": str(bundle), "ok": ok, "checks": checks}


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(json.dumps(verify_bundle(sys.argv[1]), indent=2))
