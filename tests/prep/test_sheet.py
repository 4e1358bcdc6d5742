"""`loraprep sheet`: a contact sheet with face boxes, crop boxes, buckets and first caption tags."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from cli import app
from prep.buckets import BucketPlan
from prep.crop import CropOptions, crop_folder
from prep.faces import YuNetDetector
from prep.sheet import CROP_COLOUR, FACE_COLOUR, SheetCell, SheetOptions, cell_for, render_sheet, sheet_folder, thumbnail
from prep.sidecars import caption_path, write_caption


@pytest.fixture()
def crops(testdata, yunet_model, tmp_path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("photos/astronaut.png", "photos/coffee.png", "anime/lucy_happy.png"):
        shutil.copy(testdata / name, raw / Path(name).name)
    write_caption(caption_path(raw / "astronaut.png"), "sks woman, smile, spacesuit, flag, helmet")
    crop_folder(raw, tmp_path / "crops", CropOptions(presets=("face",)), detector=YuNetDetector(yunet_model))
    return tmp_path / "crops"


def test_thumbnail_draws_a_box_where_it_is_in_the_scaled_picture():
    cell = SheetCell(Image.new("RGB", (512, 256), (0, 0, 0)), (((100, 50, 300, 150), FACE_COLOUR),))
    tile = np.asarray(thumbnail(cell, 256))  # scale 0.5, centred vertically: 64 px above
    assert tuple(tile[64 + 50, 50]) == FACE_COLOUR and tuple(tile[64 + 50, 100]) == (0, 0, 0)


def test_crop_cell_shows_the_source_with_crop_box_and_face(crops):
    cell = cell_for(crops / "astronaut-face.png", crops, SheetOptions(), BucketPlan())
    colours = [colour for _, colour in cell.boxes]
    assert colours.count(CROP_COLOUR) == 1 and colours.count(FACE_COLOUR) == 1
    (crop_box,) = [b for b, c in cell.boxes if c == CROP_COLOUR]
    (face_box,) = [b for b, c in cell.boxes if c == FACE_COLOUR]
    assert crop_box[0] <= face_box[0] and face_box[2] <= crop_box[2] and cell.image.size == (512, 512)


def test_cell_labels_show_size_bucket_preset_and_first_tags(crops):
    cell = cell_for(crops / "astronaut-face.png", crops, SheetOptions(tags=3), BucketPlan())
    assert "bucket 512x512" in cell.lines[1]
    assert cell.lines[2].startswith("face")
    assert cell.lines[3] == "sks woman, smile, spacesuit"


def test_crops_only_shows_the_crop_itself(crops):
    cell = cell_for(crops / "astronaut-face.png", crops, SheetOptions(show_source=False), BucketPlan())
    assert [c for _, c in cell.boxes] == [FACE_COLOUR] and cell.image.size != (512, 512)


@pytest.mark.parametrize(("count", "columns", "grid"), [(1, 6, (1, 1)), (3, 2, (2, 2)), (7, 3, (3, 3))])
def test_sheet_grid_has_room_for_every_cell(count, columns, grid):
    cells = [SheetCell(Image.new("RGB", (64, 64)), (), ("x",))] * count
    sheet = render_sheet(cells, columns=columns, thumb=64)
    single = render_sheet(cells[:1], columns=1, thumb=64)
    assert sheet.width == grid[0] * (single.width - 6) + 6 and sheet.height == grid[1] * (single.height - 6) + 6


def test_sheet_folder_writes_one_image_and_reports_unreadable_files(crops, tmp_path):
    (crops / "broken.png").write_bytes(b"")
    result = sheet_folder(crops, tmp_path / "sheet.png", SheetOptions(columns=2, thumb=128))
    assert result.done == [tmp_path / "sheet.png"] and Image.open(tmp_path / "sheet.png").size[0] > 2 * 128
    assert [Path(d.path).name for d in result.dropped] == ["broken.png"]


def test_cli_sheet_writes_the_sheet(crops, tmp_path):
    result = CliRunner().invoke(app, ["sheet", str(crops), "--out", str(tmp_path / "s.jpg"), "--thumb", "96"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "s.jpg").format == "JPEG"


# ---- labels are wrapped, never cut (issue 16 §5)

@pytest.mark.parametrize(("text", "lines"), [
    ("face, exact, yunet+anime-cascade+libfacedetection", ["face, exact,", "yunet+anime-", "cascade+", "libfacedetec", "tion"]),
    ("raw/10_sks woman/astronaut-face.png", ["raw/10_sks", "woman/", "astronaut-", "face.png"]),
    ("512x512 -> bucket 512x512", ["512x512 ->", "bucket", "512x512"]),
    ("short", ["short"]),
    ("", [""]),
])
def test_labels_wrap_at_spaces_then_separators_and_lose_no_character(text, lines):
    from prep.sheet import wrap_label

    assert wrap_label(text, lambda line: len(line) <= 12) == lines


def test_a_long_detector_label_wraps_within_the_thumbnail_and_the_sheet_grows_to_show_it():
    from prep.sheet import label_font, wrap_label

    label = "face, exact, yunet+anime-cascade+libfacedetection, upscale"
    short = render_sheet([SheetCell(Image.new("RGB", (64, 64)), (), ("a", "b", "c", "d"))], thumb=96)
    long = render_sheet([SheetCell(Image.new("RGB", (64, 64)), (), ("a", "b", label, "d"))], thumb=96)
    font = label_font(10)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = wrap_label(label, lambda line: measure.textlength(line, font=font) <= 92)
    assert len(wrapped) > 1 and all(measure.textlength(line, font=font) <= 92 for line in wrapped)
    assert long.height == short.height + (len(wrapped) - 1) * 13 and long.width == short.width
