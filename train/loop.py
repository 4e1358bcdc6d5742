"""The training loop: `training_step()` computes one weighted diffusion loss, `train()` reads top to bottom.

Why every random draw is seeded by (seed, step) or (seed, epoch, batch): a run killed after a
checkpoint and resumed with `--resume latest` replays exactly the same batches, captions, noise and
timesteps as the uninterrupted run, so it reaches the same weights.

Everything else (planning, conditioning, optimizers, logging) is a named helper below `train()`.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.errors import LoraprepError, UsageError
from prep.progress import SILENT, Reporter
from train.cache import TensorCache, latent_cache, latent_key, text_key
from train.checkpoint import (LoopState, list_checkpoints, load_checkpoint, prune_checkpoints, resolve_resume,
                              restore_rng, save_checkpoint)
from train.config import LossConfig, TrainConfig
from train.data import (CaptionOptions, Example, TrainingSet, batches_per_epoch, colour_jitter, epoch_batches,
                        load_pixels, load_training_set, placement, process_caption, sample_rng, to_array)
from train.network import Network, add_lora, load_lora_state, lora_state_dict



class TrainingDiverged(LoraprepError):
    """The loss became NaN or infinite; training stops rather than write a broken LoRA."""


# ---------------------------------------------------------------- plan (no weights loaded)


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


def plan_training(manifest_path: str | Path, config: TrainConfig, *, num_processes: int = 1) -> TrainPlan:
    """Validate manifest and config together and work out steps, epochs and batches per bucket."""
    d = config.data
    data = load_training_set(manifest_path, keep_tokens=d.keep_tokens, shuffle_caption=d.shuffle_caption,
                             verify=d.verify_files)
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


# ---------------------------------------------------------------- the step


@dataclass
class Conditioned:
    """One micro-batch ready for the UNet: latents, text conditioning, SDXL time ids, loss weights."""

    latents: Any
    prompt: Any
    time_ids: Any
    weights: Any


def training_step(base: Any, unet: Any, batch: Conditioned, *, prediction_type: str, loss: LossConfig,
                  generator: Any) -> Any:
    """Encode → noise → timesteps → target → weighted MSE. Returns the batch's scalar loss."""
    import torch
    import torch.nn.functional as F

    from train.conditioning import unet_condition

    latents = batch.latents
    scheduler = base.noise_scheduler
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if loss.noise_offset:
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                             device=latents.device, dtype=latents.dtype)
        noise = noise + loss.noise_offset * offset
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator, device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    cond = unet_condition(base, batch.prompt, batch.time_ids)
    prediction = unet(noisy, timesteps, **cond).sample
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    weights = batch.weights
    if loss.min_snr_gamma:
        weights = weights * min_snr_weights(scheduler, timesteps, loss.min_snr_gamma, prediction_type)
    return (per_sample * weights).mean()


def min_snr_weights(scheduler: Any, timesteps: Any, gamma: float, prediction_type: str) -> Any:
    """Min-SNR-γ loss weights (Hang et al. 2023): min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR+1) for v."""
    import torch

    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


# ---------------------------------------------------------------- the run


@dataclass
class TrainResult:
    output_dir: Path
    lora_files: list[Path]
    steps: int
    final_loss: float | None
    checkpoints: list[Path]
    loss_csv: Path | None = None
    loss_plot: Path | None = None
    stopped_early: bool = False


