"""Trainer benchmark: the product's real `train()` on a real manifest, caches on and off.

    python bench/train.py                          # CPU: small SD-shaped pipeline, caches on vs off
    python bench/train.py --full-size              # GPU: full-size random-weight SD1.5 (512², batch 4) and
                                                   # SDXL (1024², batch 1, gradient checkpointing)
    python bench/train.py --full-size --small      # the same plumbing with tiny widths, on a CPU in minutes
    python bench/train.py --full-size --peer DIFFUSERS/examples/text_to_image
                                                   # also diffusers' LoRA examples on the same model and
                                                   # images; prints our/their ratios against the targets

Every measured setting runs `train.loop.train()` in its own subprocess (so peak memory belongs to
that setting alone) on a dataset made by the product itself (`prep.pipeline.run_pipeline` over real
images, `--images`, default tests/data; one square bucket, as the peer's centre crop). Reported:
time to the first step (model load and the cache pass included), steady-state s/step (the later
two thirds of the steps: caches are filled before the first step), and with CUDA the peak allocated
and reserved memory (torch's counters) plus the process peak from nvidia-smi when it exists.

Models are built from configs with random weights (nothing is downloaded; the CLIP tokenizer is the
offline one from tests/tinymodels.py); `--work DIR` keeps them and the datasets between runs.
`--levers` then runs each lever of LEVERS (one setting or allocator variable changed) against its setting;
`--generate N` times N images of `generate`'s code path against a plain diffusers pipeline with the
same LoRA loaded by `load_lora_weights`; `--profile N` adds N steps under torch.profiler to each cached
run and prints where their GPU time went; `--deadline S` starts nothing after S seconds (a GPU lease
ends at a fixed time) and `--json` is rewritten after every result. bench/gpu_run.sh is the one
command for a lease.
`--peer DIR` runs diffusers' train_text_to_image_lora.py / train_text_to_image_lora_sdxl.py from DIR
under a small harness (timestamps at each optimizer step, torch's memory counters at exit); their
code is read from DIR at run time and never enters this project. `--set KEY=VALUE` overrides one of
our settings in every run (e.g. `--set channels_last=true`, `--set torch_compile=default`) to weigh a
lever. Without a GPU each run gets OMP_NUM_THREADS=1 unless it is set (steadier on a shared CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "train")]


# ---------------------------------------------------------------- models (random weights, from configs)


def build_pipeline(kind: str, folder: Path, *, small: bool) -> Path:
    """An SD1.5- or SDXL-shaped diffusers folder: full size, or tiny widths with the same block types."""
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tinymodels import _build_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    tokenizer = _build_tokenizer()

    def text(hidden: int, layers: int, heads: int, inner: int, act: str, cls: type = CLIPTextModel) -> torch.nn.Module:
        config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inner,
                                num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                                hidden_act=act, projection_dim=hidden, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        with torch.device(device):
            return cls(config)

    sdxl = kind == "sdxl"
    with torch.device(device):
        vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32) if small else (128, 256, 512, 512), layers_per_block=2,
                            latent_channels=4, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024 if sdxl else 512,
                            scaling_factor=0.13025 if sdxl else 0.18215)
    schedule = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    steps_offset=1)
    if not sdxl:
        with torch.device(device):
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=64 if small else 768,
                                        **(dict(block_out_channels=(32, 64, 64, 64)) if small else {}))
        encoder = text(64, 2, 4, 128, "quick_gelu") if small else text(768, 12, 12, 3072, "quick_gelu")
        pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=encoder, tokenizer=tokenizer,
                                       scheduler=DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        widths = (dict(block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 1), cross_attention_dim=128,
                       projection_class_embeddings_input_dim=6 * 256 + 64) if small else
                  dict(block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                       cross_attention_dim=2048, projection_class_embeddings_input_dim=2816))
        with torch.device(device):
            unet = UNet2DConditionModel(
                sample_size=128, layers_per_block=2, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                addition_embed_type="text_time", addition_time_embed_dim=256, **widths)
        first = text(64, 2, 4, 128, "quick_gelu") if small else text(768, 12, 12, 3072, "quick_gelu")
        second = (text(64, 2, 4, 128, "gelu", CLIPTextModelWithProjection) if small
                  else text(1280, 32, 20, 5120, "gelu", CLIPTextModelWithProjection))
        pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, text_encoder=first, text_encoder_2=second,
                                         tokenizer=tokenizer, tokenizer_2=_build_tokenizer(),
                                         scheduler=EulerDiscreteScheduler(**schedule, timestep_spacing="leading"),
                                         force_zeros_for_empty_prompt=True)
    pipe.to(torch.float32 if small else torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder


def build_small_sd(folder: Path) -> Path:
    """The CPU benchmark's SD1.5-shaped pipeline: SD1.5's block types, attention and VAE depth, few channels."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tinymodels import _build_tokenizer

    torch.manual_seed(0)
    tokenizer = _build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64, 64, 64), layers_per_block=2, cross_attention_dim=128,
        attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(32, 64, 128, 128), layers_per_block=2, latent_channels=4,
                        norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=128)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512,
                                        num_hidden_layers=6, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# ---------------------------------------------------------------- data (made by the product)


