"""Each sentence captioner (florence2, joycaption, qwen-vl) the way users meet it: a dry run shows the
captions and writes nothing; awkward images (CMYK, LA, 16-bit grey) are captioned, a decompression
bomb and a broken file are skipped with their reasons; Ctrl-C (SIGINT to `python -m cli tag`) exits
130 leaving only whole captions, and running again finishes the rest. (A missing model's one-line
`models pull` message: tests/prep/test_vlm_captioners.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner
from vlmmodels import tiny_florence2, tiny_llava, tiny_qwen_vl  # noqa: F401

from cli import app
from prep.images import DEFAULT_MAX_PIXELS
from prep.sidecars import read_meta

runner = CliRunner()
ROOT = Path(__file__).parents[2]
CAPTIONERS = [("florence2", "tiny_florence2"), ("joycaption", "tiny_llava"), ("qwen-vl", "tiny_qwen_vl")]
IDS = [name for name, _ in CAPTIONERS]


def _png_over_the_pixel_limit(path: Path) -> None:
    """A valid 1-bit PNG of more pixels than DEFAULT_MAX_PIXELS; tiny on disk (all zero rows)."""
    side = int(DEFAULT_MAX_PIXELS ** 0.5) + 100
    row = b"\x00" * (1 + (side + 7) // 8)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixels = zlib.compressobj(9)
    body = b"".join(pixels.compress(row) for _ in range(side)) + pixels.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.fixture
def awkward(testdata: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    shutil.copy(testdata / "photos/rocket.jpg", folder / "rocket.jpg")
    photo = Image.open(testdata / "photos/coffee.png").convert("RGB").resize((96, 64))
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    photo.convert("LA").save(folder / "grey_alpha.png")
    Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21)).save(folder / "grey16.png")
    _png_over_the_pixel_limit(folder / "bomb.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def _tag(folder: Path, captioner: str, model: Path, *args: str):
    return runner.invoke(app, ["tag", str(folder), "--captioner", captioner, "--caption-dir", str(model),
                               "--max-new-tokens", "6", *args], env={"COLUMNS": "200"})


@pytest.mark.parametrize(("captioner", "fixture"), CAPTIONERS, ids=IDS)
def test_dry_run_shows_each_caption_and_writes_nothing(captioner, fixture, testdata, tmp_path, request) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in ("photos/rocket.jpg", "anime/lucy_happy.png"):
        shutil.copy(testdata / name, folder / Path(name).name)
    before = sorted(p.name for p in folder.iterdir())
    result = _tag(folder, captioner, request.getfixturevalue(fixture), "--dry-run", "--trigger", "sks")
    assert result.exit_code == 0, result.output
    assert "Captions that would be written (2 of 2)" in result.output
    assert "rocket.jpg" in result.output and "lucy_happy.png" in result.output and "sks" in result.output
    assert sorted(p.name for p in folder.iterdir()) == before  # no caption, no metadata, no journal


@pytest.mark.parametrize(("captioner", "fixture"), CAPTIONERS, ids=IDS)
def test_awkward_images_are_captioned_and_bad_ones_skipped_with_their_reason(captioner, fixture, awkward,
                                                                             request) -> None:
    result = _tag(awkward, captioner, request.getfixturevalue(fixture))
    assert result.exit_code == 1, result.output  # some files were skipped
    assert sorted(p.stem for p in awkward.glob("*.txt")) == ["cmyk", "grey16", "grey_alpha", "rocket"]
    text = " ".join(result.output.split())
    assert "bomb.png" in text and "exceeds the limit" in text
    assert "broken.jpg" in text and "cannot open" in text
    for stem in ("cmyk", "grey16", "grey_alpha"):
        assert read_meta(next(awkward.glob(f"{stem}.*g")))["tag"]["captioner"] == captioner


@pytest.mark.parametrize(("captioner", "fixture"), CAPTIONERS, ids=IDS)
def test_ctrl_c_exits_130_and_leaves_only_whole_captions(captioner, fixture, testdata, tmp_path, request) -> None:
    model = request.getfixturevalue(fixture)
    folder = tmp_path / "ds"
    folder.mkdir()
    photos = sorted((testdata / "photos").iterdir())
    count = 12
    for index in range(count):
        shutil.copy(photos[index % len(photos)], folder / f"{index:02d}{photos[index % len(photos)].suffix}")
    command = [sys.executable, "-m", "cli", "tag", str(folder), "--captioner", captioner, "--caption-dir", str(model),
               "--max-new-tokens", "24", "--trigger", "sks"]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 180
    while not list(folder.glob("*.txt")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stdout + stderr
    written = sorted(folder.glob("*.txt"))
    assert 0 < len(written) < count, stdout + stderr
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # no temporary left half-renamed
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n") and text.startswith("sks, ") and len(text.strip()) > len("sks,")
        meta = read_meta(next(p for p in folder.iterdir() if p.stem == path.stem and p.suffix != ".txt"))
        if "tag" in meta:  # written just before the stop: the caption came first, its metadata may not have
            assert text.strip() == "sks, " + meta["tag"]["caption"]
    kept = {p.name: p.read_bytes() for p in written}
    again = _tag(folder, captioner, model, "--trigger", "sks")
    assert again.exit_code == 0, again.output
    assert len(list(folder.glob("*.txt"))) == count
    assert all((folder / name).read_bytes() == data for name, data in kept.items())  # resumed, not redone
