"""Kill a tiny run after a checkpoint and resume it: what an interrupted user gets back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def killed_and_resumed(manifest: Path, config: Any, output: Path, killed_at: int) -> dict[str, torch.Tensor]:
    """Train `config` into `output`, stopped after step `killed_at` (checkpointed there), then resumed
    with `resume="latest"` to the end; the UNet's trainable tensors it ends with."""
    from train.checkpoint import list_checkpoints
    from train.loop import train
    from train.prepare import load_model

    interrupted = config.replace(output_dir=str(output), save_every_steps=killed_at)
    assert train(manifest, interrupted, stop=lambda step: step == killed_at).stopped_early
    assert list_checkpoints(output)
    resumed = load_model(interrupted, "cpu")
    train(manifest, interrupted.replace(resume="latest"), base=resumed)
    return trainable(resumed.unet)
