"""UNet blocks by their kohya names (IN01, M00, OUT05, BASE), for per-block learning rates and weights.

Why kohya's names: the guides' 階層別学習率 (per-block learning rates) and the lora-block-weight
extension's presets (`1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1`) address the original (LDM/sgm) UNet layout:
`input_blocks.N` → INnn, `middle_block.k` → M0k, `output_blocks.N` → OUTnn; BASE is the text encoder.
A diffusers module path is named through `train.names.sgm_unet_name`, the same mapping the kohya
LoRA file uses, so a block here is the block those tools mean.

Two list layouts are read:
- sd-scripts' training weights (network_args down_lr_weight / mid_lr_weight / up_lr_weight): SD1/SD2
  12 down (IN00–IN11), 1 mid, 12 up (OUT00–OUT11); SDXL 9 down, 3 mid (middle_block.0–2), 9 up.
  Each is a comma list or a shape (cosine, sine, linear, reverse_linear, zeros; `+0.5` adds a base).
  Short lists are padded with 1.0, long ones cut, weights at or below block_lr_zero_threshold are 0.
- the lora-block-weight extension's lists: 17 (SD1/SD2 LoRA: BASE, IN01, IN02, IN04, IN05, IN07, IN08,
  M00, OUT03–OUT11) or 26 values (LyCORIS: BASE, IN00–IN11, M00, OUT00–OUT11); SDXL 12 (BASE, IN04,
  IN05, IN07, IN08, M00, OUT00–OUT05) or 20 (BASE, IN00–IN08, M00, OUT00–OUT08); or a preset name
  (ALL, NONE, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5). Blocks a list does not name get 0.

A weight of 0 means the block is left out: no LoRA layers are made there when training (as sd-scripts
does), and its layers contribute nothing at generate time. Parsing imports no torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prep.errors import UsageError
from train.names import ADAPTER_PART, sgm_unet_name

BASE = "BASE"
BLOCK_IDS_26 = (BASE, *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)))
BLOCK_LAYOUTS: dict[int, tuple[str, ...]] = {
    17: (BASE, "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(3, 12))),
    26: BLOCK_IDS_26,
    12: (BASE, "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(6))),
    20: (BASE, *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9))),
}
LAYOUT_FAMILY = {17: "sd", 26: "sd", 12: "sdxl", 20: "sdxl"}
# The extension's stock presets (17-value, SD1/SD2 LoRA layout).
PRESETS: dict[str, str] = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}
SHAPES = ("cosine", "sine", "linear", "reverse_linear", "zeros")
MID_BLOCKS = 3  # middle_block.0 (resnet), .1 (attention), .2 (resnet) in every SD family


def _floats(text: str, where: str) -> list[float]:
    try:
        values = [float(p) if p.strip() else 0.0 for p in text.split(",")]
    except ValueError:
        raise UsageError(f"{where} '{text}' is not a comma-separated list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{where} '{text}' holds a value that is not a finite number")
    return values


def parse_lr_weight(text: str, *, where: str, length: int) -> list[float]:
    """One sd-scripts down/mid/up_lr_weight: a comma list, or a shape over `length` blocks."""
    text = str(text).strip()
    if "," in text or re.fullmatch(r"[-+0-9.eE]+", text):
        return _floats(text, where)
    name, _, extra = text.partition("+")
    try:
        offset = float(extra) if extra else 0.0
    except ValueError:
        raise UsageError(f"{where} '{text}': '{extra}' after + is not a number") from None
    steps = [i / (length - 1) for i in range(length)]
    shapes = {
        "cosine": [math.sin(math.pi * s / 2) for s in reversed(steps)],
        "sine": [math.sin(math.pi * s / 2) for s in steps],
        "linear": steps,
        "reverse_linear": list(reversed(steps)),
        "zeros": [0.0] * length,
    }
    if name not in shapes:
        raise UsageError(f"{where} '{text}' is neither a list of numbers nor a shape",
                         hint=f"shapes: {', '.join(SHAPES)} (optionally +BASE, e.g. cosine+0.5)")
    return [w + offset for w in shapes[name]]


def parse_block_weights(text: str, *, where: str = "block weights") -> list[float]:
    """A lora-block-weight list (12, 17, 20 or 26 values) or preset name → its values."""
    text = str(text).strip()
    values = _floats(PRESETS.get(text.upper(), text), where)
    if len(values) not in BLOCK_LAYOUTS:
        raise UsageError(f"{where} has {len(values)} values; the lora-block-weight layouts have 17 or 26 "
                         "(SD1/SD2) and 12 or 20 (SDXL)", hint=f"or a preset: {', '.join(PRESETS)}")
    return values


@dataclass(frozen=True)
class BlockWeights:
    """Weight per UNet block ID (a block not listed weighs 1.0) and for the text encoders (BASE)."""

    unet: Mapping[str, float]
    text_encoder: float = 1.0
    default: float = 1.0

    def __call__(self, block: str) -> float:
        return self.unet.get(block, self.default)


def lora_block_weights(text: str, family: str, *, where: str = "block weights") -> BlockWeights:
    """The extension's list or preset as weights; blocks it does not name weigh 0, as it treats them."""
    values = parse_block_weights(text, where=where)
    layout = BLOCK_LAYOUTS[len(values)]
    wanted = "sdxl" if family == "sdxl" else "sd"
    if LAYOUT_FAMILY[len(values)] != wanted:
        fits = "17 or 26" if wanted == "sd" else "12 or 20"
        raise UsageError(f"{where} has {len(values)} values, a layout for "
                         f"{'SDXL' if wanted == 'sd' else 'SD1/SD2'}; this model takes {fits}")
    weights = dict(zip(layout, values))
    unet = {block: weights[block] for block in layout if block != BASE}
    unet.update({f"M{k:02d}": weights["M00"] for k in range(MID_BLOCKS)})  # M00 is the whole middle block
    return BlockWeights(unet, weights[BASE], default=0.0)


