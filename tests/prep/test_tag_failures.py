"""`loraprep tag` when a model cannot be opened: one line, exit 1, nothing written, and the process
ends (the decoding pool that started before the model failed is stopped, not left to the garbage
collector at interpreter exit)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tagmodels import write_selected_tags

from prep.errors import ModelMismatch
from prep.tag import TagOptions, load_tagger, prefetch

ROOT = Path(__file__).parents[2]


def _images(testdata: Path, folder: Path, count: int) -> Path:
    folder.mkdir()
    photos = sorted((testdata / "photos").iterdir())
    for index in range(count):
        source = photos[index % len(photos)]
        shutil.copy(source, folder / f"{index:02d}{source.suffix}")
    return folder


def test_a_corrupt_onnx_model_stops_the_cli_with_one_line_and_the_process_exits(testdata, tmp_path) -> None:
    model = tmp_path / "broken-tagger"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"not a protobuf\n" * 64)
    write_selected_tags(model / "selected_tags.csv")
    folder = _images(testdata, tmp_path / "ds", 30)  # more images than the decoders read ahead
    try:
        run = subprocess.run([sys.executable, "-m", "cli", "tag", str(folder), "--model-dir", str(model)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "COLUMNS": "200"})
    except subprocess.TimeoutExpired as exc:  # the hang this guards against
        pytest.fail(f"`loraprep tag` with a corrupt model did not exit: {exc.stderr!r}")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "cannot be loaded by onnxruntime" in run.stderr and "Traceback" not in run.stderr
    assert "loraprep models pull" in run.stderr
    assert not list(folder.glob("*.txt")) and not list(folder.glob("*.json"))


def test_closing_prefetch_early_cancels_the_queued_work_and_returns_at_once() -> None:
    started: list[int] = []
    gate = threading.Event()

    def slow(item: int) -> int:
        started.append(item)
        gate.wait(0.2)
        return item

    decoded = prefetch(list(range(100)), slow, workers=2, depth=20)
    assert next(decoded) == (0, 0)
    begin = time.monotonic()
    decoded.close()
    assert time.monotonic() - begin < 1.0  # 20 queued items at 0.2 s on 2 workers would take 2 s
    assert len(started) <= 4  # the two running when it was closed, not the 20 queued


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_corrupt_timm_weights_are_a_model_mismatch_not_a_traceback(tmp_path) -> None:
    folder = tmp_path / "wd-vit-tagger-v3"
    folder.mkdir()
    (folder / "config.json").write_text('{"architecture": "vit_base_patch16_224", "num_classes": 16}',
                                        encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"junk")
    write_selected_tags(folder / "selected_tags.csv")
    with pytest.raises(ModelMismatch, match="timm cannot build"):
        load_tagger(TagOptions(model_dir=folder, backend="timm", device="cpu"))
