"""Refuse a misspelt key on a `python -m monai.bundle run ...` command line (MONAI accepts any override).

`--max_epoch 1` would otherwise be added as a new, unused config key while the run trains for the default 30
epochs. Called from `RunDirectory.prepare` (the first thing every training run does): when this process was
started as `monai.bundle run`, every `--KEY` on its command line must be one of `run`'s own arguments or a
top-level key of the config files it merged (`--config_file`, list form included); `a#b` overrides are checked
by their first part. In-process workflows (tests, ConfigWorkflow) have no such command line and are not checked.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import sys
from pathlib import Path

import yaml

from medtransfer.errors import MedtransferError


class UnknownKeyError(MedtransferError, ValueError):
    """A command-line override names no key of the bundle's configs."""


def _is_bundle_run(argv: list[str]) -> bool:
    if len(argv) < 2 or argv[1] != "run":
        return False
    program = argv[0].replace("\\", "/")
    return program in ("monai.bundle", "-m") or program.endswith("monai/bundle/__main__.py")


def _options(argv: list[str]) -> dict[str, str | None]:
    options: dict[str, str | None] = {}
    index = 2
    while index < len(argv):
        token = argv[index]
        if token.startswith("--") and len(token) > 2:
            name, _, value = token[2:].partition("=")
            if not value and index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                value = argv[index + 1]
                index += 1
            options[name.replace("-", "_") if name not in options else name] = value or None
        index += 1
    return options


def _config_files(value: str | None) -> list[str]:
    if not value:
        return []
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value.split(",")
    return [str(item) for item in (parsed if isinstance(parsed, (list, tuple)) else [parsed])]


def _run_arguments() -> set[str]:
    from monai.bundle import scripts

    return {name for name, p in inspect.signature(scripts.run).parameters.items() if p.kind != p.VAR_KEYWORD}


def known_keys(config_files: list[str]) -> set[str]:
    keys: set[str] = set()
    for file in config_files:
        path = Path(file)
        try:
            content = yaml.safe_load(path.read_text()) if path.is_file() else None  # JSON is YAML too
        except (OSError, yaml.YAMLError):
            content = None
        if isinstance(content, dict):
            keys |= {str(key).replace("::", "#").split("#")[0] for key in content}
    return keys


def check_command_line(argv: list[str] | None = None) -> None:
    """Raise UnknownKeyError naming a command-line key no config file knows (with the closest known key)."""
    argv = list(sys.argv if argv is None else argv)
    if not _is_bundle_run(argv):
        return
    options = _options(argv)
    files = _config_files(options.get("config_file"))
    keys = known_keys(files)
    if not keys:  # configs we cannot read here: MONAI reports them itself
        return
    allowed = keys | _run_arguments()
    for name in options:
        top = name.replace("::", "#").split("#")[0]
        if top in allowed:
            continue
        close = difflib.get_close_matches(top, sorted(allowed), n=1, cutoff=0.6)
        hint = f"; did you mean --{close[0]}?" if close else ""
        raise UnknownKeyError(f"--{name}: no such key in {', '.join(files)}{hint} (monai.bundle run would accept it "
                              "and ignore it)")