def kohya_lr_weights(down: str | None, mid: str | None, up: str | None, family: str, *,
                     zero_threshold: float = 0.0) -> tuple[BlockWeights, list[str]]:
    """sd-scripts' down/mid/up_lr_weight as block weights, plus notes on padded or cut lists."""
    per_side, mids = (9, 3) if family == "sdxl" else (12, 1)
    notes: list[str] = []

    def fit(text: str | None, length: int, name: str) -> list[float] | None:
        if text is None:
            return None
        values = parse_lr_weight(text, where=name, length=length)
        if len(values) > length:
            notes.append(f"{name} has {len(values)} values, this model {length}: the rest are ignored")
        elif len(values) < length:
            notes.append(f"{name} has {len(values)} values, this model {length}: the rest are 1.0")
            values = values + [1.0] * (length - len(values))
        return [w if w > zero_threshold else 0.0 for w in values[:length]]

    down_w, mid_w, up_w = fit(down, per_side, "down_lr_weight"), fit(mid, mids, "mid_lr_weight"), \
        fit(up, per_side, "up_lr_weight")
    unet: dict[str, float] = {}
    for i in range(per_side):
        unet[f"IN{i:02d}"] = down_w[i] if down_w else 1.0
        unet[f"OUT{i:02d}"] = up_w[i] if up_w else 1.0
    for k in range(MID_BLOCKS):
        unet[f"M{k:02d}"] = (mid_w[k if mids > 1 else 0]) if mid_w else 1.0
    return BlockWeights(unet), notes


def training_block_weights(network: Any, family: str) -> tuple[BlockWeights | None, list[str]]:
    """The learning-rate weights a NetworkConfig asks for (None: no per-block learning rates)."""
    if network.block_lr_weights is not None:
        return lora_block_weights(network.block_lr_weights, family, where="block_lr_weights"), []
    if any(w is not None for w in (network.down_lr_weight, network.mid_lr_weight, network.up_lr_weight)):
        return kohya_lr_weights(network.down_lr_weight, network.mid_lr_weight, network.up_lr_weight, family,
                                zero_threshold=network.block_lr_zero_threshold)
    return None, []


# ---------------------------------------------------------------- module paths → blocks


def unet_family(unet_config: Mapping[str, Any]) -> str:
    """"sdxl" for SDXL's UNet (text_time conditioning), else "sd" (SD1/SD2 share the block layout)."""
    return "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd"


