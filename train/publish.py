"""What a run hands on besides its files: the model card beside every saved LoRA and, with
`--push-to-hub`, the upload. The loop calls `Publisher.start` before loading the model (so a bad
Hub id, token or missing tracker package fails in seconds), `saved` after each checkpoint and
`finished` at the end.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prep.errors import UsageError
from prep.progress import Reporter
from train.config import TrainConfig
from train.hub import HubError, HubTarget, check_hub, push_output


def check_trackers(config: TrainConfig) -> None:
    """A tracker asked for but not installed is a one-line hint now, not an error after the caches fill."""
    from train.trackers import wanted

    packages = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
    for name in wanted(config):
        module, extra = packages[name]
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:  # a module entry without a spec (e.g. blocked in sys.modules)
            found = False
        if not found:
            raise UsageError(f"--report-to {name} needs the {module} package",
                             hint=f"pip install 'loraprep[{extra}]'")


@dataclass
class Publisher:
    config: TrainConfig
    plan: Any
    reporter: Reporter
    target: HubTarget | None = None

    @classmethod
    def start(cls, config: TrainConfig, plan: Any, reporter: Reporter) -> Publisher:
        check_trackers(config)
        target = None
        if config.run.push_to_hub:
            target = check_hub(config.run.push_to_hub, private=config.run.hub_private,
                               token_file=config.run.hub_token_file)
            reporter.note(f"will upload to {target.url}")
        return cls(config, plan, reporter, target)

    def card(self, family: str, files: list[Path], steps: int, sampler: Any) -> Path:
        from train.card import card_facts, write_model_card

        samples = sampler.latest() if sampler is not None else []
        facts = card_facts(self.config, self.plan, family, files, steps, samples)
        return write_model_card(Path(self.config.run.output_dir), facts,
                                self.target.repo if self.target else None)

    def saved(self, family: str, step: int, sampler: Any) -> None:
        """After a checkpoint: refresh the card; with --push-every-save upload, and on failure go on
        training (the next save or the end tries again)."""
        out = Path(self.config.run.output_dir)
        files = sorted(out.glob(f"{self.config.run.name}-step{step:08d}*.safetensors"))
        self.card(family, files, step, sampler)
        if self.target is None or not self.config.run.push_every_save:
            return
        try:
            push_output(out, self.target, message=f"{self.config.run.name}: step {step}")
            self.reporter.note(f"uploaded step {step} to {self.target.repo}")
        except HubError as exc:
            self.reporter.note(f"upload at step {step} failed (training goes on): {exc}")

    def finished(self, family: str, files: list[Path], steps: int, sampler: Any) -> str | None:
        """The final card; with --push-to-hub the upload (HubError, naming the retry, if it fails)."""
        if not files:
            return None
        card = self.card(family, files, steps, sampler)
        self.reporter.note(f"model card: {card}")
        if self.target is None:
            return None
        url = push_output(Path(self.config.run.output_dir), self.target,
                          message=f"{self.config.run.name}: {steps} steps")
        self.reporter.note(f"uploaded to {self.target.url}")
        return url
