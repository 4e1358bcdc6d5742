"""DoRA that normalises each input column: the convention the WebUI and ComfyUI apply exactly.

DoRA rescales the adapted weight W' = W + ΔW by a trained magnitude over a norm of W'. peft takes
the norm of each output row; the clients that load kohya files do not: the WebUI always divides by
the norm of each *input column*, and ComfyUI does so for a `dora_scale` shaped [1, in] (for an
[out, 1] scale it divides by the base weight's row norm instead of W''s, which is close but not
exact). Training with the column norm, and storing the magnitude as LyCORIS does with
`wd_on_output=False` ([1, in] for linear layers, [1, in, 1, 1] for convolutions), makes a file both
clients reproduce exactly.

The column scale c = m / ‖W'‖_col multiplies input channels, so the layer scales its input rather
than building the merged weight: W'·diag(c)·x = W'·(c ⊙ x). The norm is held constant in the
backward pass, as the DoRA paper (§4.3) and peft do, to save memory.

At a strength s ≠ 1 (`loraprep generate --scale`) the result is interpolated between the base and
the full-strength weight, W + s·(W'·diag(c) − W), which is how both clients apply a DoRA multiplier.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Conv2d as PeftConv2d
from peft.tuners.lora.layer import Linear as PeftLinear
from peft.tuners.lora.layer import LoraVariant

DORA_AXIS = "input"  # what this module trains and loraprep writes


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """‖W‖ of each input column (over outputs and kernel positions): shape [in]."""
    return weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)


def _input_shape(x: torch.Tensor, conv: bool) -> tuple[int, ...]:
    """How a per-input-channel vector broadcasts over the layer's input."""
    return (1, -1) + (1,) * (x.dim() - 2) if conv else (-1,)


