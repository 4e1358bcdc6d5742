"""(IA)³ as LyCORIS trains and writes it: one learned vector per adapted layer that rescales its weight.

LyCORIS (`algo=ia3`, its `ia3` preset) adapts the attention keys and values (`to_k`, `to_v`; text
encoders `k_proj`, `v_proj`) on their outputs and the feed-forward down projection (`ff.net.2`,
`fc2`) on its input, as the (IA)³ paper does. The stored vector w is a *change*: the adapted weight
is W ⊙ (1 + m·w) along the output rows (or input columns when `on_input`), m the strength, and the
bias is left alone. The WebUI applies exactly that; peft's own IA3 layer instead keeps the scale
itself (starting at 1, so weight decay would pull it towards 0) and multiplies the bias too, so its
layers are adopted here with LyCORIS's parametrisation: w starts at 0 and decays towards 0.

File layout per module: `weight` ([out] or [in]) and `on_input` (0 or 1), no `alpha`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft.tuners.ia3.layer import Linear as PeftIa3Linear

UNET_OUTPUT = ("to_k", "to_v")
UNET_INPUT = ("ff.net.2",)
TE_OUTPUT = ("k_proj", "v_proj")
TE_INPUT = ("fc2",)
BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")


def _matches(name: str, suffixes: Sequence[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def ia3_targets(model: Any, *, unet: bool) -> tuple[list[str], list[str]]:
    """(every adapted Linear, those adapted on their input) by full module name: LyCORIS's ia3 preset."""
    outputs, inputs = (UNET_OUTPUT, UNET_INPUT) if unet else (TE_OUTPUT, TE_INPUT)
    targets, on_input = [], []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or (unet and not name.startswith(BLOCKS)):
            continue
        if _matches(name, outputs + inputs):
            targets.append(name)
            if _matches(name, inputs):
                on_input.append(name)
    return targets, on_input


def ia3_config(targets: Sequence[str], on_input: Sequence[str]) -> Any:
    from peft import IA3Config

    return IA3Config(target_modules=list(targets), feedforward_modules=list(on_input), init_ia3_weights=False)


class LycorisIa3Linear(PeftIa3Linear):
    """peft's IA3 Linear holding LyCORIS's w (the change of scale, not the scale) under `ia3_l`."""

    def set_scale(self, adapter: str, scale: float) -> None:
        """The strength m in W ⊙ (1 + m·w): the WebUI's multiplier."""
        if not hasattr(self, "ia3_strength"):
            self.ia3_strength: dict[str, float] = {}
        self.ia3_strength[adapter] = float(scale)

    def vector(self, adapter: str) -> torch.Tensor:
        """w as LyCORIS stores it: [out], or [in] on the input."""
        return self.ia3_l[adapter].flatten()

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """W ⊙ (m·w): what the adapter adds to the base weight."""
        weight = self.get_base_layer().weight
        w = self.vector(adapter).to(torch.float32) * getattr(self, "ia3_strength", {}).get(adapter, 1.0)
        return weight.float() * (w[None, :] if self.is_feedforward else w[:, None])

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise NotImplementedError("loraprep applies (IA)³ unmerged")

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self.get_base_layer()
        active = [a for a in self.active_adapters if a in self.ia3_l]
        if self.disable_adapters or not active:
            return base(x, *args, **kwargs)
        scale = 1.0
        for adapter in active:
            w = self.vector(adapter)
            scale = scale + w * getattr(self, "ia3_strength", {}).get(adapter, 1.0)
        if self.is_feedforward:
            return base((x.to(w.dtype) * scale).to(x.dtype), *args, **kwargs)
        result = base(x, *args, **kwargs)
        bias = base.bias if base.bias is not None else 0
        return (result - bias) * scale.to(result.dtype) + bias


def adopt(model: Any, adapter: str = "default") -> None:
    """peft's IA3 Linear layers of `adapter` in `model` become LyCORIS's (w = 0: no effect yet)."""
    with torch.no_grad():
        for module in model.modules():
            if type(module) is PeftIa3Linear and adapter in module.ia3_l:
                module.__class__ = LycorisIa3Linear
                module.ia3_l[adapter].zero_()


def is_ia3(module: Any) -> bool:
    return isinstance(module, LycorisIa3Linear)


def file_tensors(module: LycorisIa3Linear, adapter: str) -> dict[str, torch.Tensor]:
    """The layer in LyCORIS's file layout."""
    return {"weight": module.vector(adapter).detach(),
            "on_input": torch.tensor(1.0 if module.is_feedforward else 0.0)}


def set_file_tensors(module: LycorisIa3Linear, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
    """Fill the layer from a file's `weight` (its `on_input` decided how the layer was built)."""
    target = module.ia3_l[adapter]
    target.copy_(tensors["weight"].reshape(target.shape).to(target.dtype))


def on_input(tensors: dict[str, torch.Tensor]) -> bool:
    flag = tensors.get("on_input")
    return bool(flag is not None and float(flag) != 0)
