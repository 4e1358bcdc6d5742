"""Every command's --help reads cleanly at 80 columns: no `<bool>` metavars, no `{folder}` usage,
nothing wider than the terminal, and no option name cut off."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group under `group` (typer vendors its own click, so duck-typed)."""
    found: list[tuple[tuple[str, ...], Any]] = [(path, group)]
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            found += _commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_every_command_is_covered():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "scan", "bucket", "manifest", "export", "prep", "crop", "models pull", "captions edit"} <= names


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or "loraprep" for p, _ in COMMANDS])
def test_help_reads_cleanly_at_80_columns(path, command):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    text = result.output
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    assert "<bool>" not in text and "<str>" not in text and "<int>" not in text and "<path>" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for param in command.params:
        for opt in [*param.opts, *getattr(param, "secondary_opts", [])]:
            if opt.startswith("--") and not param.hidden:
                assert opt[:16] in text, f"{opt} is missing from `{' '.join(path)} --help`"
    assert not re.search(r"--[\w-]*…", text), "an option name is cut off"  # long names fold instead


ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
CLI_MODULES = [ROOT / "cli.py", *sorted((ROOT / "commands").glob("*.py"))]


@pytest.mark.parametrize("path", CLI_MODULES, ids=[p.name for p in CLI_MODULES])
def test_no_cli_module_grows_past_500_lines(path):
    """A command group that outgrows its module splits into another module, not a 1,600-line cli.py."""
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 520, f"{path.name}: split it"


def test_every_command_module_is_assembled_by_the_one_rule():
    """Each commands/ module with a Typer is added to `loraprep` by cli.GROUPS, none by hand elsewhere."""
    import importlib

    import cli

    modules = {p.stem for p in CLI_MODULES[1:] if p.stem not in {"__init__", "common"}}
    assembled = {m.__name__.rsplit(".", 1)[1] for m in cli.GROUPS}
    assert modules == assembled
    assert all(hasattr(importlib.import_module(f"commands.{name}"), "app") for name in modules)
    assert "add_typer" not in "".join(p.read_text(encoding="utf-8") for p in CLI_MODULES[1:])
