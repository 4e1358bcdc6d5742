"""Bulk caption edits as pure functions over tag lists, and which captions a plan touches."""

from __future__ import annotations

from collections import Counter

import pytest
from captionsets import write_dataset

from prep.captions.dataset import load_dataset
from prep.captions.edit import (AddTags, Dedupe, MoveFirst, RemoveTags, ReplaceTag, SortTags, Where, parse_tags,
                                plan_edit, summarize)
from prep.errors import UsageError

T = ("sks", "1girl", "red_hair", "smile", "red_hair")


@pytest.mark.parametrize("operation, tags, expected", [
    (AddTags(("solo",)), T, T + ("solo",)),
    (AddTags(("smile", "solo")), T, T + ("solo",)),                       # present tags are not added twice
    (AddTags(("trig", "x"), front=True), ("a",), ("trig", "x", "a")),
    (RemoveTags(("red_hair", "absent")), T, ("sks", "1girl", "smile")),
    (RemoveTags((r".*_hair",), regex=True), T, ("sks", "1girl", "smile")),
    (RemoveTags(("red",), regex=True), T, T),                             # regex must match the whole tag
    (ReplaceTag("red_hair", "red hair"), ("a", "red_hair", "b"), ("a", "red hair", "b")),
    (ReplaceTag("smile", "smile"), T, T),                                 # a tag replaced by itself stays
    (ReplaceTag("red_hair", "smile"), ("red_hair", "smile"), ("smile",)),  # no duplicate, the original kept
    (ReplaceTag("smile", ""), ("a", "smile"), ("a",)),
    (ReplaceTag("smile", "grin, teeth"), ("a", "smile", "b"), ("a", "grin", "teeth", "b")),
    (ReplaceTag("a", "b, a"), ("a", "c"), ("b", "a", "c")),
    (ReplaceTag(r"(\w+)_hair", r"\1 hair", regex=True), ("red_hair", "x_y"), ("red hair", "x_y")),
    (ReplaceTag(r"(\w+)", r"\1", regex=True), T, T),                      # regex replacing with itself
    (MoveFirst(("sks",)), ("a", "b", "sks"), ("sks", "a", "b")),
    (MoveFirst(("sks", "b")), ("a", "b", "sks"), ("sks", "b", "a")),
    (MoveFirst(("absent",)), ("a", "b"), ("a", "b")),
    (SortTags(), ("b", "C", "a"), ("a", "b", "C")),
    (SortTags(keep_first=1), ("sks", "b", "a"), ("sks", "a", "b")),
    (SortTags(frequency=Counter({"rare": 1, "common": 9})), ("rare", "common"), ("common", "rare")),
    (Dedupe(), ("a", "b", "a", "A"), ("a", "b", "A")),
    (Dedupe(loose=True), ("red hair", "Red_Hair", "x"), ("red hair", "x")),
])
def test_operation_results(operation, tags, expected):
    assert operation(tags) == expected


@pytest.mark.parametrize("tags, expected", [
    (("red_hair", "Red Hair", "red  hair"), ("red_hair",)),
    (("looking at viewer", "looking_at_viewer"), ("looking at viewer",)),
    (("^_^", "^ ^"), ("^_^", "^ ^")),          # kaomoji underscores are part of the face
])
def test_loose_dedupe_ignores_case_spaces_underscores(tags, expected):
    assert Dedupe(loose=True)(tags) == expected


def test_bad_regex_is_a_usage_error():
    with pytest.raises(UsageError):
        RemoveTags(("(",), regex=True)(("a",))


def test_parse_tags_splits_each_argument_on_commas():
    assert parse_tags(["a, b", "c"]) == ["a", "b", "c"]


@pytest.mark.parametrize("where, changed", [
    (Where(), {"a.txt", "b.txt"}),
    (Where(having=("solo",)), {"a.txt"}),
    (Where(having=("solo", "smile")), set()),
    (Where(lacking=("solo",)), {"b.txt"}),
])
def test_plan_touches_only_matching_captions_that_change(tmp_path, where, changed):
    write_dataset(tmp_path, {"a.png": "x, solo", "b.png": "x, y", "c.png": "y", "d.png": None, "o.txt": "x"})
    plan = plan_edit(load_dataset(tmp_path), RemoveTags(("x",)), where)
    assert {c.caption for c in plan.changes} == changed


def test_add_creates_missing_captions_only_when_asked(tmp_path):
    write_dataset(tmp_path, {"a.png": "x", "b.png": None})
    dataset = load_dataset(tmp_path)
    assert [c.caption for c in plan_edit(dataset, AddTags(("t",))).changes] == ["a.txt"]
    created = plan_edit(dataset, AddTags(("t",)), Where(include_missing=True)).changes
    assert [(c.caption, c.before, c.after) for c in created] == [("a.txt", b"x", b"x, t\n"), ("b.txt", None, b"t\n")]


def test_summary_counts_added_removed_and_reordered(tmp_path):
    write_dataset(tmp_path, {"a.png": "b, a", "b.png": "x_y, a", "c.png": "a"})
    dataset = load_dataset(tmp_path)
    summary = summarize(plan_edit(dataset, ReplaceTag("x_y", "x y")))
    assert (summary.files, summary.matched, summary.added, summary.removed) == (1, 3, {"x y": 1}, {"x_y": 1})
    assert summarize(plan_edit(dataset, SortTags())).reordered == 2  # "b, a" and "x_y, a"
