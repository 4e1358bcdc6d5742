"""Experiment trackers: `--report-to tensorboard|wandb|all` (diffusers' spelling) and `--tensorboard`.

Why one small interface: the loss log and the sampler call `add_scalars` and `add_sample` on one
object and never learn which trackers are on; each backend is imported only when asked for, so a
missing package is a one-line hint at start, not an import error after hours of training.
`WANDB_MODE=offline` works as wandb documents it (the run is written under OUTPUT/wandb and synced
later with `wandb sync`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prep.errors import UsageError
from train.config import TrainConfig


def wanted(config: TrainConfig) -> list[str]:
    """The trackers a run reports to: --report-to (all = both) plus the older --tensorboard switch."""
    names = {"all": ["tensorboard", "wandb"], None: []}.get(config.run.report_to, [config.run.report_to])
    if config.run.tensorboard and "tensorboard" not in names:
        names = ["tensorboard", *names]
    return [n for n in names if n]


class TensorBoard:
    def __init__(self, config: TrainConfig, out: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--report-to tensorboard needs the tensorboard package",
                             hint="pip install 'loraprep[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        self.writer.add_text("settings", settings_markdown(config), 0)

    def add_scalars(self, group: str, values: dict[str, float], step: int) -> None:
        self.writer.add_scalars(group, values, step)

    def add_sample(self, path: Path, caption: str, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            self.writer.add_image("samples", np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class Wandb:
    def __init__(self, config: TrainConfig, out: Path) -> None:
        try:
            import wandb
        except ImportError:
            raise UsageError("--report-to wandb needs the wandb package",
                             hint="pip install 'loraprep[wandb]' (then `wandb login`, or WANDB_MODE=offline)") from None
        self.wandb = wandb
        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project="loraprep", name=config.run.name, dir=str(out), config=config.to_dict(),
                              reinit="finish_previous")

    def add_scalars(self, group: str, values: dict[str, float], step: int) -> None:
        self.run.log({f"{group}/{key}": value for key, value in values.items()}, step=step)

    def add_sample(self, path: Path, caption: str, step: int) -> None:
        self.run.log({"samples": self.wandb.Image(str(path), caption=caption)}, step=step)

    def close(self) -> None:
        self.run.finish()


BACKENDS = {"tensorboard": TensorBoard, "wandb": Wandb}


class Trackers:
    """The trackers of one run, called as one."""

    def __init__(self, backends: list[Any]) -> None:
        self.backends = backends
        self.optimizer: Any = None

    def watch(self, optimizer: Any, sampler: Any = None) -> None:
        """Log every parameter group's learning rate with the loss (UNet, text encoder, per-block
        groups: `lr/group0`, …), and the sampler's grids as they are rendered."""
        self.optimizer = optimizer
        if sampler is not None:
            sampler.tracker = self

    def add_scalars(self, group: str, values: dict[str, float], step: int) -> None:
        for backend in self.backends:
            backend.add_scalars(group, values, step)
        if group == "train" and self.optimizer is not None:
            rates = {f"group{i}": float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}
            for backend in self.backends:
                backend.add_scalars("lr", rates, step)

    def add_sample(self, path: Path, caption: str, step: int) -> None:
        for backend in self.backends:
            backend.add_sample(path, caption, step)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def make_trackers(config: TrainConfig, out: Path) -> Trackers | None:
    """The run's trackers, started (settings logged), or None when none was asked for."""
    names = wanted(config)
    if not names:
        return None
    started: list[Any] = []
    try:
        for name in names:
            started.append(BACKENDS[name](config, out))
    except BaseException:
        for backend in started:
            backend.close()
        raise
    return Trackers(started)


def settings_markdown(config: TrainConfig) -> str:
    rows = ["| section | setting | value |", "| --- | --- | --- |"]
    rows += [f"| {section} | {key} | {value} |" for section, key, value in config.rows()]
    return "\n".join(rows)
