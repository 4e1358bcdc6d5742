"""No command reads, counts, tags, moves or writes through a folder link out of the dataset.

Two layouts: `DS/linked -> /elsewhere/dir` (a link to a folder outside) and `DS/up -> ..` (the
dataset's own parent, which holds the outside folder, the outputs and DS itself). Every command
runs on each; the tree outside DS (less the output a command was asked to write) must be
byte-identical afterwards, and the link must be named, not silently followed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fstree import tree_hashes
from PIL import Image
from typer.testing import CliRunner

from cli import app
from prep.review.session import Session

runner = CliRunner()


def _picture(testdata: Path, name: str, size: tuple[int, int], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(testdata / name).convert("RGB").resize(size).save(path)


@pytest.fixture(params=["linked", "up"])
def layout(request: pytest.FixtureRequest, tmp_path: Path, testdata: Path) -> tuple[Path, Path, str]:
    """(dataset, the folder its link leads to, the link's name)."""
    root = tmp_path / "DS"
    _picture(testdata, "photos/astronaut.png", (256, 256), root / "a.png")
    _picture(testdata, "photos/coffee.png", (320, 240), root / "b.png")
    (root / "a.txt").write_text("sks, woman\n")
    (root / "b.txt").write_text("sks, cup\n")
    elsewhere = tmp_path / "elsewhere" / "dir"
    _picture(testdata, "anime/lucy_happy.png", (40, 40), elsewhere / "x.png")  # tiny: doctor would set it aside
    _picture(testdata, "photos/camera.png", (256, 256), elsewhere / "y.png")
    (elsewhere / "x.txt").write_text("outside caption\n")
    if request.param == "linked":
        os.symlink(elsewhere, root / "linked")
        return root, elsewhere, "linked"
    os.symlink("..", root / "up")
    return root, tmp_path, "up"


def _commands(root: Path, out: Path, wd14: Path) -> dict[str, list[str]]:
    ds = str(root)
    return {
        "scan": ["scan", ds],
        "tag": ["tag", ds, "--mode", "overwrite", "--model-dir", str(wd14)],
        "doctor": ["doctor", ds],
        "doctor --apply": ["doctor", ds, "--apply", "--quarantine", "tiny"],
        "captions add": ["captions", "add", ds, "newtag"],
        "captions lint": ["captions", "lint", ds],
        "crop": ["crop", ds, "--out", str(out), "--detector", "yunet"],
        "clean --in-place": ["clean", ds, "--in-place"],
        "clean --out": ["clean", ds, "--out", str(out)],
        "prep": ["prep", ds, "--out", str(out), "--no-tag", "--no-crop", "--trigger", "sks"],
        "bucket": ["bucket", ds],
        "manifest": ["manifest", ds],
        "export txt": ["export", ds, "--format", "txt", "--from-manifest"],
        "sheet": ["sheet", ds, "--out", str(out / "sheet.png")],
    }


COMMANDS = list(_commands(Path("DS"), Path("out"), Path("wd14")))
# exit 0: done; exit 1: done, with the link among the files left out (or other findings)
QUIET = {"captions add", "export txt"}  # these list nothing when all went well (captions: on stderr)


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_touches_what_a_folder_link_leads_to(layout, wd14_model, command: str) -> None:
    root, outside, link = layout
    out = root.parent / "out"
    if command == "export txt":
        assert runner.invoke(app, ["manifest", str(root)]).exit_code in (0, 1)
    before = tree_hashes(outside, skip=(root, out))
    result = runner.invoke(app, _commands(root, out, wd14_model)[command])
    assert tree_hashes(outside, skip=(root, out)) == before
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1), result.output
    if command not in QUIET:
        flat = " ".join(result.output.split())
        assert link in flat and ("outside" in flat or "not entered" in flat), result.output


def test_what_the_commands_did_inside_the_dataset_is_only_the_dataset(layout, wd14_model) -> None:
    root, _, _ = layout
    result = runner.invoke(app, ["scan", str(root), "--json"])
    images = [i["path"] for i in __import__("json").loads(result.output)["images"]]
    assert images == ["a.png", "b.png"]  # not the 34,117 images of the parent
    assert runner.invoke(app, ["tag", str(root), "--mode", "overwrite", "--model-dir", str(wd14_model)]).exit_code == 1
    assert sorted(p.name for p in root.glob("*.txt")) == ["a.txt", "b.txt"]


def test_prep_into_the_parent_reached_through_the_link_ends_and_copies_only_the_dataset(layout, tmp_path) -> None:
    root, _, _ = layout
    out = tmp_path / "DS_out"
    result = runner.invoke(app, ["prep", str(root), "--out", str(out), "--no-tag", "--no-crop", "--trigger", "sks"])
    assert result.exit_code == 1, result.output
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert copied == ["a.png", "b.png"]


@pytest.mark.parametrize("out", ["DS/out", "DS/sub", "."])
@pytest.mark.parametrize("command", ["prep", "crop", "clean"])
def test_an_output_folder_inside_the_input_or_holding_it_is_refused_in_one_line(layout, tmp_path, command, out):
    root, outside, _ = layout
    before = tree_hashes(tmp_path)
    args = [command, str(root), "--out", str(tmp_path / out)] + (["--detector", "yunet"] if command == "crop" else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "inside" in result.output and "Traceback" not in result.output
    assert tree_hashes(tmp_path) == before  # refused before anything was written


def test_the_editor_shows_and_edits_only_the_dataset(layout) -> None:
    root, outside, _ = layout
    before = tree_hashes(outside, skip=(root,))
    session = Session(root)
    assert [item.file.image for item in session.items] == ["a.png", "b.png"]
    assert [d.path for d in session.skipped] == [layout[2]]
    session.add_tags(0, "edited")
    assert "edited" in (root / "a.txt").read_text()
    assert tree_hashes(outside, skip=(root,)) == before


def test_a_regularisation_folder_is_copied_in_without_its_folder_links(layout, tmp_path, testdata) -> None:
    root, outside, _ = layout
    reg = tmp_path / "reg-src"
    _picture(testdata, "photos/chelsea.png", (200, 200), reg / "r.png")
    os.symlink("..", reg / "up")
    os.symlink(outside, reg / "linked")
    result = runner.invoke(app, ["manifest", str(root), "--reg", str(reg)])
    assert result.exit_code in (0, 1), result.output
    copied = sorted(p.relative_to(root / "reg").as_posix() for p in (root / "reg").rglob("*"))
    assert copied == ["reg-src", "reg-src/r.png"]
