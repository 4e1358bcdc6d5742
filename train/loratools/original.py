"""A diffusers folder's tensors under the original (LDM / sgm) single-file names, so a folder base can
be baked into the one-file layout the WebUI and ComfyUI load: UNet blocks renamed (train/names.py),
the VAE's down/up levels and mid attention (1×1 convolutions there), the CLIP text encoder under its
prefix, and OpenCLIP's layout for SD2's and SDXL's second encoder (q/k/v fused into one
`in_proj_weight`, `text_projection` transposed)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from train.names import sgm_unet_name

_RESNET_NORMS = {"norm1": "in_layers.0", "norm2": "out_layers.0"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPENCLIP = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "layer_norm1": "ln_1", "layer_norm2": "ln_2"}
TEXT_PREFIXES = {("sd1", "text_encoder"): "cond_stage_model.transformer.",
                 ("sd2", "text_encoder"): "cond_stage_model.model.",
                 ("sdxl", "text_encoder"): "conditioner.embedders.0.transformer.",
                 ("sdxl", "text_encoder_2"): "conditioner.embedders.1.model."}


@dataclass(frozen=True)
class Source:
    """Where an original-layout tensor comes from: one or more diffusers tensors (concatenated along
    rows), transposed or reshaped to `view` dimensions when the layouts differ."""

    keys: tuple[str, ...]
    transpose: bool = False
    as_conv: bool = False


def unet_key(key: str, config: dict[str, Any]) -> str:
    """`down_blocks.1.resnets.0.norm1.weight` → `model.diffusion_model.input_blocks.4.0.in_layers.0.weight`."""
    path, _, param = key.rpartition(".")
    if path == "conv_norm_out":
        return f"model.diffusion_model.out.0.{param}"
    path = re.sub(r"(\.resnets\.\d+\.)(norm[12])$", lambda m: m[1] + _RESNET_NORMS[m[2]], path)
    return f"model.diffusion_model.{sgm_unet_name(path, config)}.{param}"


def vae_key(key: str, config: dict[str, Any]) -> str:
    levels = len(config["up_block_types"])
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.+)", key):
        return f"first_stage_model.encoder.down.{m[1]}." + (f"block.{m[3]}.{m[4]}" if m[2] == "resnets" else f"downsample.{m[4]}")
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)", key):
        level = levels - 1 - int(m[1])
        return f"first_stage_model.decoder.up.{level}." + (f"block.{m[3]}.{m[4]}" if m[2] == "resnets" else f"upsample.{m[4]}")
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"first_stage_model.{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key):
        return f"first_stage_model.{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
    return "first_stage_model." + key


def text_sources(keys: list[str], family: str, component: str) -> dict[str, Source]:
    """Original-layout text-encoder keys → their diffusers sources."""
    prefix = TEXT_PREFIXES[(family, component)]
    canonical = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): k
                 for k in keys if "position_ids" not in k}
    if not prefix.endswith(".model."):
        return {prefix + name: Source((key,)) for name, key in canonical.items()}
    found: dict[str, Source] = {}
    for name, key in canonical.items():
        if name == "text_projection.weight":
            found[prefix + "text_projection"] = Source((key,), transpose=True)
        elif name.endswith("token_embedding.weight"):
            found[prefix + "token_embedding.weight"] = Source((key,))
        elif name.endswith("position_embedding.weight"):
            found[prefix + "positional_embedding"] = Source((key,))
        elif name.startswith("text_model.final_layer_norm."):
            found[prefix + "ln_final." + name.rsplit(".", 1)[1]] = Source((key,))
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", name):
            parts = tuple(canonical[name.replace(".q_proj.", f".{p}_proj.")] for p in "qkv")
            found[f"{prefix}transformer.resblocks.{m[1]}.attn.in_proj_{m[2]}"] = Source(parts)
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name):
            if m[2] in _OPENCLIP:
                found[f"{prefix}transformer.resblocks.{m[1]}.{_OPENCLIP[m[2]]}.{m[3]}"] = Source((key,))
    return found
