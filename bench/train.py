"""Trainer benchmark: what latent + text-encoder caching buys, and full-size SD1.5 memory on a GPU.

    python bench/train.py               # CPU: small SD-shaped pipeline, s/step cached vs uncached, peak RSS
    python bench/train.py --full-size   # GPU: SD1.5-shaped random UNet at 512², batch 1, rank 16,
                                        #      s/step and peak VRAM with and without gradient checkpointing

Everything is built from configs with random weights; nothing is downloaded. Each measured setting
runs in its own subprocess so peak RSS / VRAM belong to that setting alone. The caching comparison
uses identical settings (same data, seed, steps); only --cache-latents and --cache-text-encoder differ,
and the timed steps come after the first epoch, when the caches are warm. On a shared, busy CPU,
`OMP_NUM_THREADS=1 python bench/train.py` gives steadier numbers (two threads fighting other jobs
for two cores inflate the many small ops of the uncached VAE pass most).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "train")]

IMAGES = {"photos/astronaut.png": "sks, woman, astronaut, smile", "photos/chelsea.png": "sks, cat, indoors",
          "anime/sylvie_blue_normal.png": "sks, 1girl, blue hair", "anime/eileen_happy.png": "sks, 1girl, smile"}


def build_small_sd(folder: Path) -> Path:
    """An SD1.5-shaped pipeline with few channels: SD1.5's block types, attention and VAE depth."""
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


