"""Image previews that work in any terminal: two pixels per character cell with `▀`.

The upper half-block takes the top pixel as its foreground colour and the bottom pixel as its
background, so a 40×20-cell preview shows a 40×40 thumbnail over plain SSH, no graphics protocol
needed. Only the selected image is ever decoded (with JPEG draft mode), so opening a large dataset
costs nothing here.
"""

from __future__ import annotations

from pathlib import Path

from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from prep.errors import BadImage

BACKDROP = (40, 40, 40)  # transparent pixels are drawn on a dark grey, like most image viewers


def thumbnail_size(size: tuple[int, int], cells: tuple[int, int]) -> tuple[int, int]:
    """The pixel size that fits `cells` (columns, rows of two pixels) keeping the aspect ratio."""
    width, height = size
    max_w, max_h = max(1, cells[0]), max(1, cells[1] * 2)
    scale = min(max_w / width, max_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def halfblock_lines(rgb: bytes, width: int, height: int) -> list[list[Segment]]:
    """Rows of `▀` segments for packed RGB bytes (row-major, `height` may be odd)."""
    def pixel(x: int, y: int) -> tuple[int, int, int]:
        offset = 3 * (y * width + x)
        return rgb[offset], rgb[offset + 1], rgb[offset + 2]

    lines = []
    for y in range(0, height, 2):
        row = []
        for x in range(width):
            top = pixel(x, y)
            bottom = pixel(x, y + 1) if y + 1 < height else BACKDROP
            row.append(Segment("▀", Style(color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom))))
        lines.append(row)
    return lines


def render_preview(path: Path, cells: tuple[int, int]) -> Text:
    """A half-block picture of the image fitting `cells`, or a line saying why there is none."""
    from PIL import Image

    from prep.images import open_image

    try:
        image = open_image(path, flatten=BACKDROP, draft=(cells[0] * 2, cells[1] * 4))
    except (BadImage, OSError) as exc:
        message = exc.message if isinstance(exc, BadImage) else str(exc)
        return Text(f"no preview: {message}", style="italic")
    size = thumbnail_size(image.size, cells)
    thumb = image.convert("RGB").resize(size, Image.Resampling.BOX)
    text = Text(no_wrap=True, overflow="crop")
    lines = halfblock_lines(thumb.tobytes(), *size)
    for i, line in enumerate(lines):
        for segment in line:
            text.append(segment.text, segment.style)
        if i < len(lines) - 1:
            text.append("\n")
    return text