def train(manifest_path: str | Path, config: TrainConfig, *, reporter: Reporter = SILENT,
          stop: Callable[[int], bool] | None = None, base: Any = None) -> TrainResult:
    """Train a LoRA on the manifest's images.

    `stop(step)` returning True ends the run after that step, as an interruption would (a resume
    continues from the last checkpoint). `base` passes an already loaded, adapter-free model from
    `load_model` (benchmarks and tests inspect it afterwards); by default `config.model.base` is loaded.
    """
    import torch

    run, out = config.run, Path(config.run.output_dir)
    accelerator = make_accelerator(config)
    plan = plan_training(manifest_path, config, num_processes=accelerator.num_processes)
    base = base if base is not None else load_model(config, accelerator.device)
    torch.manual_seed(hash_seed(run.seed, -1))  # the LoRA's random init: same seed, same start
    network = add_lora(base.unet, base.text_encoders, config.network)
    if config.network.init_weights:
        init_from_lora(base, config.network.init_weights)
    optimizer = make_optimizer(network, config)
    scheduler = make_scheduler(optimizer, config, plan.total_steps)
    state = LoopState()
    if run.resume:
        state = resume_from(resolve_resume(out, run.resume), base, network, optimizer, scheduler, reporter)
    unet, optimizer = accelerator.prepare(base.unet, optimizer)
    batcher = Batcher(base, plan.data, config, accelerator.device)
    log = LossLog.resume(out / "loss.csv", state.global_step) if accelerator.is_main_process else LossLog()
    tracker = make_tracker(config, out) if accelerator.is_main_process else None
    sampler = Sampler.create(config, plan, base, reporter) if accelerator.is_main_process else None
    reporter.note(f"training {network.parameter_count():,} LoRA parameters on {accelerator.device}, "
                  f"{plan.total_steps} steps ({plan.steps_per_epoch}/epoch)")
    checkpoints: list[Path] = []
    stopped = False
    with reporter.task("training", plan.total_steps) as advance:
        advance(state.global_step)
        while state.global_step < plan.total_steps and not stopped:
            epoch, groups = state.epoch, batcher.groups(state.epoch, accelerator)
            for index in range(state.batch_in_epoch // config.optimizer.grad_accum, len(groups)):
                loss = optimizer_step(accelerator, base, unet, network, optimizer, scheduler, batcher,
                                      groups[index], epoch, state.global_step, config)
                end_of_epoch = index == len(groups) - 1
                state.advance(loss, len(groups[index][1]), end_of_epoch=end_of_epoch)
                metrics = {"step": state.global_step, "epoch": epoch + 1, "epochs": plan.epochs, "loss": loss,
                           "loss_ema": state.loss_ema, "lr": scheduler.get_last_lr()[0]}
                log.add(metrics, tracker)
                advance(1, metrics=metrics)
                if accelerator.is_main_process and should_save(state, run, end_of_epoch, plan.total_steps):
                    checkpoints.append(save(out, state, base, network, optimizer, scheduler, config, plan, log))
                if sampler is not None and (state.global_step % run.sample_every == 0
                                            or state.global_step == plan.total_steps):
                    sampler.render(state.global_step)
                stopped = stop is not None and stop(state.global_step) and state.global_step < plan.total_steps
                if state.global_step >= plan.total_steps or stopped:
                    break
    return finish(out, base, network, config, plan, state, log, checkpoints, accelerator, tracker, stopped=stopped)


def optimizer_step(accelerator: Any, base: Any, unet: Any, network: Network, optimizer: Any, scheduler: Any,
                   batcher: Batcher, group: tuple[int, list[tuple[int, ...]]], epoch: int, step: int,
                   config: TrainConfig) -> float:
    """Accumulate gradients over the group's micro-batches, clip, and take one optimizer step."""
    import torch

    first_batch, micro_batches = group
    step_seed = hash_seed(config.run.seed, step, accelerator.process_index)
    torch.manual_seed(step_seed)  # network dropout draws from the global generator
    generator = torch.Generator(device=accelerator.device).manual_seed(step_seed)
    unet.train()
    total = 0.0
    for offset, indices in enumerate(micro_batches):
        batch = batcher.condition(indices, epoch, first_batch + offset)
        with accelerator.autocast():
            loss = training_step(base, unet, batch, prediction_type=batcher.prediction_type,
                                 loss=config.loss, generator=generator)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise diverged(value, step, epoch, config)
        accelerator.backward(loss / len(micro_batches))
        total += value / len(micro_batches)
    if accelerator.num_processes > 1:  # the UNet syncs through DDP; text-encoder LoRA grads by hand
        for param in network.text_encoder_params:
            if param.grad is not None:
                param.grad = accelerator.reduce(param.grad, reduction="mean")
    if config.optimizer.max_grad_norm > 0:
        accelerator.clip_grad_norm_(network.unet_params + network.text_encoder_params, config.optimizer.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python runs, unlike hash())."""
    import hashlib

    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def diverged(value: float, step: int, epoch: int, config: TrainConfig) -> TrainingDiverged:
    found = list_checkpoints(Path(config.run.output_dir))
    last = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was saved yet"
    if config.run.mixed_precision == "fp16":
        cause = "fp16 overflow; train with --mixed-precision bf16 (or no), or lower --lr"
    else:
        cause = (f"the learning rate is too high for {config.optimizer.optimizer} (lr={config.optimizer.lr:g}); "
                 "lower --lr" + ("" if config.optimizer.max_grad_norm else " or set --max-grad-norm 1"))
    return TrainingDiverged(
        f"loss became {value} at step {step + 1} (epoch {epoch + 1}); likely cause: {cause}. "
        f"{last[0].upper() + last[1:]}",
        hint="resume from it with --resume latest after changing the setting" if found else
        "change the setting and start again")


# ---------------------------------------------------------------- data → conditioned batches


class Batcher:
    """Turns batches of example indices into latents + text conditioning, through the caches."""

    def __init__(self, base: Any, data: TrainingSet, config: TrainConfig, device: Any) -> None:
        import torch

        self.base, self.data, self.config, self.device = base, data, config, device
        self.prediction_type = config.model.prediction_type if config.model.prediction_type != "auto" \
            else base.prediction_type
        self.weight_dtype = weight_dtype(config.run.mixed_precision)
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
            with torch.no_grad():
                encoded = self.base.vae.encode(pixels.to(self.device, torch.float32)).latent_dist.mode()
            for i, latent in zip(missing, (encoded * self.scaling).float().cpu(), strict=True):
                found[i] = {"latent": latent}
                if self.latents is not None:
                    self.latents.put(keys[i], found[i])
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

        if self.texts is None:
            return encode_prompt(self.base, tokenize(self.base, captions), clip_skip=self.config.model.clip_skip)

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


# ---------------------------------------------------------------- setup helpers


def weight_dtype(mixed_precision: str) -> Any:
    """Frozen weights in the mixed-precision dtype; LoRA weights and the VAE always stay fp32."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def make_accelerator(config: TrainConfig) -> Any:
    from accelerate import Accelerator

    return Accelerator(mixed_precision=config.run.mixed_precision)


def load_model(config: TrainConfig, device: Any) -> Any:
    """The base model with UNet and text encoders in the training dtype and the VAE in fp32 (no NaN latents)."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from train.model import load_base

    if not config.model.base:
        raise UsageError("no base model given",
                         hint="pass --base MODEL (diffusers folder, .safetensors file or hub id)")
    prediction = None if config.model.prediction_type == "auto" else config.model.prediction_type
    base = load_base(config.model.base, allow_pickle=config.model.allow_pickle, device=device,
                     prediction_type=prediction)
    dtype = weight_dtype(config.run.mixed_precision)
    for module in (base.unet, *base.text_encoders):
        if module.dtype != dtype:
            module.to(dtype=dtype)
    if base.vae.dtype != torch.float32:
        base.vae.to(dtype=torch.float32)
    base.unet.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA: flash/memory-efficient kernels
    if config.run.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        if config.network.train_text_encoder:
            for encoder in base.text_encoders:
                encoder.gradient_checkpointing_enable()
    return base


def init_from_lora(base: Any, path: str) -> None:
    loader = getattr(_export_module(), "load_lora_into", None)
    if loader is None:
        raise UsageError("--init-weights needs train.export.load_lora_into, which this build lacks")
    loader(base, path)


def make_optimizer(network: Network, config: TrainConfig) -> Any:
    """The named optimizer over the LoRA parameters (text-encoder LoRA in its own group with its LR)."""
    import torch

    o = config.optimizer
    groups = network.param_groups(o.lr, config.network.text_encoder_lr)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UsageError("--optimizer adamw8bit needs bitsandbytes, which is not installed",
                             hint="pip install 'loraprep[bnb]' (needs a CUDA GPU), or use --optimizer adamw") from None
        return bnb.optim.AdamW8bit(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "lion":
        from lion_pytorch import Lion

        return Lion(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=o.lr, weight_decay=o.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    from prodigyopt import Prodigy

    return Prodigy(groups, lr=o.lr, weight_decay=o.weight_decay)


def make_scheduler(optimizer: Any, config: TrainConfig, total_steps: int) -> Any:
    from diffusers.optimization import get_scheduler

    o = config.optimizer
    return get_scheduler(o.scheduler, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=total_steps,
                         num_cycles=o.cycles, power=o.power)


def trainable_modules(base: Any, network: Network) -> dict[str, Any]:
    modules = {"unet": base.unet}
    if network.text_encoder_params:
        modules.update({f"te{i}": e for i, e in enumerate(base.text_encoders)})
    return modules


def resume_from(path: Path, base: Any, network: Network, optimizer: Any, scheduler: Any,
                reporter: Reporter) -> LoopState:
    checkpoint = load_checkpoint(path)
    load_lora_state(trainable_modules(base, network), checkpoint.lora)
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    restore_rng(checkpoint.rng)
    reporter.note(f"resumed from {path} (step {checkpoint.state.global_step}, epoch {checkpoint.state.epoch + 1})")
    return checkpoint.state


def should_save(state: LoopState, run: Any, end_of_epoch: bool, total_steps: int) -> bool:
    """Every N steps and/or every N completed epochs; the final LoRA is written by finish() instead."""
    if state.global_step >= total_steps:
        return False
    by_steps = run.save_every_steps and state.global_step % run.save_every_steps == 0
    by_epochs = end_of_epoch and run.save_every_epochs and state.epoch % run.save_every_epochs == 0
    return bool(by_steps or by_epochs)


def save(out: Path, state: LoopState, base: Any, network: Network, optimizer: Any, scheduler: Any,
         config: TrainConfig, plan: TrainPlan, log: LossLog) -> Path:
    """A resumable checkpoint plus exported LoRA files, then pruning to --save-last."""
    path = save_checkpoint(out, state, lora=lora_state_dict(trainable_modules(base, network)),
                           optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                           config=config.to_dict())
    export_lora(out / f"{config.run.name}-step{state.global_step:08d}", base, network, config, plan, state)
    log.write()
    prune_checkpoints(out, config.run.save_last)
    prune_exports(out, config.run.name, config.run.save_last)
    return path


def finish(out: Path, base: Any, network: Network, config: TrainConfig, plan: TrainPlan, state: LoopState,
           log: LossLog, checkpoints: list[Path], accelerator: Any, tracker: Any, *, stopped: bool) -> TrainResult:
    files: list[Path] = []
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not stopped:
        files = export_lora(out / config.run.name, base, network, config, plan, state)
    csv = log.write() if accelerator.is_main_process else None
    plot = log.plot() if accelerator.is_main_process and not stopped else None
    if tracker is not None:
        tracker.close()
    return TrainResult(out, files, state.global_step, log.rows[-1][2] if log.rows else None,
                       [c for c in checkpoints if c.exists()], csv, plot, stopped)


def export_lora(stem: Path, base: Any, network: Network, config: TrainConfig, plan: TrainPlan,
                state: LoopState) -> list[Path]:
    """Both LoRA formats via train.export (kohya/WebUI and diffusers/peft), named from `stem`."""
    export = _export_module()
    if export is None or not hasattr(export, "save_lora"):
        return []
    encoders = base.text_encoders if network.text_encoder_params else ()
    try:
        files = export.save_lora(stem, unet=base.unet, text_encoders=encoders, base=base,
                                 network_config=config.network, metadata=lora_metadata(config, plan, state, base))
    except OSError as exc:
        found = list_checkpoints(Path(config.run.output_dir))
        kept = f"the last checkpoint {found[-1]} is intact" if found else "no checkpoint was saved"
        raise LoraprepError(f"could not write {stem.name}.safetensors at step {state.global_step}: "
                            f"{exc.strerror or exc}; {kept}",
                            hint="free disk space, then continue with `--resume latest`") from exc
    return [Path(f) for f in files]


def lora_metadata(config: TrainConfig, plan: TrainPlan, state: LoopState, base: Any) -> dict[str, Any]:
    """What the LoRA file records about its training (sd-scripts `ss_*` fields)."""
    manifest = plan.data.manifest
    resolution = manifest.buckets.resolution if manifest.buckets else (512, 512)
    o, r = config.optimizer, config.run
    return dict(
        title=r.name, trigger=manifest.trigger or "", resolution=tuple(resolution),
        num_train_images=sum(e.repeats for e in plan.data.examples if not e.is_reg),
        num_reg_images=sum(e.repeats for e in plan.data.examples if e.is_reg),
        tag_frequency=tag_frequency(plan.data), learning_rate=o.lr, unet_lr=o.lr,
        text_encoder_lr=(config.network.text_encoder_lr or o.lr) if config.network.train_text_encoder else None,
        optimizer=o.optimizer, lr_scheduler=o.scheduler, max_train_steps=plan.total_steps, steps=state.global_step,
        epoch=state.epoch, num_epochs=plan.epochs, batch_size=config.data.batch_size * o.grad_accum, seed=r.seed,
        clip_skip=config.model.clip_skip, noise_offset=config.loss.noise_offset or None,
        min_snr_gamma=config.loss.min_snr_gamma, mixed_precision=r.mixed_precision,
        base_model_name=Path(config.model.base).name,
    )


def tag_frequency(data: TrainingSet) -> dict[str, dict[str, int]]:
    """sd-scripts' ss_tag_frequency: per dataset folder ("<repeats>_<subset>"), how often each tag occurs."""
    from collections import Counter

    from train.data import split_caption

    found: dict[str, Counter[str]] = {}
    for example in data.examples:
        counter = found.setdefault(f"{example.repeats}_{example.record.subset}", Counter())
        counter.update(split_caption(example.caption))
    return {k: dict(v) for k, v in found.items()}


def _export_module() -> Any:
    import importlib

    try:
        return importlib.import_module("train.export")
    except ModuleNotFoundError:
        return None


def prune_exports(out: Path, name: str, keep: int) -> None:
    if keep <= 0:
        return
    steps = sorted({p.name.split("-step")[1][:8] for p in out.glob(f"{name}-step*") if "-step" in p.name})
    for old in steps[:-keep]:
        for path in out.glob(f"{name}-step{old}*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def make_tracker(config: TrainConfig, out: Path) -> Any:
    if not config.run.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package",
                         hint="pip install 'loraprep[tensorboard]'") from None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


# ---------------------------------------------------------------- samples


@dataclass
class Sampler:
    """`--sample-every N --sample-prompts FILE`: a PNG grid of the prompts every N steps and at the end."""

    base: Any
    prompts: list[Any]
    defaults: Any
    folder: Path
    name: str
    reporter: Reporter

    @classmethod
    def create(cls, config: TrainConfig, plan: TrainPlan, base: Any, reporter: Reporter) -> Sampler | None:
        if not config.run.sample_every or not config.run.sample_prompts:
            return None
        from train.sample import SampleDefaults, parse_prompt_file

        manifest = plan.data.manifest
        width, height = manifest.buckets.resolution if manifest.buckets else (512, 512)
        defaults = SampleDefaults(width=width, height=height, seed=config.run.seed, clip_skip=config.model.clip_skip)
        return cls(base, parse_prompt_file(config.run.sample_prompts), defaults,
                   Path(config.run.output_dir) / "samples", config.run.name, reporter)

    def render(self, step: int) -> Path:
        from train.sample import render_samples

        return render_samples(self.base, self.prompts, self.folder / f"{self.name}-step{step:08d}.png",
                              defaults=self.defaults, reporter=self.reporter)


# ---------------------------------------------------------------- loss log


@dataclass
class LossLog:
    """Per-step loss, kept in memory and written as CSV (and a PNG plot at the end)."""

    path: Path | None = None
    rows: list[tuple[int, int, float, float, float]] = field(default_factory=list)

    @classmethod
    def resume(cls, path: Path, step: int) -> LossLog:
        """Continue a log: rows up to the resumed step are kept, later ones (lost with the kill) dropped."""
        log = cls(path)
        if step and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines()[1:]:
                parts = line.split(",")
                if len(parts) == 5 and int(parts[0]) <= step:
                    loss, ema, lr = (float(p) for p in parts[2:])
                    log.rows.append((int(parts[0]), int(parts[1]), loss, ema, lr))
        return log

    def add(self, metrics: dict[str, Any], tracker: Any = None) -> None:
        m = metrics
        self.rows.append((m["step"], m["epoch"], m["loss"], m["loss_ema"], m["lr"]))
        if tracker is not None:
            tracker.add_scalars("train", {k: m[k] for k in ("loss", "loss_ema", "lr")}, m["step"])

    def write(self) -> Path | None:
        from prep.atomic import write_text_atomic

        if self.path is None:
            return None
        lines = ["step,epoch,loss,loss_ema,lr"] + [f"{s},{e},{l:.6g},{m:.6g},{r:.6g}" for s, e, l, m, r in self.rows]
        write_text_atomic(self.path, "\n".join(lines) + "\n")
        return self.path

    def plot(self) -> Path | None:
        import io

        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        from prep.atomic import write_bytes_atomic

        if self.path is None or not self.rows:
            return None
        figure = Figure(figsize=(7, 3.5), dpi=100)
        axes = figure.add_subplot()
        steps = [r[0] for r in self.rows]
        axes.plot(steps, [r[2] for r in self.rows], alpha=0.35, label="loss")
        axes.plot(steps, [r[3] for r in self.rows], label="loss (EMA)")
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.legend()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        path = self.path.with_suffix(".png")
        write_bytes_atomic(path, buffer.getvalue())
        return path


# ---------------------------------------------------------------- dry run: memory estimate


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
TYPICAL_PARAMS = {"sd1": (860_000_000, 123_000_000, 84_000_000), "sdxl": (2_567_000_000, 817_000_000, 84_000_000)}
# Activation bytes per latent pixel per sample for an SD1.5 UNet in 16-bit, without and with gradient
# checkpointing, from `bench/train.py --full-size` on an H100 (bf16, 512², batch 1, rank 16: peak
# 3.06 GB / 2.22 GB, of which ~2.0 GB weights); scaled by UNet size for other models.
ACTIVATION_BYTES = (260_000, 50_000)


def estimate_memory(base: str, config: TrainConfig, bucket: tuple[int, int]) -> MemoryEstimate:
    """Weights × dtype + LoRA (param, grad, 2 optimizer moments) + activations ∝ latent area × batch."""
    counts, source = _parameter_counts(base)
    unet, text, vae = counts
    bytes_per = 2 if config.run.mixed_precision in ("fp16", "bf16") else 4
    weights = (unet + text) * bytes_per + vae * 4
    rank_fraction = config.network.rank / 320 * 0.04 * (2 if config.network.preset != "attn" else 1)
    lora = int(unet * rank_fraction) * 4 * 4
    latent_pixels = (bucket[0] // 8) * (bucket[1] // 8)
    per_pixel = ACTIVATION_BYTES[1 if config.run.gradient_checkpointing else 0] * (unet / 860_000_000) ** 0.5
    activations = int(per_pixel * latent_pixels * config.data.batch_size * bytes_per / 2)
    return MemoryEstimate(int(weights), lora, activations, source)


def _parameter_counts(base: str) -> tuple[tuple[int, int, int], str]:
    folder = Path(base).expanduser() if base else None
    if folder is not None and folder.is_dir() and (folder / "unet").is_dir():
        parts = []
        for names in (("unet",), ("text_encoder", "text_encoder_2"), ("vae",)):
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
    return TYPICAL_PARAMS[family], f"typical {family.upper()} sizes"


def _safetensors_header(path: Path) -> dict[str, Any]:
    import json
    import struct

    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def _safetensors_params(path: Path) -> int:
    return sum(math.prod(v.get("shape", [0])) for k, v in _safetensors_header(path).items() if k != "__metadata__")


# ---------------------------------------------------------------- multi-GPU relaunch


def relaunch_command(argv: Sequence[str], num_processes: int) -> list[str]:
    """`loraprep train … --num-processes N` → `accelerate launch --num_processes N -m cli train …`."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--num-processes":
            skip = True
            continue
        if arg.startswith("--num-processes="):
            continue
        args.append(arg)
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
            "--multi_gpu", "-m", "cli", *args]


def relaunch(argv: Sequence[str], num_processes: int) -> int:
    """Run the same training under `accelerate launch` with N processes; returns its exit code."""
    root = str(Path(__file__).resolve().parent.parent)  # where cli.py lives, for `-m cli`
    env = dict(os.environ, LORAPREP_LAUNCHED="1",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    return subprocess.call(relaunch_command(argv, num_processes), env=env)