def block_of(path: str, unet_config: Mapping[str, Any]) -> str:
    """The kohya block ID (IN04, M01, OUT10) of a diffusers UNet module path."""
    if "joint_attention_dim" in unet_config:  # SD3's MMDiT has no UNet blocks: one weight for it all
        return "MMDiT"
    original = sgm_unet_name(path, unet_config)
    kind, index = original.split(".")[:2]
    prefix = {"input_blocks": "IN", "middle_block": "M", "output_blocks": "OUT"}.get(kind)
    return f"{prefix}{int(index):02d}" if prefix else BASE


def lora_module_path(parameter_name: str) -> str:
    """`down_blocks.0.attentions.0….to_q.lora_A.default.weight` → the adapted module's path."""
    return ADAPTER_PART.split(parameter_name.removeprefix("base_model.model."), maxsplit=1)[0]


def keep_targets(targets: Iterable[str], weights: BlockWeights | None, unet_config: Mapping[str, Any]) -> list[str]:
    """The target modules whose block weight is not 0 (sd-scripts makes no LoRA in zero blocks)."""
    if weights is None:
        return list(targets)
    return [t for t in targets if weights(block_of(t, unet_config)) != 0]


def keep_blocks(targets: Any, unet: Any, network: Any) -> Any:
    """`UnetTargets` without the layers of blocks whose learning-rate weight is 0."""
    import dataclasses

    weights, _ = training_block_weights(network, unet_family(unet.config))
    if weights is None:
        return targets
    config = dict(unet.config)
    kept = dataclasses.replace(targets, linear=tuple(keep_targets(targets.linear, weights, config)),
                               conv=tuple(keep_targets(targets.conv, weights, config)))
    if not kept.linear and not kept.conv:
        raise UsageError("the block learning-rate weights are 0 for every block this LoRA reaches",
                         hint="give at least one block a weight above block_lr_zero_threshold")
    return kept


def training_param_groups(unet: Any, network: Any, config: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Optimizer parameter groups: UNet LoRA by block learning rate (or one group), text encoders at
    text_encoder_lr × BASE weight; plus notes on how block lists were fitted to this model."""
    lr = config.optimizer.lr
    te_lr = config.network.text_encoder_lr if config.network.text_encoder_lr is not None else lr
    weights, notes = training_block_weights(config.network, unet_family(unet.config))
    if weights is None:
        groups = [{"params": network.unet_params, "lr": lr}]
    else:
        groups = block_param_groups(unet, lr, weights)
    if network.text_encoder_params:
        te_weight = weights.text_encoder if weights is not None else 1.0
        if te_weight == 0:
            raise UsageError("block_lr_weights gives BASE (the text encoder) weight 0 but the text encoder trains",
                             hint="drop --train-text-encoder, or give BASE a weight")
        groups.append({"params": network.text_encoder_params, "lr": te_lr * te_weight})
    return [g for g in groups if g["params"]], notes


def block_param_groups(unet: Any, lr: float, weights: BlockWeights) -> list[dict[str, Any]]:
    """The UNet's trainable parameters grouped by block learning rate (lr × weight), largest first."""
    config = dict(unet.config)
    groups: dict[float, list[Any]] = {}
    for name, param in unet.named_parameters():
        if param.requires_grad:
            weight = weights(block_of(lora_module_path(name), config))
            groups.setdefault(weight, []).append(param)
    return [{"params": params, "lr": lr * weight} for weight, params in sorted(groups.items(), reverse=True)
            if weight > 0]


def set_block_scales(base: Any, weights: BlockWeights, *, unet_scale: float, text_encoder_scale: float,
                     adapter: str = "default") -> dict[str, float]:
    """Scale each adapter layer (LoRA, LoHa, LoKr) by its block's weight × the part's scale; returns
    block → scale used."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def scalable(module: Any) -> bool:
        return isinstance(module, BaseTunerLayer) and hasattr(module, "set_scale") and \
            adapter in getattr(module, "scaling", {})

    used: dict[str, float] = {}
    config = dict(base.unet.config)
    for name, module in base.unet.named_modules():
        if scalable(module):
            block = block_of(name.removeprefix("base_model.model."), config)
            used[block] = unet_scale * weights(block)
            module.set_scale(adapter, used[block])
    for encoder in base.text_encoders:
        for module in encoder.modules():
            if scalable(module):
                used[BASE] = text_encoder_scale * weights.text_encoder
                module.set_scale(adapter, used[BASE])
    return dict(sorted(used.items()))
