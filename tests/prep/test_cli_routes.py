"""Start-up of the CLI (issue 23): a run registers only the command module it names, and plain
parameter values are converted without pydantic — with help, errors and converted values exactly
as the full app and typer's own coercion give them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import cli

runner = CliRunner()
ROOT = Path(__file__).parents[2]
FULL = typer.main.get_command(cli.app)


def _paths(group, path=()):
    found = [path]
    for name, command in sorted(group.commands.items()):
        found += _paths(command, (*path, name)) if hasattr(command, "commands") else [(*path, name)]
    return found


PATHS = _paths(FULL)


def test_every_command_is_routed_to_the_module_that_defines_it():
    assert set(cli.ROUTES) == set(FULL.commands)
    for name, module in cli.ROUTES.items():
        assert name in typer.main.get_command(cli.build_app([module])).commands, (name, module)
        assert module in cli.GROUP_NAMES


@pytest.mark.parametrize("argv", [[], ["--help"], ["--install-completion"], ["tga"], ["nosuch", "x"]])
def test_no_command_an_option_or_an_unknown_name_registers_every_group(argv):
    assert cli.groups_for(argv) == cli.GROUP_NAMES


def test_shell_completion_registers_every_group(monkeypatch):
    monkeypatch.setenv("_LORAPREP_COMPLETE", "bash_complete")
    assert cli.groups_for(["tag"]) == cli.GROUP_NAMES


@pytest.mark.parametrize("args", [[*p, "--help"] for p in PATHS if p] + [["tag"], ["captions"], ["tag", "x", "--bogus"],
                                                                         ["models", "nosuch"], ["lora"]],
                         ids=lambda args: " ".join(args))
def test_a_routed_run_prints_exactly_what_the_full_app_prints(args):
    env = {"COLUMNS": "80", "TERMINAL_WIDTH": "80"}
    lean = runner.invoke(cli.build_app(cli.groups_for(args)), args, env=env, prog_name="loraprep")
    full = runner.invoke(cli.app, args, env=env, prog_name="loraprep")
    assert lean.output == full.output and lean.exit_code == full.exit_code


SAMPLES = {
    "str": ["abc", "", "  spaced ", "ünï", "{trigger}, {tags}"],
    "int": [5, "5", "-3", "+7", "007", "5.0", "x", "1_000", " 5", ""],
    "float": [0.35, 1, "0.35", "1e-3", ".5", "5", "5.", "nan", "x", "1,5", "-0"],
    "bool": [True, False],
    "path": ["some/dir", "-", ".", str(ROOT / "cli.py"), str(ROOT)],
}


def _plain_params():
    for path in PATHS:
        command = FULL
        for name in path:
            command = command.commands[name]
        for param in command.params:
            param._runtime_param = None
            light = param.get_runtime_param()
            if type(light).__name__ == "PlainParam":
                yield " ".join([*path, param.name]), command, param, light


PLAIN = list(_plain_params())


def test_most_parameters_are_plain():
    assert len(PLAIN) > 100


@pytest.mark.parametrize("name, command, param, light", PLAIN, ids=[p[0] for p in PLAIN])
def test_plain_conversion_gives_what_typers_adapter_gives(name, command, param, light):
    from typer._click import Context
    from typer._click.exceptions import BadParameter
    from typer._coercion import build_runtime_param

    adapter = build_runtime_param(param.type_descriptor)
    ctx = Context(command)
    values = SAMPLES[light.kind]
    for value in values if not light.many else [[v] for v in values] + [values[:2]]:
        outcomes = []
        for runtime in (light, adapter):
            try:
                result = runtime.coerce(value, param=param, ctx=ctx)
                outcomes.append(("ok", type(result), repr(result)))  # repr: nan == nan
            except BadParameter as exc:
                outcomes.append(("error", exc.format_message()))
        assert outcomes[0] == outcomes[1], (name, value)


def test_tag_imports_neither_pydantic_nor_other_command_groups(wd14_model, testdata, tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "rocket.jpg").write_bytes((testdata / "photos/rocket.jpg").read_bytes())
    probe = ("import atexit, runpy, sys\n"
             "atexit.register(lambda: print('LOADED', sorted(m for m in sys.modules if m == 'pydantic' "
             "or m.startswith('commands.')), file=sys.stderr))\n"
             f"sys.argv = ['loraprep', 'tag', {str(folder)!r}, '--model-dir', {str(wd14_model)!r}, '--general', '0.3',"
             " '--exclude', 'a,b', '--max-tags', '9']\n"
             "runpy.run_module('cli', run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr
    assert "LOADED ['commands.common', 'commands.tagging']" in run.stderr
    assert (folder / "rocket.txt").is_file()
