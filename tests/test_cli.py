"""The `medtransfer` command line as a whole: version, and a help line for every argument of every command."""

import argparse

import pytest

from medtransfer import __version__
from medtransfer.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, path=("medtransfer",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"medtransfer {__version__}"


def test_every_argument_has_a_help_line():
    missing = [f"{' '.join(path)} {action.option_strings[0] if action.option_strings else action.dest}"
               for path, parser in _parsers(build_parser()) for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert not missing, f"arguments without a help line: {missing}"
