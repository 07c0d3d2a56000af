"""Every piece of a bundle's configs that `monai.bundle run` would execute, checked against an allow-list.

MONAI evaluates ``$`` strings as Python, instantiates any importable ``_target_``, and expands ``%`` macros
(which can read other files) — in *any* config key, including keys that `medtransfer bundle verify`'s other
checks never read. So this check walks every config file (``configs/**/*.json|yaml|yml``, metadata included)
and lists each executable item:

- ``expression``: a string starting with ``$`` (also ``$import ...`` statements);
- ``target``: a ``_target_`` value (the callable MONAI instantiates);
- ``reference``: an ``@`` reference that is not a plain ``@key`` / ``@key#sub#...`` lookup (``@`` followed by
  anything else is handed to Python);
- ``macro``: a ``%`` macro (it pulls content from another file).

An item passes when its text is on the allow-list (``config_expressions_allowed.json``, derived from the
project's own bundles by `derive_allow_list`, plus the targets `medtransfer export` adds). Anything else makes
the check fail with the file, the key and the text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

ALLOW_LIST_PATH = Path(__file__).with_name("config_expressions_allowed.json")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
PLAIN_REFERENCE = re.compile(r"^@[A-Za-z_][A-Za-z0-9_]*(#[A-Za-z0-9_]+)*$")
# Targets `medtransfer export` writes into an exported inference config (medtransfer.inference.export).
EXPORT_TARGETS = ("medtransfer.inference.bundle_loading.check_bundle_weights", "medtransfer.networks.build_resnet_unet")


@dataclass(frozen=True)
class ConfigItem:
    file: str  # relative to the bundle
    key: str  # MONAI id (a#b#0)
    kind: str  # expression | target | reference | macro
    text: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key} = {self.text!r} ({self.kind})"


class ConfigReadError(ValueError):
    """A config file that cannot be parsed: it is reported, never skipped."""


def config_files(bundle: Path) -> list[Path]:
    configs = Path(bundle) / "configs"
    if not configs.is_dir():
        return []
    return sorted(p for p in configs.rglob("*") if p.suffix.lower() in CONFIG_SUFFIXES and p.is_file())


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        raise ConfigReadError(f"{path}: not a readable config ({type(error).__name__}: {error})") from None


def _walk(value: Any, key: str, file: str) -> Iterable[ConfigItem]:
    if isinstance(value, dict):
        for name, item in value.items():
            child = f"{key}#{name}" if key else str(name)
            if name == "_target_" and isinstance(item, str):
                yield ConfigItem(file, child, "target", item)
                continue
            yield from _walk(item, child, file)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{key}#{index}" if key else str(index), file)
    elif isinstance(value, str):
        if value.startswith("$"):
            yield ConfigItem(file, key, "expression", value)
        elif value.startswith("%"):
            yield ConfigItem(file, key, "macro", value)
        elif value.startswith("@") and not PLAIN_REFERENCE.match(value):
            yield ConfigItem(file, key, "reference", value)


def executable_items(bundle: str | Path) -> list[ConfigItem]:
    """Every executable item in every config file of `bundle` (raises ConfigReadError for an unreadable file,
    and for a config that is a symbolic link out of the bundle)."""
    bundle = Path(bundle)
    root = bundle.resolve()
    items: list[ConfigItem] = []
    for path in config_files(bundle):
        if root not in path.resolve().parents:
            raise ConfigReadError(f"{path}: a symbolic link out of the bundle (to {path.resolve()}); refusing")
        items += _walk(_read(path), "", str(path.relative_to(bundle)))
    return items


def derive_allow_list(bundles: Iterable[str | Path]) -> dict[str, list[str]]:
    """The allow-list a set of trusted bundles implies: every item text, by kind (plus the export targets)."""
    allowed: dict[str, set[str]] = {"expression": set(), "target": set(EXPORT_TARGETS), "reference": set(),
                                    "macro": set()}
    for bundle in bundles:
        for item in executable_items(bundle):
            allowed[item.kind].add(item.text)
    return {kind: sorted(texts) for kind, texts in allowed.items()}


@lru_cache(maxsize=1)
def allow_list() -> dict[str, frozenset[str]]:
    content = json.loads(ALLOW_LIST_PATH.read_text())
    return {kind: frozenset(content.get(kind, [])) for kind in ("expression", "target", "reference", "macro")}


def not_allowed(bundle: str | Path, allowed: dict[str, Iterable[str]] | None = None) -> list[ConfigItem]:
    allowed = allowed or allow_list()
    return [item for item in executable_items(bundle) if item.text not in allowed.get(item.kind, ())]


def check_config_expressions(bundle: str | Path) -> str | None:
    """`bundle verify` check: None when every executable item is allow-listed; raises ValueError listing the rest."""
    try:
        unknown = not_allowed(bundle)
    except ConfigReadError as error:
        raise ValueError(str(error)) from None
    if unknown:
        listing = "; ".join(str(item) for item in unknown[:20])
        more = f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else ""
        raise ValueError(f"{len(unknown)} executable config item(s) not on medtransfer's allow-list; "
                         f"`monai.bundle run` would execute them: {listing}{more}")
    return None


def write_allow_list(bundles: Iterable[str | Path], path: Path = ALLOW_LIST_PATH) -> Path:
    """Regenerate the shipped allow-list from the project's own bundles (`python -m ... bundles/*`)."""
    content = {"note": "derived from the project's bundles by medtransfer.inference.config_expressions; "
                       "regenerate after changing a bundle config", **derive_allow_list(bundles)}
    path.write_text(json.dumps(content, indent=1) + "\n")
    return path


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(write_allow_list(sys.argv[1:]))
