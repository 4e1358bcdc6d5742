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

`--gpu` is the GPU half issue 23 asks for: full-size random Florence-2-base (231 M parameters,
built from its real config with transformers' native Florence-2 classes, 768 px input) and a WD v3
ViT (timm `vit_base_patch16_224` at 448 px with 10,861 outputs, as wd-vit-tagger-v3 ships it),
each written once into bench/out/ (`--models`) as the model folder a user's download is, then run through
the product's own `tag_folder` (what `loraprep tag` calls): `--captioner florence2 --caption-dir`
and `--model-dir … --backend timm --device cuda`, at batch 1/8/32 (`--batches`). Per run:
images/s after the first (warm-up) batch, counted from tag_folder's own progress events, and peak
VRAM (torch.cuda.max_memory_allocated / max_memory_reserved, reset between runs); on the CPU
peak RSS of the process instead (VmHWM, reset between runs), labelled as such. The JSON and the
printout name the device, the dtype the product chose (bf16, else fp16, on CUDA; fp32 on CPU) and
the torch / transformers / timm versions. A random Florence-2 would stop wherever it happens to emit
EOS, so every caption is made exactly --max-new-tokens long (a generation_config.json in the model folder sets the minimum
to the maximum); beams 3, the product's default. Batch N is tag_folder's batch_size (the CLI's
--batch-size), which both the tagger and the captioner's generate calls take.

`--gpu --small` builds the same two models at tiny widths so the whole path runs on a CPU in
seconds (`--device cpu`; tests/prep/test_bench_tag_gpu.py runs it). Written 2026-12-05 without a
GPU: only the CPU path has been run (README, Benchmarks). `--device` is tag_folder's device (the
CLI's --device), which the tagger and the captioner both follow.
On a one-shot GPU lease: `GPU_BENCH=tag bash bench/gpu_run.sh OUT` (one command, OUT/results.json).

    python bench/tag.py [--images 24] [--batch N]
    python bench/tag.py --startup [--repeats 5] [--model-dir DIR]
    python bench/tag.py --captioners
    python bench/tag.py --gpu [--device cuda] [--batches 1,8,32] [--images N] [--small] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
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
from prep.progress import ProgressEvent, Reporter  # noqa: E402
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


def run_process(command: list[str], folder: Path, cpu: list[float] | None = None) -> float:
    """Wall seconds of one process, after removing what the previous run wrote; its CPU seconds
    (user + system) are appended to `cpu` (steadier than wall time on a shared machine)."""
    import resource
    import subprocess

    for leftover in folder.iterdir():
        if leftover.suffix in (".txt", ".json"):
            leftover.unlink()
    # this checkout's code, not whatever the environment's editable install points at
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - used.ru_utime + after.ru_stime - used.ru_stime)
    return wall


