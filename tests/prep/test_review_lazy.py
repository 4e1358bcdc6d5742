"""Opening a big dataset: the editor lists it, shows the first screen, and reads the other captions
between keys. What it shows and writes is the same as when everything is read up front: edits
made before a caption's batch arrives are kept, counts cover every image once all are read, and
whatever needs every caption (filters, apply to all) reads the rest first."""

from __future__ import annotations

import gc
import os

import pytest
from captionsets import snapshot, write_dataset

from prep.captions.dataset import _read_all, read_many
from prep.review.app import CaptionEditor
from prep.review.session import Session

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


COUNT = 700  # three batches of 256 and a bit
SMILING = COUNT // 2 - 1  # odd numbers smile, but 0005.png has no caption


@pytest.fixture
def ds(tmp_path):
    captions = {f"{'sub/' if i % 3 == 0 else ''}{i:04d}.png": f"sks, tag{i % 7}, {'smile' if i % 2 else 'frown'}"
                for i in range(COUNT)}
    captions["0005.png"] = None  # an image without a caption
    return write_dataset(tmp_path / "ds", captions)


def _view(session: Session) -> list[tuple[str, list[str], bytes | None]]:
    return [(i.file.caption, i.tags, i.disk) for i in session.items]


def test_a_lazy_session_reads_on_touch_and_ends_where_an_eager_one_starts(ds):
    eager = Session(ds)
    lazy = Session(ds, lazy_from=0)
    assert eager.loaded and not lazy.loaded and len(lazy.items) == len(eager.items) == COUNT
    assert lazy.name(650) == eager.name(650)          # names come from the listing
    assert lazy.items[650].tags == eager.items[650].tags  # a touched item is read at once
    assert lazy.tag_count("smile") is None            # no count is shown before all are read
    batches = 1
    while not lazy.read_more():
        batches += 1
    assert batches == 3 and lazy.loaded
    assert _view(lazy) == _view(eager)
    assert lazy.frequency == eager.frequency and lazy.tag_count("smile") == eager.tag_count("smile") == SMILING


def test_an_edit_made_before_its_batch_arrives_is_kept_and_counted(ds):
    lazy = Session(ds, lazy_from=0)
    target = next(i for i in range(600, COUNT) if "frown" in lazy.items[i].tags)
    assert lazy.add_tags(target, "blue sky").ok
    lazy.finish_loading()
    assert lazy.items[target].tags[-1] == "blue sky"
    assert (ds / lazy.items[target].file.caption).read_bytes() == lazy.items[target].disk
    fresh = Session(ds)
    assert lazy.frequency == fresh.frequency and lazy.tag_count("blue sky") == 1
    assert _view(lazy) == _view(fresh)


def test_a_filter_and_apply_to_all_read_every_caption_first(ds):
    lazy = Session(ds, lazy_from=0)
    assert lazy.set_filter("=smile") == SMILING and lazy.loaded
    lazy.delete_tag(lazy.visible[0], 0)  # removes `sks`: the operation to repeat
    outcome = lazy.apply_to_filtered()
    assert outcome.ok and f"{SMILING - 1} caption(s) changed" in outcome.message
    after = Session(ds)
    assert after.tag_count("sks") == after.tag_count("frown") == COUNT // 2 and after.tag_count("smile") == SMILING


async def test_the_editor_shows_the_first_caption_then_reads_the_rest_between_keys(ds):
    editor = CaptionEditor(ds, session=Session(ds, lazy_from=0))
    was_enabled = gc.isenabled()
    async with editor.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.05)
        assert editor.current == 0
        first = editor.session.items[0]
        await pilot.press("+", *"new", "space", *"tag", "enter")  # an edit while captions are read
        for _ in range(500):
            if editor.session.loaded and not editor.workers:
                break
            await pilot.pause(0.01)
        assert editor.session.loaded and not editor.workers
        assert first.tags[-1] == "new tag" and editor.session.tag_count("new tag") == 1
        assert editor.session.tag_count("smile") == SMILING
        assert "×1" in "".join(s.text for s in editor._tag_label(len(first.tags) - 1, 40))
        assert gc.get_freeze_count() > 0  # the editor's reader ran, and put what it read out of the collector's way
        assert str(editor.query_one("#status").render()).startswith((f"{COUNT} images", "added new tag"))
    assert (ds / first.file.caption).read_bytes() == b"sks, tag1, smile, new tag\n"
    assert gc.get_freeze_count() == 0 and gc.isenabled() == was_enabled


def test_batched_reads_give_the_same_bytes_as_one_by_one(tmp_path):
    folder = tmp_path / "files"
    (folder / "deep" / "er").mkdir(parents=True)
    files = {f"{i:03d}.txt": os.urandom(i * 7) for i in range(300)}
    files["deep/er/big.txt"] = os.urandom(200_000)  # more than one read
    for name, data in files.items():
        (folder / name).write_bytes(data)
    names = [*files, "missing.txt", None]
    expected = [*files.values(), None, None]
    assert read_many(folder, names) == expected
    assert _read_all([str(folder / n) if n else None for n in names]) == expected


def test_an_eager_and_a_lazy_open_change_nothing_on_disk(ds):
    before = snapshot(ds)
    Session(ds)
    lazy = Session(ds, lazy_from=0)
    lazy.finish_loading()
    assert snapshot(ds) == before
