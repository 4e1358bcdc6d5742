"""Two `doctor --apply` runs at once, as two real processes: each quarantine gets its own journal
number and folder, nothing is set aside twice or unjournalled, and restoring every entry puts the
dataset back byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from prep.doctor.quarantine import QUARANTINE_DIR, journal_dir, restore_last
from prep.images import sha256_file

ROOT = Path(__file__).resolve().parents[2]

# Quarantines each image named on the command line in its own call (one journal entry each), as
# soon as the test says go.
RACER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from prep.doctor.quarantine import quarantine
root, ready, go, *images = sys.argv[2:]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.0005)
for image in images:
    quarantine(root, [image], f"racer {os.getpid()}: {image}")
"""

PER_RACER = 40


def _dataset(folder: Path, count: int) -> dict[str, str]:
    folder.mkdir()
    for i in range(count):
        (folder / f"{i:03d}.png").write_bytes(b"\x89PNG not decoded here " + bytes([i]) * 64)
        (folder / f"{i:03d}.txt").write_text(f"sks, picture {i}\n")
    return _files(folder)


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and ".loraprep" not in p.parts}


def _race(tmp_path: Path, root: Path, lists: list[list[str]]) -> None:
    go = tmp_path / "go"
    racers, readies = [], []
    for n, images in enumerate(lists):
        readies.append(tmp_path / f"ready{n}")
        racers.append(subprocess.Popen([sys.executable, "-c", RACER, str(ROOT), str(root), str(readies[-1]), str(go),
                                        *images], stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for racer in racers:
        _, errors = racer.communicate(timeout=300)
        assert racer.returncode == 0, errors[-2000:]


def _entries(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(journal_dir(root).glob("*.json"))]


def _restore_everything(root: Path, entries: int) -> None:
    for _ in range(entries):
        assert restore_last(root).entry is not None
    assert restore_last(root).entry is None
    assert not [p for p in (root / QUARANTINE_DIR).rglob("*") if p.is_file() and "journal" not in p.parts]


def test_two_runs_at_once_each_get_their_own_journal_number_and_folder(tmp_path):
    root = tmp_path / "ds"
    before = _dataset(root, 2 * PER_RACER)
    images = sorted(name for name in before if name.endswith(".png"))
    _race(tmp_path, root, [images[:PER_RACER], images[PER_RACER:]])

    entries = _entries(root)
    assert len(entries) == 2 * PER_RACER, "a run's journal entry was overwritten by the other's"
    assert not [name for name in before if (root / name).exists()]
    for number, entry in enumerate(entries, start=1):
        image = entry["description"].split(": ")[1]
        assert sorted(m["from"] for m in entry["moves"]) == [image, image[:-4] + ".txt"]
        for move in entry["moves"]:  # each file sits, unchanged, in its own entry's folder
            assert move["to"].startswith(f"{QUARANTINE_DIR.as_posix()}/{number:06d}/")
            assert sha256_file(root / move["to"]) == before[move["from"]] == move["sha256"]
    _restore_everything(root, len(entries))
    assert _files(root) == before


def test_two_runs_setting_aside_the_same_images_journal_each_file_once(tmp_path):
    root = tmp_path / "ds"
    before = _dataset(root, PER_RACER)
    images = sorted(name for name in before if name.endswith(".png"))
    _race(tmp_path, root, [images, images])

    entries = _entries(root)
    moved = [m["from"] for entry in entries for m in entry["moves"]]
    assert sorted(moved) == sorted(before), "a file was journalled twice, or not at all"
    for entry in entries:
        for move in entry["moves"]:
            assert sha256_file(root / move["to"]) == move["sha256"]
    _restore_everything(root, len(entries))
    assert _files(root) == before
