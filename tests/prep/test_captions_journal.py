"""Writing bulk edits: journal first, byte-exact undo, and never clobbering a caption changed on disk."""

from __future__ import annotations

import pytest
from captionsets import snapshot, write_dataset

from prep.captions.dataset import load_dataset
from prep.captions.edit import AddTags, RemoveTags, ReplaceTag, SortTags, plan_edit, Where
from prep.captions.journal import UndoConflict, apply_plan, journal_dir, undo_last

# Odd but real caption files: BOM, CRLF, no final newline, spaces everywhere, a missing file.
ODD = {"a.png": b"\xef\xbb\xbfsks,1girl,  red_hair ,smile\r\n", "b.png": b"red_hair", "c.png": b" x , y \n\n",
       "d.png": None}


@pytest.mark.parametrize("operation, where", [
    (ReplaceTag("red_hair", "red hair"), Where()),
    (RemoveTags(("x", "sks")), Where()),
    (SortTags(), Where()),
    (AddTags(("new",), front=True), Where(include_missing=True)),
])
def test_undo_restores_byte_identical_files(tmp_path, operation, where):
    write_dataset(tmp_path, ODD)
    before = snapshot(tmp_path)
    result = apply_plan(tmp_path, plan_edit(load_dataset(tmp_path), operation, where))
    assert result.written and snapshot(tmp_path) != before
    undo = undo_last(tmp_path)
    assert snapshot(tmp_path) == before
    assert set(undo.restored) == {c.caption for c in result.written}


def test_replacing_a_tag_with_itself_writes_nothing_and_undo_keeps_every_tag(tmp_path):
    write_dataset(tmp_path, ODD)
    before = snapshot(tmp_path)
    result = apply_plan(tmp_path, plan_edit(load_dataset(tmp_path), ReplaceTag("red_hair", "red_hair")))
    assert (result.written, result.entry) == ((), None)
    assert undo_last(tmp_path).entry is None
    assert snapshot(tmp_path) == before


def test_dry_run_changes_no_byte_and_records_nothing(tmp_path):
    write_dataset(tmp_path, ODD)
    before = snapshot(tmp_path)
    result = apply_plan(tmp_path, plan_edit(load_dataset(tmp_path), RemoveTags(("red_hair",))), dry_run=True)
    assert len(result.written) == 2 and result.entry is None
    assert snapshot(tmp_path) == before and not journal_dir(tmp_path).exists()


def test_caption_changed_on_disk_after_loading_is_left_alone(tmp_path):
    write_dataset(tmp_path, {"a.png": "x, y", "b.png": "x"})
    plan = plan_edit(load_dataset(tmp_path), RemoveTags(("x",)))
    (tmp_path / "a.txt").write_text("edited by hand, x")
    result = apply_plan(tmp_path, plan)
    assert result.conflicts == ("a.txt",) and [c.caption for c in result.written] == ["b.txt"]
    assert (tmp_path / "a.txt").read_text() == "edited by hand, x"
    assert (tmp_path / "b.txt").read_bytes() == b"\n"


def test_undo_refuses_when_a_caption_changed_since_the_edit_unless_forced(tmp_path):
    write_dataset(tmp_path, {"a.png": "x, y", "b.png": "x"})
    apply_plan(tmp_path, plan_edit(load_dataset(tmp_path), RemoveTags(("x",))))
    (tmp_path / "a.txt").write_text("later hand edit")
    with pytest.raises(UndoConflict):
        undo_last(tmp_path)
    assert (tmp_path / "a.txt").read_text() == "later hand edit" and (tmp_path / "b.txt").read_bytes() == b"\n"
    undo_last(tmp_path, force=True)
    assert snapshot(tmp_path) == {"a.png": b"", "a.txt": b"x, y", "b.png": b"", "b.txt": b"x"}


def test_undo_walks_back_one_edit_at_a_time(tmp_path):
    write_dataset(tmp_path, {"a.png": "a"})
    states = [snapshot(tmp_path)]
    for tag in ("b", "c"):
        apply_plan(tmp_path, plan_edit(load_dataset(tmp_path), AddTags((tag,))))
        states.append(snapshot(tmp_path))
    assert (tmp_path / "a.txt").read_bytes() == b"a, b, c\n"
    undo_last(tmp_path)
    assert snapshot(tmp_path) == states[1]
    undo_last(tmp_path)
    assert snapshot(tmp_path) == states[0]
    assert undo_last(tmp_path).entry is None


def test_redo_writes_again_what_undo_restored_until_a_new_edit(tmp_path):
    from prep.captions.journal import next_redo, redo_last

    write_dataset(tmp_path, {"a.png": "a"})
    apply_plan(tmp_path, plan_edit(load_dataset(tmp_path), AddTags(("b",))))
    undo_last(tmp_path)
    assert redo_last(tmp_path).restored == ("a.txt",)
    assert (tmp_path / "a.txt").read_bytes() == b"a, b\n"
    undo_last(tmp_path)
    apply_plan(tmp_path, plan_edit(load_dataset(tmp_path), AddTags(("c",))))   # a new edit: no redo after it
    assert next_redo(tmp_path) is None and redo_last(tmp_path).entry is None
    assert (tmp_path / "a.txt").read_bytes() == b"a, c\n"
    assert len(list((journal_dir(tmp_path) / "history").glob("*.json"))) == 1   # kept, not redoable


def test_entries_get_distinct_numbers_and_never_overwrite_one_another(tmp_path):
    from prep.captions.journal import FileState, read_entry, record

    paths = [record(tmp_path, f"edit {i}", [FileState("a.txt", b"x", str(i).encode())]) for i in range(3)]
    assert [p.name for p in paths] == ["000001.json", "000002.json", "000003.json"]
    assert [read_entry(p).description for p in paths] == ["edit 0", "edit 1", "edit 2"]
    assert not [p for p in journal_dir(tmp_path).iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("expected, data, on_disk, written", [
    (b"x", b"y", b"x", True),
    (b"x", b"y", b"x, appended", False),
    (None, b"y", None, True),
    (None, b"y", b"created meanwhile", False),
    (b"x", None, b"x", True),
    (b"x", None, b"x, appended", False),
])
def test_guarded_write_touches_only_a_file_that_still_holds_what_was_read(tmp_path, expected, data, on_disk, written):
    from prep.captions.journal import write_guarded

    if on_disk is not None:
        (tmp_path / "a.txt").write_bytes(on_disk)
    assert write_guarded(tmp_path, "a.txt", expected, data) is written
    now = (tmp_path / "a.txt").read_bytes() if (tmp_path / "a.txt").exists() else None
    assert now == (data if written else on_disk)
    assert [p.name for p in tmp_path.iterdir()] == (["a.txt"] if now is not None else [])
