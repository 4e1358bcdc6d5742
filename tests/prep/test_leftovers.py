"""Killed runs leave only prep.atomic-named temporaries, and every dataset-writing command removes
those of dead processes from the folder it writes (and says so), never anyone else's files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from prep.atomic import stale_temporaries

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def killed_mid_write(target: Path) -> Path:
    """Run a process that dies (os._exit, like kill -9) inside an atomic write of `target`; return
    the temporary it left behind."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from prep.atomic import atomic_open
        with atomic_open({str(target)!r}, "wb") as handle:
            handle.write(b"half a caption")
            handle.flush()
            os._exit(9)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    left = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.lp")]
    assert len(left) == 1
    return left[0]


@pytest.fixture()
def raw(tmp_path, testdata):
    folder = tmp_path / "raw"
    folder.mkdir()
    shutil.copy(testdata / "anime/lucy_happy.png", folder / "lucy.png")
    (folder / "lucy.txt").write_text("1girl, smile\n")
    return folder


@pytest.fixture()
def ds(tmp_path, raw):
    """A dataset with a killed run's leftover (in a sub-folder), a live process's temporary and a
    user's own hidden .tmp file."""
    folder = tmp_path / "ds"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(raw / "lucy.png", folder / "sub" / "lucy.png")
    (folder / "sub" / "lucy.txt").write_text("1girl, smile\n")
    dead = killed_mid_write(folder / "sub" / "lucy.txt")
    live = folder / f".other.txt.lp{os.getpid()}.abcd.tmp"  # this process: alive, so kept
    live.write_text("being written")
    mine = folder / ".notes.tmp"
    mine.write_text("the user's own")
    assert (folder / "sub" / "lucy.txt").read_text() == "1girl, smile\n"  # the kill lost nothing
    return folder, dead, live, mine


def test_a_killed_write_leaves_only_an_atomic_named_temporary(ds):
    folder, dead, live, mine = ds
    assert stale_temporaries(folder) == [dead]


@pytest.mark.parametrize("command", [
    ["captions", "add", "{ds}", "solo"],
    ["captions", "undo", "{ds}"],
    ["manifest", "{ds}"],
    ["crop", "{raw}", "--out", "{ds}", "--detector", "haar"],
    ["clean", "{ds}", "--in-place"],
    ["prep", "{raw}", "--out", "{ds}", "--no-crop", "--no-tag"],
], ids=lambda c: " ".join(c[:2]))
def test_dataset_writing_commands_remove_dead_runs_temporaries_and_say_so(ds, raw, command):
    folder, dead, live, mine = ds
    args = [a.format(ds=folder, raw=raw) for a in command]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "removed 1 temporary file(s)" in " ".join(result.output.split())
    assert not dead.exists() and live.exists() and mine.exists()


def test_export_removes_leftovers_and_notes_it(ds):
    folder, dead, live, mine = ds
    assert runner.invoke(app, ["manifest", str(folder)]).exit_code == 0
    leftover = killed_mid_write(folder / "manifest.json")
    result = runner.invoke(app, ["export", str(folder), "--format", "kohya"])
    assert result.exit_code == 0, result.output
    assert "removed 1 temporary file(s)" in " ".join(result.output.split())
    assert not leftover.exists() and live.exists() and mine.exists()


def test_tag_removes_leftovers(ds, wd14_model):
    folder, dead, live, mine = ds
    result = runner.invoke(app, ["tag", str(folder), "--model-dir", str(wd14_model), "--mode", "overwrite"])
    assert result.exit_code == 0, result.output
    assert "removed 1 temporary file(s)" in " ".join(result.output.split())
    assert not dead.exists() and live.exists() and mine.exists()


def test_dry_runs_change_nothing_not_even_leftovers(ds):
    folder, dead, live, mine = ds
    assert runner.invoke(app, ["captions", "add", str(folder), "solo", "--dry-run"]).exit_code == 0
    assert dead.exists()
