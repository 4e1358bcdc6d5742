"""A hand-edited caption journal entry cannot make `captions undo` / `captions redo` write outside
the dataset: a path with `..`, an absolute path, or one that a symlink (a folder on its way, or
the caption file itself) carries outside is refused with a one-line error, and nothing outside or
inside changes."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from prep.captions.journal import JOURNAL_SCHEMA, UNDONE, journal_dir
from prep.review.session import Session

runner = CliRunner()
EVIL = b"written by a hand-edited journal entry\n"


def _tree(folder: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every link's target under `folder` (links not followed)."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = path.read_bytes()
    return found


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A dataset with one captioned image, and a folder beside it holding a text file."""
    ds, outside = tmp_path / "ds", tmp_path / "outside"
    ds.mkdir()
    outside.mkdir()
    (ds / "a.png").write_bytes(b"not decoded")
    (ds / "a.txt").write_bytes(b"sks, smile\n")
    (outside / "x.txt").write_bytes(b"someone else's file\n")
    return ds, outside


def _journal_path(kind: str, ds: Path, outside: Path) -> str:
    """The caption path a crafted entry names, setting up the link it goes through."""
    if kind == "dotdot":
        return "../outside/x.txt"
    if kind == "absolute":
        return str(outside / "x.txt")
    if kind == "folder-link":
        (ds / "sub").symlink_to(outside, target_is_directory=True)
        return "sub/x.txt"
    (ds / "a.txt").unlink()  # file-link: the caption itself is a link to the outside file
    (ds / "a.txt").symlink_to(outside / "x.txt")
    return "a.txt"


def _write_entry(ds: Path, command: str, caption: str, current: bytes) -> Path:
    """An entry that, obeyed, would replace `current` (what the path holds now) with EVIL."""
    before, after = (EVIL, current) if command == "undo" else (current, EVIL)
    encode = (lambda b: base64.b64encode(b).decode("ascii"))
    folder = journal_dir(ds) / (UNDONE if command == "redo" else "")
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / "000001.json"
    entry.write_text(json.dumps({"schema": JOURNAL_SCHEMA, "description": "hand-edited", "time": "2026-01-01T00:00:00",
                                 "files": [{"path": caption, "before": encode(before), "after": encode(after)}]}))
    return entry


@pytest.mark.parametrize("command", ["undo", "redo"])
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "folder-link", "file-link"])
def test_a_crafted_entry_cannot_write_outside_the_dataset(layout, kind, command):
    ds, outside = layout
    caption = _journal_path(kind, ds, outside)
    entry = _write_entry(ds, command, caption, (outside / "x.txt").read_bytes())
    outside_before, inside_before = _tree(outside), _tree(ds)

    result = runner.invoke(app, ["captions", command, str(ds)], env={"COLUMNS": "400"})

    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "outside the dataset" in errors[0] and "nothing was changed" in errors[0]
    assert _tree(outside) == outside_before
    assert _tree(ds) == inside_before and entry.is_file()  # the entry stays where it was, the caption link too


@pytest.mark.parametrize("kind", ["dotdot", "folder-link"])
def test_the_editor_says_why_it_did_not_undo_a_crafted_entry(layout, kind):
    ds, outside = layout
    caption = _journal_path(kind, ds, outside)
    _write_entry(ds, "undo", caption, (outside / "x.txt").read_bytes())
    outside_before = _tree(outside)
    outcome, index = Session(ds).undo()
    assert not outcome.ok and index is None and "outside the dataset" in outcome.message
    assert _tree(outside) == outside_before


@pytest.mark.parametrize("files", [
    [{"path": "a.txt", "before": "not base64!", "after": None}],
    [{"before": None, "after": None}],
    "not a list",
])
def test_a_damaged_entry_is_a_one_line_error(layout, files):
    ds, _ = layout
    journal_dir(ds).mkdir(parents=True)
    (journal_dir(ds) / "000001.json").write_text(json.dumps({"schema": JOURNAL_SCHEMA, "description": "d",
                                                             "time": "t", "files": files}))
    before = _tree(ds)
    result = runner.invoke(app, ["captions", "undo", str(ds)], env={"COLUMNS": "400"})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert "is not a loraprep caption journal entry" in result.output
    assert _tree(ds) == before