def make_dataset(images: Path, folder: Path, resolution: int) -> Path:
    """`loraprep prep --no-crop --no-clean --no-tag` into one square bucket; also the imagefolder export."""
    from prep.buckets import BucketPlan
    from prep.export import export_imagefolder
    from prep.pipeline import PrepOptions, run_pipeline
    from prep.records import load_manifest

    manifest = folder / "manifest.json"
    if not manifest.is_file():
        plan = BucketPlan((resolution, resolution), step=64, min_size=resolution, max_size=resolution)
        report = run_pipeline(images, folder, PrepOptions(buckets=plan, trigger="sks", class_tokens="1girl"))
        manifest = report.manifest_path
    if not (folder / "metadata.jsonl").is_file():
        export_imagefolder(load_manifest(manifest), folder, folder / "metadata.jsonl")
    return manifest


# ---------------------------------------------------------------- one measured run (a subprocess each)


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # sd15 | sdxl
    resolution: int
    batch_size: int
    gradient_checkpointing: bool
    cached: bool


def full_size_settings(small: bool) -> list[Setting]:
    side = 64 if small else 512  # small: 64² and 128², so a CPU gets through all four runs in minutes
    return [Setting("SD1.5 512² batch 4, caches", "sd15", side, 4, False, True),
            Setting("SD1.5 512² batch 4, no caches", "sd15", side, 4, False, False),
            Setting("SDXL 1024² batch 1, grad. ckpt, caches", "sdxl", 2 * side, 1, True, True)]


def our_settings(setting: Setting, model: Path, out: Path, steps: int, *, cpu: bool, extra: dict) -> dict:
    return {"base": str(model), "output_dir": str(out), "max_steps": steps, "batch_size": setting.batch_size,
            "rank": 16, "alpha": 16, "lr": 1e-4, "seed": 0, "mixed_precision": "no" if cpu else "bf16",
            "gradient_checkpointing": setting.gradient_checkpointing, "save_every_epochs": 0, "flip": False,
            "shuffle_caption": False, "cache_latents": "memory" if setting.cached else "off",
            "cache_text_encoder": setting.cached, **extra}


