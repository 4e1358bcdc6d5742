"""Ordinary mistakes and a failing disk end in one line naming the file and what to do, never a
traceback, and leave nothing half-applied.

Disk faults are real (see fstree): a file size limit gives EFBIG in this process, and a tmpfs
(ENOSPC) or a read-only bind mount (EROFS) in a user namespace gives the others.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from fstree import file_size_limit, needs_namespaces, run_on_faulty_disk, tree_hashes
from PIL import Image
from typer.testing import CliRunner

from cli import app
from prep.atomic import write_text_atomic
from prep.errors import from_os_error

runner = CliRunner()
LONG = "x" * 246 + ".png"  # 250 bytes: legal, but its `.loraprep.json` sidecar would not be


def _clean_exit(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.fixture()
def ds(tmp_path: Path, testdata: Path) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    Image.open(testdata / "photos/astronaut.png").convert("RGB").resize((256, 256)).save(folder / "a.png")
    Image.open(testdata / "photos/coffee.png").convert("RGB").resize((320, 240)).save(folder / "b.png")
    (folder / "a.txt").write_text("sks, woman\n")
    (folder / "b.txt").write_text("sks, cup\n")
    return folder


# ---------------------------------------------------------------- long file names


@pytest.mark.parametrize("name", ["x" * 255, "é" * 127, "画" * 85, os.fsdecode(b"\xff" * 200 + b".txt")],
                         ids=["255-ascii", "254-two-byte", "255-three-byte", "undecodable"])
def test_a_file_of_any_legal_name_is_written_atomically(tmp_path: Path, name: str) -> None:
    write_text_atomic(tmp_path / name, "ok\n")
    assert (tmp_path / name).read_text() == "ok\n"
    assert os.listdir(tmp_path) == [name]  # its temporary fitted, and is gone


def test_captions_add_on_a_250_byte_name_is_applied_whole_and_undone_whole(ds: Path, testdata: Path) -> None:
    shutil.copy(ds / "a.png", ds / LONG)
    (ds / LONG).with_suffix(".txt").write_text("long, name\n")
    before = tree_hashes(ds)
    _clean_exit(runner.invoke(app, ["captions", "add", str(ds), "extra"]), 0)
    assert (ds / LONG).with_suffix(".txt").read_text() == "long, name, extra\n"
    assert (ds / "b.txt").read_text() == "sks, cup, extra\n"
    _clean_exit(runner.invoke(app, ["captions", "undo", str(ds)]), 0)
    assert {k: v for k, v in tree_hashes(ds).items() if not k.startswith(".loraprep")} == before


def test_a_caption_name_too_long_to_exist_refuses_the_whole_edit_before_the_first_write(ds: Path) -> None:
    long = "y" * 250 + ".png"  # 254 bytes; its `.caption` sidecar would be 258
    shutil.copy(ds / "a.png", ds / long)
    before = tree_hashes(ds)
    flat = _clean_exit(runner.invoke(app, ["captions", "add", str(ds), "extra", "--caption-extension", ".caption"]))
    assert "longer than the file system's 255-byte limit" in flat and "nothing was written" in flat
    assert tree_hashes(ds) == before


def test_tag_leaves_out_an_image_whose_sidecars_cannot_be_named_and_tags_the_rest(ds: Path, wd14_model: Path) -> None:
    from prep.tag import TagOptions, tag_folder

    shutil.copy(ds / "a.png", ds / LONG)
    (ds / LONG).with_suffix(".txt").write_text("long, name\n")
    flat = _clean_exit(runner.invoke(app, ["tag", str(ds), "--mode", "overwrite", "--model-dir", str(wd14_model)]))
    assert "another program" not in flat
    assert (ds / LONG).with_suffix(".txt").read_text() == "long, name\n"  # untouched, not half-tagged
    assert (ds / "a.txt").read_text() != "sks, woman\n" and (ds / "a.loraprep.json").exists()
    dropped = tag_folder(ds, TagOptions(model_dir=wd14_model, mode="overwrite", dry_run=True)).dropped
    assert [d.path for d in dropped] == [LONG]
    assert "file name too long" in dropped[0].reason and ".loraprep.json would be 260 bytes" in dropped[0].reason


@pytest.mark.parametrize("sheet", [False, True], ids=["doctor", "doctor --sheet"])
def test_doctor_reads_a_dataset_with_a_250_byte_name(ds: Path, tmp_path: Path, sheet: bool) -> None:
    shutil.copy(ds / "a.png", ds / LONG)
    args = ["doctor", str(ds)] + (["--sheet", str(tmp_path / "problems.png")] if sheet else [])
    _clean_exit(runner.invoke(app, args))  # exit 1: it finds the duplicate
    assert not sheet or Image.open(tmp_path / "problems.png").width > 0


# ---------------------------------------------------------------- line breaks in captions and names


@pytest.mark.parametrize("command", ["sheet", "doctor --sheet"])
def test_contact_sheets_draw_multi_line_captions_and_names_with_line_breaks(ds: Path, tmp_path: Path,
                                                                           command: str) -> None:
    (ds / "a.txt").write_text("sks, woman\nsecond line, smile\n")
    shutil.copy(ds / "b.png", ds / "two\nlines.png")
    (ds / "two\nlines.txt").write_text("a\r\nb\n")
    sheet = tmp_path / "sheet.png"
    args = ["sheet", str(ds), "--out", str(sheet)] if command == "sheet" else ["doctor", str(ds), "--sheet", str(sheet)]
    _clean_exit(runner.invoke(app, args), 0 if command == "sheet" else 1)
    assert Image.open(sheet).height > 0


# ---------------------------------------------------------------- a full or read-only disk


def test_an_os_error_becomes_one_line_naming_the_file() -> None:
    with pytest.raises(OSError) as caught:
        open("/tmp/" + "z" * 300, "w")
    error = from_os_error(caught.value)
    assert error.message.startswith("/tmp/zzz") and "too long" in error.message and "255 bytes" in error.hint


def _manifested(ds: Path) -> Path:
    assert runner.invoke(app, ["manifest", str(ds)]).exit_code == 0
    shutil.copy(ds / "a.png", ds / "a-copy.png")  # a duplicate for doctor --apply to set aside
    (ds / "a-copy.txt").write_text("sks, woman\n")
    return ds


FULL_DISK = {
    "export txt": lambda ds: ["export", str(ds), "--format", "txt", "--from-manifest"],
    "export kohya": lambda ds: ["export", str(ds), "--format", "kohya"],
    "export imagefolder": lambda ds: ["export", str(ds), "--format", "imagefolder"],
    "captions add": lambda ds: ["captions", "add", str(ds), "extra"],
    "doctor --apply": lambda ds: ["doctor", str(ds), "--apply"],
    "manifest": lambda ds: ["manifest", str(ds)],
    "bucket": lambda ds: ["bucket", str(ds)],
}


@pytest.mark.parametrize("command", FULL_DISK)
def test_a_full_disk_is_one_line_naming_the_file_and_changes_nothing(ds: Path, command: str) -> None:
    _manifested(ds)
    if command == "export txt":
        (ds / "a.txt").write_text("edited by hand\n")
    before = tree_hashes(ds)
    with file_size_limit(0):  # every write fails with EFBIG, as on a full disk
        result = runner.invoke(app, FULL_DISK[command](ds))
    flat = _clean_exit(result)
    assert f"error: cannot write {ds}/" in flat and "free some disk space" in flat
    assert tree_hashes(ds) == before


def test_tag_on_a_full_disk_stops_at_the_first_write_in_one_line(ds: Path, wd14_model: Path) -> None:
    before = tree_hashes(ds)
    with file_size_limit(0):
        result = runner.invoke(app, ["tag", str(ds), "--mode", "overwrite", "--model-dir", str(wd14_model)])
    flat = _clean_exit(result)
    assert f"error: cannot write {ds}/.loraprep/journal/" in flat
    assert tree_hashes(ds) == before


def test_prep_on_a_full_disk_stops_at_the_first_file_instead_of_failing_each(ds: Path, tmp_path: Path) -> None:
    with file_size_limit(0):
        result = runner.invoke(app, ["prep", str(ds), "--out", str(tmp_path / "out"), "--no-crop", "--no-tag"])
    flat = _clean_exit(result)
    assert flat.count("error:") == 1 and f"cannot write {tmp_path}/out/" in flat


@needs_namespaces
def test_a_real_full_disk_ends_in_one_line_and_the_dataset_is_as_it_was(ds: Path) -> None:
    _manifested(ds)
    results = run_on_faulty_disk([["captions", "add", str(ds), "extra"], ["export", str(ds), "--format", "kohya"]],
                                 full=ds, size="2m")
    for result in results:
        assert result["exit_code"] == 1 and not result["traceback"], result["output"]
        assert "the disk is full" in result["output"] and str(ds) in result["output"]
    after = ds.with_name(ds.name + ".after")
    assert {k: v for k, v in tree_hashes(after).items() if k != ".filler"} == tree_hashes(ds)


@needs_namespaces
def test_a_read_only_dataset_ends_every_writing_command_in_one_line(ds: Path, tmp_path: Path, wd14_model: Path) -> None:
    _manifested(ds)
    commands = [["tag", str(ds), "--mode", "overwrite", "--model-dir", str(wd14_model)],
                ["captions", "add", str(ds), "extra"], ["manifest", str(ds)], ["bucket", str(ds)],
                ["export", str(ds), "--format", "kohya"], ["doctor", str(ds), "--apply"],
                ["prep", str(ds), "--out", str(ds.parent / "out"), "--no-crop", "--no-tag"]]
    before = tree_hashes(ds.parent, skip=(wd14_model,))
    results = run_on_faulty_disk(commands, read_only=ds.parent)
    for result in results:
        assert result["exit_code"] == 1 and not result["traceback"], result["output"]
        assert "read-only file system" in result["output"] and "remount" in result["output"], result["output"]
    assert tree_hashes(ds.parent, skip=(wd14_model,)) == {k: v for k, v in before.items() if k != "results.txt"}


@pytest.mark.parametrize("command", [["prep", "--no-crop", "--no-tag"], ["crop", "--detector", "yunet"], ["clean"]],
                         ids=["prep copy", "crop", "clean --out"])
def test_a_source_whose_output_sidecars_cannot_be_named_is_left_out_whole(ds: Path, tmp_path: Path,
                                                                         command: list[str]) -> None:
    shutil.copy(ds / "a.png", ds / LONG)
    out = tmp_path / "out"
    result = runner.invoke(app, [command[0], str(ds), "--out", str(out), *command[1:]])
    _clean_exit(result)
    written = [p.name for p in out.rglob("*")]
    assert not any(name.startswith("xxxx") for name in written)  # no image without its sidecars
    assert any(name.startswith("a") for name in written)
