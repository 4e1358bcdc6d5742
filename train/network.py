"""Adapter injection with peft: which UNet (and text-encoder) layers get adapters, of which kind, at what rank.

Why explicit module names: peft matches `target_modules` by suffix, and `rank_pattern` by regex;
listing every targeted module by its full, escaped name makes the preset's reach exact and lets
`conv_dim`/`conv_alpha` give 3×3 convolutions their own rank/alpha without touching the 1×1
projections. Presets follow sd-scripts: `attn` = to_q/k/v/out, `attn-mlp` adds the transformer
feed-forward, `full` adds the transformer's proj_in/proj_out too.

Algorithms (`algo`), with peft's layers and LyCORIS's maths and defaults:
- `lora`: ΔW = (alpha/rank)·B·A; DoRA in the column-norm convention (train.dora).
- `loha`: ΔW = (alpha/rank)·(W1a·W1b) ⊙ (W2a·W2b), initialised as LyCORIS does (W2a = 0).
- `lokr`: ΔW = (alpha/rank)·W1 ⊗ W2, each dimension split near `factor`; W2 is a low-rank product
  unless the rank reaches half its size, and when both halves are full matrices the scale is 1
  whatever alpha says (LyCORIS's full-matrix mode: pass a huge rank such as 100000 to get it).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
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

    from train.sd3 import is_mmdit, targets
    if is_mmdit(unet):  # SD3's transformer: its joint-attention layers (train.sd3)
        return UnetTargets(targets(unet, preset), ())
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


def algo_config(config: NetworkConfig, targets: list[str], rank_pattern: dict[str, int] | None = None,
                alpha_pattern: dict[str, float] | None = None) -> Any:
    """The peft config of `config.algo` for these target modules (patterns: per-layer rank/alpha)."""
    patterns = dict(rank_pattern=rank_pattern or {}, alpha_pattern=alpha_pattern or {})
    if config.algo in ("dylora", "lora-fa"):  # issue 22: plain peft LoRA layers, adopted in add_lora
        from peft import LoraConfig
        return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.network_dropout,
                          init_lora_weights=True, target_modules=targets, **patterns)
    if config.algo == "loha":
        from peft import LoHaConfig
        return LoHaConfig(r=config.rank, alpha=config.lora_alpha, target_modules=targets, **patterns)
    if config.algo == "lokr":
        from peft import LoKrConfig
        return LoKrConfig(r=config.rank, alpha=config.lora_alpha, target_modules=targets,
                          decompose_factor=config.factor, init_weights="lycoris", **patterns)
    from peft import LoraConfig
    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.network_dropout,
                      init_lora_weights="gaussian", use_dora=config.dora, target_modules=targets, **patterns)
    if config.dora:
        from train.dora import register
        register(lora)
    return lora


def unet_lora_config(unet: Any, config: NetworkConfig) -> Any:
    """The peft config for the UNet, with per-layer rank/alpha for the 3×3 convs; blocks whose
    learning-rate weight is 0 get no layers (train.blocks)."""
    from train.blocks import keep_blocks

    if config.algo == "ia3":  # issue 22: LyCORIS's ia3 preset, whatever --preset says
        from train.ia3 import ia3_config, ia3_targets
        linear, on_input = ia3_targets(unet, unet=True)
        kept = keep_blocks(UnetTargets(tuple(linear), ()), unet, config).linear
        return ia3_config(kept, [name for name in on_input if name in kept])
    targets = keep_blocks(unet_targets(unet, config.preset, conv=config.conv_dim > 0), unet, config)
    conv_rank = {re.escape(n): config.conv_dim for n in targets.conv}
    conv_alpha = {re.escape(n): config.conv_lora_alpha for n in targets.conv}
    return algo_config(config, list(targets.linear + targets.conv), conv_rank, conv_alpha)


def text_encoder_lora_config(config: NetworkConfig) -> Any:
    if config.algo == "ia3":  # issue 22
        from train.ia3 import TE_INPUT, TE_OUTPUT, ia3_config
        return ia3_config(TE_OUTPUT + TE_INPUT, TE_INPUT)
    targets = TE_ATTN + (TE_MLP if config.preset != "attn" else ())
    return algo_config(config, list(targets))


@dataclass
class Network:
    """The adapters added to a base model, and the parameters the optimizer trains."""

    unet_config: Any
    text_encoder_configs: list[Any] = field(default_factory=list)
    unet_params: list[Any] = field(default_factory=list)
    text_encoder_params: list[Any] = field(default_factory=list)
    embedding: Any = None  # textual inversion / pivotal tuning: train.embedding.TrainedEmbedding

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
    """Freeze the base, add the adapters of `config.algo` (fp32, whatever the base dtype) and return what trains."""
    import torch

    unet.requires_grad_(False)
    for encoder in text_encoders:
        encoder.requires_grad_(False)
    network = Network(unet_lora_config(unet, config))
    if not config.train_text_encoder_only:
        add_adapter(unet, network.unet_config)
        network.unet_params = _trainable(unet)
    if config.train_text_encoder:
        from train.sd3 import trains_text_encoder
        for encoder in filter(trains_text_encoder, text_encoders):  # SD3's T5 stays frozen
            te_config = text_encoder_lora_config(config)
            add_adapter(encoder, te_config)
            network.text_encoder_configs.append(te_config)
            network.text_encoder_params += _trainable(encoder)
    for param in network.unet_params + network.text_encoder_params:
        param.data = param.data.to(torch.float32)
    trained = [unet, *(text_encoders if config.train_text_encoder else [])]
    for model in trained:
        lycoris_conventions(model)
        lora_family_conventions(model, config)
    network.unet_params = [p for p in network.unet_params if p.requires_grad]
    network.text_encoder_params = [p for p in network.text_encoder_params if p.requires_grad]
    from train.regularize import add_lora_dropout

    add_lora_dropout(trained, rank_dropout=config.rank_dropout, module_dropout=config.module_dropout)
    return network


def lycoris_conventions(model: Any, adapter: str = "default") -> None:
    """Where peft's LoHa/LoKr layers differ from LyCORIS's, do as LyCORIS does.

    LoHa: LyCORIS starts W1a ~ N(0, 0.1), W1b ~ N(0, 1), W2a = 0, W2b ~ N(0, 1) (peft draws He-uniform
    and zeroes W2b), which sets how fast LoHa learns at a given learning rate. LoKr with both halves
    full matrices: LyCORIS (and every client) scales by 1, not alpha/rank.
    """
    import torch
    from peft.tuners.loha.layer import LoHaLayer
    from peft.tuners.lokr.layer import LoKrLayer

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoHaLayer) and adapter in module.hada_w1_a:
                module.hada_w1_a[adapter].normal_(0, 0.1)
                module.hada_w1_b[adapter].normal_(0, 1)
                module.hada_w2_a[adapter].zero_()
                module.hada_w2_b[adapter].normal_(0, 1)
            elif isinstance(module, LoKrLayer) and adapter in module.lokr_w1 and adapter in module.lokr_w2:
                module.alpha[adapter] = module.r[adapter]
                module.scaling[adapter] = 1.0


def lora_family_conventions(model: Any, config: NetworkConfig, adapter: str = "default") -> None:
    """Issue 22: DyLoRA layers draw a rank prefix each training step (train.dylora); LoRA-FA freezes
    every down projection at its initialisation (sd-scripts networks.lora_fa), so only the up
    projections train and the optimizer holds half the state."""
    if config.algo == "dylora":
        from train.dylora import make_dynamic
        make_dynamic(model, config.unit, adapter)
    elif config.algo == "lora-fa":
        for module in model.modules():
            if hasattr(module, "lora_A") and adapter in module.lora_A:
                module.lora_A[adapter].requires_grad_(False)


def add_adapter(model: Any, config: Any, adapter: str = "default") -> None:
    """Inject a peft adapter into a UNet or text encoder with peft itself.

    Why not the models' own `add_adapter`: transformers' glue checks for a peft release of its own
    choosing (transformers 5.24 refuses peft 0.21) and diffusers' adds nothing we use, so going
    through peft's injector keeps text-encoder LoRA working with any transformers in range. The
    injector records `model.peft_config` and merges it with adapters already there.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, model, adapter_name=adapter)
    if type(config).__name__ == "IA3Config":  # issue 22: LyCORIS's (IA)³ parametrisation
        from train.ia3 import adopt
        adopt(model, adapter)


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
                         hint="resume with the same --algo, --preset, --rank, --factor, --conv-dim, --dora "
                              "and --train-text-encoder")
    with torch.no_grad():
        for part, module in modules.items():
            for name, p in module.named_parameters():
                if p.requires_grad:
                    p.copy_(tensors[f"{part}.{name}"].to(p.dtype))


def plain_lora_layers(model: Any) -> list[Any]:
    """`model`'s peft LoRA Linear/Conv2d layers without a variant (no DoRA): those whose forward only
    casts its input to the adapter's dtype and multiplies (see `uncast_inputs`)."""
    from peft.tuners.lora.layer import Conv2d, Linear

    return [m for m in model.modules() if type(m) in (Linear, Conv2d) and not m.lora_variant]


@contextlib.contextmanager
def uncast_inputs(layers: Sequence[Any]) -> Iterator[None]:
    """Inside autocast, skip peft's cast of each layer's input to the fp32 LoRA weights: autocast casts
    it straight back to bf16/fp16 for the matmul, so the result is bit-identical and two copy kernels
    per layer and step (and their backward) are saved. Outside autocast the cast is needed (fp32
    adapters on a bf16 model), so it is switched off only for the duration of this block."""
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.cast_input_dtype_enabled = True
