"""loraprep's command line: parse arguments, call one library function, render the result.

No logic lives here. The commands live in the `commands` package, one module per command group
(`commands.lora`, `commands.captions`, …, and modules of top-level commands such as
`commands.dataset`); each module holds its own `typer.Typer` and this file assembles them with one
rule, `app.add_typer(module.app)`, in the order `loraprep --help` lists them. Every command is
wrapped by `commands.common.guard`, the single place a `LoraprepError` becomes a message with a hint
and an exit code (0 ok, 1 some files skipped or a run failed, 2 usage error). Heavy libraries (torch,
diffusers, peft) are imported inside the commands that need them so `loraprep --help` stays fast.

A run imports and registers only the module of the command it names (`loraprep tag …` builds one
command's parameters, not every group's: `ROUTES`); with no command, an option first, an unknown
name or shell completion, every group is registered, so help, errors and suggestions are the same.
`cli.app` and `cli.GROUPS` (every group, for tests and tools) are built when first asked for.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import typer

def _tidy_help() -> None:
    """Help that reads cleanly at 80 columns: flags show no `<bool>` value, values show click's
    plain metavars (TEXT, INTEGER, PATH), usage lines name arguments as FOLDER (not `{folder}`), and
    docstring paragraphs are re-flowed to the terminal instead of keeping the source's line breaks.

    These are presentation hooks into typer's help renderer (typer 0.29 changed all three); if a
    future typer renames them, help falls back to typer's own rendering. typer imports its
    `rich_utils` (and with it rich's markdown and traceback modules) only to render help or an
    error, so its hooks are set when help is first rendered, not on every start.
    """
    try:
        from typer import core
        option_type = core.TyperOption.display_type_rich
        core.TyperArgument._usage_display_name  # noqa: B018
        formatters = {cls: cls.format_help for cls in (core.TyperCommand, core.TyperGroup)}
    except (ImportError, AttributeError):
        return
    plain = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "Path": "PATH", "file": "FILE",
             "directory": "DIR"}

    def option_metavar(self: Any, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        shown = option_type(self, ctx)
        if not shown or self.metavar is not None:
            return shown
        label = shown.strip("<>.").removeprefix("list[").removesuffix("]")
        return plain.get(label, label.upper())

    def usage_name(self: Any) -> str:
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    @functools.cache
    def tidy_renderer() -> None:
        try:
            from typer import rich_utils
            rich_utils._fix_linebreaks  # noqa: B018
            rich_utils.Table  # noqa: B018
        except (ImportError, AttributeError):
            return

        def reflow(paragraphs: list[str], markup_mode: Any) -> str:
            return "\n\n".join(p if p.startswith("\b") else " ".join(p.split("\n")) for p in paragraphs)

        class FoldingTable(rich_utils.Table):  # type: ignore[name-defined, misc]
            """Typer's option tables with long names folded onto a second line instead of cut with '…'."""

            def add_row(self, *renderables: Any, **kwargs: Any) -> None:
                super().add_row(*renderables, **kwargs)
                for column in self.columns:
                    column.overflow = "fold"

        rich_utils._fix_linebreaks = reflow
        rich_utils.Table = FoldingTable

    def tidied(format_help: Callable[..., None]) -> Callable[..., None]:
        def format_help_tidily(self: Any, ctx: Any, formatter: Any) -> None:
            tidy_renderer()
            return format_help(self, ctx, formatter)

        return format_help_tidily

    core.TyperOption.display_type_rich = option_metavar
    core.TyperArgument.display_type_rich = lambda self, ctx: None
    core.TyperArgument.display_name_raw = property(lambda self: self.metavar or (self.name or "").upper())
    core.TyperArgument._usage_display_name = usage_name
    for cls, format_help in formatters.items():
        cls.format_help = tidied(format_help)


_tidy_help()


def _plain_coercion() -> None:
    """Convert plain parameter values without pydantic.

    typer 0.29 checks every parameter value through a pydantic TypeAdapter, and importing pydantic
    is ~0.1 s of every run's start-up (issue 23: `loraprep tag` within 0.3 s of a bare script). For
    the plain cases — a str, a bool, an int or float written in digits, a path without a custom
    parser, lists of those — the value is converted here as the adapter converts it (paths then go through typer's
    own checks, `coerce_cli_path`); anything else (ranges, choices, enums, parsers, files, tuples, a
    malformed number) goes to typer's adapter, so its results and messages are unchanged
    (tests/prep/test_cli_routes.py compares both on every parameter of every command). Like
    `_tidy_help`, a hook into typer internals: if they move, typer's own coercion is used.
    """
    import re
    from dataclasses import dataclass
    from pathlib import Path

    try:
        from typer import core
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer._param_types import coerce_cli_path
        core._TyperParameter.get_runtime_param  # noqa: B018
    except (ImportError, AttributeError):
        return
    integer = re.compile(r"[+-]?[0-9]+")
    decimal = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

    def leaf_kind(annotation: Any, info: Any) -> str | None:
        if info.parser is not None or getattr(info, "click_type", None) is not None or info.path_type is not None:
            return None
        if annotation in (int, float) and (info.min is not None or info.max is not None):
            return None
        return {str: "str", int: "int", float: "float", bool: "bool", Path: "path"}.get(annotation)

    class Fallback(Exception):
        """This value is not a plain one: typer's adapter decides."""

    def convert(kind: str, value: Any, info: Any, param: Any, ctx: Any) -> Any:
        if kind == "str" and isinstance(value, str) or kind == "bool" and type(value) is bool:
            return value
        if kind == "int" and (type(value) is int or isinstance(value, str) and integer.fullmatch(value)):
            return int(value)
        if kind == "float" and (type(value) in (int, float) or isinstance(value, str) and decimal.fullmatch(value)):
            return float(value)
        if kind == "path" and (isinstance(value, Path) or isinstance(value, str) and value):
            return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
        raise Fallback

    @dataclass(frozen=True)
    class PlainParam(RuntimeParam):  # type: ignore[misc]
        kind: str
        many: bool
        descriptor: Any

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if not self.many:
                    return convert(self.kind, value, self.parameter_info, param, ctx)
                items = value if isinstance(value, (list, tuple)) else [value]
                return [convert(self.kind, item, self.parameter_info, param, ctx) for item in items]
            except Fallback:
                return build_runtime_param(self.descriptor)._coerce_value(value, param=param, ctx=ctx)

    def plain_param(descriptor: Any) -> Any:
        annotation, many = descriptor.annotation, False
        if descriptor.is_list and len(getattr(annotation, "__args__", ())) == 1:
            annotation, many = annotation.__args__[0], True
        elif descriptor.is_tuple:
            return None
        if descriptor.is_file or descriptor.is_choice or descriptor.is_datetime:
            return None
        kind = leaf_kind(annotation, descriptor.parameter_info)
        if kind is None:
            return None
        return PlainParam(parameter_info=descriptor.parameter_info, annotation=descriptor.annotation, kind=kind,
                          many=many, descriptor=descriptor)

    typer_runtime_param = core._TyperParameter.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        if self._runtime_param is None:
            self._runtime_param = plain_param(self.type_descriptor)
        return typer_runtime_param(self)

    core._TyperParameter.get_runtime_param = get_runtime_param


_plain_coercion()

# Top-level commands first (a module whose Typer has no name adds its commands to `loraprep`
# itself), then the named groups; this order is the order of `loraprep --help`.
GROUP_NAMES = ("dataset", "images", "tagging", "doctor", "train", "models", "captions", "lora")
# The module of each command or named group (tests/prep/test_cli_routes.py checks it against GROUPS).
ROUTES = {
    "scan": "dataset", "bucket": "dataset", "manifest": "dataset", "export": "dataset", "prep": "dataset",
    "crop": "images", "clean": "images", "sheet": "images", "tag": "tagging", "doctor": "doctor",
    "train": "train", "generate": "train", "models": "models", "captions": "captions", "lora": "lora",
}


def build_app(groups: Sequence[str] = GROUP_NAMES) -> typer.Typer:
    """The `loraprep` Typer with the command modules `groups` (names in GROUP_NAMES) added, in order."""
    built = typer.Typer(
        name="loraprep",
        help="Turn a folder of raw images into a clean, captioned, bucketed LoRA dataset, and train a LoRA on it.",
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
    )
    for name in groups:
        built.add_typer(importlib.import_module(f"commands.{name}").app)
    return built


def groups_for(argv: Sequence[str]) -> tuple[str, ...]:
    """The command modules a run with these arguments needs: the named command's, else all of them."""
    if not argv or argv[0].startswith("-") or any(key.endswith("_COMPLETE") for key in os.environ):
        return GROUP_NAMES
    route = ROUTES.get(argv[0])
    return (route,) if route else GROUP_NAMES


def __getattr__(name: str) -> Any:
    """`cli.app` (every group) and `cli.GROUPS` (the modules), built on first use."""
    if name == "app":
        globals()["app"] = build_app()
        return globals()["app"]
    if name == "GROUPS":
        modules: tuple[ModuleType, ...] = tuple(importlib.import_module(f"commands.{g}") for g in GROUP_NAMES)
        globals()["GROUPS"] = modules
        return modules
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """The `loraprep` console script: tune the allocator for many large images, then run the app
    with only the command module this run names (see the module docstring)."""
    from prep.allocator import reuse_large_buffers

    reuse_large_buffers()
    build_app(groups_for(sys.argv[1:]))()


if __name__ == "__main__":
    main()
