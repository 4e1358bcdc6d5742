"""`loraprep captions …` through the real CLI: exact file results, dry runs, undo, exit codes, JSON."""

from __future__ import annotations

import json

import pytest
from captionsets import snapshot, write_dataset
from typer.testing import CliRunner

from cli import app
from prep.sidecars import update_meta

runner = CliRunner()
DATA = {"a.png": "1girl, red_hair, smile", "b.png": "sks, 1girl, red hair\n", "c.png": "smile, smile, sks",
        "d.png": None}


def run(*args: str):
    return runner.invoke(app, ["captions", *map(str, args)])


@pytest.fixture
def ds(tmp_path):
    return write_dataset(tmp_path / "ds", DATA)


@pytest.mark.parametrize("args, expected", [
    (["add", "solo"], {"a.txt": b"1girl, red_hair, smile, solo\n", "b.txt": b"sks, 1girl, red hair, solo\n",
                       "c.txt": b"smile, smile, sks, solo\n", "d.txt": b"solo\n"}),
    (["add", "sks", "--front", "--where", "1girl"], {"a.txt": b"sks, 1girl, red_hair, smile\n"}),
    (["remove", "smile", "--where-not", "sks"], {"a.txt": b"1girl, red_hair\n"}),
    (["remove", "--regex", "red.hair"], {"a.txt": b"1girl, smile\n", "b.txt": b"sks, 1girl\n"}),
    (["replace", "red_hair", "red hair"], {"a.txt": b"1girl, red hair, smile\n"}),
    (["replace", "--regex", r"^(\w+)_(\w+)$", r"\2 \1"], {"a.txt": b"1girl, hair red, smile\n"}),
    (["move-first", "sks"], {"c.txt": b"sks, smile, smile\n"}),
    (["sort", "--keep-first", "1"], {"c.txt": b"smile, sks, smile\n"}),
    (["sort", "--by", "frequency"], {"a.txt": b"1girl, smile, red_hair\n", "b.txt": b"1girl, sks, red hair\n",
                                    "c.txt": b"sks, smile, smile\n"}),
    (["dedupe"], {"c.txt": b"smile, sks\n"}),
])
def test_bulk_edit_writes_exactly_the_expected_captions_and_undo_restores_bytes(ds, args, expected):
    before = snapshot(ds)
    result = run(args[0], ds, *args[1:])
    assert result.exit_code == 0, result.output
    after = snapshot(ds)
    assert {k: v for k, v in after.items() if before.get(k) != v} == expected
    assert "changed" in result.stdout  # the diff summary
    assert run("undo", ds).exit_code == 0
    assert snapshot(ds) == before


@pytest.mark.parametrize("args", [["add", "solo"], ["remove", "smile"], ["replace", "smile", "grin"],
                                  ["move-first", "sks"], ["sort"], ["dedupe", "--loose"]])
def test_dry_run_leaves_every_byte_and_prints_what_would_change(ds, args):
    before = snapshot(ds)
    result = run(args[0], ds, *args[1:], "--dry-run")
    assert result.exit_code == 0 and "would change" in result.stdout and "dry run" in result.stdout
    assert snapshot(ds) == before and not (ds / ".loraprep").exists()


def test_replace_tag_with_itself_then_undo_loses_nothing(ds):
    before = snapshot(ds)
    assert run("replace", ds, "smile", "smile").exit_code == 0
    result = run("undo", ds)
    assert "nothing to undo" in result.stdout and snapshot(ds) == before


def test_edit_json_lists_each_change(ds):
    result = run("remove", ds, "smile", "--json")
    data = json.loads(result.stdout)
    assert data["removed"] == {"smile": 2} and data["files_changed"] == 2
    assert data["changes"][0] == {"path": "a.txt", "before": ["1girl", "red_hair", "smile"],
                                  "after": ["1girl", "red_hair"]}


def test_undo_refuses_after_a_hand_edit_and_says_how_to_force(ds):
    run("remove", ds, "smile")
    (ds / "a.txt").write_text("hand edit")
    result = run("undo", ds)
    assert result.exit_code == 1 and "--force" in result.output
    assert (ds / "a.txt").read_text() == "hand edit"
    assert run("undo", ds, "--force").exit_code == 0
    assert (ds / "a.txt").read_text() == DATA["a.png"]


@pytest.mark.parametrize("extra_args, exit_code", [([], 1), (["--trigger", "sks"], 1)])
def test_lint_exits_1_on_problems(ds, extra_args, exit_code):
    result = run("lint", ds, *extra_args)
    assert result.exit_code == exit_code and "missing-caption" in result.stdout


def test_lint_exits_0_on_a_clean_dataset(tmp_path):
    clean = write_dataset(tmp_path, {"a.png": "sks, smile", "b.png": "sks, smile"})
    result = run("lint", clean, "--trigger", "sks")
    assert result.exit_code == 0 and "no problems" in result.stdout


