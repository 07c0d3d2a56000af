"""Library messages that say nothing about the user's run, filtered once, deliberately, on import.

- MONAI's NvImgCodecPydicomReader is registered by every `LoadImage` without an explicit reader and warns (a
  log line and a UserWarning, each time) when the optional GPU decoder nvImageCodec is absent, which is every
  CPU machine. pydicom's own decoders are used instead; nothing is lost.
- MONAI 1.5+ flags `get_mask_edges(always_return_as_numpy=...)` as deprecated from inside its own surface
  metrics, on every HD95 / surface-Dice call. Nothing of ours passes that argument.

MONAI's config-security warning ("any `_target_` value ... is invoked with no allow list") is *not* filtered
here: it is printed before medtransfer is imported, and it is true. The README's Safety paragraph explains it,
and `medtransfer study run` shows it once per study instead of once per run.
"""

from __future__ import annotations

import logging
import warnings

CONFIG_SECURITY_WARNING = r"parsing config_file .*invoked with no allow list"


def quiet() -> None:
    warnings.filterwarnings("ignore", message=r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",
                            category=UserWarning)
    warnings.filterwarnings("ignore", message=r".*get_mask_edges:always_return_as_numpy", category=FutureWarning)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
