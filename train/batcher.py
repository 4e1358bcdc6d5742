"""Data → conditioned batches: example indices in, latents + text conditioning + loss weights out.

Why one object: the caption and flip draws, the cache keys and the encoders must agree, so the
Batcher is the one place where an example becomes what the UNet sees, through the caches.

Caches are filled before the first step (`fill_caches`), so training runs without the VAE (and,
when captions cannot vary, without the text encoders) and the first epoch is not slower than the
rest. Latents are encoded in fixed groups (per bucket, in manifest order, `vae_batch_size` at a
time) and a caption is encoded on its own: a batched encode differs from single ones in the last
bits, so what a cache holds must never depend on which entries happened to be missing. That is what
makes a run resumed from any checkpoint reach the uninterrupted run's weights bit for bit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prep.progress import SILENT, Reporter
from train.cache import TensorCache, latent_cache, latent_key, text_key
from train.config import TrainConfig
from train.data import (Example, TrainingSet, colour_jitter, epoch_batches, load_pixels, placement, process_caption,
                        sample_rng, to_array)
from train.masks import latent_size, load_mask, mask_source

LatentItem = tuple[str, int, bool]  # (cache key, example position, flipped)


@dataclass
class Conditioned:
    """One micro-batch ready for the UNet: latents, text conditioning, SDXL time ids, loss weights."""

    latents: Any
    prompt: Any
    time_ids: Any
    weights: Any
    mask: Any = None  # (batch, 1, h, w) loss weights at latent resolution with --masked-loss/--alpha-mask


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
        trains_te = trains_te or bool(config.embedding.embedding)  # textual inversion: the new vectors train
        self.texts: TensorCache | None = TensorCache() if config.run.cache_text_encoder and not trains_te else None
        # SD3: T5 never trains, so its outputs stay cached while CLIP-L/G train (train.sd3)
        self.t5_texts = TensorCache() if base.family == "sd3" and trains_te and config.run.cache_text_encoder else None
        ids = base.component_ids or {}
        vae = base.vae
        tiled = "/tiled" if getattr(vae, "use_tiling", False) else ""
        self.vae_id = f"{ids.get('vae', base.model_id)}/{str(vae.dtype).removeprefix('torch.')}{tiled}"
        encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")[:len(base.text_encoders)]
        self.text_id = "+".join(ids.get(k, base.model_id) for k in encoders) + f"/clip_skip={config.model.clip_skip}"
        if base.family == "sd3":  # T5's padded length shapes the cached embeddings
            self.text_id += f"/t5={base.tokenizers[2].model_max_length}"
        self.captions = data.caption_options(config.data.caption_dropout, config.data.tag_dropout)
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)  # SD3's VAE centres its latents
        self._torch = torch
        # loss masks (--masked-loss / --alpha-mask, train.masks): stored with each cached latent
        self.masks = {e.index: mask_source(e, data.root, config.loss) for e in data.examples}
        self._mask_scale = base.vae_scale_factor
        self._groups = self._latent_groups() if self.latents is not None else {}
        variants = data.caption_variants(self.captions)
        self.fixed_captions = list(dict.fromkeys(c for v in variants if v is not None for c in v))
        self.captions_vary = any(v is None for v in variants)
        if config.data.caption_dropout_every_n_epochs:  # issue 24: those epochs train the empty caption
            self.fixed_captions = list(dict.fromkeys([*self.fixed_captions, ""]))
        self._pool: ThreadPoolExecutor | None = None
        if self.latents is None and config.data.workers > 0:  # persistent: one pool for the whole run
            self._pool = ThreadPoolExecutor(config.data.workers, thread_name_prefix="loraprep-pixels")
        self._ahead: dict[tuple[tuple[int, ...], int, int], Future] = {}

    # ------------------------------------------------------------ before training

    @property
    def needs_vae(self) -> bool:
        """Whether steps encode images (no latent cache); with one, every latent is filled beforehand."""
        return self.latents is None

    @property
    def idle_text_encoders(self) -> list[Any]:
        """Text encoders no step runs (their outputs all cached), which may leave the accelerator."""
        if not self.needs_text_encoders:
            return list(self.base.text_encoders)
        return [self.base.text_encoders[2]] if self.t5_texts is not None and not self.captions_vary else []

    @property
    def needs_text_encoders(self) -> bool:
        """Whether steps run the text encoders: they train, outputs are not cached, or captions vary."""
        return self.texts is None or self.captions_vary

    def fill_caches(self, reporter: Reporter = SILENT) -> None:
        """Encode every latent, and every caption that cannot vary, before the first step."""
        if self.latents is not None:
            groups = [g for g in dict.fromkeys(self._groups.values())
                      if not all(self.latents.contains(key) for key, _, _ in g)]
            if groups:
                with reporter.task("caching latents", sum(len(g) for g in groups)) as advance:
                    for group in groups:
                        self._encode_group(group)
                        advance(len(group))
        if self.t5_texts is not None:
            for caption in self.fixed_captions:
                self._t5([caption])
        if self.texts is not None:
            captions = [c for c in self.fixed_captions if not self.texts.contains(self._text_key(c))]
            if captions:
                with reporter.task("caching text-encoder outputs", len(captions)) as advance:
                    for caption in captions:
                        self.texts.put(self._text_key(caption), self._encode_text(caption))
                        advance(1)

    def _latent_groups(self) -> dict[str, tuple[LatentItem, ...]]:
        """Each latent's fixed VAE group: per bucket, in manifest order (each flip after its image)."""
        flips = (False, True) if self.config.data.flip else (False,)
        by_bucket: dict[tuple[int, int], list[LatentItem]] = defaultdict(list)
        for position, example in enumerate(self.data.examples):
            for flip in flips:
                by_bucket[example.bucket].append((self._latent_key(example, flip), position, flip))
        size = self.config.run.vae_batch_size
        groups: dict[str, tuple[LatentItem, ...]] = {}
        for bucket in sorted(by_bucket):
            items = by_bucket[bucket]
            for start in range(0, len(items), size):
                group = tuple(items[start:start + size])
                groups.update((key, group) for key, _, _ in group)
        return groups

    # ------------------------------------------------------------ during training

    def groups(self, epoch: int, accelerator: Any) -> list[tuple[int, list[tuple[int, ...]]]]:
        """This process's batches of one epoch, grouped for gradient accumulation: (first index, batches)."""
        batches = epoch_batches(self.data.examples, self.config.data.batch_size, seed=self.config.run.seed, epoch=epoch)
        if accelerator.num_processes > 1:
            usable = len(batches) // accelerator.num_processes * accelerator.num_processes
            batches = batches[accelerator.process_index:usable:accelerator.num_processes]
        accum = self.config.optimizer.grad_accum
        return [(i, batches[i:i + accum]) for i in range(0, len(batches), accum)]

    def prefetch(self, indices: Sequence[int], epoch: int, batch_number: int) -> None:
        """Start decoding a coming micro-batch's images on the worker threads (no latent cache only),
        so the step that needs them does not wait for the disk and the decoder. The draws are seeded
        by (seed, epoch, batch, slot), so pixels made ahead are exactly those made in place."""
        key = (tuple(indices), epoch, batch_number)
        if self._pool is not None and key not in self._ahead:
            self._ahead[key] = self._pool.submit(self._batch_pixels, key[0], epoch, batch_number)

    def prefetch_group(self, group: tuple[int, list[tuple[int, ...]]], epoch: int) -> None:
        """`prefetch` every micro-batch of one optimizer step's group (as `groups` returns them)."""
        first_batch, micro_batches = group
        for offset, indices in enumerate(micro_batches):
            self.prefetch(indices, epoch, first_batch + offset)

    def close(self) -> None:
        """Stop the worker threads (batches decoded ahead and not used are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._ahead = None, {}

    def condition(self, indices: Sequence[int], epoch: int, batch_number: int) -> Conditioned:
        """One micro-batch on the training device: assembled from host copies, then moved once."""
        torch = self._torch
        examples = [self.data.examples[i] for i in indices]
        draws = [self._draw(example, epoch, batch_number, slot) for slot, example in enumerate(examples)]
        if self.latents is None:
            ahead = self._ahead.pop((tuple(indices), epoch, batch_number), None)
            pixels = ahead.result() if ahead is not None else self._stack_pixels(examples, draws)
            latents = self._encode(pixels)
            masks = self._masks([self._mask(e, flip) for e, (flip, _, _) in zip(examples, draws, strict=True)])
        else:
            latents, masks = self._latents(examples, draws)
        prompt = self._prompt([caption for _, caption, _ in draws])
        time_ids = None
        if self.base.is_sdxl:
            from train.conditioning import sdxl_time_ids

            time_ids = torch.stack([sdxl_time_ids(*self._time_ids(e)) for e in examples]).to(self.device)
        weights = torch.tensor([self.config.data.prior_loss_weight if e.is_reg else 1.0 for e in examples],
                               device=self.device)
        return Conditioned(latents.to(self.device), prompt, time_ids, weights,
                           masks.to(self.device) if masks is not None else None)

    def _draw(self, example: Example, epoch: int, batch_number: int, slot: int) -> tuple[bool, str, Any]:
        rng = sample_rng(self.config.run.seed, epoch, batch_number, slot)
        flip = self.config.data.flip and rng.random() < 0.5
        caption = process_caption(example.caption, keep_tokens=example.keep_tokens, shuffle=example.shuffle,
                                  options=self.captions, rng=rng)
        if dropout_epoch(self.config.data.caption_dropout_every_n_epochs, epoch):
            caption = ""
        return flip, caption, rng

    def _time_ids(self, example: Example) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        place = placement(example.record.size, example.bucket)
        return ((place.original[1], place.original[0]), (place.trim[1], place.trim[0]),
                (example.bucket[1], example.bucket[0]))

    def _batch_pixels(self, indices: Sequence[int], epoch: int, batch_number: int) -> Any:
        examples = [self.data.examples[i] for i in indices]
        draws = [self._draw(example, epoch, batch_number, slot) for slot, example in enumerate(examples)]
        return self._stack_pixels(examples, draws)

    def _stack_pixels(self, examples: Sequence[Example], draws: Sequence[tuple[bool, str, Any]]) -> Any:
        return self._torch.stack([self._pixels(e, flip, rng) for e, (flip, _, rng) in zip(examples, draws, strict=True)])

    def _latents(self, examples: Sequence[Example], draws: Sequence[tuple[bool, str, Any]]) -> tuple[Any, Any]:
        """Host latents (and loss masks, or None) for the batch from the cache (a lost entry is encoded
        again with its fixed group)."""
        torch = self._torch
        keys = [self._latent_key(e, flip) for e, (flip, _, _) in zip(examples, draws, strict=True)]
        found = self.latents.get_many(keys)
        for i, item in enumerate(found):
            if item is None:  # not there any more (a damaged disk entry): its fixed group again
                self._encode_group(self._groups[keys[i]])
                found[i] = self.latents.get(keys[i])
        return torch.stack([item["latent"] for item in found]), self._masks([item.get("mask") for item in found])

    def _encode_group(self, group: Sequence[LatentItem]) -> None:
        assert self.latents is not None
        pixels = self._torch.stack([self._pixels(self.data.examples[i], flip, None) for _, i, flip in group])
        for (key, i, flip), latent in zip(group, self._encode(pixels), strict=True):
            mask = self._mask(self.data.examples[i], flip)
            self.latents.put(key, {"latent": latent, **({"mask": mask} if mask is not None else {})})

    def _encode(self, pixels: Any) -> Any:
        """Scaled latents on the host; the VAE runs wherever its weights are, in their dtype."""
        vae = self.base.vae
        with self._torch.no_grad():
            encoded = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        if self.shift:
            encoded = encoded - self.shift
        return (encoded * self.scaling).float().cpu()

    def _latent_key(self, example: Example, flip: bool) -> str:
        place = placement(example.record.size, example.bucket)
        source = self.masks[example.index]
        return latent_key(example.record, resized=place.resized, trim=place.trim, bucket=example.bucket,
                          flip=flip, vae_id=self.vae_id, mask=source.identity if source is not None else None)

    def _mask(self, example: Example, flip: bool) -> Any:
        """The example's loss mask at latent resolution, placed and flipped as its image; None unmasked."""
        source = self.masks[example.index]
        if source is None:
            return None
        return load_mask(source, example, flip=flip, latent_size=latent_size(example.bucket, self._mask_scale))

    def _masks(self, masks: Sequence[Any]) -> Any:
        return self._torch.stack(list(masks)) if masks and masks[0] is not None else None

    def _pixels(self, example: Example, flip: bool, rng: Any) -> Any:
        image, _ = load_pixels(example)
        array = to_array(image, flip=flip)
        if self.config.data.color_aug and rng is not None:
            array = colour_jitter(array, rng)
        return self._torch.from_numpy(array)

    def _text_key(self, caption: str) -> str:
        return text_key(caption, encoder_id=self.text_id)

    def _encode_text(self, caption: str) -> dict[str, Any]:
        """One caption's outputs (on its own, so never dependent on a batch's other captions)."""
        from train.conditioning import encode_prompt, tokenize

        with self._torch.no_grad():
            embeds = encode_prompt(self.base, tokenize(self.base, [caption]), clip_skip=self.config.model.clip_skip)
        found = {"embeds": embeds.embeds[0]}
        if embeds.pooled is not None:
            found["pooled"] = embeds.pooled[0]
        return found

    def _t5(self, captions: list[str]) -> Any:
        """SD3's T5 outputs per caption from their cache (each encoded on its own, like the others)."""
        from train.conditioning import tokenize
        from train.sd3 import encode_t5

        def encode(caption: str) -> dict[str, Any]:
            with self._torch.no_grad():
                return {"t5": encode_t5(self.base.text_encoders, tokenize(self.base, [caption]))[0]}

        key = self.text_id + "/t5-only"
        items = [self.t5_texts.get_or_compute(text_key(c, encoder_id=key), lambda c=c: encode(c)) for c in captions]
        return self._torch.stack([i["t5"] for i in items])

    def _prompt(self, captions: list[str]) -> Any:
        from train.conditioning import PromptEmbeds, encode_prompt, tokenize

        if self.texts is None:  # encoded on the encoders' device; with gradients when they train
            t5 = self._t5(captions) if self.t5_texts is not None else None
            embeds = encode_prompt(self.base, tokenize(self.base, captions), clip_skip=self.config.model.clip_skip,
                                   t5=t5)
            return embeds.to(self.device)
        items = [self.texts.get_or_compute(self._text_key(c), lambda c=c: self._encode_text(c)) for c in captions]
        pooled = self._torch.stack([i["pooled"] for i in items]) if "pooled" in items[0] else None
        return PromptEmbeds(self._torch.stack([i["embeds"] for i in items]), pooled).to(self.device)


def dropout_epoch(every: int, epoch: int) -> bool:
    """sd-scripts' caption_dropout_every_n_epochs: epochs N, 2N, … (1-based) train every caption empty."""
    return every > 0 and (epoch + 1) % every == 0