def run_cpu_setting(model: Path, manifest: Path, out: Path, cached: bool, steps: int) -> dict:
    """Train `steps` steps and time the ones after the first epoch (caches warm)."""
    from prep.progress import Reporter
    from train.config import load_config
    from train.loop import train

    stamps: list[float] = []
    reporter = Reporter(lambda e: stamps.append(time.perf_counter()) if e.kind == "advance" and e.metrics else None)
    config = load_config(None, {
        "base": str(model), "output_dir": str(out), "max_steps": steps, "batch_size": 2, "rank": 8, "alpha": 8,
        "shuffle_caption": False, "cache_latents": "memory" if cached else "off", "cache_text_encoder": cached,
        "save_every_epochs": 0})
    train(manifest, config, reporter=reporter)
    per_epoch = 2
    timed = [b - a for a, b in zip(stamps[per_epoch - 1:], stamps[per_epoch:])]
    return {"s_per_step": sum(timed) / len(timed), "steps_timed": len(timed),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cpu_bench(steps: int) -> None:
    from trainsets import make_dataset
    from prep.records import BucketSettings

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_small_sd(folder / "small-sd")
        buckets = BucketSettings(resolution=(128, 128), step=64, min=64, max=256)
        manifest = make_dataset(ROOT / "tests" / "data", folder / "ds", images=IMAGES, side=4096, buckets=buckets)
        results = {}
        for cached in (False, True):
            setting = [str(model), str(manifest), str(folder / f"out{cached}"), cached, steps]
            args = [sys.executable, __file__, "--one", json.dumps(setting)]
            line = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[cached] = json.loads(line)
    off, on = results[False], results[True]
    print("small SD1.5-shaped pipeline on CPU, real photos (≤ 512 px) into 128² buckets, batch 2, rank 8, "
          f"{off['steps_timed']} timed steps after the first epoch")
    print(f"  no caches:                 {off['s_per_step']:.3f} s/step   peak RSS {off['peak_rss_mb']:.0f} MB")
    print(f"  latent + text-encoder cache: {on['s_per_step']:.3f} s/step   peak RSS {on['peak_rss_mb']:.0f} MB")
    ratio = on["s_per_step"] / off["s_per_step"]
    print(f"  ratio cached/uncached: {ratio:.2f}  (target ≤ 0.6: {'met' if ratio <= 0.6 else 'NOT met'})")


def full_size_one(checkpointing: bool, cached: bool, steps: int) -> dict:
    """SD1.5-shaped UNet (diffusers defaults + 768-d cross-attention), CLIP-L-shaped text encoder and
    SD VAE, random weights, 512² (64² latents), batch 1, rank 16, bf16/fp16 weights with fp32 LoRA
    and the VAE in fp32. Uncached: every step also encodes the image (VAE) and the caption (TE)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from train.config import LossConfig, NetworkConfig, TrainConfig
    from train.batcher import Conditioned
    from train.loop import training_step
    from train.optim import make_optimizer
    from train.network import add_lora

    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only to smoke-test this code path
    dtype = torch.bfloat16 if device == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    gpu = torch.cuda if device == "cuda" else None
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64).to(device, dtype)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77)).to(device, dtype)
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    if checkpointing:
        unet.enable_gradient_checkpointing()
    network = add_lora(unet, [text], NetworkConfig(rank=16, alpha=16))
    optimizer = make_optimizer(network, TrainConfig())

    class Base:  # what training_step needs from a BaseModel
        noise_scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        is_sdxl = False

    vae = None if cached else AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512).to(device, torch.float32)
    from train.conditioning import PromptEmbeds

    ids = torch.randint(0, 49000, (1, 77), device=device)
    pixels = torch.rand(1, 3, 512, 512, device=device) * 2 - 1

    def conditioned() -> Conditioned:
        with torch.no_grad():
            embeds = text(ids).last_hidden_state
            latents = (torch.randn(1, 4, 64, 64, device=device) if vae is None
                       else vae.encode(pixels).latent_dist.mode() * 0.18215)
        return Conditioned(latents, PromptEmbeds(embeds), None, torch.ones(1, device=device))

    cached_batch = conditioned()
    generator = torch.Generator(device).manual_seed(0)
    if gpu:
        gpu.reset_peak_memory_stats()
    times = []
    unet.train()
    for _ in range(steps):
        if gpu:
            gpu.synchronize()
        start = time.perf_counter()
        batch = cached_batch if cached else conditioned()
        with torch.autocast(device, dtype=dtype):
            loss = training_step(Base(), unet, batch, prediction_type="epsilon", loss=LossConfig(), generator=generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if gpu:
            gpu.synchronize()
        times.append(time.perf_counter() - start)
    timed = times[2:] or times
    return {"s_per_step": sum(timed) / len(timed),
            "peak_vram_gb": gpu.max_memory_allocated() / 1024 ** 3 if gpu else 0.0,
            "dtype": str(dtype).replace("torch.", ""), "device": gpu.get_device_name() if gpu else "cpu"}


def full_size_bench(steps: int) -> None:
    import torch

    if not torch.cuda.is_available():
        print("--full-size needs a CUDA GPU (none found); run it on a GPU machine")
        return
    results = {}
    for checkpointing, cached in ((False, True), (True, True), (False, False)):
        args = [sys.executable, __file__, "--one-full", json.dumps([checkpointing, cached, steps])]
        line = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = results[checkpointing, cached] = json.loads(line)
        label = ("with gradient checkpointing" if checkpointing else "without checkpointing      ") + \
            (", cached latents+TE" if cached else ", no caches (VAE+TE each step)")
        print(f"SD1.5-shaped UNet 512², batch 1, rank 16, {r['dtype']} on {r['device']}, {label}: "
              f"{r['s_per_step']:.3f} s/step, peak VRAM {r['peak_vram_gb']:.2f} GB"
              + ("  (target ≤ 6 GB: " + ("met)" if r["peak_vram_gb"] <= 6 else "NOT met)") if checkpointing else ""))
    ratio = results[False, True]["s_per_step"] / results[False, False]["s_per_step"]
    print(f"full size, cached/uncached step time: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="GPU: full-size SD1.5-shaped UNet memory/speed")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-full", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, manifest, out, cached, steps = json.loads(args.one)
        print(json.dumps(run_cpu_setting(Path(model), Path(manifest), Path(out), cached, steps)))
    elif args.one_full:
        checkpointing, cached, steps = json.loads(args.one_full)
        print(json.dumps(full_size_one(checkpointing, cached, steps)))
    elif args.full_size:
        full_size_bench(args.steps)
    else:
        cpu_bench(args.steps)


if __name__ == "__main__":
    main()