def startup(repeats: int, model: Path = MODEL_DIR) -> None:
    """`loraprep tag` vs the bare script, whole processes, on 1 and on 12 images."""
    import compileall

    loraprep = str(Path(sys.executable).with_name("loraprep"))
    bare = [sys.executable, str(ROOT / "bench" / "bare_wd14.py")]
    # bytecode as an installed package has it (PYTHONDONTWRITEBYTECODE would otherwise make every
    # run compile loraprep's modules again, a cost no user pays)
    for target in ("cli.py", "commands", "prep", "bench/bare_wd14.py"):
        compileall.compile_file(str(ROOT / target), quiet=2) if target.endswith(".py") else \
            compileall.compile_dir(str(ROOT / target), quiet=2)
    with tempfile.TemporaryDirectory() as tmp:
        for count in (1, 12):
            folder = Path(tmp) / f"ds{count}"
            make_images(folder, count)
            times: dict[str, list[float]] = {"bare": [], "loraprep": []}
            cpu: dict[str, list[float]] = {"bare": [], "loraprep": []}
            for _ in range(repeats):
                times["bare"].append(run_process([*bare, str(folder), str(model)], folder, cpu["bare"]))
                times["loraprep"].append(run_process([loraprep, "tag", str(folder), "--model-dir", str(model)],
                                                     folder, cpu["loraprep"]))
            for how, pick in (("best", min), ("median", statistics.median)):
                b, t = pick(times["bare"]), pick(times["loraprep"])
                print(f"{count:2d} image(s), {how} of {repeats}: bare onnxruntime {b:5.2f} s, loraprep tag {t:5.2f} s "
                      f"→ difference {t - b:+.2f} s, throughput ratio {b / t:.2f}")
            b, t = statistics.median(cpu["bare"]), statistics.median(cpu["loraprep"])
            print(f"{count:2d} image(s), CPU seconds (user + system), median: bare {b:5.2f}, loraprep {t:5.2f} "
                  f"→ difference {t - b:+.2f}")
    print("targets: difference ≤ 0.3 s on 1 image; ratio ≥ 0.95 on 12 images (on a shared machine, trust the medians)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None,
                        help="images per run (default 24; --gpu: three times the largest batch)")
    parser.add_argument("--batch", type=int, default=None, help="batch for the e2e/bare comparison (default: tag_folder's choice)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: one per core)")
    parser.add_argument("--repeats", type=int, default=2, help="alternate e2e and bare runs this many times; best of each")
    parser.add_argument("--startup", action="store_true", help="whole-process start-up and throughput vs bare")
    parser.add_argument("--captioners", action="store_true", help="the natural-language captioners on tiny models")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="--startup with another WD14-signature model (a tiny one isolates the fixed costs)")
    parser.add_argument("--gpu", action="store_true",
                        help="full-size Florence-2-base and WD v3 ViT (timm) through tag_folder at --batches")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="--gpu: where to run (tag_folder's device)")
    parser.add_argument("--batches", default="1,8,32", help="--gpu: batch sizes, comma-separated")
    parser.add_argument("--small", action="store_true", help="--gpu: the same models at tiny widths (CPU plumbing check)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="--gpu: Florence-2 caption length in tokens")
    parser.add_argument("--json", type=Path, default=None, help="--gpu: write the figures here as JSON")
    parser.add_argument("--models", type=Path, default=OUT, help="--gpu: where the random models are built once (default bench/out)")
    args = parser.parse_args()

    if args.gpu:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
        if not batches or min(batches) < 1:
            parser.error("--batches: positive integers, e.g. 1,8,32")
        images = args.images or 3 * max(batches)
        if images < 2 * max(batches):
            parser.error(f"--images must be at least twice the largest batch ({2 * max(batches)}): "
                         "the first batch is the warm-up")
        report = gpu_bench(device=args.device, batches=batches, images=images, small=args.small,
                           max_new_tokens=args.max_new_tokens, models=args.models)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
        return
    args.images = args.images or 24

    if not (MODEL_DIR / "model.onnx").is_file() and not args.captioners:
        print(f"building the WD14-sized model into {MODEL_DIR} (once) …", flush=True)
        start = time.perf_counter()
        build_model(MODEL_DIR)
        print(f"  built in {time.perf_counter() - start:.0f} s", flush=True)
    if args.startup:
        startup(args.repeats, args.model_dir or MODEL_DIR)
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
            except Exception as exc:  # a transformers version that cannot build one of them
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


# ---------------------------------------------------------------- --gpu: full-size models at batch 1/8/32

def build_gpu_models(small: bool, where: Path = OUT) -> dict[str, Path]:
    """Florence-2-base and a WD v3 ViT (timm weights) with random weights, each built once into
    `where` (tests/prep/vlmmodels.py and tagmodels.py build them, at full size or tiny widths)."""
    sys.path.insert(0, str(ROOT / "tests" / "prep"))
    import tagmodels
    import vlmmodels

    suffix = "-small" if small else ""
    labels = [(f"tag_{i}", 9 if i < 4 else (4 if i >= TAGS - 2700 else 0), ()) for i in range(TAGS)]
    builds = {
        "florence2": (where / f"florence2-base-random{suffix}",
                      lambda folder: vlmmodels.build_florence2(folder, full_size=not small)),
        "wd-vit-v3-timm": (where / f"wd-vit-tagger-v3-timm-random{suffix}",
                           lambda folder: tagmodels.build_timm_tagger(folder, "vit", labels=labels, onnx=False,
                                                                      full_size=not small)),
    }
    folders = {}
    for name, (folder, build) in builds.items():
        if not (folder / "config.json").is_file():
            print(f"building {name}{' (small)' if small else ''} into {folder} (once) …", flush=True)
            start = time.perf_counter()
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            build(partial)
            partial.replace(folder)
            print(f"  built in {time.perf_counter() - start:.0f} s", flush=True)
        folders[name] = folder
    return folders


def fixed_length(folder: Path, tokens: int) -> None:
    """A random model's captions end where they happen to emit EOS; ask for exactly `tokens`, so
    every run generates the same amount (transformers reads generation_config.json on load)."""
    path = folder / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config.update(min_new_tokens=tokens, max_new_tokens=tokens)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


class PeakMemory:
    """Peak memory of one run: CUDA allocated/reserved bytes, or on the CPU the process's peak RSS
    (VmHWM, reset through /proc/self/clear_refs where the kernel allows it)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass  # the peak then counts from process start: said in the row ("rss_reset": false)

    def read(self) -> dict[str, float | bool]:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return {"peak_vram_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                    "peak_vram_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"peak_rss_mib": int(line.split()[1]) / 1024, "rss_reset": os.access("/proc/self/clear_refs", os.W_OK)}
        import resource

        return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_reset": False}


def timed_tag_folder(folder: Path, options: TagOptions, memory: PeakMemory) -> dict[str, object]:
    """One product run (`tag_folder`, overwriting every caption); images/s over every batch after
    the first, from the run's own "tagging" progress events (decode, preprocess, infer, compose
    each caption; overwrite mode writes the captions after the last batch, outside that window),
    and the run's peak memory."""
    marks: list[tuple[float, int]] = []  # (time, images done) at each batch written
    notes: list[str] = []

    def sink(event: ProgressEvent) -> None:
        if event.kind == "advance" and event.label == "tagging":  # not the "writing captions" that follows
            marks.append((time.perf_counter(), (marks[-1][1] if marks else 0) + event.advance))
        elif event.kind == "note":
            notes.append(event.message)

    memory.reset()
    start = time.perf_counter()
    result = tag_folder(folder, options, reporter=Reporter(sink))
    end = time.perf_counter()
    row: dict[str, object] = dict(memory.read())
    if len(result.done) + len(result.dropped) == 0 or len(marks) < 2:
        raise SystemExit(f"tag_folder tagged {len(result.done)} images in {len(marks)} batches: nothing to time")
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    row.update(provider=result.provider, images=n1, images_timed=n1 - n0, images_per_s=(n1 - n0) / (t1 - t0),
               first_batch_s=t0 - start, run_s=end - start, done=len(result.done),
               dropped=[f"{d.path}: {d.reason}" for d in result.dropped], batch=result.batch_size, notes=notes)
    return row


