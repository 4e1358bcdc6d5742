"""Re-running `crop`/`prep` into an existing dataset never loses a crop caption edited since crop
wrote it: it is kept and named; `--overwrite-captions` replaces it through the journal (undoable)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from prep.sidecars import caption_path, write_caption

runner = CliRunner()
HAND_EDIT = b"sks woman, smile, spacesuit, red lips  \r\n"  # odd bytes on purpose: undo must restore them exactly


@pytest.fixture()
def cropped(models_with_yunet, testdata, tmp_path) -> tuple[Path, Path]:
    """raw/astronaut.png with a caption, cropped once into ds/ (its crop is ds/astronaut-face.png)."""
    raw, ds = tmp_path / "raw", tmp_path / "ds"
    raw.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", raw / "astronaut.png")
    write_caption(caption_path(raw / "astronaut.png"), "sks woman, smile, spacesuit")
    result = runner.invoke(app, crop_args(raw, ds))
    assert result.exit_code == 0, result.output
    assert (ds / "astronaut-face.txt").read_bytes() == b"sks woman, smile, spacesuit\n"
    return raw, ds


def crop_args(raw: Path, ds: Path, *extra: str) -> list[str]:
    return ["crop", str(raw), "--out", str(ds), "--detector", "yunet", "--workers", "1", *extra]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("extra", [[], ["--force"]], ids=["reused-crop", "re-cut-crop"])
def test_rerun_keeps_a_hand_edited_crop_caption_and_names_it(cropped, extra) -> None:
    raw, ds = cropped
    (ds / "astronaut-face.txt").write_bytes(HAND_EDIT)
    write_caption(caption_path(raw / "astronaut.png"), "sks woman, helmet")  # the source changes too
    result = runner.invoke(app, crop_args(raw, ds, *extra))
    assert result.exit_code == 0, result.output
    assert (ds / "astronaut-face.txt").read_bytes() == HAND_EDIT
    flat = _flat(result.output)
    assert "1 caption(s)" in flat and "edited since crop wrote them" in flat
    assert "astronaut-face.txt" in flat and "--overwrite-captions" in flat
    assert not (ds / ".loraprep" / "journal").exists()  # nothing was replaced, so nothing to undo


def test_an_unedited_crop_caption_still_follows_its_source(cropped) -> None:
    raw, ds = cropped
    write_caption(caption_path(raw / "astronaut.png"), "sks woman, helmet")
    result = runner.invoke(app, crop_args(raw, ds))
    assert result.exit_code == 0, result.output
    assert (ds / "astronaut-face.txt").read_bytes() == b"sks woman, helmet\n"
    assert "edited since crop wrote them" not in _flat(result.output)


def test_overwrite_captions_replaces_the_edit_and_captions_undo_restores_it(cropped) -> None:
    raw, ds = cropped
    (ds / "astronaut-face.txt").write_bytes(HAND_EDIT)
    result = runner.invoke(app, crop_args(raw, ds, "--overwrite-captions"))
    assert result.exit_code == 0, result.output
    assert (ds / "astronaut-face.txt").read_bytes() == b"sks woman, smile, spacesuit\n"
    assert "captions undo" in _flat(result.output)
    undone = runner.invoke(app, ["captions", "undo", str(ds)])
    assert undone.exit_code == 0, undone.output
    assert (ds / "astronaut-face.txt").read_bytes() == HAND_EDIT
    # the restored edit is again someone else's text: a plain re-run keeps it
    again = runner.invoke(app, crop_args(raw, ds))
    assert again.exit_code == 0 and (ds / "astronaut-face.txt").read_bytes() == HAND_EDIT


def test_prep_rerun_keeps_a_hand_edited_crop_caption(cropped, tmp_path) -> None:
    raw, _ = cropped
    ds = tmp_path / "prepped"
    args = ["prep", str(raw), "--out", str(ds), "--detector", "yunet", "--no-tag", "--no-clean"]
    assert runner.invoke(app, args).exit_code == 0
    (ds / "astronaut-face.txt").write_bytes(HAND_EDIT)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (ds / "astronaut-face.txt").read_bytes() == HAND_EDIT
    assert "astronaut-face.txt" in _flat(result.output) and "--overwrite-captions" in _flat(result.output)


def test_prep_without_crop_keeps_an_edited_caption_when_its_source_image_changes(testdata, tmp_path) -> None:
    raw, ds = tmp_path / "raw", tmp_path / "ds"
    raw.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", raw / "a.png")
    write_caption(caption_path(raw / "a.png"), "sks woman, smile")
    args = ["prep", str(raw), "--out", str(ds), "--no-crop", "--no-tag", "--no-clean"]
    assert runner.invoke(app, args).exit_code == 0
    (ds / "a.txt").write_bytes(HAND_EDIT)
    shutil.copy(testdata / "photos/camera.png", raw / "a.png")  # a new picture: the copy is made again
    kept = runner.invoke(app, args)
    assert kept.exit_code == 0, kept.output
    assert (ds / "a.txt").read_bytes() == HAND_EDIT and "a.txt" in _flat(kept.output)
    replaced = runner.invoke(app, [*args, "--overwrite-captions"])
    assert replaced.exit_code == 0, replaced.output
    assert (ds / "a.txt").read_bytes() == b"sks woman, smile\n"
    assert runner.invoke(app, ["captions", "undo", str(ds)]).exit_code == 0
    assert (ds / "a.txt").read_bytes() == HAND_EDIT
