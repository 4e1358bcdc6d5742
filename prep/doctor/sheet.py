"""`doctor --sheet`: the problem images on one contact sheet, to judge them by eye.

One band per problem: a duplicate group's members side by side (the copy to keep first), the
images sharing one caption side by side, then the blurry, tiny, upscaled, elongated, face-less
images in rows. Thumbnails and labels are drawn by `prep.sheet.render_sheet`, band by band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from prep.doctor.report import DoctorReport, Finding
from prep.errors import LoraprepError
from prep.images import DEFAULT_MAX_PIXELS, open_image, read_info, save_image_atomic
from prep.progress import SILENT, Reporter
from prep.sheet import SheetCell, label_font, one_line, render_sheet

BACKGROUND = (24, 24, 24)
TITLE_COLOUR = (255, 200, 80)
# Sections shown as one band per finding (a group side by side) vs. many findings per band.
GROUPED_KINDS = ("exact-duplicate", "near-duplicate", "identical-captions", "shared-sidecar")
ROW_KINDS = ("blurry", "low-detail", "too-small-to-judge", "tiny", "upscale", "aspect", "no-face", "small-crop",
             "single-image-bucket")
TITLES = {"blurry": "blurry", "low-detail": "low detail", "too-small-to-judge": "too small to judge", "tiny": "tiny",
          "upscale": "upscaled by its bucket", "aspect": "extreme aspect ratio", "no-face": "no face found", "small-crop": "crop below --min-size",
          "single-image-bucket": "alone in its bucket"}


@dataclass(frozen=True)
class SheetOptions:
    thumb: int = 192
    columns: int = 8
    max_bands: int = 80     # a sheet of a huge dataset stays a viewable image
    max_pixels: int | None = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Band:
    title: str
    cells: tuple[tuple[str, tuple[str, ...]], ...]  # (image path, label lines)


# The bundled font has no glyph for these: draw them as ASCII.
_ASCII = str.maketrans({"×": "x", "–": "-", "—": "-", "…": "...", "≈": "~", "→": "->"})


def bands(report: DoctorReport, columns: int) -> list[Band]:
    """The sheet's bands, in the report's order."""
    found: list[Band] = []
    for finding in report.findings:
        if finding.kind in GROUPED_KINDS:
            found.append(Band(finding.message, tuple(_group_cells(finding))[:columns * 2]))
    for kind in ROW_KINDS:
        same = [f for f in report.findings if f.kind == kind]
        for start in range(0, len(same), columns):
            part = same[start:start + columns]
            found.append(Band(f"{TITLES[kind]} ({start + 1}–{start + len(part)} of {len(same)})",
                              tuple((f.paths[0], (f.paths[0], f.message)) for f in part)))
    return found


def _group_cells(finding: Finding) -> list[tuple[str, tuple[str, ...]]]:
    if finding.section == "duplicates":
        return [(path, ("keep" if i == 0 else "copy", path)) for i, path in enumerate(finding.paths)]
    return [(path, (path,)) for path in finding.paths]


def _cell(root: Path, path: str, lines: tuple[str, ...], thumb: int, max_pixels: int | None) -> SheetCell:
    try:
        image = open_image(root / path, max_pixels=max_pixels, draft=(thumb, thumb))
        info = read_info(root / path, max_pixels=max_pixels)
        size = f"{info.width}×{info.height}"
    except (LoraprepError, OSError):
        image, size = Image.new("RGB", (thumb, thumb), (90, 40, 40)), "unreadable"
    return SheetCell(image, (), tuple(line.translate(_ASCII) for line in (*lines, size)[:4]))


def _band_image(band: Band, root: Path, options: SheetOptions) -> Image.Image:
    cells = [_cell(root, path, lines, options.thumb, options.max_pixels) for path, lines in band.cells]
    grid = render_sheet(cells, columns=min(options.columns, len(cells)), thumb=options.thumb)
    font = label_font(max(12, options.thumb // 14))
    title = one_line(band.title).translate(_ASCII)
    width = max(grid.width, int(ImageDraw.Draw(grid).textlength(title, font=font)) + 12)
    header = max(12, options.thumb // 14) + 10
    image = Image.new("RGB", (width, grid.height + header), BACKGROUND)
    ImageDraw.Draw(image).text((6, 4), title, fill=TITLE_COLOUR, font=font)
    image.paste(grid, (0, header))
    return image


def stack(images: Sequence[Image.Image]) -> Image.Image:
    width = max((i.width for i in images), default=320)
    sheet = Image.new("RGB", (width, sum(i.height for i in images) or 80), BACKGROUND)
    y = 0
    for image in images:
        sheet.paste(image, (0, y))
        y += image.height
    return sheet


def problem_sheet(report: DoctorReport, out: str | Path, options: SheetOptions = SheetOptions(),
                  reporter: Reporter = SILENT) -> Path:
    """Draw the problem images of `report` into `out` (PNG or JPEG by extension); returns `out`.

    A clean report gives a small sheet that says so."""
    out = Path(out)
    chosen = bands(report, options.columns)
    shown = chosen[:options.max_bands]
    images = []
    with reporter.task("drawing the problem sheet", len(shown)) as advance:
        for band in shown:
            images.append(_band_image(band, report.root, options))
            advance(1)
    if len(chosen) > len(shown):
        reporter.note(f"the sheet shows the first {len(shown)} of {len(chosen)} problem bands")
    if not images:
        empty = Image.new("RGB", (480, 60), BACKGROUND)
        ImageDraw.Draw(empty).text((10, 20), "no problem images", fill=TITLE_COLOUR, font=label_font(16))
        images = [empty]
    save_image_atomic(stack(images), out)
    return out
