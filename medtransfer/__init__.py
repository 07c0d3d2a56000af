"""medtransfer: transfer learning for binary medical image segmentation, on MONAI bundles."""

__version__ = "0.1.0"

from medtransfer import _noise  # noqa: E402

_noise.quiet()
