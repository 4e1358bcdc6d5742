"""Loading a caption folder: pairing images with sidecars, keeping exact bytes, reading no pixels."""

from __future__ import annotations

import pytest
from captionsets import write_dataset

from prep.captions.dataset import load_dataset
from prep.errors import UsageError


def test_pairs_each_image_with_its_caption_and_keeps_exact_bytes(tmp_path):
    write_dataset(tmp_path, {"a.png": b"\xef\xbb\xbfsks, 1girl \r\n", "b.jpg": "solo", "c.webp": None,
                             "gone.txt": "orphan, tags"})
    dataset = load_dataset(tmp_path)
    rows = {(f.image, f.caption, f.raw, f.tags) for f in dataset.files}
    assert rows == {("a.png", "a.txt", b"\xef\xbb\xbfsks, 1girl \r\n", ("sks", "1girl")),
                    ("b.jpg", "b.txt", b"solo", ("solo",)),
                    ("c.webp", "c.txt", None, ()),
                    (None, "gone.txt", b"orphan, tags", ("orphan", "tags"))}


@pytest.mark.parametrize("name, expected_images", [
    ("10_sks woman/a.png", {"10_sks woman/a.png"}),          # kohya repeat folders are searched
    (".loraprep/journal/x.png", set()),                       # the state folder is not part of the dataset
    ("a.loraprep.json", set()),                                # meta sidecars are not captions or images
])
def test_walks_subfolders_but_skips_hidden_state(tmp_path, name, expected_images):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"{}")
    assert {f.image for f in load_dataset(tmp_path).files if f.image} == expected_images


def test_non_utf8_caption_is_kept_as_bytes_and_marked_unreadable(tmp_path):
    write_dataset(tmp_path, {"a.png": b"caf\xe9"})
    (f,) = load_dataset(tmp_path).files
    assert f.unreadable and f.raw == b"caf\xe9" and f.tags == ()


def test_lookup_by_image_or_caption_path(tmp_path):
    write_dataset(tmp_path, {"sub/a.png": "x"})
    dataset = load_dataset(tmp_path)
    assert dataset.get("sub/a.png") is dataset.get("sub/a.txt") is dataset.files[0]


def test_other_caption_extension_is_used_end_to_end(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.caption").write_text("x, y")
    (tmp_path / "a.txt").write_text("not this")
    (f,) = load_dataset(tmp_path, ".caption").files
    assert (f.caption, f.tags) == ("a.caption", ("x", "y"))


def test_missing_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        load_dataset(tmp_path / "nope")


def test_tag_counts_count_images_not_repeats(tmp_path):
    write_dataset(tmp_path, {"a.png": "x, x, y", "b.png": "x", "o.txt": "x"})
    assert load_dataset(tmp_path).tag_counts() == {"x": 2, "y": 1}
