"""`--dry-run`: what a run will do (steps, epochs, batches per bucket, a memory estimate), no weights loaded.

Why separate from the loop: the plan is computed from the manifest and config alone, so the CLI can
print it in a second, and the loop takes it as its schedule.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prep.errors import UsageError
from train.config import TrainConfig, parse_size
from train.data import TrainingSet, batches_per_epoch, load_training_set
from train.masks import check_masks
from train.prediction import check_run_prediction

if TYPE_CHECKING:
    from train.model import BaseCheck


@dataclass(frozen=True)
class TrainPlan:
    """What a run will do, computed from the manifest and config alone (this is `--dry-run`)."""

    manifest_path: Path
    data: TrainingSet
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    bucket_batches: dict[tuple[int, int], tuple[int, int]]  # bucket → (images incl. repeats, batches)
    memory: MemoryEstimate


def inspect_base(config: TrainConfig) -> BaseCheck:
    """The base model checked without loading weights (exists, right kind, pickles refused)."""
    from train.model import check_base

    for text in config.model.base_weights:  # base weights (issue 21): the LoRA files exist
        from train.loratools.weighted import parse_weighted

        if not (path := parse_weighted(text)[0]).is_file():
            raise UsageError(f"--base-weights {path} does not exist", hint="pass a LoRA .safetensors file")
    checked = check_base(config.model.base, allow_pickle=config.model.allow_pickle, config=config.model.base_config)
    if checked.family == "sd3":  # its refusals come before any weights load
        from train.sd3 import check_settings
        check_settings(config)
    return checked


def plan_training(manifest_path: str | Path, config: TrainConfig, *, num_processes: int = 1) -> TrainPlan:
    """Validate manifest and config together and work out steps, epochs and batches per bucket."""
    d = config.data
    check_run_prediction(config)  # e.g. zero-terminal SNR on an epsilon base: refused before loading
    data = load_training_set(manifest_path, keep_tokens=d.keep_tokens, shuffle_caption=d.shuffle_caption,
                             verify=d.verify_files, balance_reg=d.reg_balance,
                             fixed_size=parse_size(d.fixed_resolution) if d.fixed_resolution else None,
                             subset_for=kohya_subsets(d.dataset_config) if d.dataset_config else None)
    check_masks(data, config.loss)  # --masked-loss: missing or mis-sized masks, named before loading
    per_epoch = batches_per_epoch(data.examples, d.batch_size)
    if num_processes > 1:
        per_epoch //= num_processes
        if per_epoch == 0:
            raise UsageError(f"{num_processes} processes but one epoch has fewer batches than that",
                             hint="lower --num-processes or --batch-size, or raise the subsets' repeats")
    steps_per_epoch = max(1, math.ceil(per_epoch / config.optimizer.grad_accum))
    total = config.run.max_steps or steps_per_epoch * config.run.epochs
    buckets = {b: (n, math.ceil(n / d.batch_size)) for b, n in data.buckets.items()}
    largest = max(buckets, key=lambda b: b[0] * b[1])
    memory = estimate_memory(config.model.base, config, largest, captions_vary=captions_vary(data, config))
    return TrainPlan(Path(manifest_path), data, per_epoch, steps_per_epoch, total,
                     math.ceil(total / steps_per_epoch), buckets, memory)



def captions_vary(data: TrainingSet, config: TrainConfig) -> bool:
    """Whether some caption changes from step to step (shuffled, tags dropped), as train.batcher decides
    it: then its text-encoder outputs cannot be cached and the encoders stay on the accelerator."""
    options = data.caption_options(config.data.caption_dropout, config.data.tag_dropout)
    return any(variants is None for variants in data.caption_variants(options))


def kohya_subsets(path: str) -> Any:
    """The manifest's images with the subsets of an sd-scripts dataset config (train.kohya)."""
    from train.kohya import read_dataset_config, subset_mapper

    dataset = read_dataset_config(path)
    return lambda manifest, root: subset_mapper(dataset, manifest, root)


