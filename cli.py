"""loraprep's command line: parse arguments, call one library function, render the result.

No logic lives here. The commands live in the `commands` package, one module per command group
(`commands.lora`, `commands.captions`, …, and modules of top-level commands such as
`commands.dataset`); each module holds its own `typer.Typer` and this file assembles them with one
rule, `app.add_typer(module.app)`, in the order `loraprep --help` lists them. Every command is
wrapped by `commands.common.guard`, the single place a `LoraprepError` becomes a message with a hint
and an exit code (0 ok, 1 some files skipped or a run failed, 2 usage error). Heavy libraries (torch,
diffusers, peft) are imported inside the commands that need them so `loraprep --help` stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from commands import captions, dataset, doctor, images, lora, models, tagging, train

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

app = typer.Typer(
    name="loraprep",
    help="Turn a folder of raw images into a clean, captioned, bucketed LoRA dataset, and train a LoRA on it.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

# Top-level commands first (a module whose Typer has no name adds its commands to `loraprep`
# itself), then the named groups; this order is the order of `loraprep --help`.
GROUPS = (dataset, images, tagging, doctor, train, models, captions, lora)
for _group in GROUPS:
    app.add_typer(_group.app)


def main() -> None:
    """The `loraprep` console script: tune the allocator for many large images, then run the app."""
    from prep.allocator import reuse_large_buffers

    reuse_large_buffers()
    app()


if __name__ == "__main__":
    main()
