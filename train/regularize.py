"""Overfitting knobs of sd-scripts' LoRA: rank dropout, module dropout and max-norm regularisation.

- **rank dropout** (`rank_dropout`): while training, each rank of a layer's low-rank output is zeroed
  per sample with this chance, and the rest scaled by 1/(1-p) so the expected update is unchanged.
- **module dropout** (`module_dropout`): while training, a whole LoRA layer is skipped for the step with
  this chance (the layer outputs what the base layer does).
- **max-norm** (`scale_weight_norms`): after every optimizer step, a layer whose update ΔW = up·down·scale
  has a norm above the limit has both factors shrunk by √(limit/norm), so ΔW's norm is the limit.
  sd-scripts reports how many layers were scaled and the mean and max norm each step; so do we.

The dropouts are forward hooks on each peft LoRA layer's `lora_A`, acting only in training mode (so
samples and exports never see them) and drawing from torch's global generator, which the loop seeds
per step so a resumed run drops the same ranks. With DoRA they act on the low-rank update; the
magnitude still applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def lora_layers(modules: Iterable[torch.nn.Module], adapter: str = "default") -> list[Any]:
    """The peft LoRA layers of `modules` that hold `adapter`."""
    from peft.tuners.lora import LoraLayer

    return [m for module in modules for m in module.modules()
            if isinstance(m, LoraLayer) and adapter in getattr(m, "lora_A", {})]


def _dropout_hook(rank_dropout: float, module_dropout: float):
    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        if module_dropout and torch.rand(1).item() < module_dropout:
            return output * 0
        if rank_dropout:
            rank_axis = 1 if output.dim() == 4 else output.dim() - 1  # conv [B, r, H, W]; linear [B, …, r]
            keep = torch.rand((output.shape[0], output.shape[rank_axis]), device=output.device) > rank_dropout
            shape = [output.shape[0]] + [1] * (output.dim() - 1)
            shape[rank_axis] = output.shape[rank_axis]
            output = output * keep.reshape(shape).to(output.dtype) / (1.0 - rank_dropout)
        return output
    return hook


def add_lora_dropout(modules: Iterable[torch.nn.Module], *, rank_dropout: float, module_dropout: float,
                     adapter: str = "default") -> int:
    """Install rank/module dropout on every LoRA layer of `modules`; returns how many layers got it."""
    if not rank_dropout and not module_dropout:
        return 0
    layers = lora_layers(modules, adapter)
    hook = _dropout_hook(rank_dropout, module_dropout)
    for layer in layers:
        layer.lora_A[adapter].register_forward_hook(hook)
    return len(layers)


@dataclass(frozen=True)
class NormReport:
    """One step of max-norm regularisation, as sd-scripts logs it."""

    keys_scaled: int
    mean_norm: float
    max_norm: float


def _delta(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if down.dim() == 2:
        return up @ down
    if down.shape[2:] == (1, 1) and up.shape[2:] == (1, 1):
        return (up.flatten(1) @ down.flatten(1))[:, :, None, None]
    return torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)


@torch.no_grad()
def apply_max_norm(layers: Sequence[Any], limit: float, adapter: str = "default") -> NormReport:
    """Shrink each LoRA layer (from `lora_layers`) whose ΔW norm exceeds `limit` back to it
    (sd-scripts' scale_weight_norms). The norms come to the host in one transfer, not one per layer."""
    if not layers:
        return NormReport(0, 0.0, 0.0)
    raw = [(_delta(layer.lora_A[adapter].weight.float(), layer.lora_B[adapter].weight.float())
            * float(layer.scaling[adapter])).norm() for layer in layers]
    norms = torch.stack([n.to(raw[0].device) for n in raw])
    clamped = norms.clamp(min=limit / 2)
    ratios, found = torch.stack([torch.clamp(clamped, max=limit) / clamped, norms]).tolist()
    for layer, ratio in zip(layers, ratios, strict=True):
        if ratio != 1.0:
            layer.lora_A[adapter].weight.mul_(ratio ** 0.5)
            layer.lora_B[adapter].weight.mul_(ratio ** 0.5)
    scaled = [norm * ratio for norm, ratio in zip(found, ratios, strict=True)]
    return NormReport(sum(ratio != 1.0 for ratio in ratios), sum(scaled) / len(scaled), max(scaled))
