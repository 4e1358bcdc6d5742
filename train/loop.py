"""The training loop: `training_step()` computes one weighted diffusion loss, `train()` reads top to bottom.

Why every random draw is seeded by (seed, step) or (seed, epoch, batch): a run killed after a
checkpoint and resumed with `--resume latest` replays exactly the same batches, captions, noise and
timesteps as the uninterrupted run, so it reaches the same weights.

The helpers live in their own modules: the plan (train.plan), batches (train.batcher), the model
and optimizer setup (train.prepare, train.optim), outputs (train.outputs) and the loss log (train.losslog).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prep.errors import LoraprepError
from prep.progress import SILENT, Reporter
from train.batcher import Batcher, Conditioned
from train.checkpoint import (LoopState, list_checkpoints, load_checkpoint, prune_checkpoints, resolve_resume,
                              restore_rng, save_checkpoint)
from train.config import LossConfig, TrainConfig
from train.from_weights import add_lora_from_file
from train.losses import check_prediction, min_snr_weights, per_sample_loss, timestep_weights  # noqa: F401
from train.losslog import LossLog
from train.network import Network, add_lora, load_lora_state, lora_state_dict, plain_lora_layers, uncast_inputs
from train.noise import noisy_latents, prepare_noise_schedule, sample_noise, sample_timesteps
from train.optim import make_scheduler, training_optimizer
from train.outputs import Sampler, export_lora, make_tracker, prune_exports
from train.plan import TrainPlan, plan_training
from train.publish import Publisher
from train.prepare import compiled, load_model, make_accelerator, park


class TrainingDiverged(LoraprepError):
    """The loss became NaN or infinite; training stops rather than write a broken LoRA."""


# ---------------------------------------------------------------- the step


def training_step(base: Any, unet: Any, batch: Conditioned, *, prediction_type: str, loss: LossConfig,
                  generator: Any) -> Any:
    """Encode → noise → timesteps → target → weighted loss. Returns the batch's scalar loss.
    The noise and loss variants (offsets, perturbation, Huber, masks, SNR weights) live in
    train.noise and train.losses."""
    if getattr(base, "family", None) == "sd3":  # flow matching on the MMDiT (train.sd3)
        from train.sd3 import training_step as flow_matching_step
        return flow_matching_step(base, unet, batch, loss=loss, generator=generator)
    from train.conditioning import unet_condition

    latents = batch.latents
    scheduler = base.noise_scheduler
    noise = sample_noise(latents, loss, generator)
    timesteps = sample_timesteps(latents.shape[0], loss, scheduler.config.num_train_timesteps, generator,
                                 latents.device)
    noisy = noisy_latents(scheduler, latents, noise, timesteps, loss, generator)
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    cond = unet_condition(base, batch.prompt, batch.time_ids)
    prediction = unet(noisy, timesteps, **cond).sample
    per_sample = per_sample_loss(prediction, target, loss, scheduler, timesteps, mask=batch.mask)
    weights = batch.weights * timestep_weights(scheduler, timesteps, loss, prediction_type)
    return (per_sample * weights).mean()


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
    if config.embedding.embedding:  # textual inversion / pivotal tuning: captions train on NAME
        from train.embedding import with_embedding_captions

        plan = with_embedding_captions(plan, config)
    # issue 24: model card, --push-to-hub and --report-to, checked before any weight is loaded
    publisher = Publisher.start(config, plan, reporter) if accelerator.is_main_process else None
    if accelerator.is_main_process:
        clean_leftovers(config, reporter)
    # The UNet waits on the host while the caches fill and the encoders are parked: the cache pass
    # and the steps then never hold all of the model on the accelerator at once.
    base = base if base is not None else load_model(config, accelerator.device, unet_device="cpu")
    if base.family == "sd3":  # settings SD3 has no use for, and buckets its patches cannot tile
        from train.sd3 import check_bucket, check_settings
        check_settings(config)
        for bucket in plan.data.buckets:
            check_bucket(bucket)
    batcher = Batcher(base, plan.data, config, accelerator.device)
    if base.family != "sd3":  # SD3 trains flow matching (train.sd3 refused these variants already)
        check_prediction(config.loss, batcher.prediction_type)  # loss/noise variants need v or ε (train.losses)
        ztsnr = prepare_noise_schedule(base, config)
        reporter.note(f"prediction type: {batcher.prediction_type}" + (" with zero terminal SNR" if ztsnr else ""))
    batcher.fill_caches(reporter)
    parked = park([*([base.vae] if not batcher.needs_vae else []),
                   *batcher.idle_text_encoders])
    base.unet.to(accelerator.device)
    torch.manual_seed(hash_seed(run.seed, -1))  # the LoRA's random init: same seed, same start
    if config.embedding.embedding:  # textual inversion (the embedding alone) or pivotal tuning (with the LoRA)
        from train.embedding import add_embedding_network

        network, notes = add_embedding_network(base, config)
    elif config.network.init_weights:  # the file decides the network's shape (sd-scripts' dim_from_weights)
        network, notes = add_lora_from_file(base, config.network.init_weights, config.network)
    else:
        network, notes = add_lora(base.unet, base.text_encoders, config.network), []
    optimizer, optimizer_notes = training_optimizer(base.unet, network, config)
    scheduler = make_scheduler(optimizer, config, plan.total_steps)
    for note in notes + optimizer_notes:
        reporter.note(note)
    state = LoopState()
    if run.resume:
        state = resume_from(resolve_resume(out, run.resume), base, network, optimizer, scheduler, reporter,
                            complete=(config, plan) if accelerator.is_main_process else None)
    unet, optimizer = accelerator.prepare(base.unet, optimizer)
    unet = compiled(unet, run.torch_compile)
    log = LossLog.resume(out / "loss.csv", state.global_step) if accelerator.is_main_process else LossLog()
    tracker = make_tracker(config, out) if accelerator.is_main_process else None
    sampler = Sampler.create(config, plan, base, reporter, parked=parked, device=accelerator.device) \
        if accelerator.is_main_process else None
    if tracker is not None:  # issue 24: sample grids and every parameter group's learning rate go to the trackers
        tracker.watch(optimizer, sampler)
    reporter.note(f"training {network.parameter_count():,} LoRA parameters on {accelerator.device}, "
                  f"{plan.total_steps} steps ({plan.steps_per_epoch}/epoch)")
    max_norm = max_norm_step(base, network, config)
    uncast = plain_lora_layers(base.unet) if config.run.mixed_precision != "no" else []
    checkpoints: list[Path] = []
    stopped = False
    if sampler is not None and run.sample_at_first and state.global_step == 0:
        sampler.render(0)
    with reporter.task("training", plan.total_steps) as advance:
        advance(state.global_step)
        while state.global_step < plan.total_steps and not stopped:
            epoch, groups = state.epoch, batcher.groups(state.epoch, accelerator)
            for index in range(state.batch_in_epoch // config.optimizer.grad_accum, len(groups)):
                for ahead in groups[index:index + 2]:  # this step's images and the next one's decode meanwhile
                    batcher.prefetch_group(ahead, epoch)
                loss = optimizer_step(accelerator, base, unet, network, optimizer, scheduler, batcher,
                                      groups[index], epoch, state.global_step, config, uncast)
                end_of_epoch = index == len(groups) - 1
                state.advance(loss, len(groups[index][1]), end_of_epoch=end_of_epoch)
                metrics = {"step": state.global_step, "epoch": epoch + 1, "epochs": plan.epochs, "loss": loss,
                           "loss_ema": state.loss_ema, "lr": scheduler.get_last_lr()[0],
                           **max_norm()}
                log.add(metrics, tracker)
                advance(1, metrics=metrics)
                if accelerator.is_main_process and should_save(state, run, end_of_epoch, plan.total_steps):
                    checkpoints.append(save(out, state, base, network, optimizer, scheduler, config, plan, log))
                    if publisher is not None:  # issue 24: the card, and --push-every-save
                        publisher.saved(base.family, state.global_step, sampler)
                if sampler is not None and sampler.due(state.global_step, plan.total_steps,
                                                       epoch_done=epoch + 1 if end_of_epoch else None):
                    sampler.render(state.global_step)
                stopped = stop is not None and stop(state.global_step) and state.global_step < plan.total_steps
                if state.global_step >= plan.total_steps or stopped:
                    break
    batcher.close()
    result = finish(out, base, network, config, plan, state, log, checkpoints, accelerator, tracker, stopped=stopped)
    if publisher is not None and not stopped:  # issue 24: the model card and --push-to-hub
        publisher.finished(base.family, result.lora_files, result.steps, sampler)
    return result


def optimizer_step(accelerator: Any, base: Any, unet: Any, network: Network, optimizer: Any, scheduler: Any,
                   batcher: Batcher, group: tuple[int, list[tuple[int, ...]]], epoch: int, step: int,
                   config: TrainConfig, uncast: Sequence[Any] = ()) -> float:
    """Accumulate gradients over the group's micro-batches, clip, and take one optimizer step.
    `uncast`: the UNet's plain LoRA layers, whose input cast autocast makes redundant (uncast_inputs)."""
    import torch

    first_batch, micro_batches = group
    embedding_params = []  # textual inversion / pivotal tuning: synced and clipped with the rest
    if network.embedding is not None:  # pivotal tuning: frozen after --embedding-steps
        network.embedding.freeze_after(step)
        embedding_params = network.embedding.params
    step_seed = hash_seed(config.run.seed, step, accelerator.process_index)
    torch.manual_seed(step_seed)  # network dropout draws from the global generator
    generator = torch.Generator(device=accelerator.device).manual_seed(step_seed)
    unet.train()
    total = 0.0
    for offset, indices in enumerate(micro_batches):
        batch = batcher.condition(indices, epoch, first_batch + offset)
        with accelerator.autocast(), uncast_inputs(uncast):
            loss = training_step(base, unet, batch, prediction_type=batcher.prediction_type,
                                 loss=config.loss, generator=generator)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise diverged(value, step, epoch, config)
        accelerator.backward(loss / len(micro_batches))
        total += value / len(micro_batches)
    if accelerator.num_processes > 1:  # the UNet syncs through DDP; text-encoder LoRA grads by hand
        for param in network.text_encoder_params + embedding_params:
            if param.grad is not None:
                param.grad = accelerator.reduce(param.grad, reduction="mean")
    if config.optimizer.max_grad_norm > 0:
        accelerator.clip_grad_norm_(network.unet_params + network.text_encoder_params + embedding_params,
                                    config.optimizer.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def max_norm_step(base: Any, network: Network, config: TrainConfig) -> Callable[[], dict[str, Any]]:
    """`--scale-weight-norms`: what to call after each step to cap each LoRA layer's update norm; it
    returns sd-scripts' per-step report (nothing without the setting). The layers are found once."""
    limit = config.network.scale_weight_norms
    if not limit:
        return dict
    from train.regularize import apply_max_norm, lora_layers

    layers = lora_layers([base.unet, *(base.text_encoders if network.text_encoder_params else [])])

    def step() -> dict[str, Any]:
        report = apply_max_norm(layers, limit)
        return {"keys_scaled": report.keys_scaled, "mean_norm": report.mean_norm, "max_norm": report.max_norm}

    return step


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


# ---------------------------------------------------------------- checkpoints: save and resume


def trainable_modules(base: Any, network: Network) -> dict[str, Any]:
    modules = {"unet": base.unet}
    if network.text_encoder_params:
        modules.update({f"te{i}": e for i, e in enumerate(base.text_encoders)})
    if network.embedding is not None and not network.text_encoder_params:  # textual inversion / pivotal tuning
        modules["embedding"] = network.embedding.state_module  # (inside the text encoders' state when they train)
    return modules


def resume_from(path: Path, base: Any, network: Network, optimizer: Any, scheduler: Any, reporter: Reporter,
                *, complete: tuple[TrainConfig, TrainPlan] | None = None) -> LoopState:
    """Load the checkpoint into the network, optimizer, scheduler and RNGs; with `complete`, rewrite
    the checkpoint's LoRA files if a kill left any of them missing."""
    checkpoint = load_checkpoint(path)
    load_lora_state(trainable_modules(base, network), checkpoint.lora)
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    restore_rng(checkpoint.rng)
    reporter.note(f"resumed from {path} (step {checkpoint.state.global_step}, epoch {checkpoint.state.epoch + 1})")
    if complete is None:
        return checkpoint.state
    config, plan = complete
    out = Path(config.run.output_dir)
    missing = [name for name in checkpoint.exports if not (out / name).is_file()]
    if missing and path.parent.parent.resolve() == out.resolve():
        export_lora(out / step_stem(config, checkpoint.state.global_step), base, network, config, plan,
                    checkpoint.state)
        reporter.note(f"rewrote {', '.join(missing)} (missing after an interrupted save)")
    return checkpoint.state


def clean_leftovers(config: TrainConfig, reporter: Reporter) -> None:
    """Remove temporaries a killed run left (half-written checkpoint folders, LoRA files, cache
    entries): only our own naming, only of processes no longer running."""
    from prep.atomic import clean_stale_temporaries

    folders = [Path(config.run.output_dir)] + ([Path(config.run.cache_dir)] if config.run.cache_dir else [])
    removed = [p for folder in folders if folder.is_dir() for p in clean_stale_temporaries(folder)]
    if removed:
        reporter.note(f"removed {len(removed)} leftover temporar{'y' if len(removed) == 1 else 'ies'} "
                      "of an interrupted run")


def step_stem(config: TrainConfig, step: int) -> str:
    return f"{config.run.name}-step{step:08d}"


def should_save(state: LoopState, run: Any, end_of_epoch: bool, total_steps: int) -> bool:
    """Every N steps and/or every N completed epochs; the final LoRA is written by finish() instead."""
    if state.global_step >= total_steps:
        return False
    by_steps = run.save_every_steps and state.global_step % run.save_every_steps == 0
    by_epochs = end_of_epoch and run.save_every_epochs and state.epoch % run.save_every_epochs == 0
    return bool(by_steps or by_epochs)


def save(out: Path, state: LoopState, base: Any, network: Network, optimizer: Any, scheduler: Any,
         config: TrainConfig, plan: TrainPlan, log: LossLog) -> Path:
    """The step's LoRA files, loss.csv, then the checkpoint that lists them (the commit point), then
    pruning to --save-last. A kill anywhere before the checkpoint resumes from the previous one."""
    files = export_lora(out / step_stem(config, state.global_step), base, network, config, plan, state)
    log.write()
    path = save_checkpoint(out, state, lora=lora_state_dict(trainable_modules(base, network)),
                           optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                           config=config.to_dict(), exports=tuple(f.name for f in files))
    prune_checkpoints(out, config.run.save_last)
    prune_exports(out, config.run.name, config.run.save_last)
    if network.embedding is not None and network.embedding.name != config.run.name:  # the embedding's step files
        prune_exports(out, network.embedding.name, config.run.save_last)
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

