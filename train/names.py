"""Module names between layouts, pure (no torch, no peft, nothing from train/): the diffusers
UNet's module paths in the original (sgm / sd-scripts SDXL) layout, and where peft's adapter parts
begin in a path. Shared by the LoRA file writer/reader (train/export.py) and the block weights
(train/blocks.py), so a block ID always matches the kohya name."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from prep.errors import UsageError

# where peft's adapter sub-modules and parameters begin in a module or parameter path
ADAPTER_PART = re.compile(r"\.(?:lora|hada|lokr|ia3)_")

_RESNET_PARTS = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                 "conv_shortcut": "skip_connection"}
_TOP_LEVEL = {"conv_in": "input_blocks.0.0", "conv_out": "out.2",
              "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def sgm_unet_path(path: str, layers_per_block: int, up_has_attention: Iterable[bool]) -> str:
    """The original (sgm / sd-scripts SDXL) UNet name of a diffusers UNet module path.

    `down_blocks.1.attentions.0.proj_in` → `input_blocks.4.1.proj_in` for SDXL's 2 layers per block.
    """
    for diffusers_name, sgm_name in _TOP_LEVEL.items():
        if path == diffusers_name or path.startswith(diffusers_name + "."):
            return sgm_name + path[len(diffusers_name):]
    stride = layers_per_block + 1
    attention_levels = list(up_has_attention)

    def resnet_tail(tail: str) -> str:
        head, _, rest = tail.partition(".")
        mapped = _RESNET_PARTS.get(head, head)
        return f"{mapped}.{rest}" if rest else mapped

    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path):
        level, kind, j, tail = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + level * stride + j
        return f"input_blocks.{index}.0.{resnet_tail(tail)}" if kind == "resnets" else f"input_blocks.{index}.1.{tail}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", path):
        return f"input_blocks.{(int(m[1]) + 1) * stride}.0.op{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", path):
        kind, j, tail = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j}.{resnet_tail(tail)}" if kind == "resnets" else f"middle_block.1.{tail}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path):
        level, kind, j, tail = int(m[1]), m[2], int(m[3]), m[4]
        index = level * stride + j
        return f"output_blocks.{index}.0.{resnet_tail(tail)}" if kind == "resnets" else f"output_blocks.{index}.1.{tail}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)", path):
        level = int(m[1])
        slot = 2 if attention_levels[level] else 1
        return f"output_blocks.{level * stride + layers_per_block}.{slot}.conv{m[2]}"
    raise UsageError(f"cannot name UNet module '{path}' in the original SDXL layout")


def sgm_unet_name(path: str, unet_config: Mapping[str, Any]) -> str:
    """`sgm_unet_path` with the block layout read from the diffusers UNet's config."""
    up_attention = ["CrossAttn" in t for t in unet_config["up_block_types"]]
    return sgm_unet_path(path, int(unet_config["layers_per_block"]), up_attention)