class Magnitude(torch.nn.Module):
    """Holds the trained magnitude m ([in]) under `.weight`, where peft keeps DoRA's magnitude too."""

    def __init__(self, magnitude: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(magnitude, requires_grad=True)


def _delta(module: Any, adapter: str) -> torch.Tensor:
    """s·B·A shaped like the base weight (peft's conv LoRA has a 1×1 up projection, so one product
    covers linear and conv layers; peft's own helper needs attributes set after the variant's init)."""
    base = module.get_base_layer().weight
    down, up = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    return (up.flatten(1) @ down.flatten(1)).reshape(base.shape) * module.scaling[adapter]


def _adapted_weight(module: Any, adapter: str) -> torch.Tensor:
    delta = _delta(module, adapter)
    return module.get_base_layer().weight.to(delta.dtype) + delta


def _column_scale(module: Any, adapter: str) -> torch.Tensor:
    with torch.no_grad():
        norm = column_norm(_adapted_weight(module, adapter).float())
    magnitude = module.lora_magnitude_vector[adapter].weight
    return magnitude / norm.to(magnitude.dtype)


class ColumnDoraVariant(LoraVariant):
    """peft's LoRA-variant hooks (create, merge, unmerge) for column-norm DoRA; the forward pass lives
    in the layers below because it feeds the base layer a scaled input instead of adding to its output."""

    @staticmethod
    def init(module: Any, adapter_name: str, **kwargs: Any) -> None:
        base = module.get_base_layer()
        if getattr(base, "groups", 1) != 1:
            raise ValueError("column-norm DoRA needs convolutions without groups")
        if not module.lora_magnitude_vector:
            module.adapter_layer_names = module.adapter_layer_names[:] + ("lora_magnitude_vector",)
        with torch.no_grad():
            magnitude = column_norm(_adapted_weight(module, adapter_name).float())
        module.lora_magnitude_vector[adapter_name] = Magnitude(magnitude.to(module.lora_A[adapter_name].weight.dtype))

    @staticmethod
    def _scale_shape(orig_weight: torch.Tensor) -> tuple[int, ...]:
        return (1, -1) + (1,) * (orig_weight.dim() - 2)

    @staticmethod
    def merge_safe(module: Any, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        scale = _column_scale(module, active_adapter).detach().view(ColumnDoraVariant._scale_shape(orig_weight))
        strength = module.dora_strength.get(active_adapter, 1.0)
        delta = _delta(module, active_adapter)
        full = (orig_weight.to(delta.dtype) + delta) * scale
        module._cache_store(f"{active_adapter}-column-scale", scale)
        return (orig_weight + strength * (full - orig_weight)).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: Any, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data = ColumnDoraVariant.merge_safe(module, active_adapter, orig_weight)

    @staticmethod
    def unmerge(module: Any, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        scale = module._cache_pop(f"{active_adapter}-column-scale")
        strength = module.dora_strength.get(active_adapter, 1.0)
        delta = _delta(module, active_adapter)
        # merged = W·(1 − s + s·c) + s·ΔW·c, solved for W
        base = (orig_weight.to(delta.dtype) - strength * delta * scale) / (1 - strength + strength * scale)
        return base.to(orig_weight.dtype)

    @staticmethod
    def forward(module: Any, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError("column-norm DoRA layers compute their own forward pass")


def layer_dora_axis(module: Any, adapter: str) -> str:
    """The norm a peft DoRA layer's `adapter` takes: "input" (columns, this module's) or "output" (peft's rows)."""
    return DORA_AXIS if isinstance(module.lora_variant.get(adapter), ColumnDoraVariant) else "output"


class _ColumnDoraMixin:
    """The parts shared by the linear and the convolution layer."""

    conv = False

    def _init_strength(self) -> None:
        if not hasattr(self, "dora_strength"):
            self.dora_strength: dict[str, float] = {}

    @property
    def lora_variants(self) -> dict[tuple[str, ...], Any]:
        return {(): None, ("use_dora",): ColumnDoraVariant}

    def set_scale(self, adapter: str, scale: float) -> None:
        """A DoRA adapter keeps alpha/rank inside the norm and blends base and adapted weight by `scale`,
        as the WebUI's and ComfyUI's multipliers do; plain adapters scale as peft's do."""
        self._init_strength()
        if adapter in self.lora_variant:
            self.dora_strength[adapter] = float(scale)
        else:
            super().set_scale(adapter, scale)  # type: ignore[misc]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._init_strength()
        dora = [a for a in self.active_adapters if a in self.lora_variant and a in self.lora_A]
        if self.disable_adapters or self.merged or not dora or kwargs.get("adapter_names") is not None:
            return super().forward(x, *args, **kwargs)  # type: ignore[misc]
        if len(dora) > 1 or len([a for a in self.active_adapters if a in self.lora_A]) > 1:
            raise ValueError("column-norm DoRA layers run one active adapter at a time")
        adapter = dora[0]
        base = self.get_base_layer()
        lora_A, lora_B = self.lora_A[adapter], self.lora_B[adapter]
        scale = _column_scale(self, adapter)
        scaled = x.to(scale.dtype) * scale.view(_input_shape(x, self.conv))
        out = base(scaled.to(x.dtype), *args, **kwargs)
        lora_in = self._cast_input_dtype(scaled, lora_A.weight.dtype)
        out = out + (lora_B(lora_A(self.lora_dropout[adapter](lora_in))) * self.scaling[adapter]).to(out.dtype)
        strength = self.dora_strength.get(adapter, 1.0)
        if strength != 1.0:
            out = (1 - strength) * base(x, *args, **kwargs) + strength * out
        return out


class ColumnDoraLinear(_ColumnDoraMixin, PeftLinear):
    """peft's LoRA Linear whose DoRA normalises input columns."""


class ColumnDoraConv2d(_ColumnDoraMixin, PeftConv2d):
    """peft's LoRA Conv2d whose DoRA normalises input channels."""

    conv = True


def register(config: Any) -> Any:
    """Make a peft LoraConfig with `use_dora=True` build column-norm DoRA layers; returns the config."""
    config._register_custom_module({torch.nn.Linear: ColumnDoraLinear, torch.nn.Conv2d: ColumnDoraConv2d})
    return config
