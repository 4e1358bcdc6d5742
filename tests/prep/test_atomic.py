"""Atomic writes: a crash mid-write leaves the old file intact and no temp files behind."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from prep.atomic import atomic_open, clean_stale_temporaries, stale_temporaries, write_text_atomic
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


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped), so no process runs under it."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    killed = tmp_path / "sub" / f".a.txt.lp{_dead_pid()}.x1y2z3ab.tmp"
    killed.write_bytes(b"half")
    removed = clean_stale_temporaries(tmp_path)
    assert removed == [killed] and not killed.exists()


def test_live_writers_and_user_files_are_left_alone(tmp_path):
    live = tmp_path / f".a.txt.lp{os.getpid()}.abcdefgh.tmp"
    users = tmp_path / ".notes.tmp"
    plain = tmp_path / "b.txt"
    for path in (live, users, plain):
        path.write_bytes(b"x")
    assert clean_stale_temporaries(tmp_path) == []
    assert live.exists() and users.exists() and plain.exists()


def test_atomic_open_names_its_temporary_after_this_process(tmp_path):
    target = tmp_path / "c.txt"
    with atomic_open(target) as handle:
        handle.write(b"x")
        (temp,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert temp.name.startswith(f".c.txt.lp{os.getpid()}.")
        assert stale_temporaries(tmp_path) == []
    assert target.read_bytes() == b"x"
