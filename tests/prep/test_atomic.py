"""Atomic writes: a crash mid-write leaves the old file intact and no temp files behind."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from prep.atomic import atomic_open, write_text_atomic
from prep.images import save_image_atomic
from prep.records import Manifest, save_manifest


class Crash(Exception):
    pass


def test_crash_mid_write_keeps_old_file(tmp_path):
    target = tmp_path / "caption.txt"
    target.write_text("old caption")
    with pytest.raises(Crash):
        with atomic_open(target, "wb") as handle:
            handle.write(b"half a new cap")
            raise Crash()
    assert target.read_text() == "old caption"
    assert os.listdir(tmp_path) == ["caption.txt"]


def test_crash_during_image_encode_keeps_old_image(tmp_path, monkeypatch):
    target = tmp_path / "img.png"
    Image.new("RGB", (8, 8), "red").save(target)
    before = target.read_bytes()

    def exploding_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise Crash()

    monkeypatch.setattr(Image.Image, "save", exploding_save)
    with pytest.raises(Crash):
        save_image_atomic(Image.new("RGB", (8, 8), "blue"), target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["img.png"]


def test_crash_while_serialising_manifest_keeps_old_manifest(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    target.write_text('{"old": true}')
    import prep.records as records

    def exploding_dumps(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(records.json, "dumps", exploding_dumps)
    with pytest.raises(Crash):
        save_manifest(Manifest(images=()), target)
    assert target.read_text() == '{"old": true}'


def test_written_files_get_user_readable_mode(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "x")
    assert target.stat().st_mode & 0o777 == 0o644
