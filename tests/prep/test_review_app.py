"""The caption editor driven headless at 80×24 with a pilot, on real images; assertions on disk."""

from __future__ import annotations

import pytest
from captionsets import snapshot, write_dataset
from textual import events
from textual.keys import _character_to_key
from typer.testing import CliRunner

from cli import app as cli_app
from prep.review.app import CaptionEditor
from prep.sidecars import update_meta

pytestmark = pytest.mark.anyio  # anyio's pytest plugin (dev extra) runs the async tests


@pytest.fixture
def anyio_backend():
    return "asyncio"


IMAGES = {"astronaut.png": "photos/astronaut.png", "camera.png": "photos/camera.png",
          "chelsea.png": "photos/chelsea.png", "rocket.jpg": "photos/rocket.jpg",
          "sylvie.png": "anime/sylvie_blue_normal.png"}
CAPTIONS = {"astronaut.png": "sks, 1boy, spacesuit, smile", "camera.png": "sks, 1boy, camera, coat",
            "chelsea.png": "cat, no humans, smile", "rocket.jpg": "rocket, sky, no humans",
            "sylvie.png": "sks, 1girl, blue hair, smile"}


@pytest.fixture
def ds(tmp_path, testdata):
    folder = write_dataset(tmp_path / "ds", dict(CAPTIONS), images_from={k: testdata / v for k, v in IMAGES.items()})
    update_meta(folder / "astronaut.png", faces=[{"box": [1, 2, 3, 4], "score": 0.9, "detector": "yunet"}],
                tags={"general": {"1boy": 0.97, "spacesuit": 0.88}, "character": {}, "rating": "general"})
    update_meta(folder / "chelsea.png", faces=[])
    update_meta(folder / "rocket.jpg", faces=[])
    return folder


async def type_into(pilot, widget_id: str, text: str) -> None:
    """Fill an input as if typed, then press Enter (the editor acts on Enter, not per keystroke)."""
    pilot.app.query_one(widget_id).value = text
    pilot.app.query_one(widget_id).focus()
    await pilot.press("enter")


async def burst(pilot, *keys: str) -> None:
    """Keys arriving in one read (a paste, a fast typist, SSH): all queued before any is handled,
    as the terminal driver posts them; `pilot.press` would wait for each to finish instead."""
    for key in keys:
        character = key if len(key) == 1 else ("\r" if key == "enter" else None)
        name = _character_to_key(key) if len(key) == 1 and not key.isalnum() else key
        pilot.app.post_message(events.Key(name, character))
    await pilot.pause()


async def preview_drawn(pilot) -> None:
    """Wait for the preview, which is drawn off the UI thread."""
    for _ in range(500):
        if pilot.app.preview_ready():
            return
        await pilot.pause(0.01)
    raise AssertionError("the preview never arrived")


def caption(folder, name):
    return (folder / name).with_suffix(".txt").read_bytes()


