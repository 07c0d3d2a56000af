"""The weights checksum check of an exported bundle, in the standard library only.

`medtransfer export` copies this file into the bundle as ``scripts/integrity.py``; the bundle's
``configs/inference.json`` calls it in ``initialize`` before MONAI's CheckpointLoader reads the weights, so the
bundle refuses changed or damaged weights also where medtransfer is not installed. Keep it free of imports
outside the standard library.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

CHECKSUM_KEY = "files_sha256"
WEIGHTS = "models/model.pt"

logger = logging.getLogger(__name__)


class WeightsIntegrityError(ValueError):
    """A bundle's weights do not match the sha256 its metadata lists."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights(bundle_root: str, checkpoint: str | None = None, relative: str = WEIGHTS) -> str:
    """Raise unless ``<bundle_root>/<relative>`` matches ``files_sha256`` in configs/metadata.json.

    A ``--checkpoint`` pointing elsewhere is the user's choice: logged, not checked. Returns the digest.
    """
    bundle = Path(bundle_root)
    own = bundle / relative
    if checkpoint is not None and Path(checkpoint).resolve() != own.resolve():
        logger.warning("using weights %s instead of the bundle's %s; no checksum to compare", checkpoint, own)
        return ""
    meta_file = bundle / "configs" / "metadata.json"
    listed = (json.loads(meta_file.read_text()).get(CHECKSUM_KEY) or {}).get(relative)
    if not listed:
        raise WeightsIntegrityError(f"{meta_file}: lists no sha256 for {relative} ({CHECKSUM_KEY})")
    if not own.is_file():
        raise WeightsIntegrityError(f"{own}: missing")
    digest = _sha256(own)
    if digest != str(listed).lower():
        raise WeightsIntegrityError(
            f"{own}: sha256 {digest} does not match {listed} listed in {meta_file}: the file was changed or "
            f"damaged after export; refusing to use it"
        )
    return digest
