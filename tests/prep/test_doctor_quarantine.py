"""`--apply` sets images aside with a journal; `--restore` puts them back byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from doctorsupport import make_copy

from prep.doctor import diagnose, restore_last, set_aside
from prep.doctor.quarantine import QUARANTINE_DIR, RestoreConflict, journal_dir, quarantine
from prep.errors import UsageError
from prep.images import sha256_file
from prep.sidecars import update_meta


@pytest.fixture()
def dataset(tmp_path: Path, testdata: Path) -> Path:
    """Two photos with captions and metadata, and two copies of the first (resized, recompressed)."""
    for name in ("astronaut.png", "coffee.png"):
        shutil.copyfile(testdata / "photos" / name, tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text(f"sks, {name[:-4]}\n")
    for variant in ("resized", "jpeg70"):
        copy = tmp_path / make_copy(testdata, "photos/astronaut.png", variant, tmp_path)
        copy.with_suffix(".txt").write_text(f"sks, {variant}\n")
        update_meta(copy, tags={"general": {"sks": 0.9}, "character": {}, "rating": "general"})
    return tmp_path


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and ".loraprep" not in p.parts}


def test_apply_moves_the_copies_and_their_sidecars_not_the_kept_image(dataset: Path) -> None:
    before = _files(dataset)
    result = set_aside(diagnose(dataset))
    assert set(result.images) == {"copies/astronaut-resized.png", "copies/astronaut-jpeg70.jpg"}
    after = _files(dataset)
    moved = set(before) - set(after)
    assert moved == {"copies/astronaut-resized.png", "copies/astronaut-resized.txt",
                     "copies/astronaut-resized.loraprep.json", "copies/astronaut-jpeg70.jpg",
                     "copies/astronaut-jpeg70.txt", "copies/astronaut-jpeg70.loraprep.json"}
    for move in result.moved:  # each file sits, unchanged, under the quarantine
        assert sha256_file(dataset / move.target) == before[move.source] == move.sha256
        assert move.target.startswith(f"{QUARANTINE_DIR.as_posix()}/000001/")
    assert diagnose(dataset).section("duplicates") == []  # scans skip .loraprep/


def test_the_journal_lists_every_move(dataset: Path) -> None:
    result = set_aside(diagnose(dataset))
    entry = json.loads(result.entry.read_text())
    assert entry["schema"] == "loraprep.quarantine-journal/1"
    assert [m["from"] for m in entry["moves"]] == [m.source for m in result.moved]


def test_restore_puts_everything_back_byte_for_byte(dataset: Path) -> None:
    before = _files(dataset)
    set_aside(diagnose(dataset))
    restored = restore_last(dataset)
    assert len(restored.restored) == 6 and restored.conflicts == ()
    assert _files(dataset) == before
    assert not any((dataset / QUARANTINE_DIR / "000001").rglob("*.png"))
    assert restore_last(dataset).entry is None  # nothing left to restore


def test_restore_undoes_the_latest_apply_first(dataset: Path) -> None:
    set_aside(diagnose(dataset))
    second = quarantine(dataset, ["coffee.png"], "by hand")
    assert restore_last(dataset).entry.description == "by hand"
    assert (dataset / "coffee.png").is_file() and not (dataset / "copies/astronaut-jpeg70.jpg").exists()
    restore_last(dataset)
    assert (dataset / "copies/astronaut-jpeg70.jpg").is_file()
    assert second.entry.name == "000002.json" and (journal_dir(dataset) / "undone" / "000002.json").is_file()


def test_restore_refuses_when_the_old_place_is_taken(dataset: Path) -> None:
    set_aside(diagnose(dataset))
    (dataset / "copies/astronaut-resized.txt").write_text("a new caption someone wrote\n")
    with pytest.raises(RestoreConflict, match="astronaut-resized.txt"):
        restore_last(dataset)
    assert not (dataset / "copies/astronaut-resized.png").exists()  # nothing was restored
    result = restore_last(dataset, force=True)
    assert [m.source for m in result.conflicts] == ["copies/astronaut-resized.txt"]
    assert (dataset / "copies/astronaut-resized.png").is_file()
    assert (dataset / "copies/astronaut-resized.txt").read_text() == "a new caption someone wrote\n"


def test_a_caption_shared_with_the_kept_image_stays(tmp_path: Path, testdata: Path) -> None:
    shutil.copyfile(testdata / "photos/astronaut.png", tmp_path / "photo.png")
    make_copy(testdata, "photos/astronaut.png", "jpeg70", tmp_path)
    shutil.move(tmp_path / "copies/astronaut-jpeg70.jpg", tmp_path / "photo.jpg")
    (tmp_path / "photo.txt").write_text("sks, woman\n")
    result = set_aside(diagnose(tmp_path))
    assert result.images == ("photo.jpg",) and [m.source for m in result.moved] == ["photo.jpg"]
    assert (tmp_path / "photo.txt").is_file() and (tmp_path / "photo.png").is_file()


def test_an_image_whose_name_only_starts_alike_does_not_hold_back_the_sidecars(tmp_path: Path,
                                                                              testdata: Path) -> None:
    shutil.copyfile(testdata / "photos/astronaut.png", tmp_path / "orig.png")
    shutil.copyfile(testdata / "photos/coffee.png", tmp_path / "photo.x.png")
    make_copy(testdata, "photos/astronaut.png", "jpeg70", tmp_path)
    shutil.move(tmp_path / "copies/astronaut-jpeg70.jpg", tmp_path / "photo.jpg")
    (tmp_path / "photo.txt").write_text("sks, woman\n")
    result = set_aside(diagnose(tmp_path))
    assert result.images == ("photo.jpg",)
    assert sorted(m.source for m in result.moved) == ["photo.jpg", "photo.txt"]
    assert not (tmp_path / "photo.txt").exists() and (tmp_path / "photo.x.png").is_file()


@pytest.mark.parametrize(("kinds", "moved"), [
    (("blurry",), {"soft.png"}),
    (("duplicates", "blurry"), {"soft.png", "copies/astronaut-resized.png", "copies/astronaut-jpeg70.jpg"}),
])
def test_quarantine_kinds_choose_what_moves(dataset: Path, testdata: Path, kinds: tuple[str, ...],
                                            moved: set[str]) -> None:
    from doctorsupport import upscaled_from_quarter

    from prep.images import open_image

    upscaled_from_quarter(open_image(testdata / "photos/chelsea.png")).save(dataset / "soft.png")
    assert set(set_aside(diagnose(dataset), kinds).images) == moved


def test_unknown_quarantine_kind_is_a_usage_error(dataset: Path) -> None:
    with pytest.raises(UsageError, match="cannot quarantine 'everything'"):
        set_aside(diagnose(dataset), ("everything",))


def test_nothing_to_set_aside_writes_no_journal(tmp_path: Path, testdata: Path) -> None:
    shutil.copyfile(testdata / "photos/camera.png", tmp_path / "camera.png")
    result = set_aside(diagnose(tmp_path))
    assert result.entry is None and not journal_dir(tmp_path).exists()
