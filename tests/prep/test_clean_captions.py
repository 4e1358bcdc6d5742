"""Re-running `clean DIR --out OUT` never loses a caption edited in OUT since clean wrote it: it is
kept and named; `--overwrite-captions` replaces it through the journal (undoable). And `prep`'s
fallback captions replace a whitespace-only caption only through the journal, never one written
meanwhile by someone else."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from prep.captions.journal import journal_dir
from prep.pipeline import fallback_states, write_fallback
from prep.sidecars import caption_path, read_meta, update_meta, write_caption

runner = CliRunner()
HAND_EDIT = b"1girl, smile, green dress  \r\n"  # odd bytes on purpose: undo must restore them exactly


@pytest.fixture()
def cleaned(testdata, tmp_path) -> tuple[Path, Path]:
    """in/lucy.png (a sprite with alpha) with a caption, cleaned once into out/."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(testdata / "anime/lucy_happy.png", src / "lucy.png")
    write_caption(caption_path(src / "lucy.png"), "1girl, smile")
    result = runner.invoke(app, clean_args(src, out))
    assert result.exit_code == 0, result.output
    assert (out / "lucy.txt").read_bytes() == b"1girl, smile\n"
    return src, out


def clean_args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["clean", str(src), "--out", str(out), "--workers", "1", *extra]


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_rerun_keeps_a_hand_edited_output_caption_and_names_it(cleaned) -> None:
    src, out = cleaned
    (out / "lucy.txt").write_bytes(HAND_EDIT)
    write_caption(caption_path(src / "lucy.png"), "1girl, frown")  # the input changes too
    result = runner.invoke(app, clean_args(src, out))
    assert result.exit_code == 0, result.output
    assert (out / "lucy.txt").read_bytes() == HAND_EDIT
    flat = _flat(result.output)
    assert "1 caption(s)" in flat and "edited since clean wrote them" in flat
    assert "lucy.txt" in flat and "--overwrite-captions" in flat
    assert not journal_dir(out).exists()  # nothing was replaced, so nothing to undo


def test_an_unedited_output_caption_still_follows_its_input(cleaned) -> None:
    src, out = cleaned
    write_caption(caption_path(src / "lucy.png"), "1girl, frown")
    result = runner.invoke(app, clean_args(src, out))
    assert result.exit_code == 0, result.output
    assert (out / "lucy.txt").read_bytes() == b"1girl, frown\n"
    assert "edited since clean wrote them" not in _flat(result.output)


def test_overwrite_captions_replaces_the_edit_and_captions_undo_restores_it(cleaned) -> None:
    src, out = cleaned
    (out / "lucy.txt").write_bytes(HAND_EDIT)
    result = runner.invoke(app, clean_args(src, out, "--overwrite-captions"))
    assert result.exit_code == 0, result.output
    assert (out / "lucy.txt").read_bytes() == b"1girl, smile\n"
    assert "lucy.txt" in _flat(result.output) and "captions undo" in _flat(result.output)
    undone = runner.invoke(app, ["captions", "undo", str(out)])
    assert undone.exit_code == 0, undone.output
    assert (out / "lucy.txt").read_bytes() == HAND_EDIT
    # the restored edit is again someone else's text: a plain re-run keeps it
    again = runner.invoke(app, clean_args(src, out))
    assert again.exit_code == 0 and (out / "lucy.txt").read_bytes() == HAND_EDIT


def test_an_input_caption_record_never_makes_an_edited_output_caption_look_like_ours(cleaned) -> None:
    """The input may itself be a dataset loraprep wrote (here: a cleaned folder), with a
    `caption_written` record about ITS caption file. Carried with the other metadata, that record
    would vouch for whatever bytes it names in the output: here exactly the user's edit."""
    src, out = cleaned
    update_meta(src / "lucy.png", caption_written={"step": "clean", "sha256": hashlib.sha256(HAND_EDIT).hexdigest()})
    assert runner.invoke(app, clean_args(src, out)).exit_code == 0
    assert read_meta(out / "lucy.png")["caption_written"]["sha256"] == hashlib.sha256(b"1girl, smile\n").hexdigest()
    (out / "lucy.txt").write_bytes(HAND_EDIT)
    write_caption(caption_path(src / "lucy.png"), "1girl, frown")
    result = runner.invoke(app, clean_args(src, out))
    assert result.exit_code == 0, result.output
    assert (out / "lucy.txt").read_bytes() == HAND_EDIT and "lucy.txt" in _flat(result.output)


def test_overwrite_captions_with_in_place_is_a_usage_error(cleaned) -> None:
    src, _ = cleaned
    result = runner.invoke(app, ["clean", str(src), "--in-place", "--overwrite-captions"])
    assert result.exit_code == 2, result.output
    assert "--overwrite-captions" in _flat(result.output) and "--in-place" in _flat(result.output)
    assert "No such option" not in result.output


# ---- prep's fallback captions


def test_prep_fallback_caption_replaces_a_blank_caption_through_the_journal(testdata, tmp_path) -> None:
    raw, ds = tmp_path / "raw", tmp_path / "ds"
    raw.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", raw / "a.png")  # no caption: the fallback writes one
    args = ["prep", str(raw), "--out", str(ds), "--no-crop", "--no-clean", "--no-tag", "--trigger", "sks"]
    assert runner.invoke(app, args).exit_code == 0
    assert (ds / "a.txt").read_bytes() == b"sks\n" and not journal_dir(ds).exists()  # created: nothing replaced
    blank = b"  \r\n"  # a user's placeholder, whitespace only
    (ds / "a.txt").write_bytes(blank)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (ds / "a.txt").read_bytes() == b"sks\n"
    assert runner.invoke(app, ["captions", "undo", str(ds)]).exit_code == 0
    assert (ds / "a.txt").read_bytes() == blank


@pytest.mark.parametrize("before", [None, b"\n"], ids=["missing", "blank"])
def test_a_caption_written_meanwhile_wins_over_the_fallback(testdata, tmp_path, before) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    shutil.copy(testdata / "photos/astronaut.png", ds / "a.png")
    if before is not None:
        (ds / "a.txt").write_bytes(before)
    states = fallback_states(ds, ".txt", "sks, woman")
    assert [(s.caption, s.before, s.after) for s in states] == [("a.txt", before, b"sks, woman\n")]
    (ds / "a.txt").write_bytes(b"astronaut, helmet\n")  # another program captions it meanwhile
    written = write_fallback(ds, states)
    assert written.written == () and written.conflicts == ("a.txt",)
    assert (ds / "a.txt").read_bytes() == b"astronaut, helmet\n" and not journal_dir(ds).exists()
