"""Contact sheets: people judge crops by looking, so show many at once with what the steps decided.

Each cell is a thumbnail with the face boxes (green) and, for a crop whose source can still be
found, the source image with the crop box (orange) drawn on it; under it the file name, its size
and bucket, how it was cropped, and the first caption tags.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from prep.buckets import BucketPlan
from prep.errors import UsageError
from prep.images import DEFAULT_MAX_PIXELS, flatten_alpha, open_image, read_info, save_image_atomic
from prep.progress import SILENT, Reporter
from prep.records import DEFAULT_CAPTION_EXTENSION, Box, Drop
from prep.runner import StepResult, run_step
from prep.sidecars import caption_path, read_caption, read_meta
from prep.tags import split_tags

FACE_COLOUR = (40, 220, 60)
CROP_COLOUR = (255, 140, 0)
LABEL_LINES = 4


@dataclass(frozen=True)
class SheetOptions:
    columns: int = 6
    thumb: int = 256
    show_source: bool = True  # crops: draw the source with the crop box instead of the crop alone
    tags: int = 3
    bucket_resolution: int = 512
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def check(self) -> SheetOptions:
        if self.columns < 1 or self.thumb < 32:
            raise UsageError("--columns must be ≥ 1 and --thumb ≥ 32")
        return self


@dataclass(frozen=True)
class SheetCell:
    """One thumbnail: the picture, boxes in its own pixels with their colours, and label lines."""

    image: Image.Image
    boxes: tuple[tuple[Box, tuple[int, int, int]], ...] = ()
    lines: tuple[str, ...] = field(default_factory=tuple)


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` px (its fixed bitmap font where Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def thumbnail(cell: SheetCell, size: int) -> Image.Image:
    """The cell's picture fitted in size×size (centred on grey) with its boxes drawn, scaled."""
    picture = flatten_alpha(cell.image).convert("RGB")
    scale = min(size / picture.width, size / picture.height)
    shown = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                           Image.Resampling.BILINEAR)
    tile = Image.new("RGB", (size, size), (48, 48, 48))
    left, top = (size - shown.width) // 2, (size - shown.height) // 2
    tile.paste(shown, (left, top))
    draw = ImageDraw.Draw(tile)
    for box, colour in cell.boxes:
        x0, y0 = left + box[0] * scale, top + box[1] * scale
        x1, y1 = left + box[2] * scale - 1, top + box[3] * scale - 1
        draw.rectangle((x0, y0, max(x0, x1), max(y0, y1)), outline=colour, width=2)
    return tile


_CONTROL = {code: "?" for code in (*range(0x20), 0x7f)} | {ord("\t"): " ", ord("\n"): "\\n", ord("\r"): "\\r"}


def one_line(text: str) -> str:
    """`text` as one drawable line: a line break in a caption or a file name shows as `\\n` (PIL
    cannot measure text that spans lines, and a label must say the break is there)."""
    return text.replace("\r\n", "\n").translate(_CONTROL)


