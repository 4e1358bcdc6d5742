"""What a run writes besides checkpoints: the LoRA files (with their metadata), sample grids, TensorBoard.

Why together: each is an output of a step the loop reached, named from the run's name and step.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.errors import LoraprepError, UsageError
from prep.progress import Reporter
from train.checkpoint import LoopState, list_checkpoints, resume_hint
from train.config import TrainConfig, embedding_lr, parse_size
from train.data import TrainingSet
from train.losses import loss_metadata
from train.network import Network
from train.plan import TrainPlan


def export_lora(stem: Path, base: Any, network: Network, config: TrainConfig, plan: TrainPlan,
                state: LoopState) -> list[Path]:
    """Both LoRA formats via train.export (kohya/WebUI and diffusers/peft), named from `stem`."""
    from train.export import save_lora

    encoders = base.text_encoders if network.text_encoder_params else ()
    try:
        if network.embedding is not None:  # textual inversion / pivotal tuning
            from train.embedding import save_run_embedding

            return save_run_embedding(stem, base, network, config, lora_metadata(config, plan, state, base),
                                      state.global_step)
        files = save_lora(stem, unet=base.unet, text_encoders=encoders, base=base,
                                 network_config=config.network, metadata=lora_metadata(config, plan, state, base))
    except OSError as exc:
        found = list_checkpoints(Path(config.run.output_dir))
        kept = f"the last checkpoint {found[-1]} is intact" if found else "no checkpoint was saved"
        raise LoraprepError(f"could not write {stem.name}.safetensors at step {state.global_step}: "
                            f"{exc.strerror or exc}; {kept}", hint=resume_hint(bool(found))) from exc
    return [Path(f) for f in files]


def lora_metadata(config: TrainConfig, plan: TrainPlan, state: LoopState, base: Any) -> dict[str, Any]:
    """What the LoRA file records about its training (sd-scripts `ss_*` fields)."""
    manifest = plan.data.manifest
    o, r = config.optimizer, config.run
    return dict(
        title=r.name, trigger=manifest.trigger or "", resolution=training_resolution(config, plan),
        num_train_images=sum(e.repeats for e in plan.data.examples if not e.is_reg),
        num_reg_images=sum(e.repeats for e in plan.data.examples if e.is_reg),
        tag_frequency=tag_frequency(plan.data), learning_rate=o.lr, unet_lr=o.lr,
        text_encoder_lr=(config.network.text_encoder_lr or o.lr) if config.network.train_text_encoder else None,
        optimizer=o.optimizer + (f"({','.join(o.optimizer_args)})" if o.optimizer_args else ""),
        lr_scheduler=o.scheduler, max_train_steps=plan.total_steps, steps=state.global_step,
        epoch=state.epoch, num_epochs=plan.epochs, batch_size=config.data.batch_size * o.grad_accum, seed=r.seed,
        clip_skip=config.model.clip_skip, noise_offset=config.loss.noise_offset or None,
        min_snr_gamma=config.loss.min_snr_gamma, mixed_precision=r.mixed_precision,
        base_model_name=Path(config.model.base).name,
        **({"ss_scale_weight_norms": str(config.network.scale_weight_norms)}
           if config.network.scale_weight_norms else {}),
        # pivotal tuning: the LoRA's rate is ss_learning_rate, the bundled embedding's this one
        **({"extra": {"loraprep.embedding_lr": str(embedding_lr(config))}} if config.embedding.embedding else {}),
        **loss_metadata(config.loss, base),  # loss and noise variants, sd-scripts' ss_* keys
    )


def training_resolution(config: TrainConfig, plan: TrainPlan) -> tuple[int, int]:
    """(width, height) the run trains at: --fixed-resolution, else the manifest's bucket resolution (512² without)."""
    if config.data.fixed_resolution:
        return parse_size(config.data.fixed_resolution)
    manifest = plan.data.manifest
    return tuple(manifest.buckets.resolution) if manifest.buckets else (512, 512)


def tag_frequency(data: TrainingSet) -> dict[str, dict[str, int]]:
    """sd-scripts' ss_tag_frequency: per dataset folder ("<repeats>_<subset>"), how often each tag occurs."""
    from collections import Counter

    from train.data import split_caption

    found: dict[str, Counter[str]] = {}
    for example in data.examples:
        counter = found.setdefault(f"{example.repeats}_{example.record.subset}", Counter())
        counter.update(split_caption(example.caption))
    return {k: dict(v) for k, v in found.items()}


