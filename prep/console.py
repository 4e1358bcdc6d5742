"""Rendering helpers for the CLI: a rich progress sink for `Reporter`, tables of dropped files.

Library code never imports this module; only cli.py and the `commands` modules do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

from prep.progress import ProgressEvent, Reporter
from prep.records import Drop


def esc(value: object) -> str:
    """User text (captions, tags, file names, messages that quote them) made inert as rich markup.

    Every interpolation of such text into a string rich parses (print, table cells, notes) goes
    through this: `[/]` would crash rich and `[blue eyes]` would vanish.
    """
    return escape(str(value))


def new_console(**options: object) -> Console:
    """A console as loraprep prints: long paths and messages stay on one line (greppable), and no
    `:name:` emoji codes, which would turn the prompt syntax `[cat:dog:0.5]` into a picture."""
    return Console(soft_wrap=True, emoji=False, **options)  # type: ignore[arg-type]


out = new_console()
err = new_console(stderr=True)


@contextlib.contextmanager
def rich_reporter(console: Console = err, *, describe_metrics: Callable[[dict], str] | None = None,
                  speed_unit: str = "it/s") -> Iterator[Reporter]:
    """A Reporter that draws each task as a rich progress bar and prints notes above it.

    Events that carry `metrics` (the trainer's step, loss, lr …) are shown beside the bar through
    `describe_metrics`, with the task's speed in `speed_unit` (e.g. images/s).
    """
    progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TextColumn("[dim]{task.fields[speed]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=False)
    tasks: dict[str, TaskID] = {}

    def sink(event: ProgressEvent) -> None:
        if event.kind == "start":
            tasks[event.label] = progress.add_task(esc(event.label), total=event.total, info="", speed="")
        elif event.kind == "advance" and event.label in tasks:
            task = tasks[event.label]
            progress.advance(task, event.advance)
            if event.metrics and describe_metrics is not None:
                speed = progress.tasks[task].speed
                progress.update(task, info=esc(describe_metrics(event.metrics)),
                                speed=f"{speed:.2f} {speed_unit}" if speed else "")
        elif event.kind == "end" and event.label in tasks:
            task = tasks.pop(event.label)
            total = progress.tasks[task].total
            if total is not None:
                progress.update(task, completed=total)
        elif event.kind == "note":
            progress.console.print(f"[cyan]•[/] {esc(event.message)}", highlight=False)

    with progress:
        yield Reporter(sink)


def dropped_table(dropped: Sequence[Drop], title: str = "Skipped files") -> Table:
    """Every file a step left out, with its reason (file names and reasons quoting them are user text)."""
    table = Table(title=f"{esc(title)} ({len(dropped)})", title_style="bold yellow", show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("step")
    table.add_column("reason", overflow="fold")
    for drop in dropped:
        table.add_row(esc(drop.path), esc(drop.step), esc(drop.reason))
    return table


def print_dropped(dropped: Sequence[Drop], console: Console = err) -> None:
    if dropped:
        console.print(dropped_table(dropped))