def wrap_label(text: str, fits: Callable[[str], bool]) -> list[str]:
    """`text` broken into lines that each `fits`: at spaces where it can, then after a '+', '/',
    '_' or '-', and inside a word only when nothing else fits. No character is dropped."""
    lines: list[str] = []
    line = ""
    for word in re.findall(r"\S+\s*", text):
        if fits(line + word.rstrip()):
            line += word
            continue
        if line.strip():
            lines.append(line.rstrip())
        line = ""
        for piece in re.findall(r"[^+/_-]*[+/_-]|[^+/_-]+", word):
            while not fits(line + piece.rstrip()):
                if line:
                    lines.append(line.rstrip())
                    line = ""
                    continue
                cut = max(1, max((n for n in range(1, len(piece) + 1) if fits(piece[:n])), default=1))
                lines.append(piece[:cut])
                piece = piece[cut:]
            line += piece
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def render_sheet(cells: Sequence[SheetCell], columns: int = 6, thumb: int = 256) -> Image.Image:
    """A grid of thumbnails with their labels underneath, wrapped to the thumbnail's width (every
    row of labels as tall as the longest one needs: nothing is cut)."""
    font_size = max(10, thumb // 18)
    font = label_font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def fits(text: str) -> bool:
        return measure.textlength(text, font=font) <= thumb - 4

    labels = [[part for line in cell.lines[:LABEL_LINES] for part in wrap_label(one_line(line), fits)]
              for cell in cells]
    line_height = font_size + 3
    label_height = max([LABEL_LINES, *(len(lines) for lines in labels)]) * line_height + 4
    columns = max(1, min(columns, len(cells) or 1))
    rows = max(1, math.ceil(len(cells) / columns))
    gap = 6
    sheet = Image.new("RGB", (columns * (thumb + gap) + gap, rows * (thumb + label_height + gap) + gap), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for index, (cell, lines) in enumerate(zip(cells, labels, strict=True)):
        x = gap + (index % columns) * (thumb + gap)
        y = gap + (index // columns) * (thumb + label_height + gap)
        sheet.paste(thumbnail(cell, thumb), (x, y))
        for line_no, line in enumerate(lines):
            draw.text((x + 2, y + thumb + 2 + line_no * line_height), line, fill=(230, 230, 230), font=font)
    return sheet


def cell_for(path: Path, root: Path, options: SheetOptions, plan: BucketPlan) -> SheetCell:
    """The cell for one image; a crop's `source.path` is resolved against `root` (the crop output)."""
    meta = read_meta(path)
    faces = [tuple(int(v) for v in f["box"]) for f in meta.get("faces") or [] if "box" in f]
    crop = meta.get("crop") or {}
    source = meta.get("source") or {}
    image = open_image(path, max_pixels=options.max_pixels, draft=(options.thumb, options.thumb))
    info = read_info(path, max_pixels=options.max_pixels)
    scale = image.width / info.width
    boxes: list[tuple[Box, tuple[int, int, int]]] = [
        (tuple(round(v * scale) for v in f), FACE_COLOUR) for f in faces]  # type: ignore[misc]
    box = source.get("box")
    source_file = (root / source["path"]) if source.get("path") else None
    if options.show_source and box and source_file is not None and source_file.is_file():
        try:
            original = open_image(source_file, max_pixels=options.max_pixels, draft=(options.thumb, options.thumb))
            src_info = read_info(source_file, max_pixels=options.max_pixels)
        except Exception:  # an unreadable source only costs the overlay, not the cell
            original = None
        if original is not None:
            s = original.width / src_info.width
            boxes = [((round((f[0] + box[0]) * s), round((f[1] + box[1]) * s),
                       round((f[2] + box[0]) * s), round((f[3] + box[1]) * s)), FACE_COLOUR) for f in faces]
            boxes.append(((round(box[0] * s), round(box[1] * s), round(box[2] * s), round(box[3] * s)), CROP_COLOUR))
            image, (dx, dy) = _padded_view(original, box, s)
            boxes = [((b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy), c) for b, c in boxes]
    bucket = plan.assign(info.size)
    caption = read_caption(caption_path(path, options.caption_extension)) or ""
    lines = [path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name,
             f"{info.width}x{info.height} -> bucket {bucket[0]}x{bucket[1]}"]
    if crop:
        lines.append(f"{crop.get('preset', '?')}, {crop.get('fit', '')}, {crop.get('detector', '')}"
                     + (", upscale" if crop.get("upscale") else ""))
    elif "faces" in meta:
        lines.append(f"{len(faces)} face(s)")
    tags = split_tags(caption)[:options.tags]
    lines.append(", ".join(tags) if tags else "(no caption)")
    return SheetCell(image, tuple(boxes), tuple(lines))


def _padded_view(image: Image.Image, box: Sequence[int], scale: float) -> tuple[Image.Image, tuple[int, int]]:
    """The source thumbnail, grown with grey where a padded crop box reaches outside it."""
    left = max(0, -round(box[0] * scale))
    top = max(0, -round(box[1] * scale))
    right = max(0, round(box[2] * scale) - image.width)
    bottom = max(0, round(box[3] * scale) - image.height)
    if not (left or top or right or bottom):
        return image, (0, 0)
    canvas = Image.new("RGB", (image.width + left + right, image.height + top + bottom), (96, 96, 96))
    canvas.paste(flatten_alpha(image), (left, top))
    return canvas, (left, top)


def sheet_folder(folder: Path, out: Path, options: SheetOptions = SheetOptions(),
                 reporter: Reporter = SILENT) -> StepResult[Path]:
    """Write a contact sheet of every image under `folder` to `out` (PNG or JPEG by extension)."""
    from prep.scan import walk_images

    folder, out = Path(folder), Path(out)
    options = options.check()
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    problems: list[Drop] = []
    paths = [p for p in walk_images(folder, problems) if p.resolve() != out.resolve()]
    plan = BucketPlan(resolution=(options.bucket_resolution,) * 2,
                      max_size=max(1024, options.bucket_resolution * 2))
    cells = run_step(paths, lambda p: cell_for(p, folder, options, plan), step="sheet", name=str,
                     reporter=reporter, label="contact sheet")
    if not cells.done:
        raise UsageError(f"no readable images under {folder}")
    save_image_atomic(render_sheet(cells.done, options.columns, options.thumb), out)
    return StepResult(done=[out], dropped=problems + cells.dropped)