def prune_exports(out: Path, name: str, keep: int) -> None:
    if keep <= 0:
        return
    steps = sorted({p.name.split("-step")[1][:8] for p in out.glob(f"{name}-step*") if "-step" in p.name})
    for old in steps[:-keep]:
        for path in out.glob(f"{name}-step{old}*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def make_tracker(config: TrainConfig, out: Path) -> Any:
    """--tensorboard and --report-to tensorboard|wandb|all, as one object (train.trackers)."""
    from train.trackers import make_trackers

    return make_trackers(config, out)




@dataclass
class Sampler:
    """`--sample-prompts FILE`: a PNG grid of the prompts every N steps or epochs (`--sample-every`,
    `--sample-every-epochs`), optionally before the first step, and always at the end.

    Encoders parked off the accelerator once their outputs were cached come back while it renders.
    """

    base: Any
    prompts: list[Any]
    defaults: Any
    folder: Path
    name: str
    reporter: Reporter
    parked: list[Any] = field(default_factory=list)
    device: Any = "cpu"
    every_steps: int = 0
    every_epochs: int = 0
    rendered: list[tuple[int, Path]] = field(default_factory=list)
    tracker: Any = None

    @classmethod
    def create(cls, config: TrainConfig, plan: TrainPlan, base: Any, reporter: Reporter, *,
               parked: list[Any] | None = None, device: Any = "cpu") -> Sampler | None:
        if not config.run.sample_prompts and not config.run.validation_prompt:
            return None
        from train.sample import SampleDefaults, parse_prompt_file

        width, height = training_resolution(config, plan)
        defaults = SampleDefaults(width=width, height=height, seed=config.run.seed, clip_skip=config.model.clip_skip,
                                  sampler=config.run.sample_sampler)
        prompts = parse_prompt_file(config.run.sample_prompts) if config.run.sample_prompts else []
        every_steps, every_epochs = config.run.sample_every, config.run.sample_every_epochs
        if config.run.validation_prompt:  # issue 24: diffusers' --validation_prompt on the sampler
            prompts, every_epochs = validation_schedule(config, prompts, every_epochs)
        if getattr(base, "family", None) == "sd3":  # a sampler SD3 cannot use: refused now, not when sampling
            from train.samplers import sampler_scheduler
            for sampler in {p.sampler or defaults.sampler for p in prompts}:
                sampler_scheduler(sampler, base)
        return cls(base, prompts, defaults,
                   Path(config.run.output_dir) / "samples", config.run.name, reporter, list(parked or []), device,
                   every_steps, every_epochs)

    def due(self, step: int, total_steps: int, *, epoch_done: int | None) -> bool:
        from train.sample import sample_due

        return sample_due(step, total_steps, epoch_done=epoch_done, every_steps=self.every_steps,
                          every_epochs=self.every_epochs)

    def render(self, step: int) -> Path:
        from train.prepare import borrowed
        from train.sample import render_samples

        with borrowed(self.parked, self.device):
            path = render_samples(self.base, self.prompts, self.folder / f"{self.name}-step{step:08d}.png",
                                  defaults=self.defaults, reporter=self.reporter)
        self.rendered.append((step, path))  # issue 24: the card's widget and the trackers show them
        if self.tracker is not None:
            self.tracker.add_sample(path, self.prompts[0].prompt, step)
        return path

    def latest(self) -> list[tuple[str, Path]]:
        """(prompt, grid) of the newest grid still on disk: what the model card shows."""
        found = [(step, path) for step, path in self.rendered if path.is_file()]
        return [(self.prompts[0].prompt, found[-1][1])] if found else []


def validation_schedule(config: TrainConfig, prompts: list[Any], every_epochs: int) -> tuple[list[Any], int]:
    """diffusers' `--validation_prompt P --num_validation_images N --validation_epochs E` as sampler
    settings: P rendered N times (seeds seed, seed+1, …) after every E-th epoch, beside any prompt file.
    A prompt file's own --sample-every-epochs, when set, decides the schedule."""
    from train.sample import SamplePrompt

    r = config.run
    extra = [SamplePrompt(r.validation_prompt, seed=r.seed + i) for i in range(r.num_validation_images)]
    return [*prompts, *extra], every_epochs or (0 if r.sample_every else r.validation_epochs)
