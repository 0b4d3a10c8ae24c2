"""The dispatcher: help, unknown commands, and that the CLI itself imports no torch."""

from __future__ import annotations

import subprocess
import sys

from striate.cli import COMMANDS, main


def test_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_is_one_line_error(capsys) -> None:
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_every_command_module_has_the_dispatch_interface() -> None:
    import importlib

    for name, (module_name, _) in COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), name


def test_cli_help_does_not_import_torch() -> None:
    code = "import sys; from striate.cli import main; main(['--help']); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
