"""The `hovcaffe` entry point: every subcommand answers --help, errors map to exit codes."""
from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from hovcaffe import cli as cli_mod
from hovcaffe.errors import EXIT_USAGE, PrototxtError


@pytest.mark.parametrize("name", list(cli_mod.COMMANDS))
def test_every_subcommand_has_help(name):
    result = CliRunner().invoke(cli_mod.main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and name in result.output


def test_group_help_lists_commands_without_importing_them():
    out = subprocess.run([sys.executable, "-c",
                          "import sys; from hovcaffe.cli import main\n"
                          "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
                          "print('TORCH' if 'torch' in sys.modules else 'NOTORCH')\n"
                          "print('SPARK' if 'pyspark' in sys.modules else 'NOSPARK')"],
                         capture_output=True, text=True, check=True).stdout
    for name in cli_mod.COMMANDS:
        assert name in out
    assert "NOSPARK" in out and "NOTORCH" in out


def test_user_error_is_one_line_and_exit_2(monkeypatch):
    @click.command(name="boom")
    def boom():
        raise PrototxtError("expected '}'", "net.prototxt", 3, 7)

    monkeypatch.setitem(cli_mod.COMMANDS, "boom", ("x", "test"))
    monkeypatch.setattr(cli_mod.LazyGroup, "get_command",
                        lambda self, ctx, name: boom if name == "boom" else None)
    result = CliRunner().invoke(cli_mod.main, ["boom"])
    assert result.exit_code == EXIT_USAGE
    assert "net.prototxt:3:7: expected '}'" in result.output
    assert "Traceback" not in result.output


def test_unexpected_exception_is_exit_1_without_traceback(monkeypatch):
    @click.command(name="bug")
    def bug():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli_mod.LazyGroup, "get_command",
                        lambda self, ctx, name: bug if name == "bug" else None)
    monkeypatch.delenv("HOVCAFFE_DEBUG", raising=False)
    result = CliRunner().invoke(cli_mod.main, ["bug"])
    assert result.exit_code == 1
    assert "disk on fire" in result.output and "HOVCAFFE_DEBUG" in result.output


def test_unknown_subcommand_is_usage_error():
    result = CliRunner().invoke(cli_mod.main, ["frobnicate"])
    assert result.exit_code == 2


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "hovcaffe.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "hovcaffe" in out.stdout
