"""Run a step over many items: order kept, bad items reported with a reason, the rest finished."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from prep.errors import LoraprepError, is_disk_error
from prep.progress import SILENT, Reporter
from prep.records import Drop

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class StepResult(Generic[R]):
    """What a step produced, and what it had to leave out (each with its reason)."""

    done: list[R] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.dropped

    @property
    def exit_code(self) -> int:
        """0 when every file succeeded, 1 when some were skipped (the CLI's documented contract)."""
        return 0 if self.ok else 1


def run_step(items: Sequence[T], fn: Callable[[T], R], *, step: str, name: Callable[[T], str],
             reporter: Reporter = SILENT, label: str | None = None, workers: int = 1) -> StepResult[R]:
    """Apply `fn` to every item, in order. A `LoraprepError` or OSError drops that item only; a
    full or read-only disk (`prep.errors.is_disk_error`) ends the run with that error.

    `workers > 1` runs `fn` in a thread pool (decoders and onnxruntime release the GIL).
    """
    result: StepResult[R] = StepResult()

    def guarded(item: T) -> R | Drop:
        try:
            return fn(item)
        except LoraprepError as exc:
            return Drop(name(item), step, getattr(exc, "reason", None) or exc.message)
        except OSError as exc:
            if is_disk_error(exc):  # a full or read-only disk fails every item: stop, say it once
                raise
            return Drop(name(item), step, f"{type(exc).__name__}: {exc.strerror or exc}")

    with reporter.task(label or step, len(items)) as advance:
        outputs: Iterable[R | Drop]
        if workers > 1 and len(items) > 1:
            pool = ThreadPoolExecutor(max_workers=workers)
            outputs = pool.map(guarded, items)
        else:
            pool = None
            outputs = map(guarded, items)
        try:
            for output in outputs:
                if isinstance(output, Drop):
                    result.dropped.append(output)
                else:
                    result.done.append(output)
                advance(1)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    return result
