"""bench/tag.py --gpu, the GPU half of issue 23's benchmark, run the only way this machine can: at
tiny widths on the CPU (`--small --device cpu`), so its plumbing (building the models as folders,
loading them through `tag_folder`, timing, peak memory, the JSON) has run before a GPU ever sees it.
No timing is judged here: only that every model × batch row is there and made progress."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed (the dev setup installs it)")
def test_gpu_bench_runs_small_on_the_cpu_and_writes_a_row_per_model_and_batch(tmp_path) -> None:
    out = tmp_path / "tag-gpu.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "tag.py"), "--gpu", "--small", "--device", "cpu",
                           "--batches", "1,2", "--images", "4", "--models", str(tmp_path / "models"), "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    environment = report["environment"]
    assert environment["device_kind"] == "cpu" and environment["small"] is True
    assert environment["torch"] and environment["transformers"] and environment["timm"]
    rows = {(row["model"], row["batch"]): row for row in report["rows"]}
    assert set(rows) == {(model, batch) for model in ("florence2-base", "wd-vit-tagger-v3 (timm)") for batch in (1, 2)}
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["images_timed"] == 4 - row["batch"]  # the first batch is the warm-up
        assert row["done"] == 4 and not row["dropped"]
        assert (row["ran_on"], row["dtype"]) == ("cpu", "float32")
        assert row["peak_rss_mib"] > 0 and "peak_vram_allocated_gib" not in row
    assert rows[("wd-vit-tagger-v3 (timm)", 1)]["provider"] == "timm on cpu"
    assert "florence2 florence2-base-random-small on cpu" in rows[("florence2-base", 2)]["notes"]
