"""Data → conditioned batches: example indices in, latents + text conditioning + loss weights out.

Why one object: the caption and flip draws, the cache keys and the encoders must agree, so the
Batcher is the one place where an example becomes what the UNet sees, through the caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.cache import TensorCache, latent_cache, latent_key, text_key
from train.config import TrainConfig
from train.data import (CaptionOptions, Example, TrainingSet, colour_jitter, epoch_batches, load_pixels, placement,
                        process_caption, sample_rng, to_array)


@dataclass
class Conditioned:
    """One micro-batch ready for the UNet: latents, text conditioning, SDXL time ids, loss weights."""

    latents: Any
    prompt: Any
    time_ids: Any
    weights: Any


class Batcher:
    """Turns batches of example indices into latents + text conditioning, through the caches."""

    def __init__(self, base: Any, data: TrainingSet, config: TrainConfig, device: Any) -> None:
        import torch

        self.base, self.data, self.config, self.device = base, data, config, device
        self.prediction_type = config.model.prediction_type if config.model.prediction_type != "auto" \
            else base.prediction_type
        cache_root = Path(config.run.cache_dir) if config.run.cache_dir else Path(config.run.output_dir) / "cache"
        self.latents: TensorCache | None = latent_cache(config.run.cache_latents, cache_root)
        trains_te = config.network.train_text_encoder
        self.texts: TensorCache | None = TensorCache() if config.run.cache_text_encoder and not trains_te else None
        ids = base.component_ids or {}
        self.vae_id = ids.get("vae", base.model_id)
        encoders = ("text_encoder", "text_encoder_2")[:len(base.text_encoders)]
        self.text_id = "+".join(ids.get(k, base.model_id) for k in encoders) + f"/clip_skip={config.model.clip_skip}"
        self.captions = CaptionOptions(data.manifest.trigger, config.data.caption_dropout, config.data.tag_dropout)
        self.scaling = float(base.vae.config.scaling_factor)
        self._torch = torch

    def groups(self, epoch: int, accelerator: Any) -> list[tuple[int, list[tuple[int, ...]]]]:
        """This process's batches of one epoch, grouped for gradient accumulation: (first index, batches)."""
        batches = epoch_batches(self.data.examples, self.config.data.batch_size, seed=self.config.run.seed, epoch=epoch)
        if accelerator.num_processes > 1:
            usable = len(batches) // accelerator.num_processes * accelerator.num_processes
            batches = batches[accelerator.process_index:usable:accelerator.num_processes]
        accum = self.config.optimizer.grad_accum
        return [(i, batches[i:i + accum]) for i in range(0, len(batches), accum)]

    def condition(self, indices: Sequence[int], epoch: int, batch_number: int) -> Conditioned:
        """One micro-batch on the training device: assembled from host copies, then moved once."""
        torch = self._torch
        examples = [self.data.examples[i] for i in indices]
        draws = [self._draw(example, epoch, batch_number, slot) for slot, example in enumerate(examples)]
        latents = self._latents(examples, draws)
        prompt = self._prompt([caption for _, caption, _ in draws])
        time_ids = None
        if self.base.is_sdxl:
            from train.conditioning import sdxl_time_ids

            time_ids = torch.stack([sdxl_time_ids(*self._time_ids(e)) for e in examples]).to(self.device)
        weights = torch.tensor([self.config.data.prior_loss_weight if e.is_reg else 1.0 for e in examples],
                               device=self.device)
        return Conditioned(latents.to(self.device), prompt, time_ids, weights)

    def _draw(self, example: Example, epoch: int, batch_number: int, slot: int) -> tuple[bool, str, Any]:
        rng = sample_rng(self.config.run.seed, epoch, batch_number, slot)
        flip = self.config.data.flip and rng.random() < 0.5
        caption = process_caption(example.caption, keep_tokens=example.keep_tokens, shuffle=example.shuffle,
                                  options=self.captions, rng=rng)
        return flip, caption, rng

    def _time_ids(self, example: Example) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        place = placement(example.record.size, example.bucket)
        return ((place.original[1], place.original[0]), (place.trim[1], place.trim[0]),
                (example.bucket[1], example.bucket[0]))

    def _latents(self, examples: Sequence[Example], draws: Sequence[tuple[bool, str, Any]]) -> Any:
        """Cached latents where there are some; the misses are encoded together in one VAE call."""
        torch = self._torch
        keys = [self._latent_key(e, flip) for e, (flip, _, _) in zip(examples, draws, strict=True)]
        found = self.latents.get_many(keys) if self.latents is not None else [None] * len(keys)
        missing = [i for i, item in enumerate(found) if item is None]
        if missing:
            pixels = torch.stack([self._pixels(examples[i], draws[i][0], draws[i][2]) for i in missing])
            vae = self.base.vae
            with torch.no_grad():
                encoded = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
            for i, latent in zip(missing, (encoded * self.scaling).float().cpu(), strict=True):
                found[i] = {"latent": latent} if self.latents is None else self.latents.put(keys[i], {"latent": latent})
        return torch.stack([item["latent"] for item in found])

    def _latent_key(self, example: Example, flip: bool) -> str:
        place = placement(example.record.size, example.bucket)
        return latent_key(example.record, resized=place.resized, trim=place.trim, bucket=example.bucket,
                          flip=flip, vae_id=self.vae_id)

    def _pixels(self, example: Example, flip: bool, rng: Any) -> Any:
        image, _ = load_pixels(example)
        array = to_array(image, flip=flip)
        if self.config.data.color_aug:
            array = colour_jitter(array, rng)
        return self._torch.from_numpy(array)

    def _prompt(self, captions: list[str]) -> Any:
        from train.conditioning import PromptEmbeds, encode_prompt, tokenize

        if self.texts is None:  # encoded on the encoders' device; with gradients when they train
            embeds = encode_prompt(self.base, tokenize(self.base, captions), clip_skip=self.config.model.clip_skip)
            return embeds.to(self.device)

        def compute(caption: str) -> dict[str, Any]:
            with self._torch.no_grad():
                embeds = encode_prompt(self.base, tokenize(self.base, [caption]), clip_skip=self.config.model.clip_skip)
            found = {"embeds": embeds.embeds[0]}
            if embeds.pooled is not None:
                found["pooled"] = embeds.pooled[0]
            return found

        items = [self.texts.get_or_compute(text_key(c, encoder_id=self.text_id), lambda c=c: compute(c))
                 for c in captions]
        pooled = self._torch.stack([i["pooled"] for i in items]) if "pooled" in items[0] else None
        return PromptEmbeds(self._torch.stack([i["embeds"] for i in items]), pooled).to(self.device)