def test_lint_json_lists_problems_by_kind(ds):
    result = run("lint", ds, "--trigger", "sks", "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 1
    assert data["by_kind"] == {"trigger-missing": 1, "trigger-not-first": 1, "duplicate-tag": 1,
                               "tag-variants": 1, "missing-caption": 1}


def test_stats_json(ds):
    data = json.loads(run("stats", ds, "--json", "--tag", "smile").stdout)
    assert data["images"] == 4 and data["missing_captions"] == 1
    assert data["tags"][0] == {"tag": "1girl", "count": 2, "percent": 50.0}
    assert data["tag_filter"] == {"tag": "smile", "count": 2, "images": ["a.png", "c.png"]}


def test_stats_warns_about_captions_over_75_tokens(tmp_path):
    folder = write_dataset(tmp_path, {"a.png": ", ".join(f"tag{i}" for i in range(40))})
    result = run("stats", folder)
    assert result.exit_code == 0 and "longer than 75 tokens" in result.stderr


def test_show_gives_tagger_scores_and_frequencies(ds):
    update_meta(ds / "a.png", tags={"general": {"red_hair": 0.91, "smile": 0.5}, "character": {}, "rating": "general"},
                faces=[])
    data = json.loads(run("show", ds, "a.png", "--json").stdout)
    assert data["tags"] == [{"tag": "1girl", "score": None, "category": None, "images": 2},
                            {"tag": "red_hair", "score": 0.91, "category": "general", "images": 1},
                            {"tag": "smile", "score": 0.5, "category": "general", "images": 2}]
    assert (data["rating"], data["faces"]) == ("general", 0)


def test_show_unknown_image_is_a_usage_error(ds):
    result = run("show", ds, "nope.png")
    assert result.exit_code == 2 and "not an image" in result.output


def test_edit_on_a_missing_folder_is_a_usage_error(tmp_path):
    result = run("edit", tmp_path / "nope")
    assert result.exit_code == 2 and "not a folder" in result.output


def test_undo_dry_run_says_what_it_would_do_and_changes_nothing(ds):
    run("remove", ds, "smile")
    edited = snapshot(ds)
    result = run("undo", ds, "--dry-run")
    assert result.exit_code == 0 and "would undo" in result.stdout and "would restore 2" in result.stdout
    assert "undid" not in result.stdout and "undone" not in result.stdout
    assert snapshot(ds) == edited


def test_redo_reapplies_what_undo_reverted(ds):
    before = snapshot(ds)
    run("remove", ds, "smile")
    edited = snapshot(ds)
    assert "undone" in run("undo", ds).stdout and snapshot(ds) == before
    result = run("redo", ds)
    assert result.exit_code == 0 and "redone" in result.stdout and snapshot(ds) == edited
    assert "nothing to redo" in run("redo", ds).stdout


@pytest.mark.parametrize("args", [["add", ""], ["add", " , "], ["remove", ""], ["move-first", ","],
                                  ["remove", "--regex", ""]])
def test_a_command_given_no_tag_is_a_usage_error(ds, args):
    before = snapshot(ds)
    result = run(args[0], ds, *args[1:])
    assert result.exit_code == 2 and "no tag" in result.output
    assert snapshot(ds) == before


def test_bulk_edits_leave_multi_line_captions_alone_until_joined(tmp_path):
    folder = write_dataset(tmp_path, {"a.png": "sks, smile", "b.png": "sks, smile\nsecond line, ignored\n"})
    result = run("add", folder, "solo")
    assert result.exit_code == 1 and "b.txt is on several lines" in result.stderr
    assert (folder / "a.txt").read_bytes() == b"sks, smile, solo\n"
    assert (folder / "b.txt").read_bytes() == b"sks, smile\nsecond line, ignored\n"   # nothing on line 2
    assert "join-lines" in run("lint", folder).stdout
    assert run("join-lines", folder).exit_code == 0
    assert (folder / "b.txt").read_bytes() == b"sks, smile, second line, ignored\n"
    assert run("add", folder, "solo").exit_code == 0
    assert (folder / "b.txt").read_bytes() == b"sks, smile, second line, ignored, solo\n"


def test_a_caption_that_is_not_utf8_is_named_as_skipped(tmp_path):
    folder = write_dataset(tmp_path, {"a.png": "sks", "b.png": b"sks, caf\xe9"})
    result = run("add", folder, "solo")
    assert result.exit_code == 1 and "b.txt is not UTF-8" in result.stderr
    assert (folder / "b.txt").read_bytes() == b"sks, caf\xe9"


MARKUP = {"a.png": "sks, [/], [blue eyes], smile", "b.png": "sks, [bold]x[/bold]"}


@pytest.mark.parametrize("args, shown", [
    (["show", "a.png"], "[blue eyes]"),
    (["stats"], "[blue eyes]"),
    (["stats", "--tag", "[/]"], "[/]"),
    (["remove", "[blue eyes]"], "- sks, [/], [blue eyes], smile"),
    (["lint", "--trigger", "[x]"], "no trigger '[x]'"),
])
def test_captions_that_look_like_markup_are_printed_as_written(tmp_path, args, shown):
    folder = write_dataset(tmp_path, MARKUP)
    result = run(args[0], folder, *args[1:])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert shown in result.output
