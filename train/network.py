"""LoRA injection with peft: which UNet (and text-encoder) layers get adapters, at what rank.

Why explicit module names: peft matches `target_modules` by suffix, and `rank_pattern` by regex;
listing every targeted module by its full, escaped name makes the preset's reach exact and lets
LoCon give 3×3 convolutions their own rank/alpha (`conv_dim`/`conv_alpha`) without touching the
1×1 projections. Presets follow sd-scripts: `attn` = to_q/k/v/out, `attn-mlp` adds the transformer
feed-forward, `full` adds the transformer's proj_in/proj_out too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from prep.errors import UsageError
from train.config import NetworkConfig

ATTN = ("to_q", "to_k", "to_v", "to_out.0")
MLP = ("ff.net.0.proj", "ff.net.2")
PROJ = ("proj_in", "proj_out")
PRESET_SUFFIXES: dict[str, tuple[str, ...]] = {"attn": ATTN, "attn-mlp": ATTN + MLP, "full": ATTN + MLP + PROJ}
TE_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")
TE_MLP = ("fc1", "fc2")
BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")


@dataclass(frozen=True)
class UnetTargets:
    linear: tuple[str, ...]
    conv: tuple[str, ...]


def unet_targets(unet: Any, preset: str, *, conv: bool) -> UnetTargets:
    """Full module names the preset reaches; `conv` adds the 3×3 convolutions of resnets and samplers."""
    import torch

    suffixes = PRESET_SUFFIXES[preset]
    linear, convs = [], []
    for name, module in unet.named_modules():
        if not name.startswith(BLOCKS):
            continue
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and any(
                name == s or name.endswith("." + s) for s in suffixes):
            linear.append(name)
        elif conv and isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1):
            convs.append(name)
    if not linear:
        raise UsageError(f"preset '{preset}' matched no layer of this UNet")
    return UnetTargets(tuple(linear), tuple(convs))


def unet_lora_config(unet: Any, config: NetworkConfig) -> Any:
    """The peft LoraConfig for the UNet, with per-layer rank/alpha for LoCon convs."""
    from peft import LoraConfig

    from train.blocks import keep_blocks

    targets = keep_blocks(unet_targets(unet, config.preset, conv=config.conv_dim > 0), unet, config)
    conv_rank = {re.escape(n): config.conv_dim for n in targets.conv}
    conv_alpha = {re.escape(n): config.conv_lora_alpha for n in targets.conv}
    return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.network_dropout,
                      init_lora_weights="gaussian", use_dora=config.dora,
                      target_modules=list(targets.linear + targets.conv),
                      rank_pattern=conv_rank, alpha_pattern=conv_alpha)


def text_encoder_lora_config(config: NetworkConfig) -> Any:
    from peft import LoraConfig

    targets = TE_ATTN + (TE_MLP if config.preset != "attn" else ())
    return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.network_dropout,
                      init_lora_weights="gaussian", use_dora=config.dora, target_modules=list(targets))


@dataclass
class Network:
    """The adapters added to a base model, and the parameters the optimizer trains."""

    unet_config: Any
    text_encoder_configs: list[Any] = field(default_factory=list)
    unet_params: list[Any] = field(default_factory=list)
    text_encoder_params: list[Any] = field(default_factory=list)

    def param_groups(self, lr: float, text_encoder_lr: float | None) -> list[dict[str, Any]]:
        groups = [{"params": self.unet_params, "lr": lr}]
        if self.text_encoder_params:
            te_lr = lr if text_encoder_lr is None else text_encoder_lr
            groups.append({"params": self.text_encoder_params, "lr": te_lr})
        return groups

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.unet_params + self.text_encoder_params)


def _trainable(module: Any) -> list[Any]:
    return [p for p in module.parameters() if p.requires_grad]


def add_lora(unet: Any, text_encoders: list[Any], config: NetworkConfig) -> Network:
    """Freeze the base, add LoRA adapters (fp32, whatever the base dtype) and return what trains."""
    import torch

    unet.requires_grad_(False)
    for encoder in text_encoders:
        encoder.requires_grad_(False)
    network = Network(unet_lora_config(unet, config))
    if not config.train_text_encoder_only:
        add_adapter(unet, network.unet_config)
        network.unet_params = _trainable(unet)
    if config.train_text_encoder:
        for encoder in text_encoders:
            te_config = text_encoder_lora_config(config)
            add_adapter(encoder, te_config)
            network.text_encoder_configs.append(te_config)
            network.text_encoder_params += _trainable(encoder)
    for param in network.unet_params + network.text_encoder_params:
        param.data = param.data.to(torch.float32)
    from train.regularize import add_lora_dropout

    add_lora_dropout([unet, *(text_encoders if config.train_text_encoder else [])],
                     rank_dropout=config.rank_dropout, module_dropout=config.module_dropout)
    return network


def add_adapter(model: Any, config: Any, adapter: str = "default") -> None:
    """Inject a peft adapter into a UNet or text encoder with peft itself.

    Why not the models' own `add_adapter`: transformers' glue checks for a peft release of its own
    choosing (transformers 5.24 refuses peft 0.21) and diffusers' adds nothing we use, so going
    through peft's injector keeps text-encoder LoRA working with any transformers in range. The
    injector records `model.peft_config` and merges it with adapters already there.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, model, adapter_name=adapter)


def lora_state_dict(modules: dict[str, Any]) -> dict[str, Any]:
    """Trainable tensors by "<part>.<parameter name>" (part: unet, te0, te1): what a checkpoint saves."""
    return {f"{part}.{name}": p.detach() for part, module in modules.items()
            for name, p in module.named_parameters() if p.requires_grad}


def load_lora_state(modules: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Copy checkpointed trainable tensors back; a missing or extra key means another network shape."""
    import torch

    current = lora_state_dict(modules)
    reshaped = sorted(k for k in set(current) & set(tensors) if current[k].shape != tensors[k].shape)
    if set(tensors) != set(current) or reshaped:
        missing, extra = sorted(set(current) - set(tensors)), sorted(set(tensors) - set(current))
        raise UsageError("the checkpoint's LoRA does not match this network "
                         f"(missing {missing[:2]}, unexpected {extra[:2]}, other shape {reshaped[:2]})",
                         hint="resume with the same --preset, --rank, --conv-dim and --train-text-encoder")
    with torch.no_grad():
        for part, module in modules.items():
            for name, p in module.named_parameters():
                if p.requires_grad:
                    p.copy_(tensors[f"{part}.{name}"].to(p.dtype))
