"""DyLoRA (sd-scripts `networks.dylora`): one LoRA whose every rank prefix is itself a usable LoRA.

Each training forward pass draws b, a multiple of `unit` below the rank, and computes the layer with
the prefix of b + unit ranks only: the first b ranks as they are (no gradient) and the block
[b, b + unit) trained, at the scale alpha / (b + unit). That is exactly what the prefix cut of the
file (`lora resize`, sd-scripts' extract_lora_from_dylora: ranks [0, r), alpha kept) applies, so
every cut at a multiple of `unit` is a LoRA that was trained as such. Out of training the layer is a
plain LoRA of the full rank, and the file is one: `lora_down`/`lora_up`/`alpha` at full rank, with
`ss_network_module` networks.dylora and the unit in `ss_network_args`.

The draw comes from torch's global generator, which the loop seeds per step, so a resumed run
draws the same ranks. Differences from sd-scripts' code, which trains a rank block inside the full
product scaled by sqrt(rank / (b + unit)): loraprep computes the prefix itself (what a cut keeps), and
the optimizer sees whole matrices, so Adam's momentum keeps moving blocks not drawn this step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Conv2d as PeftConv2d
from peft.tuners.lora.layer import Linear as PeftLinear

from prep.errors import UsageError


class _Dynamic:
    """The forward pass shared by the linear and the convolution layer."""

    dylora_unit: int = 1

    def _prefix(self, adapter: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        down, up = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        rank, unit = down.shape[0], self.dylora_unit
        start = int(torch.randint(0, rank // unit, ())) * unit
        end = start + unit
        down = torch.cat([down[:start].detach(), down[start:end]])
        up = torch.cat([up[:, :start].detach(), up[:, start:end]], dim=1)
        return down, up, float(self.lora_alpha[adapter]) / end

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        active = [a for a in self.active_adapters if a in self.lora_A]
        if not self.training or self.disable_adapters or self.merged or len(active) != 1:
            return super().forward(x, *args, **kwargs)  # type: ignore[misc]
        adapter = active[0]
        result = self.base_layer(x, *args, **kwargs)
        down, up, scale = self._prefix(adapter)
        h = self._cast_input_dtype(x, down.dtype)
        if isinstance(self.base_layer, torch.nn.Conv2d):
            conv = self.lora_A[adapter]
            h = F.conv2d(h, down, None, conv.stride, conv.padding, conv.dilation)
            h = F.conv2d(h, up)
        else:
            h = F.linear(F.linear(h, down), up)
        return result + (h * scale).to(result.dtype)


class DyLoraLinear(_Dynamic, PeftLinear):
    """peft's LoRA Linear trained as DyLoRA."""


class DyLoraConv2d(_Dynamic, PeftConv2d):
    """peft's LoRA Conv2d trained as DyLoRA."""


def make_dynamic(model: Any, unit: int, adapter: str = "default") -> int:
    """Turn `model`'s plain peft LoRA layers of `adapter` into DyLoRA layers of `unit`; returns how many.
    A layer whose rank `unit` does not divide (a file's, with --init-weights) is refused."""
    count = 0
    for name, module in model.named_modules():
        kind = {PeftLinear: DyLoraLinear, PeftConv2d: DyLoraConv2d}.get(type(module))
        if kind is None or adapter not in module.lora_A:
            continue
        rank = module.r[adapter]
        if rank % unit:
            raise UsageError(f"{name} has rank {rank}, which --unit {unit} does not divide",
                             hint="pick a unit that divides every rank of the network")
        module.__class__ = kind
        module.dylora_unit = unit
        count += 1
    return count


def valid_cuts(rank: int, unit: int) -> list[int]:
    """The ranks a DyLoRA of `rank` trained in blocks of `unit` can be cut to: unit, 2·unit, …, rank."""
    return list(range(unit, rank + 1, unit))