def gpu_bench(*, device: str, batches: list[int], images: int, small: bool, max_new_tokens: int,
              models: Path = OUT) -> dict[str, object]:
    """Florence-2-base and the WD v3 ViT through `tag_folder` at each batch size (see the module
    docstring); prints a table and returns the figures with the environment they were measured in."""
    import torch
    import transformers

    from prep.tagging.vlm import VlmSettings, _device_and_dtype
    from prep.tagging.wd_timm import import_timm

    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--gpu --device cuda: torch sees no CUDA device (for the CPU plumbing check: --small --device cpu)")
    timm = import_timm()
    folders = build_gpu_models(small, models)
    fixed_length(folders["florence2"], max_new_tokens)
    vlm_device, vlm_dtype = _device_and_dtype(device)  # what Florence2Captioner will choose
    environment = {
        "device": f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
        if cuda else f"CPU ({platform.processor() or platform.machine()}, "
                                                                f"{os.cpu_count()} logical cores)",
        "device_kind": device, "small": small, "torch": torch.__version__, "transformers": transformers.__version__,
        "timm": timm.__version__, "python": platform.python_version(), "cuda": torch.version.cuda if cuda else None,
        "load_average": list(os.getloadavg()), "images": images, "florence2_new_tokens": max_new_tokens,
        "florence2_beams": VlmSettings().beams, "memory": "CUDA peak allocated/reserved, reset per run" if cuda
        else "peak RSS of the whole process (VmHWM), reset per run: not VRAM",
    }
    runs = {
        "florence2-base": lambda b: TagOptions(captioner="florence2", caption_dir=folders["florence2"], mode="overwrite",
                                               device=device, batch_size=b, vlm=VlmSettings(max_new_tokens=max_new_tokens)),
        "wd-vit-tagger-v3 (timm)": lambda b: TagOptions(model_dir=folders["wd-vit-v3-timm"], backend="timm",
                                                        device=device, mode="overwrite", batch_size=b),
    }
    print(f"\n{'small' if small else 'full-size'} random models on {environment['device']}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, timm {timm.__version__}; {images} images a run, "
          f"the first batch is the warm-up; Florence-2: {max_new_tokens} new tokens, beams {VlmSettings().beams}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    memory = PeakMemory(cuda)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "ds"
        make_images(dataset, images)
        for model, options_for in runs.items():
            for batch in batches:
                row = {"model": model, **timed_tag_folder(dataset, options_for(batch), memory)}
                if model.startswith("florence2"):  # the captioner's own choice (prep.tagging.vlm)
                    row.update(ran_on=vlm_device, dtype=str(vlm_dtype).removeprefix("torch."))
                else:  # the tagger says it: "timm on cuda (bfloat16)" / "timm on cpu" (fp32)
                    provider = str(row["provider"])
                    row.update(ran_on=provider.split(" on ")[-1].split(" ")[0],
                               dtype=provider.partition("(")[2].rstrip(")") or "float32")
                rows.append(row)
                peak = (f"peak VRAM {row['peak_vram_allocated_gib']:.2f} GiB allocated / "
                        f"{row['peak_vram_reserved_gib']:.2f} GiB reserved" if cuda
                        else f"peak RSS {row['peak_rss_mib']:.0f} MiB (process, CPU)")
                print(f"  {model:24s} batch {batch:3d}: {row['images_per_s']:8.2f} images/s over "
                      f"{row['images_timed']} images ({row['dtype']} on {row['ran_on']}); {peak}; "
                      f"first batch after {row['first_batch_s']:.1f} s" + (f"; {len(row['dropped'])} dropped"
                                                                          if row["dropped"] else ""), flush=True)
    return {"environment": environment, "rows": rows}


if __name__ == "__main__":
    main()
