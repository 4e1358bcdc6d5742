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
    memory = estimate_memory(config.model.base, config, largest)
    return TrainPlan(Path(manifest_path), data, per_epoch, steps_per_epoch, total,
                     math.ceil(total / steps_per_epoch), buckets, memory)



def kohya_subsets(path: str) -> Any:
    """The manifest's images with the subsets of an sd-scripts dataset config (train.kohya)."""
    from train.kohya import read_dataset_config, subset_mapper

    dataset = read_dataset_config(path)
    return lambda manifest, root: subset_mapper(dataset, manifest, root)


@dataclass(frozen=True)
class MemoryEstimate:
    """A rough peak accelerator memory figure for the largest bucket, with its parts (bytes)."""

    weights: int
    lora: int
    activations: int
    source: str  # "weights on disk" or "typical SD1/SDXL sizes"

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.activations


# Typical parameter counts when the weights cannot be inspected (hub id not yet downloaded).
TYPICAL_PARAMS = {"sd1": (860_000_000, 123_000_000, 84_000_000), "sdxl": (2_567_000_000, 817_000_000, 84_000_000),
                  # SD3.5 Medium / Large: MMDiT; CLIP-L + CLIP-G + T5-XXL encoder; 16-channel VAE
                  "sd3.5-medium": (2_470_000_000, 5_590_000_000, 84_000_000),
                  "sd3.5-large": (8_060_000_000, 5_590_000_000, 84_000_000)}
# Activation bytes per latent pixel per sample for an SD1.5 UNet in 16-bit, without and with gradient
# checkpointing, from the earlier hand-rolled `bench/train.py --full-size` step on an H100 (bf16, 512²,
# batch 1, rank 16: peak 3.06 GB / 2.22 GB, of which ~2.0 GB weights); scaled by UNet size for other models.
ACTIVATION_BYTES = (260_000, 50_000)


def estimate_memory(base: str, config: TrainConfig, bucket: tuple[int, int]) -> MemoryEstimate:
    """Weights × dtype + LoRA (param, grad, 2 optimizer moments) + activations ∝ latent area × batch."""
    counts, source = _parameter_counts(base)
    unet, text, vae = counts
    bytes_per = 2 if config.run.mixed_precision in ("fp16", "bf16") else 4
    weights = (unet + text) * bytes_per + vae * 4
    rank = min(config.network.rank, 320)  # a full-matrix LoKr (--rank 100000) is at most the layers' own size
    rank_fraction = rank / 320 * 0.04 * (2 if config.network.preset != "attn" else 1)
    lora = int(unet * rank_fraction) * 4 * 4
    latent_pixels = (bucket[0] // 8) * (bucket[1] // 8)
    per_pixel = ACTIVATION_BYTES[1 if config.run.gradient_checkpointing else 0] * (unet / 860_000_000) ** 0.5
    activations = int(per_pixel * latent_pixels * config.data.batch_size * bytes_per / 2)
    return MemoryEstimate(int(weights), lora, activations, source)


def _parameter_counts(base: str) -> tuple[tuple[int, int, int], str]:
    folder = Path(base).expanduser() if base else None
    if folder is not None and not folder.exists() and base.count("/") == 1:
        from train.model import hub_folder

        folder = hub_folder(base)  # a hub id: its files, once downloaded
    if folder is not None and folder.is_dir() and any((folder / d).is_dir() for d in ("unet", "transformer")):
        parts = []
        for names in (("unet", "transformer"), ("text_encoder", "text_encoder_2", "text_encoder_3"), ("vae",)):
            parts.append(sum(_safetensors_params(p) for n in names for p in sorted((folder / n).glob("*.safetensors"))))
        if parts[0]:
            return (parts[0], parts[1], parts[2]), "weights on disk"
    if folder is not None and folder.is_file() and folder.suffix == ".safetensors":
        header = _safetensors_header(folder)
        groups = {"model.diffusion_model.": 0, "first_stage_model.": 2}
        sums = [0, 0, 0]
        for key, info in header.items():
            if key == "__metadata__":
                continue
            index = next((i for p, i in groups.items() if key.startswith(p)), 1)
            sums[index] += math.prod(info.get("shape", [0]))
        return (sums[0], sums[1], sums[2]), "weights on disk"
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
