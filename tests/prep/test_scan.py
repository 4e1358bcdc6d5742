"""scan: the bad-input corpus is reported file by file while everything else is read."""

from __future__ import annotations

import pytest

from corpus import LIMIT_PIXELS
from prep.scan import scan_folder


def test_scan_reports_every_bad_file_by_name_and_reads_the_rest(bad_corpus):
    folder, kinds = bad_corpus
    result = scan_folder(folder, max_pixels=LIMIT_PIXELS)
    dropped = {d.path: d.reason for d in result.dropped}
    read = {e.rel for e in result.entries}
    for name, kind in kinds.items():
        if kind == "ok":
            assert name in read, name
        elif kind in ("bad", "bad_caption"):
            assert name in dropped, name
            assert dropped[name]
    assert "caption is not UTF-8" in dropped["bad_caption.png"]
    assert "exceeds the limit" in dropped["big.png"]


def test_scan_reports_folder_symlink_loops_once_and_terminates(bad_corpus):
    folder, _ = bad_corpus
    result = scan_folder(folder, max_pixels=LIMIT_PIXELS)
    loops = [d for d in result.dropped if "symlink loop" in d.reason]
    assert len(loops) == 1 and loops[0].path.endswith("subdir/up")


def test_scan_reads_sizes_from_headers_and_captions(testdata, tmp_path):
    import shutil
    shutil.copy(testdata / "anime/concert1.jpg", tmp_path / "c.jpg")
    (tmp_path / "c.txt").write_text("\ufeff2girls, stage \n")
    entry = scan_folder(tmp_path).entries[0]
    assert entry.size == (2400, 1530) and entry.caption == "2girls, stage"


def test_scan_warns_when_two_images_share_one_caption_file(tmp_path, testdata):
    import shutil
    shutil.copy(testdata / "photos/astronaut.png", tmp_path / "a.png")
    shutil.copy(testdata / "photos/rocket.jpg", tmp_path / "a.jpg")
    result = scan_folder(tmp_path)
    assert len(result.entries) == 2
    assert len(result.warnings) == 1 and "shares caption file a.txt" in result.warnings[0].reason


@pytest.mark.parametrize("folder_name, repeats, tokens", [("10_sks woman", 10, "sks woman"), ("1_style", 1, "style")])
def test_scan_follows_kohya_repeat_folders(tmp_path, testdata, folder_name, repeats, tokens):
    import shutil
    (tmp_path / folder_name / "sub").mkdir(parents=True)
    shutil.copy(testdata / "photos/astronaut.png", tmp_path / folder_name / "sub" / "a.png")
    entry = scan_folder(tmp_path).entries[0]
    assert entry.repeat_folder.repeats == repeats and entry.repeat_folder.class_tokens == tokens