@dataclass(frozen=True)
class MemoryEstimate:
    """A rough peak accelerator memory figure for the largest bucket, with its parts (bytes).

    Why phases: the trainer (train.loop) never holds the whole model on the accelerator. While the
    caches fill, the text encoders and the VAE are there and the UNet/transformer waits on the host;
    during the steps the UNet, the LoRA with its optimizer state and the activations are there, plus
    only the encoders and VAE the steps still run (the others are parked on the host: SD3's T5, whose
    outputs are always cached, ~9.5 GB in bf16); while samples render the parked ones come back."""

    weights: int  # resident during the steps
    lora: int
    activations: int
    source: str  # "weights on disk" or "typical SD1/SDXL sizes"
    caching: int = 0  # resident while the caches fill: the text encoders and the VAE
    parked: int = 0  # on the host during the steps: encoders whose outputs are cached, the VAE once latents are
    sampling: bool = False  # samples render during the run (the parked weights return meanwhile)

    @property
    def training(self) -> int:
        return self.weights + self.lora + self.activations + (self.parked if self.sampling else 0)

    @property
    def total(self) -> int:
        return max(self.training, self.caching)

    @property
    def peak_phase(self) -> str:
        return "caching" if self.caching > self.training else "sampling" if self.sampling and self.parked else "steps"


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters per part of a base model: what the memory estimate weighs."""

    denoiser: int  # UNet, or SD3's MMDiT transformer
    text: int  # the CLIP text encoders
    t5: int  # SD3's T5 encoder (0 for the others)
    vae: int
    sdxl: bool = False  # its VAE runs in bf16 on a bf16 GPU under --vae-dtype auto (train.prepare.vae_dtype)


# Typical parameter counts when the weights cannot be inspected (hub id not yet downloaded).
TYPICAL_PARAMS = {"sd1": ParameterCounts(860_000_000, 123_000_000, 0, 84_000_000),
                  "sdxl": ParameterCounts(2_567_000_000, 817_000_000, 0, 84_000_000, sdxl=True),
                  # SD3.5 Medium / Large: MMDiT; CLIP-L + CLIP-G, T5-XXL encoder; 16-channel VAE
                  "sd3.5-medium": ParameterCounts(2_470_000_000, 817_000_000, 4_762_000_000, 84_000_000),
                  "sd3.5-large": ParameterCounts(8_060_000_000, 817_000_000, 4_762_000_000, 84_000_000)}
# Activation bytes per latent pixel per sample for an SD1.5 UNet in 16-bit, without and with gradient
# checkpointing, from the earlier hand-rolled `bench/train.py --full-size` step on an H100 (bf16, 512²,
# batch 1, rank 16: peak 3.06 GB / 2.22 GB, of which ~2.0 GB weights); scaled by UNet size for other models.
ACTIVATION_BYTES = (260_000, 50_000)


def estimate_memory(base: str, config: TrainConfig, bucket: tuple[int, int], *,
                    captions_vary: bool = False) -> MemoryEstimate:
    """Weights resident in each phase × their dtype + LoRA (param, grad, 2 optimizer moments) +
    activations ∝ latent area × batch. `captions_vary`: some caption is shuffled or has tags dropped,
    so its text-encoder outputs cannot be cached and the encoders stay for the steps (train.batcher)."""
    counts, source = _parameter_counts(base)
    r = config.run
    bytes_per = 2 if r.mixed_precision in ("fp16", "bf16") else 4  # train.prepare.weight_dtype
    vae_bytes = counts.vae * {"fp32": 4, "bf16": 2, "fp16": 2}.get(r.vae_dtype, 2 if counts.sdxl else 4)
    text_bytes, t5_bytes = counts.text * bytes_per, counts.t5 * bytes_per
    trains_text = config.network.train_text_encoder or bool(config.embedding.embedding)
    texts_cached = r.cache_text_encoder and not trains_text and not captions_vary
    t5_cached = r.cache_text_encoder and not captions_vary  # T5 never trains (train.sd3)
    parked = (0 if r.cache_latents == "off" else vae_bytes) + (text_bytes if texts_cached else 0) + \
        (t5_bytes if t5_cached else 0)
    weights = counts.denoiser * bytes_per + text_bytes + t5_bytes + vae_bytes - parked
    rank = min(config.network.rank, 320)  # a full-matrix LoKr (--rank 100000) is at most the layers' own size
    rank_fraction = rank / 320 * 0.04 * (2 if config.network.preset != "attn" else 1)
    lora = int(counts.denoiser * rank_fraction) * 4 * 4
    latent_pixels = (bucket[0] // 8) * (bucket[1] // 8)
    per_pixel = ACTIVATION_BYTES[1 if r.gradient_checkpointing else 0] * (counts.denoiser / 860_000_000) ** 0.5
    activations = int(per_pixel * latent_pixels * config.data.batch_size * bytes_per / 2)
    sampling = bool(r.sample_prompts or r.validation_prompt)
    return MemoryEstimate(int(weights), lora, activations, source, caching=text_bytes + t5_bytes + vae_bytes,
                          parked=parked, sampling=sampling)


def _parameter_counts(base: str) -> tuple[ParameterCounts, str]:
    folder = Path(base).expanduser() if base else None
    if folder is not None and not folder.exists() and base.count("/") == 1:
        from train.model import hub_folder

        folder = hub_folder(base)  # a hub id: its files, once downloaded
    if folder is not None and folder.is_dir() and any((folder / d).is_dir() for d in ("unet", "transformer")):
        parts = []
        for names in (("unet", "transformer"), ("text_encoder", "text_encoder_2"), ("text_encoder_3",), ("vae",)):
            parts.append(sum(_safetensors_params(p) for n in names for p in sorted((folder / n).glob("*.safetensors"))))
        if parts[0]:
            sdxl = (folder / "unet").is_dir() and (folder / "text_encoder_2").is_dir()
            return ParameterCounts(*parts, sdxl=sdxl), "weights on disk"
    if folder is not None and folder.is_file() and folder.suffix == ".safetensors":
        header = _safetensors_header(folder)
        groups = {"model.diffusion_model.": 0, "text_encoders.t5xxl.": 2, "first_stage_model.": 3}
        sums = [0, 0, 0, 0]
        for key, info in header.items():
            if key == "__metadata__":
                continue
            index = next((i for p, i in groups.items() if key.startswith(p)), 1)
            sums[index] += math.prod(info.get("shape", [0]))
        sdxl = any(key.startswith("conditioner.embedders.1.") for key in header)
        return ParameterCounts(*sums, sdxl=sdxl), "weights on disk"
    family = "sdxl" if "xl" in (base or "").lower() else "sd1"
    if re.search(r"(sd|stable-diffusion-)3", (base or "").lower()):
        family = "sd3.5-large" if "large" in base.lower() else "sd3.5-medium"
    return TYPICAL_PARAMS[family], f"typical {family.upper()} sizes"


def _safetensors_header(path: Path) -> dict[str, Any]:
    import json
    import struct

    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def _safetensors_params(path: Path) -> int:
    return sum(math.prod(v.get("shape", [0])) for k, v in _safetensors_header(path).items() if k != "__metadata__")
