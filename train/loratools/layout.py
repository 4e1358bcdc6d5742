"""Where each LoRA-adaptable weight of a base model lives on disk, by kohya module name.

A LoRA names modules the kohya way (`lora_unet_…`, `lora_te1_…`); a base model stores weights either
as a diffusers folder (`unet/diffusion_pytorch_model.safetensors`, `text_encoder/model.safetensors`)
or as one original-layout checkpoint (`model.diffusion_model.input_blocks.4.1.proj_in.weight`,
`cond_stage_model.…`, `conditioner.embedders.…`). `open_base` reads only the files' headers and
returns, for every kohya name, the file, tensor key and (for OpenCLIP's fused q/k/v `in_proj_weight`
of SD2 and SDXL's second text encoder) the rows that hold that module's weight. Extract and bake
then read and write one tensor at a time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prep.errors import ModelMismatch, UsageError
from train.export import kohya_name
from train.loratools.tensorfile import PICKLE_SUFFIXES, TensorFile, open_tensor_file
from train.model import FAMILY_LABELS, Family, family_from_checkpoint_keys, family_from_unet_config

_RESNET_FROM_SGM = {"in_layers.2": "conv1", "out_layers.3": "conv2", "emb_layers.1": "time_emb_proj",
                    "skip_connection": "conv_shortcut"}
_TOP_FROM_SGM = {"input_blocks.0.0": "conv_in", "out.2": "conv_out", "time_embed.0": "time_embedding.linear_1",
                 "time_embed.2": "time_embedding.linear_2", "label_emb.0.0": "add_embedding.linear_1",
                 "label_emb.0.2": "add_embedding.linear_2"}
_OPENCLIP_PARTS = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
# single-file text-encoder prefixes: (prefix, component, OpenCLIP layout?)
_SINGLE_FILE_TEXT = {
    "sd1": (("cond_stage_model.transformer.", "text_encoder", False),),
    "sd2": (("cond_stage_model.model.", "text_encoder", True),),
    "sdxl": (("conditioner.embedders.0.transformer.", "text_encoder", False),
             ("conditioner.embedders.1.model.", "text_encoder_2", True)),
}
UNET_PREFIX = "model.diffusion_model."


def diffusers_unet_path(sgm: str) -> str | None:
    """The diffusers UNet module path of an original (sgm/LDM) one, None for what has no diffusers
    twin. `input_blocks.4.1.proj_in` → `down_blocks.1.attentions.0.proj_in` (every SD1/SD2/SDXL UNet
    has two layers per block)."""
    for old, new in _TOP_FROM_SGM.items():
        if sgm == old or sgm.startswith(old + "."):
            return new + sgm[len(old):]

    def resnet(tail: str) -> str:
        for old, new in _RESNET_FROM_SGM.items():
            if tail == old or tail.startswith(old + "."):
                return new + tail[len(old):]
        return tail

    if m := re.fullmatch(r"input_blocks\.(\d+)\.([01])\.(.+)", sgm):
        index, slot, tail = int(m[1]), int(m[2]), m[3]
        level, j = divmod(index - 1, 3)
        if j == 2:
            return f"down_blocks.{level}.downsamplers.0.conv{tail[2:]}" if tail.startswith("op") else None
        return f"down_blocks.{level}.resnets.{j}.{resnet(tail)}" if slot == 0 else f"down_blocks.{level}.attentions.{j}.{tail}"
    if m := re.fullmatch(r"middle_block\.([012])\.(.+)", sgm):
        slot, tail = int(m[1]), m[2]
        return f"mid_block.attentions.0.{tail}" if slot == 1 else f"mid_block.resnets.{slot // 2}.{resnet(tail)}"
    if m := re.fullmatch(r"output_blocks\.(\d+)\.([012])\.(.+)", sgm):
        index, slot, tail = int(m[1]), int(m[2]), m[3]
        level, j = divmod(index, 3)
        if slot == 2 or (slot == 1 and tail.startswith("conv")):
            return f"up_blocks.{level}.upsamplers.0.{tail}"
        return f"up_blocks.{level}.resnets.{j}.{resnet(tail)}" if slot == 0 else f"up_blocks.{level}.attentions.{j}.{tail}"
    return None


@dataclass(frozen=True)
class Slot:
    """One adaptable weight: its kohya module name, its diffusers path (text encoders as
    `text_model.encoder…`), and where it is stored (`rows`: a slice of a fused q/k/v tensor)."""

    module: str
    component: str
    path: str
    file: Path
    key: str
    shape: tuple[int, ...]
    rows: tuple[int, int] | None = None


@dataclass
class BaseWeights:
    """A base model's weight files, opened by header, and its adaptable weights by kohya name."""

    source: Path
    kind: str  # "folder" | "file"
    family: Family
    files: dict[Path, TensorFile]
    slots: dict[str, Slot]
    unet_config: dict[str, Any] | None = None
    prediction_type: str = "epsilon"
    component_files: dict[str, list[Path]] = field(default_factory=dict)

    def weight(self, slot: Slot) -> torch.Tensor:
        tensor = self.files[slot.file].read(slot.key)
        return tensor[slot.rows[0]:slot.rows[1]] if slot.rows else tensor

    @property
    def label(self) -> str:
        return FAMILY_LABELS[self.family]


