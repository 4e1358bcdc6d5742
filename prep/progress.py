"""Progress events: library code reports, only the CLI draws.

Library functions take a `Reporter` (default: silent) and wrap long loops in `reporter.task(...)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

EventKind = Literal["start", "advance", "end", "note"]


@dataclass(frozen=True)
class ProgressEvent:
    kind: EventKind
    label: str = ""
    total: int | None = None
    advance: int = 0
    message: str = ""
    metrics: dict[str, float] | None = None  # e.g. the trainer's step, loss, lr (renderers may ignore it)


Sink = Callable[[ProgressEvent], None]


class Reporter:
    """Sends progress events to a sink; with no sink it is silent (tests, library use)."""

    def __init__(self, sink: Sink | None = None) -> None:
        self._sink = sink

    def emit(self, event: ProgressEvent) -> None:
        if self._sink is not None:
            self._sink(event)

    def note(self, message: str) -> None:
        """A line worth showing the user (which backend ran, what was skipped and why)."""
        self.emit(ProgressEvent("note", message=message))

    @contextlib.contextmanager
    def task(self, label: str, total: int | None) -> Iterator[Callable[..., None]]:
        self.emit(ProgressEvent("start", label=label, total=total))
        try:
            yield lambda n=1, metrics=None: self.emit(ProgressEvent("advance", label=label, advance=n,
                                                                    metrics=metrics))
        finally:
            self.emit(ProgressEvent("end", label=label))


SILENT = Reporter()
