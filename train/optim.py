"""The optimizer and learning-rate schedule over the LoRA parameters, built from the config."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prep.errors import UsageError
from train.config import TrainConfig
from train.network import Network


def make_optimizer(network: Network, config: TrainConfig) -> Any:
    """The named optimizer over the LoRA parameters (text-encoder LoRA in its own group with its LR)."""
    import torch

    o = config.optimizer
    groups = network.param_groups(o.lr, config.network.text_encoder_lr)
    if o.optimizer == "adamw":
        fused = fused_adamw_applies(p.device.type for group in groups for p in group["params"])
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay, fused=fused or None)
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


def fused_adamw_applies(device_types: Iterable[str]) -> bool:
    """AdamW's fused kernel (one launch for all parameters instead of several per tensor) when every
    parameter is on a CUDA GPU; elsewhere torch's default implementation, whose results the CPU
    tests pin down."""
    kinds = set(device_types)
    return kinds == {"cuda"}
