"""`loraprep doctor` through the real CLI: exit codes, JSON, tables with user text kept literal,
the problem sheet, --apply / --restore, manifests, and `prep`'s one-line summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from doctorsupport import make_copy
from PIL import Image
from typer.testing import CliRunner

from cli import app
from prep.images import open_image

runner = CliRunner()


@pytest.fixture()
def clean(tmp_path: Path, testdata: Path) -> Path:
    """Four distinct, sharp 512×512 pictures with distinct captions: nothing to report."""
    folder = tmp_path / "clean"
    folder.mkdir()
    shutil.copyfile(testdata / "photos/astronaut.png", folder / "astronaut.png")
    shutil.copyfile(testdata / "photos/camera.png", folder / "camera.png")
    open_image(testdata / "anime/concert1.jpg").crop((900, 300, 1412, 812)).save(folder / "concert.png")
    open_image(testdata / "anime/bg_meadow.jpg").crop((0, 100, 512, 612)).save(folder / "meadow.png")
    for n, image in enumerate(sorted(folder.glob("*.png"))):
        image.with_suffix(".txt").write_text(f"sks, picture {n}, detail{n}\n")
    return folder


@pytest.fixture()
def troubled(tmp_path: Path, testdata: Path) -> Path:
    """A duplicate, a caption and file name full of rich markup, an image its bucket upscales."""
    folder = tmp_path / "troubled"
    folder.mkdir()
    shutil.copyfile(testdata / "photos/astronaut.png", folder / "[bold]boom[blink].png")
    (folder / "[bold]boom[blink].txt").write_text("[/], [/], [blue eyes], [blue eyes], sks\n")
    make_copy(testdata, "photos/astronaut.png", "jpeg70", folder)
    shutil.copyfile(testdata / "photos/chelsea.png", folder / "chelsea.png")
    (folder / "chelsea.txt").write_text("sks, cat\n")
    return folder


def test_clean_dataset_exits_0(clean: Path) -> None:
    result = runner.invoke(app, ["doctor", str(clean)])
    assert result.exit_code == 0, result.output
    assert "no problems found in 4 images" in result.stdout


def test_json_is_one_object_with_every_section_and_exit_1(troubled: Path) -> None:
    result = runner.invoke(app, ["doctor", str(troubled), "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert {"duplicates", "blurry", "upscale", "captions", "buckets", "tiny", "aspect", "faces"} <= set(data)
    (group,) = data["duplicates"]
    assert group["kind"] == "near" and set(group["images"]) == {"[bold]boom[blink].png", "copies/astronaut-jpeg70.jpg"}
    assert group["keep"] == "[bold]boom[blink].png" and isinstance(group["distance"], int)
    assert [u["path"] for u in data["upscale"]] == ["chelsea.png"] and data["upscale"][0]["factor"] > 1
    assert any(c["kind"] == "duplicate-tag" for c in data["captions"])
    assert data["buckets"]["buckets"] and not data["clean"]


def test_clean_json_exits_0(clean: Path) -> None:
    result = runner.invoke(app, ["doctor", str(clean), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["clean"] is True


def test_tables_show_user_text_literally(troubled: Path) -> None:
    result = runner.invoke(app, ["doctor", str(troubled), "--limit", "0"])
    assert result.exit_code == 1, result.output
    assert "[bold]boom[blink].png" in result.stdout
    assert "'[blue eyes]' twice" in result.stdout
    assert "fix: loraprep doctor" in result.stdout and "--apply" in result.stdout


def test_sheet_draws_the_duplicate_group_side_by_side(troubled: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "problems.png"
    result = runner.invoke(app, ["doctor", str(troubled), "--sheet", str(sheet)])
    assert result.exit_code == 1 and sheet.is_file()
    with Image.open(sheet) as image:
        assert image.width >= 2 * 192 and image.height > 192  # a group of two side by side, then more bands


def test_apply_then_restore(troubled: Path) -> None:
    applied = runner.invoke(app, ["doctor", str(troubled), "--apply"])
    assert applied.exit_code == 1, applied.output  # the findings are reported; the copy was set aside
    assert "moved 1 image(s)" in applied.stdout and "--restore" in applied.stdout
    assert not (troubled / "copies/astronaut-jpeg70.jpg").exists()
    assert (troubled / ".loraprep/quarantine/000001/copies/astronaut-jpeg70.jpg").is_file()
    restored = runner.invoke(app, ["doctor", str(troubled), "--restore"])
    assert restored.exit_code == 0, restored.output
    assert "restored 1 file(s)" in restored.stdout
    assert (troubled / "copies/astronaut-jpeg70.jpg").is_file()


def test_manifest_input_and_stale_manifest_note(troubled: Path) -> None:
    made = runner.invoke(app, ["manifest", str(troubled), "--allow-empty-captions"])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["doctor", str(troubled / "manifest.json"), "--json"])
    assert json.loads(result.stdout)["source"] == "manifest"
    applied = runner.invoke(app, ["doctor", str(troubled), "--apply"])
    assert "rebuild it with" in applied.stdout


@pytest.mark.parametrize(("make", "said"), [
    (lambda folder: folder / "nowhere", "neither a dataset folder nor a manifest"),
    (lambda folder: folder, "no images in"),
])
def test_no_dataset_is_a_usage_error(tmp_path: Path, make, said: str) -> None:
    result = runner.invoke(app, ["doctor", str(make(tmp_path))])
    assert result.exit_code == 2 and said in result.output


def test_prep_ends_with_a_doctor_summary(tmp_path: Path, testdata: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("astronaut.png", "camera.png"):
        shutil.copyfile(testdata / "photos" / name, raw / name)
    make_copy(testdata, "photos/astronaut.png", "jpeg70", raw)
    result = runner.invoke(app, ["prep", str(raw), "--out", str(tmp_path / "ds"), "--no-crop", "--no-tag",
                                 "--no-clean", "--trigger", "sks"])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("doctor:")]
    assert "1 duplicate group (1 extra)" in line and f"loraprep doctor {tmp_path / 'ds'}" in line
