"""Benchmark: end-to-end `tag_folder` throughput vs bare onnxruntime on a WD14-sized model.

Builds (once, cached in bench/out/) a ViT-B/16 at 448×448 with 10,861 sigmoid outputs and random
weights, exported to ONNX with the WD14 signature ([N, 448, 448, 3] float32 BGR → [N, T]), plus a
matching selected_tags.csv. Then on the same images:

  bare   onnxruntime session.run on already-preprocessed batches (the ceiling)
  e2e    tag_folder(): walk, decode, preprocess, infer, threshold, write .txt + .loraprep.json

and prints images/s for both, the ratio e2e/bare (target ≥ 0.9), and bare speed at batch 1/4/8.

`--startup` instead times whole processes, as a user meets them: `loraprep tag` (the CLI) against
bench/bare_wd14.py (a bare onnxruntime script doing the same work) on 1 image (start-up difference,
target ≤ 0.3 s) and on 12 images (throughput ratio, target ≥ 0.95), alternating; best and median of
--repeats.

`--captioners` times each natural-language captioner on its architecture-exact tiny random model
(images/s and start-up: the process time to the first caption written).

    python bench/tag.py [--images 24] [--batch N]
    python bench/tag.py --startup [--repeats 5]
    python bench/tag.py --captioners
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prep.images import is_image_path, open_image  # noqa: E402
from prep.progress import Reporter  # noqa: E402
from prep.tag import TagOptions, tag_folder  # noqa: E402
from prep.tagging.wd14 import Wd14Tagger  # noqa: E402

OUT = ROOT / "bench" / "out"
MODEL_DIR = OUT / "wd14-vit-b16-random"
TAGS = 10_861
SIZE, PATCH, WIDTH, DEPTH, HEADS = 448, 16, 768, 12, 12


def build_model(folder: Path) -> Path:
    """ViT-B/16 from plain torch modules (the fused TransformerEncoderLayer path does not export)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
            self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
            attn = torch.softmax(q @ k.transpose(-2, -1) / (WIDTH // HEADS) ** 0.5, dim=-1)
            x = x + self.proj((attn @ v).transpose(1, 2).reshape(n, t, WIDTH))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, WIDTH, PATCH, PATCH)
            self.pos = nn.Parameter(torch.randn(1, (SIZE // PATCH) ** 2, WIDTH) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
            self.norm = nn.LayerNorm(WIDTH)
            self.head = nn.Linear(WIDTH, TAGS)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # NHWC 0-255 BGR, like WD14
            x = self.patch(x.permute(0, 3, 1, 2) / 127.5 - 1.0).flatten(2).transpose(1, 2) + self.pos
            return torch.sigmoid(self.head(self.norm(self.blocks(x)).mean(1)))

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = ViT().eval()
    tmp = folder / "model.onnx.tmp"
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, SIZE, SIZE, 3),), str(tmp), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          opset_version=17, dynamo=False, external_data=False)
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i in range(TAGS):
            category = 9 if i < 4 else (4 if i >= TAGS - 2700 else 0)
            writer.writerow([i, f"tag_{i}", category, TAGS - i])
    tmp.replace(folder / "model.onnx")
    return folder


def make_images(folder: Path, count: int) -> list[Path]:
    """`count` images cycled from tests/data (real photos and RGBA sprites, many sizes)."""
    sources = sorted(p for p in (ROOT / "tests" / "data").rglob("*") if is_image_path(p) and "panorama" not in p.name)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        source = sources[i % len(sources)]
        paths.append(folder / f"{i:03d}_{source.name}")
        shutil.copy(source, paths[-1])
    return paths


def bare_throughput(tagger: Wd14Tagger, arrays: np.ndarray, batch: int) -> float:
    tagger.probabilities(arrays[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(arrays), batch):
        tagger.probabilities(arrays[i:i + batch])
    return len(arrays) / (time.perf_counter() - start)


def run_process(command: list[str], folder: Path) -> float:
    """Wall seconds of one process, after removing what the previous run wrote."""
    import subprocess

    for leftover in folder.iterdir():
        if leftover.suffix in (".txt", ".json"):
            leftover.unlink()
    # this checkout's code, not whatever the environment's editable install points at
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def startup(repeats: int) -> None:
    """`loraprep tag` vs the bare script, whole processes, on 1 and on 12 images."""
    loraprep = str(Path(sys.executable).with_name("loraprep"))
    bare = [sys.executable, str(ROOT / "bench" / "bare_wd14.py")]
    with tempfile.TemporaryDirectory() as tmp:
        for count in (1, 12):
            folder = Path(tmp) / f"ds{count}"
            make_images(folder, count)
            times: dict[str, list[float]] = {"bare": [], "loraprep": []}
            for _ in range(repeats):
                times["bare"].append(run_process([*bare, str(folder), str(MODEL_DIR)], folder))
                times["loraprep"].append(run_process([loraprep, "tag", str(folder), "--model-dir", str(MODEL_DIR)],
                                                     folder))
            for how, pick in (("best", min), ("median", statistics.median)):
                b, t = pick(times["bare"]), pick(times["loraprep"])
                print(f"{count:2d} image(s), {how} of {repeats}: bare onnxruntime {b:5.2f} s, loraprep tag {t:5.2f} s "
                      f"→ difference {t - b:+.2f} s, throughput ratio {b / t:.2f}")
    print("targets: difference ≤ 0.3 s on 1 image; ratio ≥ 0.95 on 12 images (on a shared machine, trust the medians)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=None, help="batch for the e2e/bare comparison (default: tag_folder's choice)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: one per core)")
    parser.add_argument("--repeats", type=int, default=2, help="alternate e2e and bare runs this many times; best of each")
    parser.add_argument("--startup", action="store_true", help="whole-process start-up and throughput vs bare")
    parser.add_argument("--captioners", action="store_true", help="the natural-language captioners on tiny models")
    args = parser.parse_args()

    if not (MODEL_DIR / "model.onnx").is_file() and not args.captioners:
        print(f"building the WD14-sized model into {MODEL_DIR} (once) …", flush=True)
        start = time.perf_counter()
        build_model(MODEL_DIR)
        print(f"  built in {time.perf_counter() - start:.0f} s", flush=True)
    if args.startup:
        startup(args.repeats)
        return
    if args.captioners:
        captioners()
        return
    tagger = Wd14Tagger(MODEL_DIR, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "ds", args.images)
        arrays = np.stack([tagger.preprocess(open_image(p)) for p in paths])
        options = TagOptions(model_dir=MODEL_DIR, mode="overwrite", batch_size=args.batch, threads=args.threads)
        e2e = e2e_all = bare = 0.0
        load = 0.0
        for _ in range(args.repeats):  # alternate, so load from other processes hits both alike
            marks: dict[str, float] = {}
            reporter = Reporter(lambda event, marks=marks: marks.setdefault(event.kind, time.perf_counter()))
            start = time.perf_counter()
            result = tag_folder(Path(tmp) / "ds", options, reporter=reporter)
            end = time.perf_counter()
            assert len(result.done) == len(paths) and not result.dropped
            e2e_all = max(e2e_all, len(paths) / (end - start))   # including opening the model
            e2e = max(e2e, len(paths) / (end - marks["start"]))  # the tagging loop itself
            load = marks["start"] - start
            batch = result.batch_size
            bare = max(bare, bare_throughput(tagger, arrays, batch))

        print(f"\nWD14-sized ViT-B/16 @ {SIZE}, {TAGS} outputs, {len(paths)} images, provider {result.provider}, "
              f"best of {args.repeats}")
        print(f"  bare onnxruntime (preprocessed, batch {batch}): {bare:6.2f} img/s")
        print(f"  end-to-end tag_folder (batch {batch}):          {e2e:6.2f} img/s "
              f"(decode, preprocess, infer, write; {e2e_all:.2f} img/s counting the {load:.1f} s model load)")
        print(f"  ratio e2e / bare: {e2e / bare:.2f}  (target ≥ 0.90; {e2e_all / bare:.2f} counting the model load)")
        speeds = {b: bare_throughput(tagger, arrays, b) for b in (1, 4, 8)}
        print("  bare onnxruntime by batch size: " + ", ".join(f"batch {b}: {s:.2f} img/s" for b, s in speeds.items()))
        print(f"  batching speed-up (batch 8 vs 1): {speeds[8] / speeds[1]:.2f}×")


def captioners() -> None:
    """Each natural-language captioner on its architecture-exact tiny random model (tests/prep/vlmmodels.py):
    start-up (process start to the first caption written, as `loraprep tag` runs) and images/s."""
    sys.path.insert(0, str(ROOT / "tests" / "prep"))
    import vlmmodels

    from prep.tagging.vlm import VlmSettings, load_captioner

    builds = {"florence2": vlmmodels.build_tiny_florence2, "joycaption": vlmmodels.build_tiny_llava,
              "qwen-vl": vlmmodels.build_tiny_qwen_vl}
    loraprep = str(Path(sys.executable).with_name("loraprep"))
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        make_images(one, 1)
        paths = make_images(many, 12)
        images = [open_image(p) for p in paths]
        for kind, build in builds.items():
            folder = OUT / f"tiny-{kind}"
            try:
                if not (folder / "config.json").is_file():
                    build(folder)
                captioner = load_captioner(kind, folder, settings=VlmSettings(max_new_tokens=16, beams=1))
            except Exception as exc:  # e.g. Qwen-VL's processor needs torchvision
                print(f"{kind:10s} skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                continue
            captioner.caption(images[:1])  # warm-up
            start = time.perf_counter()
            for i in range(0, len(images), 4):
                captioner.caption(images[i:i + 4])
            speed = len(images) / (time.perf_counter() - start)
            first = min(run_process([loraprep, "tag", str(one), "--captioner", kind, "--caption-dir", str(folder),
                                     "--max-new-tokens", "16"], one) for _ in range(2))
            print(f"{kind:10s} tiny random model: {speed:6.2f} images/s (batch 4, 16 new tokens, CPU fp32); "
                  f"start-up to the first caption written: {first:.2f} s")


if __name__ == "__main__":
    main()
