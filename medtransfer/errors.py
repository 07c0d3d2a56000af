"""The common base of every error medtransfer raises for bad input: the command line prints it as one line.

Each module keeps its own typed error (ManifestError, StudyError, BundleError, ...); they all derive from
`MedtransferError`, so `medtransfer.cli.main` can tell "the input is wrong" (one line naming the file and the
problem) from a bug (a traceback, shown with `--debug` or MEDTRANSFER_DEBUG=1).
"""

from __future__ import annotations


class MedtransferError(Exception):
    """Input that medtransfer cannot use as given; the message names the file (or key) and the problem."""


class FolderInUseError(MedtransferError, RuntimeError):
    """A run, study or output folder is being written by another live process."""
