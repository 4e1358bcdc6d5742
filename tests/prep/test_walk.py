"""The one walk every command shares: folder links are never entered, and the ones that lead out of
the dataset, loop back or hide are listed with their reason."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from prep.errors import UsageError
from prep.records import Drop
from prep.walk import check_separate, walk_folders, walk_images


def _image(testdata: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(testdata / "photos/camera.png", path)
    return path


@pytest.fixture()
def layout(tmp_path: Path, testdata: Path) -> Path:
    """DS with an image in the root and in sub/, and every kind of folder link beside them."""
    root = tmp_path / "DS"
    _image(testdata, root / "a.png")
    _image(testdata, root / "sub" / "b.png")
    _image(testdata, tmp_path / "elsewhere" / "dir" / "x.png")
    _image(testdata, root / ".hidden" / "h.png")
    os.symlink(tmp_path / "elsewhere" / "dir", root / "linked")       # outside, absolute
    os.symlink("..", root / "up")                                     # the dataset's parent
    os.symlink("..", root / "sub" / "back")                           # back to the root: a loop
    os.symlink("sub", root / "again")                                 # inside: reached as sub/ anyway
    os.symlink(".hidden", root / "peek")                              # into a hidden folder
    os.symlink(tmp_path / "elsewhere" / "dir" / "x.png", root / "file-link.png")  # an image file link
    return root


def test_images_are_found_once_under_their_own_names_and_no_folder_link_is_entered(layout: Path) -> None:
    problems: list[Drop] = []
    found = [p.relative_to(layout).as_posix() for p in walk_images(layout, problems)]
    assert found == ["a.png", "file-link.png", "sub/b.png"]


@pytest.mark.parametrize("link, reason", [
    ("linked", "leads outside the dataset folder: not entered"),
    ("up", "symlink loop: the folder link leads back to"),
    ("sub/back", "symlink loop"),
    ("peek", "hidden folder"),
])
def test_each_link_not_entered_is_listed_with_its_reason(layout: Path, link: str, reason: str) -> None:
    problems: list[Drop] = []
    list(walk_images(layout, problems))
    reasons = {d.path: d.reason for d in problems}
    assert reason in reasons[link]


def test_a_link_to_a_folder_of_the_dataset_is_skipped_silently(layout: Path) -> None:
    problems: list[Drop] = []
    list(walk_images(layout, problems))
    assert "again" not in {d.path for d in problems}
    assert len(problems) == 4


def test_the_folder_walk_sees_the_same_folders(layout: Path) -> None:
    problems: list[Drop] = []
    folders = {f.rel: f.files for f in walk_folders(layout, problems)}
    assert folders == {"": ("a.png", "file-link.png"), "sub": ("b.png",)}
    assert len(problems) == 4


def test_a_dataset_reached_through_a_link_is_walked_normally(layout: Path, tmp_path: Path) -> None:
    os.symlink(layout, tmp_path / "ds-link")
    problems: list[Drop] = []
    assert len(list(walk_images(tmp_path / "ds-link", problems))) == 3
    assert len(problems) == 4


@pytest.mark.parametrize("out", ["DS/out", "DS", "DS/sub/deeper", "DS/up", "DS/up/DS/out", "."])
def test_an_output_inside_the_input_or_above_it_is_refused(layout: Path, tmp_path: Path, out: str) -> None:
    with pytest.raises(UsageError, match="inside"):
        check_separate(layout, tmp_path / out)


def test_an_output_beside_the_input_is_fine(layout: Path, tmp_path: Path) -> None:
    check_separate(layout, tmp_path / "DS_out")
    check_separate(layout, tmp_path / "elsewhere" / "out")