async def test_navigate_delete_add_undo_filter_quit(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")                       # astronaut → camera
        assert editor.session.name(editor.current) == "camera.png"
        await pilot.press("down", "d")               # delete the highlighted second tag, "1boy"
        assert caption(ds, "camera.png") == b"sks, camera, coat\n"
        await pilot.press("plus", *"tripod", "enter")
        assert caption(ds, "camera.png") == b"sks, camera, coat, tripod\n"
        await pilot.press("u")
        assert caption(ds, "camera.png") == b"sks, camera, coat\n"
        await pilot.press("slash", *"no humans", "enter")
        assert [editor.session.name(i) for i in editor.session.visible] == ["chelsea.png", "rocket.jpg"]
        await pilot.press("q")
    assert caption(ds, "camera.png") == b"sks, camera, coat\n"
    assert caption(ds, "chelsea.png") == CAPTIONS["chelsea.png"].encode()


async def test_undo_and_redo_restore_exact_bytes(ds):
    (ds / "astronaut.txt").write_bytes(b"\xef\xbb\xbfsks,1boy ,spacesuit,smile")  # odd formatting, no newline
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.press("d")
        assert caption(ds, "astronaut.png") == b"1boy, spacesuit, smile\n"
        await pilot.press("u")
        assert caption(ds, "astronaut.png") == b"\xef\xbb\xbfsks,1boy ,spacesuit,smile"
        await pilot.press("U")
        assert caption(ds, "astronaut.png") == b"1boy, spacesuit, smile\n"


async def test_toggle_and_reorder_tags(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.press("down", "t")              # "1boy" off: kept in the list, not in the file
        assert caption(ds, "astronaut.png") == b"sks, spacesuit, smile\n"
        assert "1boy" in editor.session.items[editor.current].tags
        await pilot.press("t")
        assert caption(ds, "astronaut.png") == b"sks, 1boy, spacesuit, smile\n"
        await pilot.press("down", "down", "K")      # move "smile" up one
        assert caption(ds, "astronaut.png") == b"sks, 1boy, smile, spacesuit\n"


@pytest.mark.parametrize("query, expected", [
    ("noface", ["chelsea.png", "rocket.jpg"]),
    ("=smile", ["astronaut.png", "chelsea.png", "sylvie.png"]),
    ("-sks", ["chelsea.png", "rocket.jpg"]),
    ("hair", ["sylvie.png"]),
    ("lint:trigger-missing", ["chelsea.png", "rocket.jpg"]),
])
async def test_filter_box(ds, query, expected):
    from prep.captions.lint import LintOptions

    editor = CaptionEditor(ds, lint_options=LintOptions(trigger="sks"))
    async with editor.run_test(size=(80, 24)) as pilot:
        await type_into(pilot, "#filter", query)
        assert [editor.session.name(i) for i in editor.session.visible] == expected
        assert editor.session.name(editor.current) == expected[0]


async def test_apply_to_all_filtered_then_cli_undo_reverts_it(ds):
    before = snapshot(ds)
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await type_into(pilot, "#filter", "=sks")
        await type_into(pilot, "#add", "solo")  # on astronaut, then repeat on every filtered image
        await pilot.press("A")
        assert "on 2 filtered image(s)?" in str(editor.query_one("#status").render())
        await pilot.press("y")
        await pilot.press("q")
    assert [caption(ds, n).endswith(b", solo\n") for n in IMAGES] == [True, True, False, False, True]
    editor_undo = CliRunner().invoke(cli_app, ["captions", "undo", str(ds)])
    assert editor_undo.exit_code == 0
    # The journal undoes the bulk step; the single add on astronaut stays (it was saved on its own).
    assert caption(ds, "astronaut.png") == b"sks, 1boy, spacesuit, smile, solo\n"
    assert {k: v for k, v in snapshot(ds).items() if before[k] != v} == {"astronaut.txt": caption(ds, "astronaut.png")}


async def test_caption_changed_on_disk_is_not_clobbered(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        (ds / "astronaut.txt").write_text("edited elsewhere, sks")
        await pilot.press("d")
        assert (ds / "astronaut.txt").read_text() == "edited elsewhere, sks"
        assert editor.session.items[editor.current].tags == ["edited elsewhere", "sks"]  # reloaded from disk
        assert "changed on disk" in str(editor.query_one("#status").render())


async def test_next_lint_problem_and_preview_of_the_selected_image_only(ds):
    from prep.captions.lint import LintOptions

    editor = CaptionEditor(ds, lint_options=LintOptions(trigger="sks"))
    async with editor.run_test(size=(80, 24)) as pilot:
        await preview_drawn(pilot)
        picture = editor.query_one("#preview").picture
        assert picture.lines and picture.lines[0][0].text[0] == "▀"   # astronaut.png drawn in half blocks
        await pilot.press("e")
        assert editor.session.name(editor.current) == "chelsea.png"
        assert "trigger" in str(editor.query_one("#status").render())
        await pilot.press("e")
        assert editor.session.name(editor.current) == "rocket.jpg"


async def test_opens_without_decoding_images(tmp_path):
    """Placeholder files that are not images: the list opens, only the selected one is tried."""
    folder = write_dataset(tmp_path, {f"{i:04d}.png": f"sks, tag{i % 7}" for i in range(300)})
    editor = CaptionEditor(folder)
    async with editor.run_test(size=(80, 24)) as pilot:
        assert len(editor.session.items) == 300
        await preview_drawn(pilot)
        assert "no preview" in editor.query_one("#preview").picture.message
        await pilot.press("end")
        await pilot.press("ctrl+c")
    assert caption(folder, "0000.png") == b"sks, tag0"


def test_apply_to_filtered_leaves_captions_changed_elsewhere_alone(ds):
    from prep.review.session import Session

    session = Session(ds)
    session.set_filter("=sks")
    session.delete_tag(session.visible[0], 3)   # "smile"
    (ds / "sylvie.txt").write_text("changed elsewhere, smile")
    outcome = session.apply_to_filtered()
    assert not outcome.ok and "changed on disk" in outcome.message
    assert (ds / "sylvie.txt").read_text() == "changed elsewhere, smile"
    assert session.items[session.visible[-1]].tags == ["changed elsewhere", "smile"]   # reloaded
    assert caption(ds, "astronaut.png") == b"sks, 1boy, spacesuit\n"


async def test_accept_is_remembered_until_the_caption_changes(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.press("a", "a")                  # accept astronaut and camera, land on chelsea
        assert editor.session.name(editor.current) == "chelsea.png"
    (ds / "camera.txt").write_text("changed since, sks")
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await type_into(pilot, "#filter", "todo")
        assert [editor.session.name(i) for i in editor.session.visible] == [
            "camera.png", "chelsea.png", "rocket.jpg", "sylvie.png"]


@pytest.mark.parametrize("keys, expected", [
    (["+", *"dress", "enter"], {"astronaut.txt": b"sks, 1boy, spacesuit, smile, dress\n"}),
    (["+", *"dress", "enter", "d"], {"astronaut.txt": b"1boy, spacesuit, smile, dress\n"}),
    (["/", *"day", "enter"], {}),
    (["n", "d"], {"camera.txt": b"1boy, camera, coat\n"}),
    (["n", "down", "d", "p", "d"], {"camera.txt": b"sks, camera, coat\n", "astronaut.txt": b"1boy, spacesuit, smile\n"}),
])
async def test_keys_typed_ahead_act_on_the_state_the_previous_key_left(ds, keys, expected):
    before = snapshot(ds)
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await burst(pilot, *keys)
        assert {k: v for k, v in snapshot(ds).items() if before[k] != v} == expected
        assert not any(item.is_accepted for item in editor.session.items)


async def test_filter_typed_ahead_filters_and_changes_nothing(ds):
    before = snapshot(ds)
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await burst(pilot, "/", *"smile", "enter", "n")
        assert editor.session.filter_text == "smile"
        assert editor.session.name(editor.current) == "chelsea.png"   # the second of three matches
    assert snapshot(ds) == before


LATIN1 = b"sks, caf\xe9, 1girl"   # not UTF-8: the editor cannot read it, so it must not rewrite it


@pytest.mark.parametrize("keys", [["+", *"newtag", "enter"], ["d"], ["t"], ["J"], ["down", "A", "y"]])
async def test_a_caption_that_is_not_utf8_is_never_replaced(ds, keys):
    (ds / "astronaut.txt").write_bytes(LATIN1)
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        if "A" in keys:   # make `A` have something to repeat: delete a tag on camera, then back to astronaut
            await pilot.press("n", "d", "p")
        await burst(pilot, *keys)
        assert "not UTF-8" in str(editor.query_one("#heading").render())
        assert "not UTF-8" in str(editor.query_one("#raw").render())
    assert caption(ds, "astronaut.png") == LATIN1


async def test_apply_to_filtered_skips_a_caption_that_is_not_utf8(ds):
    (ds / "sylvie.txt").write_bytes(b"sks, \xff\xfe, smile")
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.press("down", "d")         # remove "1boy" from astronaut
        await pilot.press("A", "y")
        assert "not UTF-8" in str(editor.query_one("#status").render())
    assert caption(ds, "camera.png") == b"sks, camera, coat\n"
    assert caption(ds, "sylvie.png") == b"sks, \xff\xfe, smile"


@pytest.mark.parametrize("keys, expected", [
    (["down", "down", "d"], b"sks, smile, 1girl, smile\n"),                 # the first "smile" only
    (["down", "down", "down", "down", "d"], b"sks, smile, smile, 1girl\n"), # the last one only
    (["down", "down", "t"], b"sks, smile, 1girl, smile\n"),
    (["down", "down", "down", "down", "t"], b"sks, smile, smile, 1girl\n"),
    (["down", "down", "down", "down", "K"], b"sks, smile, smile, smile, 1girl\n"),
])
async def test_delete_and_toggle_act_on_the_highlighted_occurrence_of_a_repeated_tag(tmp_path, keys, expected):
    ds = write_dataset(tmp_path, {"a.png": "sks, smile, smile, 1girl, smile"})
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await burst(pilot, *keys)
    assert (ds / "a.txt").read_bytes() == expected


async def test_single_edits_survive_a_restart_for_u_and_for_captions_undo(ds):
    before = snapshot(ds)
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.press("d", "n", "plus", *"tripod", "enter")   # two single-image edits, then quit
    editor = CaptionEditor(ds)                                   # a new session: `u` sees them
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.press("u")
        assert caption(ds, "camera.png") == CAPTIONS["camera.png"].encode()
        assert editor.session.name(editor.current) == "camera.png"
        assert "undone" in str(editor.query_one("#status").render())
    assert CliRunner().invoke(cli_app, ["captions", "undo", str(ds)]).exit_code == 0   # and the CLI the other
    assert snapshot(ds) == before


async def test_undoing_apply_all_in_the_editor_leaves_no_entry_for_captions_undo(ds):
    before = snapshot(ds)
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await type_into(pilot, "#filter", "=sks")
        await type_into(pilot, "#add", "solo")
        await pilot.press("A", "y", "u")                       # apply to all filtered, then undo it
        assert caption(ds, "camera.png") == CAPTIONS["camera.png"].encode()
    result = CliRunner().invoke(cli_app, ["captions", "undo", str(ds)])
    assert result.exit_code == 0 and "add solo" in result.stdout   # the single add, not the undone `A`
    assert snapshot(ds) == before


async def test_u_undoes_a_bulk_command_and_shift_u_redoes_it(ds):
    assert CliRunner().invoke(cli_app, ["captions", "remove", str(ds), "smile"]).exit_code == 0
    edited = snapshot(ds)
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.press("u")
        assert caption(ds, "chelsea.png") == CAPTIONS["chelsea.png"].encode()
        assert "smile" in editor.session.items[editor.current].tags   # the shown item is reloaded
        await pilot.press("U")
    assert snapshot(ds) == edited


async def test_an_undo_refused_by_an_outside_change_says_so(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.press("d")
        (ds / "astronaut.txt").write_text("changed elsewhere")
        await pilot.press("u")
        status = str(editor.query_one("#status").render())
        assert "not undone" in status and "changed since" in status
    assert (ds / "astronaut.txt").read_text() == "changed elsewhere"


async def test_temporaries_of_a_killed_run_are_removed_on_start(ds):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = ds / f".astronaut.txt.lp{int(dead.stdout)}.x1y2.tmp"
    leftover.write_bytes(b"half")
    mine = ds / ".notes.tmp"                                    # not ours: never touched
    mine.write_bytes(b"keep")
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        for _ in range(300):                                    # cleaned off the UI thread
            if "removed 1 temporary file" in status(editor):
                break
            await pilot.pause(0.01)
        assert "removed 1 temporary file" in status(editor)
    assert not leftover.exists() and mine.exists()


# ---- what users of BooruDatasetTagManager and taggui expect


def status(editor) -> str:
    return str(editor.query_one("#status").render())


async def test_add_box_completes_tags_from_the_dataset_with_counts(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await burst(pilot, "n", "+", *"sm")                       # on camera, which has no smile yet
        assert "smile ×3" in str(editor.query_one("#suggest").render())
        await burst(pilot, "tab", "enter")
        assert caption(ds, "camera.png") == b"sks, 1boy, camera, coat, smile\n"
        await burst(pilot, "+", *"no_hu", "down", "enter")        # `_` matches a space; ↓ then Enter takes it
        assert caption(ds, "camera.png") == b"sks, 1boy, camera, coat, smile, no humans\n"


@pytest.mark.parametrize("query, expected", [
    ("=sks =smile", ["astronaut.png", "sylvie.png"]),
    ("=SKS -1boy", ["sylvie.png"]),
    ("=sks, -1Boy", ["sylvie.png"]),
    ("no_humans", ["chelsea.png", "rocket.jpg"]),
    ("Blue_Hair", ["sylvie.png"]),
    ("=smile todo", ["astronaut.png", "chelsea.png", "sylvie.png"]),
    ("=smile noface", ["chelsea.png"]),
])
async def test_filter_terms_combine_and_ignore_case_and_underscores(ds, query, expected):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await type_into(pilot, "#filter", query)
        assert [editor.session.name(i) for i in editor.session.visible] == expected


async def test_an_unknown_filter_kind_is_an_error_and_keeps_the_filter(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await type_into(pilot, "#filter", "=smile")
        await type_into(pilot, "#filter", "lint:bogus")
        assert "unknown lint kind 'bogus'" in status(editor)
        assert [editor.session.name(i) for i in editor.session.visible] == ["astronaut.png", "chelsea.png", "sylvie.png"]


async def test_clearing_the_filter_keeps_the_selected_image(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await type_into(pilot, "#filter", "=smile")
        await pilot.press("n")
        assert editor.session.name(editor.current) == "chelsea.png"
        await type_into(pilot, "#filter", "")
        assert len(editor.session.visible) == 5 and editor.session.name(editor.current) == "chelsea.png"
        assert editor.query_one("#files").cursor == 2


async def test_rename_a_tag_in_place_on_one_image(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await burst(pilot, "down", "down", "down", "r", "ctrl+u", *"grin, teeth", "enter")
    assert caption(ds, "astronaut.png") == b"sks, 1boy, spacesuit, grin, teeth\n"
    assert caption(ds, "sylvie.png") == CAPTIONS["sylvie.png"].encode()


@pytest.mark.parametrize("answer, changed", [("y", True), ("n", False), ("escape", False)])
async def test_replace_across_the_filtered_images_asks_first(ds, answer, changed):
    before = snapshot(ds)
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await type_into(pilot, "#filter", "=sks")
        await burst(pilot, "escape", "down", "R", "ctrl+u", *"male", "enter")   # back to the tags; "1boy" → "male"
        assert "'1boy' → 'male'" in status(editor) and "on 2 filtered image(s)?" in status(editor)
        assert snapshot(ds) == before                                    # nothing yet
        await burst(pilot, answer)
    edited = {k for k, v in snapshot(ds).items() if before[k] != v}
    assert edited == ({"astronaut.txt", "camera.txt"} if changed else set())
    if changed:
        assert caption(ds, "camera.png") == b"sks, male, camera, coat\n"


async def test_apply_all_cancelled_changes_nothing(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await burst(pilot, "+", *"solo", "enter")
        after_add = snapshot(ds)
        await burst(pilot, "A", "d")                                  # any key but y cancels, and only cancels
        assert "cancelled" in status(editor)
    assert snapshot(ds) == after_add


async def test_question_mark_lists_every_key_and_the_next_key_only_closes_it(ds):
    from textual.keys import format_key

    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        shown = str(editor.query_one("#help").render())
        assert editor.query_one("#help").has_class("open")
        for binding in CaptionEditor.BINDINGS:
            assert binding.description in shown
            for key in binding.key.split(","):
                assert format_key(key) in shown
        await pilot.press("d")
        assert not editor.query_one("#help").has_class("open")
    assert caption(ds, "astronaut.png") == CAPTIONS["astronaut.png"].encode()


def test_the_footer_fits_80_columns_and_shows_undo_redo_and_apply_all():
    footer = CaptionEditor.footer_text().plain
    assert len(footer) <= 80
    for key in ("n/p", "u/U", "A", "/", "?", "q", "+", "d", "r"):
        assert f" {key} " in footer


async def test_at_80x24_each_tag_takes_one_line(tmp_path):
    tags = [f"a rather long tag name number {i} with words" for i in range(30)]
    folder = write_dataset(tmp_path, {"a.png": ", ".join(tags)})
    editor = CaptionEditor(folder)
    async with editor.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        tag_list = editor.query_one("#tags")
        assert tag_list.virtual_size.height == 30
        width = tag_list.scrollable_content_region.width
        line = tag_list.render_line(0)
        assert line.cell_length == width and "…" in line.text and "×1" in line.text


async def test_file_list_shows_sub_folders_and_full_paths_on_demand(tmp_path):
    folder = write_dataset(tmp_path, {"anime/characters/sylvie_front.png": "sks", "photos/a.png": "sks"})
    editor = CaptionEditor(folder)
    async with editor.run_test(size=(80, 24)) as pilot:
        files = editor.query_one("#files")
        narrow = files.render_line(0).text
        assert "/sylvie_front.png" in narrow and narrow.strip().startswith("…")
        assert "photos/a.png" in files.render_line(1).text
        await pilot.press("f")
        await pilot.pause()
        assert "anime/characters/sylvie_front.png" in files.render_line(0).text
        await type_into(pilot, "#filter", "in:photos")
        assert [editor.session.name(i) for i in editor.session.visible] == ["photos/a.png"]


async def test_tag_panel_lists_the_dataset_tags_with_counts_and_enter_filters(ds):
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(120, 30)) as pilot:
        await pilot.press("T")
        vocab = editor.query_one("#vocab")
        assert vocab.display and vocab.render_line(0).text.split() == ["3", "sks"]
        await pilot.press("down", "down", "down", "enter")         # sks 3, smile 3, 1boy 2, no humans 2
        assert editor.query_one("#filter").value == "=no humans"
        assert [editor.session.name(i) for i in editor.session.visible] == ["chelsea.png", "rocket.jpg"]


async def test_captions_and_names_that_look_like_markup_are_shown_as_written(tmp_path):
    folder = write_dataset(tmp_path, {"a [v2].png": "sks, [/], [blue eyes], [b]bold[/b]", "b.png": "sks"})
    editor = CaptionEditor(folder)
    async with editor.run_test(size=(100, 30), notifications=True) as pilot:
        await pilot.pause()
        assert str(editor.query_one("#raw").render()) == "sks, [/], [blue eyes], [b]bold[/b]"
        assert "a [v2].png" in str(editor.query_one("#heading").render())
        assert "a [v2].png" in editor.query_one("#files").render_line(0).text
        tags = editor.query_one("#tags")
        assert [tags.render_line(i).text[:11] for i in range(1, 4)] == ["[/]        ", "[blue eyes]", "[b]bold[/b]"]
        await pilot.press("down", "d")                               # the message quotes the tag
        assert "removed '[/]'" in status(editor)
        (folder / "a [v2].txt").write_text("changed elsewhere")
        await pilot.press("d")                                        # refused, with a warning notification
        await pilot.pause(0.1)
        toasts = " ".join(str(t.render()) for t in editor.screen.query("Toast"))
        assert "a [v2].txt changed on disk" in toasts
    assert (folder / "a [v2].txt").read_text() == "changed elsewhere"


async def test_a_paste_goes_into_the_box_and_never_runs_as_commands(ds):
    before = snapshot(ds)
    editor = CaptionEditor(ds)
    async with editor.run_test(size=(80, 24)) as pilot:
        editor.post_message(events.Paste("d\nq"))          # focus on the tags: ignored, not `d` and `q`
        await pilot.pause()
        assert snapshot(ds) == before
        await pilot.press("plus")
        editor.post_message(events.Paste("dress\nhat\n"))
        await burst(pilot, "enter")
    assert caption(ds, "astronaut.png") == b"sks, 1boy, spacesuit, smile, dress, hat\n"