def steady(stamps: list[float]) -> float | None:
    """Mean step time over the later two thirds of the steps (the first third warms kernels up)."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    later = gaps[len(gaps) // 3:]
    return sum(later) / len(later) if later else None


def memory_figures() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return {"peak_allocated_gb": torch.cuda.max_memory_allocated() / 2 ** 30,
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / 2 ** 30, "device": torch.cuda.get_device_name()}


def one_run(manifest: str, settings: dict, profile_steps: int = 0) -> dict:
    """Inside the subprocess: the real train(), timed by its own progress events.

    With CUDA, memory is also read per phase (model load + cache pass, then training alone, the peak
    counters reset between them), so a peak can be placed. `profile_steps` > 0 runs that many more
    steps under torch.profiler after the timed ones and returns the summary of where their time went.
    """
    import torch

    from prep.progress import Reporter
    from train.config import load_config
    from train.loop import train

    stamps: list[float] = []
    phases: dict[str, dict] = {}
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    timed_steps = settings["max_steps"]
    profiler = profile_window(timed_steps, profile_steps) if cuda and profile_steps else None

    def sink(event) -> None:  # noqa: ANN001
        if cuda and event.kind == "start" and event.label == "training":
            phases["load_and_caches"] = memory_figures()  # encoders already parked when the loop starts
            torch.cuda.reset_peak_memory_stats()
        if event.kind == "advance" and event.metrics:
            stamps.append(time.perf_counter())
            if profiler is not None:
                profiler.after_step(len(stamps))

    reporter = Reporter(sink)
    start = time.perf_counter()
    result = train(manifest, load_config(None, {**settings, "max_steps": timed_steps + profile_steps}),
                   reporter=reporter)
    found = {"steps": result.steps, "first_step_s": stamps[0] - start if stamps else None,
             "s_per_step": steady(stamps[:timed_steps]), "final_loss": result.final_loss, **memory_figures()}
    if cuda:
        phases["training"] = memory_figures()
        found["phases"] = phases
        found["peak_allocated_gb"] = max(p["peak_allocated_gb"] for p in phases.values())
        found["peak_reserved_gb"] = max(p["peak_reserved_gb"] for p in phases.values())
    if profiler is not None:
        found["profile"] = profiler.summary(stamps)
    return found


class profile_window:  # noqa: N801 (used like a function)
    """torch.profiler over steps first+1 … first+count (CPU and CUDA activity), then a summary: the
    GPU's busy share of those steps' wall time and the kernels and operators that took longest."""

    def __init__(self, first: int, count: int) -> None:
        import torch

        self.first, self.count = first, count
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                       torch.profiler.ProfilerActivity.CUDA])

    def after_step(self, done: int) -> None:
        if done == self.first:
            self.prof.start()
        elif done == self.first + self.count:
            import torch

            torch.cuda.synchronize()
            self.prof.stop()

    def summary(self, stamps: list[float]) -> dict:
        events = self.prof.key_averages()
        device_us = sum(e.self_device_time_total for e in events)
        wall = stamps[self.first + self.count - 1] - stamps[self.first - 1] if len(stamps) >= self.first + self.count \
            else None
        top = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:18]
        cpu_top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        per_step = lambda us: round(us / 1000 / self.count, 3)  # noqa: E731
        return {"steps": self.count, "wall_ms_per_step": round(wall * 1000 / self.count, 2) if wall else None,
                "gpu_busy_ms_per_step": per_step(device_us),
                "device_ops": [(e.key[:70], per_step(e.self_device_time_total), e.count // self.count) for e in top],
                "cpu_ops": [(e.key[:70], per_step(e.self_cpu_time_total), e.count // self.count) for e in cpu_top]}


PEER_SCRIPTS = {"sd15": "train_text_to_image_lora.py", "sdxl": "train_text_to_image_lora_sdxl.py"}


def peer_args(setting: Setting, model: Path, data: Path, out: Path, steps: int, *, cpu: bool) -> list[str]:
    args = ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data), "--caption_column", "text",
            "--resolution", str(setting.resolution), "--center_crop", "--train_batch_size", str(setting.batch_size),
            "--max_train_steps", str(steps), "--rank", "16", "--learning_rate", "1e-4", "--seed", "0",
            "--mixed_precision", "no" if cpu else "bf16", "--output_dir", str(out),
            "--checkpointing_steps", "1000000", "--dataloader_num_workers", "0"]
    return args + (["--gradient_checkpointing"] if setting.gradient_checkpointing else [])


def one_peer(script: str, args: list[str]) -> dict:
    """Inside the subprocess: diffusers' example script as its own __main__, with a timestamp after
    each optimizer step. Its `check_min_version` line is skipped (it pins a diffusers dev version)."""
    import torch

    stamps: list[float] = []
    step = torch.optim.AdamW.step

    def timed(self, *a, **k):  # noqa: ANN001, ANN202
        found = step(self, *a, **k)
        stamps.append(time.perf_counter())
        return found

    torch.optim.AdamW.step = timed
    source = re.sub(r"^check_min_version\(.*$", "pass", Path(script).read_text(encoding="utf-8"), flags=re.M)
    sys.argv = [script, *args]
    start = time.perf_counter()
    exec(compile(source, script, "exec"), {"__name__": "__main__", "__file__": script})  # noqa: S102
    return {"steps": len(stamps), "first_step_s": stamps[0] - start if stamps else None,
            "s_per_step": steady(stamps), **memory_figures()}


class SmiPeak:
    """The process-level peak of nvidia-smi's memory.used during a run (CUDA context included)."""

    def __init__(self) -> None:
        self.peak_mib, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                text = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=5).stdout
                self.peak_mib = max(self.peak_mib, int(text.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            time.sleep(0.25)

    def __enter__(self) -> SmiPeak:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def subprocess_json(flag: str, payload: list, log: Path, env: dict | None = None) -> dict:
    """Run this script with `flag payload` and read the JSON its last line prints. Without a GPU the
    run gets one OpenMP thread unless OMP_NUM_THREADS says otherwise: on a shared CPU, threads that
    spin waiting for each other made steps up to 40× slower than one thread."""
    import torch

    env = {**os.environ, **(env or {})}
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", "1")
    with SmiPeak() as smi:
        done = subprocess.run([sys.executable, __file__, flag, json.dumps(payload)], capture_output=True, text=True,
                              env=env)
    log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        return {"error": f"exit {done.returncode} (log: {log})\n{tail}"}
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return found | ({"smi_peak_gb": smi.peak_mib / 1024} if smi.peak_mib else {})


# ---------------------------------------------------------------- the benchmarks


def cpu_bench(steps: int, work: Path) -> None:
    """Small SD-shaped pipeline on CPU: the real train() with caches vs without."""
    from prep.records import BucketSettings
    from trainsets import make_dataset as make_small_dataset

    images = {"photos/astronaut.png": "sks, woman, astronaut, smile", "photos/chelsea.png": "sks, cat, indoors",
              "anime/sylvie_blue_normal.png": "sks, 1girl, blue hair", "anime/eileen_happy.png": "sks, 1girl, smile"}
    model = work / "small-sd"
    if not (model / "model_index.json").is_file():
        build_small_sd(model)
    buckets = BucketSettings(resolution=(128, 128), step=64, min=64, max=256)
    manifest = work / "ds" / "manifest.json"
    if not manifest.is_file():
        manifest = make_small_dataset(ROOT / "tests" / "data", work / "ds", images=images, side=4096, buckets=buckets)
    results = {}
    for cached in (False, True):
        setting = Setting("cpu", "sd15", 128, 2, False, cached)
        settings = our_settings(setting, model, work / f"out-{cached}", steps, cpu=True, extra={"rank": 8, "alpha": 8})
        results[cached] = subprocess_json("--one-run", [str(manifest), settings], work / f"cpu-{cached}.log")
    off, on = results[False], results[True]
    for r in (off, on):
        if "error" in r:
            sys.exit(r["error"])
    print(f"small SD1.5-shaped pipeline on CPU, real photos into 128² buckets, batch 2, rank 8, {steps} steps "
          "(steady state: the later two thirds)")
    print(f"  no caches:                   {off['s_per_step']:.3f} s/step   peak RSS {off['peak_rss_mb']:.0f} MB")
    print(f"  latent + text-encoder cache: {on['s_per_step']:.3f} s/step   peak RSS {on['peak_rss_mb']:.0f} MB")
    ratio = on["s_per_step"] / off["s_per_step"]
    print(f"  ratio cached/uncached: {ratio:.2f}  (target ≤ 0.6: {'met' if ratio <= 0.6 else 'NOT met'})")


@dataclass(frozen=True)
class Lever:
    """One of our settings changed against a measured setting (`env`: variables for that run only)."""

    name: str
    on: str  # the Setting.name it changes
    changes: tuple[tuple[str, object], ...] = ()
    env: tuple[tuple[str, str], ...] = ()


SD15, SD15_OFF, SDXL = ("SD1.5 512² batch 4, caches", "SD1.5 512² batch 4, no caches",
                        "SDXL 1024² batch 1, grad. ckpt, caches")
LEVERS = [  # in order of what a short GPU lease should measure first; one family's plain levers share a process
    Lever("fused AdamW off", SD15, (("optimizer_args", ["fused=False"]),)),
    Lever("--channels-last", SD15, (("channels_last", True),)),
    Lever("caption shuffle on (text encoders run each step)", SD15, (("shuffle_caption", True),)),
    Lever("--vae-batch-size 4", SD15, (("vae_batch_size", 4),)),
    Lever("--vae-dtype bf16", SD15_OFF, (("vae_dtype", "bf16"),)),
    Lever("--workers 0 (images decoded in the loop)", SD15_OFF, (("workers", 0),)),
    Lever("--channels-last", SDXL, (("channels_last", True),)),
    Lever("--vae-dtype fp32", SDXL, (("vae_dtype", "fp32"),)),
    Lever("--torch-compile default", SD15, (("torch_compile", "default"),)),
    Lever("expandable_segments allocator", SDXL, env=(("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),)),
]


def _kind(setting_name: str) -> str:
    return "sdxl" if setting_name.startswith("SDXL") else "sd15"


def lever_groups(levers: list[Lever]) -> list[list[Lever]]:
    """Levers that can share one process (no environment of their own, no torch.compile) grouped per
    family, in order; the others alone. A shared process pays Python's and the libraries' start once."""
    groups: list[list[Lever]] = []
    for lever in levers:
        alone = bool(lever.env) or dict(lever.changes).get("torch_compile", "off") != "off"
        if not alone and groups and _kind(groups[-1][0].on) == _kind(lever.on) and not groups[-1][0].env \
                and dict(groups[-1][0].changes).get("torch_compile", "off") == "off":
            groups[-1].append(lever)
        else:
            groups.append([lever])
    return groups


class Deadline:
    """Skip what would start after `seconds` (a device lease ends at a fixed time; results must come back)."""

    def __init__(self, seconds: float | None) -> None:
        self.end = time.monotonic() + seconds if seconds is not None else None

    def left(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def passed(self, what: str) -> bool:
        if self.end is not None and time.monotonic() > self.end:
            print(f"skipped (deadline): {what}", flush=True)
            return True
        return False


def full_size_bench(args: argparse.Namespace, work: Path) -> dict:
    """The issue's settings in order of importance, each result saved as it arrives (`--json`)."""
    import torch

    cpu = not torch.cuda.is_available()
    if cpu and not args.small:
        sys.exit("--full-size needs a CUDA GPU (none found); add --small to check the plumbing on a CPU")
    extra = dict(item.split("=", 1) for item in args.set)
    deadline = Deadline(args.deadline)
    found: dict = {"environment": environment(), "rows": [], "levers": [], "generate": []}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(found, indent=1), encoding="utf-8")

    save()
    settings = {s.name: s for s in full_size_settings(args.small) if s.kind in args.only}
    models: dict[str, Path] = {}
    manifests: dict[str, Path] = {}

    def prepared(setting: Setting) -> tuple[Path, Path, Path]:
        if setting.kind not in models:
            models[setting.kind] = build_pipeline(setting.kind, work / f"{setting.kind}{'-small' if args.small else ''}",
                                                  small=args.small)
        data = work / f"ds-{setting.resolution}"
        manifests[setting.kind] = make_dataset(args.images, data, setting.resolution)
        return models[setting.kind], data, manifests[setting.kind]

    def ours(setting: Setting, tag: str, changes: dict, env: dict | None = None, profile: int = 0,
             steps: int | None = None) -> dict:
        model, _, manifest = prepared(setting)
        config = our_settings(setting, model, work / f"out-{tag}", steps or args.steps, cpu=cpu,
                              extra={**extra, **changes})
        return subprocess_json("--one-run", [str(manifest), config, profile], work / f"{tag}.log", env=env)

    for setting in settings.values():
        if deadline.passed(setting.name):
            continue
        tag = re.sub(r"[^A-Za-z0-9]+", "-", setting.name).strip("-").lower()
        row = {"setting": asdict(setting), "ours": ours(setting, tag, {}, profile=args.profile if setting.cached else 0)}
        found["rows"].append(row)
        save()
        if args.peer and setting.cached and setting.kind in args.peer_kinds \
                and not deadline.passed(f"peer {setting.name}"):
            model, data, _ = prepared(setting)
            script = Path(args.peer) / PEER_SCRIPTS[setting.kind]
            row["peer"] = subprocess_json(
                "--one-peer", [str(script), peer_args(setting, model, data, work / f"peer-{tag}", args.steps, cpu=cpu)],
                work / f"peer-{tag}.log", env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
            save()
        print_row(row)
        if args.generate and setting.cached and not deadline.passed(f"generate {setting.kind}"):
            lora = work / f"out-{tag}" / "lora.diffusers.safetensors"
            side = setting.resolution
            result = subprocess_json("--one-generate", [str(models[setting.kind]), str(lora), side, args.generate],
                                     work / f"generate-{setting.kind}.log")
            found["generate"].append({"kind": setting.kind, "side": side, **result})
            save()
            print_generate(found["generate"][-1])
    print_targets(found["rows"], small=args.small, cpu=cpu)
    if args.levers:
        measured = {r["setting"]["name"]: r["ours"] for r in found["rows"]}
        for group in lever_groups([lever for lever in LEVERS if lever.on in settings]):
            setting = settings[group[0].on]
            if deadline.passed(f"levers {', '.join(lever.name for lever in group)} on {setting.name}"):
                continue
            runs = []
            for lever in group:
                setting = settings[lever.on]
                tag = re.sub(r"[^A-Za-z0-9]+", "-", f"{lever.on} {lever.name}").strip("-").lower()
                model, _, manifest = prepared(setting)
                runs.append([str(manifest), our_settings(setting, model, work / f"out-{tag}", args.lever_steps or args.steps,
                                                         cpu=cpu, extra={**extra, **dict(lever.changes)}), 0])
            tag = re.sub(r"[^A-Za-z0-9]+", "-", f"{setting.name} {group[0].name}").strip("-").lower()
            results = subprocess_json("--many-runs", {"runs": runs, "seconds": deadline.left()},
                                      work / f"levers-{tag}.log", env=dict(group[0].env))
            for lever, result in zip(group, results.get("runs", [results] * len(group)), strict=False):
                found["levers"].append({"lever": lever.name, "on": lever.on, "result": result,
                                        "baseline": measured.get(lever.on)})
                save()
                print_lever(found["levers"][-1])
    return found


def environment() -> dict:
    import importlib.metadata as md

    import torch

    names = ("torch", "diffusers", "transformers", "peft", "accelerate", "huggingface_hub", "safetensors")
    versions = {}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"device": device, "python": sys.version.split()[0], "versions": versions}


def profiled_once(render, device) -> dict:  # noqa: ANN001
    """One more image of `render(1)` under torch.profiler (CUDA only): wall, GPU busy, top CPU ops."""
    import torch

    if device.type != "cuda":
        return {}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        render(1)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:14]
    return {"wall_ms": round(wall * 1000, 1),
            "gpu_busy_ms": round(sum(e.self_device_time_total for e in events) / 1000, 1),
            "cpu_ops": [(e.key[:70], round(e.self_cpu_time_total / 1000, 2), e.count) for e in top]}


def one_generate(model: str, lora: str, side: int, count: int) -> dict:
    """Inside the subprocess: s/image of `loraprep generate`'s code path (load_base + generate, as the
    CLI calls them) and of a plain diffusers pipeline with the same LoRA file loaded by
    `load_lora_weights`; same model, size, 20 steps, fp16 on CUDA. One warm-up image each."""
    import torch

    from prep.progress import Reporter
    from train.model import load_base, pick_device
    from train.sample import GenerateOptions, generate

    device, dtype = pick_device("auto")
    prompt = "sks, 1girl, smile, upper body"
    steps = 20

    def timed(render) -> float:  # noqa: ANN001
        render(1)  # warm-up: kernels chosen, memory pools filled
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        render(count)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / count

    # Ours as the CLI runs it: one generate() call (the LoRA applied once), 1 + count images, timed
    # between the progress events of the first and the last image (each image is decoded when it fires).
    stamps: list[float] = []
    reporter = Reporter(lambda e: stamps.append(time.perf_counter()) if e.kind == "advance" else None)
    base = load_base(model, dtype=dtype, device=device)
    generate(base, lora, 1.0, prompt, GenerateOptions(width=side, height=side, steps=steps, count=1 + count, seed=0),
             reporter=reporter)
    ours = (stamps[-1] - stamps[0]) / count
    ours_profile = profiled_once(lambda n: generate(base, lora, 1.0, prompt, GenerateOptions(
        width=side, height=side, steps=steps, count=n, seed=0)), device)
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dtype, safety_checker=None).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(Path(lora).parent), weight_name=Path(lora).name)

    def plain(n: int) -> None:
        for index in range(n):
            generator = torch.Generator(device=device.type).manual_seed(index)
            pipe(prompt, width=side, height=side, num_inference_steps=steps, guidance_scale=7.0,
                 generator=generator)

    theirs = timed(plain)
    return {"steps": steps, "count": count, "ours_s_per_image": ours, "diffusers_s_per_image": theirs,
            "ratio": ours / theirs, "dtype": str(dtype),
            "profiles": {"ours (LoRA applied again, per call)": ours_profile, "diffusers": profiled_once(plain, device)}}


def print_generate(row: dict) -> None:
    if "error" in row:
        print(f"generate {row['kind']} {row['side']}²: FAILED: {row['error']}", flush=True)
        return
    print(f"generate {row['kind']} {row['side']}², {row['steps']} steps: loraprep {row['ours_s_per_image']:.3f} s/image, "
          f"diffusers + load_lora_weights {row['diffusers_s_per_image']:.3f} s/image → {row['ratio']:.2f} "
          f"(≤ 1.05: {_verdict(row['ratio'] <= 1.05)})", flush=True)


def print_lever(row: dict) -> None:
    base = row.get("baseline") or {}
    print(f"lever {row['lever']} on {row['on']}:\n  with it: {_figures(row['result'])}\n"
          f"  without: {_figures(base) if base else 'not measured'}", flush=True)


def _figures(result: dict) -> str:
    if "error" in result:
        return "FAILED: " + result["error"]
    step = result.get("s_per_step")
    text = f"{step:.3f} s/step" if step is not None else "no steady step time"
    if result.get("first_step_s") is not None:
        text += f", first step after {result['first_step_s']:.1f} s"
    if "peak_reserved_gb" in result:
        text += f", peak {result['peak_allocated_gb']:.2f} GB allocated / {result['peak_reserved_gb']:.2f} GB reserved"
    for phase, figures in result.get("phases", {}).items():
        text += (f"\n    {phase}: peak {figures['peak_allocated_gb']:.2f} GB allocated / "
                 f"{figures['peak_reserved_gb']:.2f} GB reserved")
    if "smi_peak_gb" in result:
        text += f" (nvidia-smi {result['smi_peak_gb']:.2f} GB)"
    if "peak_rss_mb" in result:
        text += f", peak RSS {result['peak_rss_mb']:.0f} MB"
    if "profile" in result:
        prof = result["profile"]
        text += (f"\n    profile of {prof['steps']} steps: {prof['wall_ms_per_step']} ms/step wall, GPU busy "
                 f"{prof['gpu_busy_ms_per_step']} ms/step; top device ops (ms/step, calls/step):")
        text += "".join(f"\n      {ms:8.3f} {calls:5d}  {name}" for name, ms, calls in prof["device_ops"][:10])
    return text


def print_row(row: dict) -> None:
    print(f"{row['setting']['name']}:\n  loraprep: {_figures(row['ours'])}", flush=True)
    if "peer" in row:
        print(f"  diffusers example: {_figures(row['peer'])}", flush=True)


def print_targets(rows: list[dict], *, small: bool, cpu: bool) -> None:
    """Our/their ratios against issue 15's targets (judged only on a GPU at full size)."""
    found = {(r["setting"]["kind"], r["setting"]["cached"]): r for r in rows if "error" not in r["ours"]}
    note = " (tiny widths on a CPU: plumbing only, not the targets' conditions)" if small or cpu else ""
    print(f"targets{note}:")
    sd15, sd15_off, xl = found.get(("sd15", True)), found.get(("sd15", False)), found.get(("sdxl", True))
    peer = sd15.get("peer") if sd15 else None
    if sd15 and peer and "error" not in peer:
        ratio = sd15["ours"]["s_per_step"] / peer["s_per_step"]
        print(f"  SD1.5 cached step / diffusers: {ratio:.2f} (≤ 0.6: {_verdict(ratio <= 0.6)})")
        if sd15_off:
            ratio = sd15_off["ours"]["s_per_step"] / peer["s_per_step"]
            print(f"  SD1.5 uncached step / diffusers: {ratio:.2f} (≤ 0.9: {_verdict(ratio <= 0.9)})")
        if "peak_reserved_gb" in peer:
            ratio = sd15["ours"]["peak_reserved_gb"] / peer["peak_reserved_gb"]
            print(f"  SD1.5 peak reserved / diffusers: {ratio:.2f} (≤ 1: {_verdict(ratio <= 1)})")
    if xl and "peak_reserved_gb" in xl["ours"]:
        ours = xl["ours"]
        print(f"  SDXL peak reserved {ours['peak_reserved_gb']:.2f} GB (≤ 12: {_verdict(ours['peak_reserved_gb'] <= 12)}), "
              f"allocated {ours['peak_allocated_gb']:.2f} GB (≤ 10: {_verdict(ours['peak_allocated_gb'] <= 10)})")
    xl_peer = xl.get("peer") if xl else None
    if xl and xl_peer and "error" not in xl_peer:
        ratio = xl["ours"]["s_per_step"] / xl_peer["s_per_step"]
        print(f"  SDXL cached step / diffusers: {ratio:.2f} (≤ 1: {_verdict(ratio <= 1)})")
    if not any(r.get("peer") for r in rows):
        print("  step-time ratios need --peer DIR (diffusers' examples/text_to_image)")


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="SD1.5 512² batch 4 and SDXL 1024² batch 1 (GPU)")
    parser.add_argument("--small", action="store_true", help="with --full-size: tiny widths, to run on a CPU")
    parser.add_argument("--peer", help="diffusers' examples/text_to_image folder: also run its LoRA examples")
    parser.add_argument("--steps", type=int, help="steps per run (default 30 full size, 6 small, 10 CPU bench)")
    parser.add_argument("--images", type=Path, default=ROOT / "tests" / "data", help="real images to train on")
    parser.add_argument("--only", default="sd15,sdxl", help="with --full-size: sd15, sdxl or both")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one of our settings")
    parser.add_argument("--work", type=Path, help="keep models, datasets and logs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--levers", action="store_true", help="with --full-size: also each lever against its setting")
    parser.add_argument("--peer-kinds", default="sd15,sdxl", help="with --peer: which families' examples to run")
    parser.add_argument("--lever-steps", type=int, help="steps per lever run (default: --steps)")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="with --full-size: also time N generated images, ours vs diffusers (20 steps)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="with --full-size: N more steps of each cached run under torch.profiler (CUDA)")
    parser.add_argument("--deadline", type=float, help="with --full-size: start nothing after this many seconds")
    parser.add_argument("--one-run", help=argparse.SUPPRESS)
    parser.add_argument("--one-generate", help=argparse.SUPPRESS)
    parser.add_argument("--many-runs", help=argparse.SUPPRESS)
    parser.add_argument("--one-peer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        print(json.dumps(one_run(*json.loads(args.one_run))))
        return
    if args.many_runs:
        payload = json.loads(args.many_runs)
        deadline, done = Deadline(payload["seconds"]), []
        for run in payload["runs"]:
            if deadline.passed(f"lever run {len(done) + 1} of {len(payload['runs'])}"):
                break
            done.append(one_run(*run))
        print(json.dumps({"runs": done}))
        return
    if args.one_generate:
        print(json.dumps(one_generate(*json.loads(args.one_generate))))
        return
    if args.one_peer:
        result = one_peer(*json.loads(args.one_peer))
        print(json.dumps(result))
        return
    args.only = args.only.split(",")
    args.peer_kinds = args.peer_kinds.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="loraprep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.full_size:
            full_size_bench(argparse.Namespace(**{**vars(args), "steps": args.steps or (6 if args.small else 30)}), work)
        else:
            cpu_bench(args.steps or 10, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