def open_base(source: str | Path, *, allow_pickle: bool = False) -> BaseWeights:
    """Open a diffusers folder or a single original-layout checkpoint for tensor-by-tensor access."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _open_folder(path, allow_pickle=allow_pickle)
    if path.is_file():
        return _open_single_file(path, allow_pickle=allow_pickle)
    raise UsageError(f"model '{source}' does not exist",
                     hint="pass a diffusers folder or a single .safetensors checkpoint")


def component_weight_files(folder: Path, *, allow_pickle: bool) -> list[Path]:
    """The weight files diffusers loads for one component folder: the plain file, or its shards."""
    for suffix in (".safetensors", ".bin"):
        files = sorted(folder.glob(f"*{suffix}"))
        plain = [f for f in files if f.stem in ("model", "diffusion_pytorch_model")]
        shards = [f for f in files if re.search(r"-\d+-of-\d+$", f.stem)]
        chosen = plain or shards
        if chosen:
            if suffix == ".bin" and not allow_pickle:
                raise UsageError(f"{folder} holds only pickle (.bin) weights, which can run code when loaded",
                                 hint="convert it to safetensors, or pass --allow-pickle if you trust its source")
            return chosen
    return []


def _open_folder(folder: Path, *, allow_pickle: bool) -> BaseWeights:
    unet_config_path = folder / "unet" / "config.json"
    if not (folder / "model_index.json").is_file() or not unet_config_path.is_file():
        raise ModelMismatch(f"{folder} is not a diffusers Stable Diffusion folder (no model_index.json or "
                            "unet/config.json)", hint="pass the folder that holds model_index.json, or a single "
                                                      ".safetensors checkpoint")
    unet_config = json.loads(unet_config_path.read_text(encoding="utf-8"))
    family = family_from_unet_config(unet_config)
    prediction = "epsilon"
    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    if scheduler_config.is_file():
        prediction = json.loads(scheduler_config.read_text(encoding="utf-8")).get("prediction_type", "epsilon")
    components = ["unet", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    files: dict[Path, TensorFile] = {}
    slots: dict[str, Slot] = {}
    component_files: dict[str, list[Path]] = {}
    for component in components:
        paths = component_weight_files(folder / component, allow_pickle=allow_pickle)
        if not paths:
            raise ModelMismatch(f"{folder / component} holds no weights", hint="pass a complete diffusers folder")
        component_files[component] = paths
        for file_path in paths:
            handle = files[file_path] = open_tensor_file(file_path, allow_pickle=allow_pickle)
            for entry in handle.entries.values():
                if entry.key.endswith(".weight") and len(entry.shape) in (2, 4):
                    slot = _folder_slot(component, entry.key[:-len(".weight")], family, unet_config,
                                        file_path, entry.key, entry.shape)
                    if slot is not None:
                        slots[slot.module] = slot
    return BaseWeights(folder, "folder", family, files, slots, unet_config, prediction, component_files)


def _folder_slot(component: str, path: str, family: Family, unet_config: dict[str, Any], file_path: Path,
                 key: str, shape: tuple[int, ...]) -> Slot | None:
    if component != "unet":
        path = path if path.startswith("text_model.") else "text_model." + path
        if ".encoder.layers." not in path:
            return None
    try:
        name = kohya_name(component, path, family, unet_config)
    except UsageError:
        return None
    return Slot(name, component, path, file_path, key, shape)


def _open_single_file(path: Path, *, allow_pickle: bool) -> BaseWeights:
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise UsageError(f"{path.name}: unknown model file type '{path.suffix}'",
                         hint="pass a .safetensors checkpoint or a diffusers folder")
    handle = open_tensor_file(path, allow_pickle=allow_pickle)
    family = family_from_checkpoint_keys(list(handle.entries))
    if family is None:
        raise ModelMismatch(f"{path.name} is not an SD1/SD2/SDXL checkpoint (no text-encoder keys found)",
                            hint="a LoRA file or a bare UNet cannot be a base model; pass a full checkpoint")
    slots: dict[str, Slot] = {}
    for entry in handle.entries.values():
        if len(entry.shape) not in (2, 4) and not entry.key.endswith("in_proj_weight"):
            continue
        for slot in _single_file_slots(entry.key, entry.shape, family, path):
            slots[slot.module] = slot
    return BaseWeights(path, "file", family, {path: handle}, slots)


def _single_file_slots(key: str, shape: tuple[int, ...], family: Family, file_path: Path) -> list[Slot]:
    if key.startswith(UNET_PREFIX) and key.endswith(".weight"):
        sgm = key[len(UNET_PREFIX):-len(".weight")]
        path = diffusers_unet_path(sgm)
        if path is None:
            return []
        name = "lora_unet_" + (sgm if family == "sdxl" else path).replace(".", "_")
        return [Slot(name, "unet", path, file_path, key, shape)]
    for prefix, component, openclip in _SINGLE_FILE_TEXT[family]:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if not openclip:
            if not rest.endswith(".weight") or ".encoder.layers." not in rest:
                return []
            path = rest[:-len(".weight")]
            path = path if path.startswith("text_model.") else "text_model." + path
            return [Slot(kohya_name(component, path, family), component, path, file_path, key, shape)]
        m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", rest)
        if m is None:
            return []
        layer = f"text_model.encoder.layers.{m[1]}."
        if m[2] == "attn.in_proj_weight":
            width = shape[0] // 3
            return [Slot(kohya_name(component, f"{layer}self_attn.{part}_proj", family), component,
                         f"{layer}self_attn.{part}_proj", file_path, key, (width, shape[1]), (i * width, (i + 1) * width))
                    for i, part in enumerate("qkv")]
        part = m[2].removesuffix(".weight")
        if m[2].endswith(".weight") and part in _OPENCLIP_PARTS:
            path = layer + _OPENCLIP_PARTS[part]
            return [Slot(kohya_name(component, path, family), component, path, file_path, key, shape)]
        return []
    return []
