"""loraprep's command line: parse arguments, call one library function, render the result.

No logic lives here. Every command is wrapped by `guard`, the single place a `LoraprepError`
becomes a message with a hint and an exit code (0 ok, 1 some files skipped or a run failed,
2 usage error). Heavy libraries (torch, diffusers, peft) are imported inside the commands that
need them so `loraprep --help` stays fast.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from prep.console import err, out, print_dropped, rich_reporter
from prep.errors import LoraprepError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="loraprep",
    help="Turn a folder of raw images into a clean, captioned, bucketed LoRA dataset, and train a LoRA on it.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def guard(fn: F) -> F:
    """Render a LoraprepError once, with its hint, and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LoraprepError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
            if exc.hint:
                err.print(f"[yellow]hint:[/] {exc.hint}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    typer.echo(json.dumps(data, indent=1, ensure_ascii=False))


def finish(dropped: list, *, quiet: bool = False) -> None:
    """Show skipped files and exit 1 when there were any (documented exit-code contract)."""
    if not quiet:
        print_dropped(dropped)
    if dropped:
        raise typer.Exit(1)


# ---------------------------------------------------------------- foundation: scan, bucket, manifest, export, prep


# ---------------------------------------------------------------- crop, clean, sheet (issue 3)


# ---------------------------------------------------------------- tag, models (issue 4)


# ---------------------------------------------------------------- captions (issue 5)


# ---------------------------------------------------------------- train (issue 6)


# ---------------------------------------------------------------- generate, lora (issue 6)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
