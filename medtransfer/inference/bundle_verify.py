"""`medtransfer bundle verify`: MONAI's own bundle checks, run offline with the schema shipped here."""

from __future__ import annotations

import io
import json
import logging
from contextlib import redirect_stdout
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("meta_schema.json")
REQUIRED_FILES = ("configs/metadata.json", "LICENSE", "docs/README.md")


def _inference_config(bundle: Path) -> Path:
    for name in ("inference.yaml", "inference.json"):
        if (bundle / "configs" / name).is_file():
            return bundle / "configs" / name
    raise FileNotFoundError(f"{bundle}: no configs/inference.yaml or configs/inference.json")


def verify_metadata_offline(meta_file: Path) -> None:
    """MONAI `verify_metadata` against the shipped schema (it skips the download when the file exists)."""
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA_PATH))


def verify_network(bundle: Path) -> None:
    """MONAI `verify_net_in_out`: builds the network from the inference config, feeds metadata-shaped input."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(_inference_config(bundle)),
        device="cpu",
        n=2,
        bundle_root=str(bundle),
    )


def verify_bundle(bundle: str | Path) -> dict:
    """Run every check; return {"ok": bool, "checks": {name: "passed" | error text}}."""
    bundle = Path(bundle)
    checks: dict[str, str] = {}
    missing = [name for name in REQUIRED_FILES if not (bundle / name).is_file()]
    checks["files"] = "passed" if not missing else f"missing: {', '.join(missing)}"
    for name, check in (
        ("verify_metadata", lambda: verify_metadata_offline(bundle / "configs" / "metadata.json")),
        ("verify_net_in_out", lambda: verify_network(bundle)),
    ):
        try:
            with redirect_stdout(io.StringIO()):
                logging.getLogger("monai").setLevel(logging.ERROR)
                check()
            checks[name] = "passed"
        except Exception as error:  # report every failing check, not only the first
            checks[name] = f"{type(error).__name__}: {error}"
    return {"bundle": str(bundle), "ok": all(v == "passed" for v in checks.values()), "checks": checks}


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(json.dumps(verify_bundle(sys.argv[1]), indent=2))
