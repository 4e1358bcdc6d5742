"""What every command module shares: the one error rule (`guard`), JSON output, the exit-code
contract for skipped files, and the option types several command groups spell the same way.

A command module holds its own `typer.Typer` (named for a group such as `lora`, unnamed for top-level
commands) and imports from here; cli.py assembles them. Nothing here imports a heavy library.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from prep.console import err, esc, print_dropped
from prep.errors import LoraprepError, from_os_error

F = TypeVar("F", bound=Callable[..., Any])


def guard(fn: F) -> F:
    """Render a LoraprepError once, with its hint, and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (LoraprepError, OSError) as caught:  # a full or read-only disk too: one line, no traceback
            exc = caught if isinstance(caught, LoraprepError) else from_os_error(caught)
            err.print(f"[bold red]error:[/] {esc(exc.message)}", highlight=False)
            if exc.hint:
                err.print(f"[yellow]hint:[/] {esc(exc.hint)}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def shorten(text: str, width: int) -> str:
    """One table cell's worth of a long caption."""
    return text if len(text) < width else text[:width - 3] + "…"


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    typer.echo(json.dumps(data, indent=1, ensure_ascii=False))


def sweep_leftovers(folder: Path | None) -> None:
    """Before a command writes into `folder`: remove the temporaries killed loraprep runs left there
    (only our own `.NAME.lp<pid>.*.tmp`, of processes no longer running) and say so."""
    from prep import atomic

    if folder is not None and folder.is_dir() and (note := atomic.sweep_leftovers(folder)):
        err.print(f"[cyan]•[/] {esc(note)}", highlight=False)


def finish(dropped: list, *, quiet: bool = False) -> None:
    """Show skipped files and exit 1 when there were any (documented exit-code contract)."""
    if not quiet:
        print_dropped(dropped)
    if dropped:
        raise typer.Exit(1)


def parse_resolution(text: str) -> tuple[int, int]:
    """'512' → (512, 512); '768x512' → (768, 512)."""
    from prep.errors import UsageError

    try:
        parts = [int(p) for p in text.lower().replace("×", "x").split("x")]
    except ValueError:
        raise UsageError(f"cannot read resolution '{text}'", hint="use 512, 1024 or WIDTHxHEIGHT") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise UsageError(f"cannot read resolution '{text}'", hint="use 512, 1024 or WIDTHxHEIGHT")
    return parts[0], parts[1]


def split_option(values: list[str] | None) -> tuple[str, ...]:
    """Repeatable options that also accept comma-separated lists: `--exclude a,b --exclude c`."""
    return tuple(piece.strip() for value in values or [] for piece in value.split(",") if piece.strip())


# Option types several command groups share, spelled once.
CaptionExt = Annotated[str, typer.Option("--caption-extension", help="Caption sidecar extension, used end to end.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", help="Refuse images above this many pixels (decompression-bomb guard).")]
OverwriteCaptions = Annotated[bool, typer.Option(
    "--overwrite-captions",
    help="Re-running into an existing dataset: also replace crop captions edited since crop wrote them with "
         "the source's caption (journalled: `loraprep captions undo` restores them). Default: keep them and say which.")]
Tokenizer = Annotated[Optional[Path], typer.Option(
    "--tokenizer", help="A CLIP `tokenizer/` folder (vocab.json + merges.txt) to count tokens with.")]


# issue 24: Hugging Face datasets as input to `scan`, `manifest` and `prep` (the options they share and
# the one call that unpacks such a source into a folder of images and caption sidecars)
ImageColumn = Annotated[str, typer.Option("--image-column", help="Hugging Face dataset input: the column holding the images (diffusers' --image_column).", rich_help_panel="Hugging Face dataset input")]
CaptionColumn = Annotated[str, typer.Option("--caption-column", help="Hugging Face dataset input: the column holding the captions (diffusers' --caption_column).", rich_help_panel="Hugging Face dataset input")]
UnpackTo = Annotated[Optional[Path], typer.Option("--unpack-to", help="Hugging Face dataset input: folder its rows are unpacked into as images + .txt captions (default: beside it, NAME-images; a Hub name: owner--name here).", rich_help_panel="Hugging Face dataset input")]


def dataset_input(src: Path, unpack_to: Optional[Path], image_column: str, caption_column: str) -> tuple[Path, list]:
    """The folder a command works on, and rows left out: `src` itself for an ordinary folder; for a
    Hugging Face dataset (save_to_disk, imagefolder or parquet folder, Hub name) the folder its rows
    were unpacked into."""
    from prep.console import rich_reporter
    from prep.hfdataset import dataset_source, default_unpack_folder, unpack

    source = dataset_source(src)
    if source is None:
        return src, []
    folder = unpack_to or default_unpack_folder(source)
    with rich_reporter() as reporter:
        result = unpack(source, folder, image_column=image_column, caption_column=caption_column, reporter=reporter)
    note = (f"{source.kind} dataset {src}: {result.written} row(s) written, {result.unchanged} already there, "
            f"{len(result.dropped)} skipped → {folder}")
    err.print(f"[cyan]•[/] {esc(note)}", highlight=False)
    return folder, result.dropped
