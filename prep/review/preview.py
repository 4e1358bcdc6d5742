"""Image previews that work in any terminal: two pixels per character cell with `▀`.

The upper half-block takes the top pixel as its foreground colour and the bottom pixel as its
background, so a 40×20-cell preview shows a 40×40 thumbnail over plain SSH, no graphics protocol
needed. Only images being looked at are decoded (with JPEG draft mode), so opening a large dataset
costs nothing here. Decoding and building the cells run on a `PreviewRenderer` thread, never on the
UI thread, and finished previews are cached per image and size: moving to the next image shows its
caption at once, and its picture a moment later.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from rich.color import Color
from rich.segment import Segment
from rich.style import Style

from prep.errors import BadImage

BACKDROP = (40, 40, 40)  # transparent pixels are drawn on a dark grey, like most image viewers
BLOCK = "▀"


def thumbnail_size(size: tuple[int, int], cells: tuple[int, int]) -> tuple[int, int]:
    """The pixel size that fits `cells` (columns, rows of two pixels) keeping the aspect ratio."""
    width, height = size
    max_w, max_h = max(1, cells[0]), max(1, cells[1] * 2)
    scale = min(max_w / width, max_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def halfblock_lines(rgb: bytes, width: int, height: int) -> list[list[Segment]]:
    """Rows of `▀` segments for packed RGB bytes (row-major, `height` may be odd).

    Neighbouring cells of the same colours share one segment, and each colour pair's style is made
    once: a 140×48-cell preview costs a few milliseconds, not a UI-freezing second.
    """
    styles: dict[tuple[int, int, int, int, int, int], Style] = {}
    backdrop = bytes(BACKDROP) * width
    stride = 3 * width
    lines = []
    for y in range(0, height, 2):
        top = rgb[y * stride:(y + 1) * stride]
        bottom = rgb[(y + 1) * stride:(y + 2) * stride] if y + 1 < height else backdrop
        row: list[Segment] = []
        run_style, run = None, 0
        for x in range(0, stride, 3):
            key = (top[x], top[x + 1], top[x + 2], bottom[x], bottom[x + 1], bottom[x + 2])
            style = styles.get(key)
            if style is None:
                style = styles[key] = Style.from_color(Color.from_rgb(*key[:3]), Color.from_rgb(*key[3:]))
            if style is run_style:
                run += 1
                continue
            if run:
                row.append(Segment(BLOCK * run, run_style))
            run_style, run = style, 1
        if run:
            row.append(Segment(BLOCK * run, run_style))
        lines.append(row)
    return lines


@dataclass(frozen=True)
class Picture:
    """A finished preview: rows of segments `width` cells wide, or a line saying why there is none."""

    lines: tuple[tuple[Segment, ...], ...]
    width: int
    message: str = ""


def render_picture(path: Path, cells: tuple[int, int]) -> Picture:
    """Decode `path` and build its half-block rows fitting `cells` (any thread)."""
    from PIL import Image

    from prep.images import open_image

    try:
        image = open_image(path, flatten=BACKDROP, draft=(cells[0] * 2, cells[1] * 4))
    except (BadImage, OSError) as exc:
        message = exc.message if isinstance(exc, BadImage) else str(exc)
        return Picture((), 0, f"no preview: {message}")
    size = thumbnail_size(image.size, cells)
    thumb = image.convert("RGB").resize(size, Image.Resampling.BOX, reducing_gap=2.0)
    return Picture(tuple(tuple(line) for line in halfblock_lines(thumb.tobytes(), *size)), size[0])


class PreviewRenderer:
    """One background thread drawing previews, newest request first, with a cache.

    Only the latest request is kept (pressing `n` ten times draws one picture, not ten), then the
    images the editor expects next are drawn ahead into the cache. `deliver(key, picture)` is called
    on the renderer's thread; the editor hands it to the UI thread.
    """

    def __init__(self, deliver: Callable[[Hashable, Picture], None], capacity: int = 48) -> None:
        self._deliver = deliver
        self._capacity = capacity
        self._cache: OrderedDict[Hashable, Picture] = OrderedDict()
        self._wanted: tuple[Hashable, Path, tuple[int, int]] | None = None
        self._ahead: list[tuple[Hashable, Path, tuple[int, int]]] = []
        self._condition = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def cached(self, key: Hashable) -> Picture | None:
        with self._condition:
            picture = self._cache.get(key)
            if picture is not None:
                self._cache.move_to_end(key)
            return picture

    def request(self, key: Hashable, path: Path, cells: tuple[int, int],
                ahead: list[tuple[Hashable, Path, tuple[int, int]]] = ()) -> None:  # type: ignore[assignment]
        """Draw `path` at `cells` (replacing any request not started yet), then `ahead` into the cache."""
        with self._condition:
            self._wanted = (key, path, cells)
            self._ahead = [a for a in ahead if a[0] not in self._cache]
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="loraprep-preview", daemon=True)
                self._thread.start()
            self._condition.notify()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify()

    def _next(self) -> tuple[tuple[Hashable, Path, tuple[int, int]], bool] | None:
        with self._condition:
            while not self._stopped and self._wanted is None and not self._ahead:
                self._condition.wait()
            if self._stopped:
                return None
            if self._wanted is not None:
                job, self._wanted = self._wanted, None
                return job, True
            return self._ahead.pop(0), False

    def _run(self) -> None:
        while (found := self._next()) is not None:
            (key, path, cells), wanted = found
            picture = self.cached(key) or render_picture(path, cells)
            with self._condition:
                self._cache[key] = picture
                self._cache.move_to_end(key)
                while len(self._cache) > self._capacity:
                    self._cache.popitem(last=False)
            if wanted:
                self._deliver(key, picture)
