"""Write a trained LoRA in the two formats people load, and read either back.

- **kohya / WebUI** (`<stem>.safetensors`): `lora_unet_…`, `lora_te_…` (SDXL: `lora_te1_…`/`lora_te2_…`)
  modules with `lora_down.weight`, `lora_up.weight` and the real `alpha`; SDXL UNet modules use
  sd-scripts' original-UNet names (`input_blocks_4_1_…`), SD1/SD2 the diffusers names sd-scripts also
  uses. Metadata: sd-scripts' `ss_*` keys and Stability's `modelspec.*` keys. DoRA layers carry
  LyCORIS-style `dora_scale` ([out, 1] for linear, [out, 1, 1, 1] for conv), which the WebUI/ComfyUI read.
- **diffusers / peft** (`<stem>.diffusers.safetensors`): the peft state dict prefixed `unet.` /
  `text_encoder.` / `text_encoder_2.`, plus the `lora_adapter_metadata` (each component's LoraConfig)
  that `pipe.load_lora_weights` needs to reload alpha ≠ rank at the right strength.

Both files are written atomically (temp file + rename) with mode 0644.
Known limit: diffusers itself drops kohya `dora_scale` keys when loading a kohya file, so a DoRA
LoRA reproduces exactly in diffusers only from the diffusers file.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prep.atomic import finalize_written_file, write_bytes_atomic
from prep.errors import ModelMismatch, UsageError

if TYPE_CHECKING:
    from train.model import BaseModel, Family

KOHYA_SUFFIX = ".safetensors"
DIFFUSERS_SUFFIX = ".diffusers.safetensors"
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
BASE_MODEL_VERSION: dict[str, str] = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
FAMILY_FROM_VERSION = {v: k for k, v in BASE_MODEL_VERSION.items()}


def kohya_prefix(component: str, family: Family) -> str:
    if component == "unet":
        return "lora_unet_"
    if family != "sdxl":
        return "lora_te_"
    return "lora_te1_" if component == "text_encoder" else "lora_te2_"


# ---------------------------------------------------------------- names (pure)

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


def kohya_name(component: str, path: str, family: Family, unet_config: Mapping[str, Any] | None = None) -> str:
    """kohya module name (`lora_unet_…`, `lora_te1_…`) of a module path inside a diffusers component."""
    if component == "unet":
        if family == "sdxl":
            assert unet_config is not None
            up_attention = ["CrossAttn" in t for t in unet_config["up_block_types"]]
            path = sgm_unet_path(path, int(unet_config["layers_per_block"]), up_attention)
    elif not path.startswith("text_model."):
        # transformers 5 flattened CLIPTextModel; sd-scripts' names keep the `text_model` level.
        path = "text_model." + path
    return kohya_prefix(component, family) + path.replace(".", "_")


# ---------------------------------------------------------------- collecting the adapted layers


@dataclass(frozen=True)
class LoraLayer:
    """One adapted layer, format-neutral: where it is, its factors, and its effective alpha."""

    component: str
    path: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    magnitude: torch.Tensor | None = None  # DoRA

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def is_conv(self) -> bool:
        return self.down.dim() == 4 and tuple(self.down.shape[2:]) != (1, 1)


def collect_layers(model: torch.nn.Module, component: str, adapter: str = "default") -> list[LoraLayer]:
    """Every peft LoRA layer of `adapter` in `model`, with alpha = effective scale × rank (so rsLoRA
    and per-layer alpha patterns export as the strength they train with)."""
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, PeftLoraLayer) or adapter not in module.lora_A:
            continue
        path = name.removeprefix("base_model.model.")
        down = module.lora_A[adapter].weight.detach()
        up = module.lora_B[adapter].weight.detach()
        rank = int(down.shape[0])
        alpha = float(module.lora_alpha[adapter]) if not module.use_rslora.get(adapter) \
            else float(module.scaling[adapter]) * rank
        magnitude = None
        if adapter in module.lora_magnitude_vector:
            magnitude = module.lora_magnitude_vector[adapter].weight.detach()
        layers.append(LoraLayer(component, path, down, up, alpha, magnitude))
    return layers


def kohya_state_dict(layers: Iterable[LoraLayer], family: Family, unet_config: Mapping[str, Any],
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for layer in layers:
        name = kohya_name(layer.component, layer.path, family, unet_config)
        state[f"{name}.lora_down.weight"] = layer.down.to(dtype).contiguous()
        state[f"{name}.lora_up.weight"] = layer.up.to(dtype).contiguous()
        state[f"{name}.alpha"] = torch.tensor(layer.alpha, dtype=dtype)
        if layer.magnitude is not None:
            # LyCORIS layout (norm over each output channel): [out, 1] linear, [out, 1, 1, 1] conv
            shape = (layer.up.shape[0],) + (1,) * (layer.up.dim() - 1)
            state[f"{name}.dora_scale"] = layer.magnitude.reshape(shape).to(dtype).contiguous()
    return state


def diffusers_state_dict(model: torch.nn.Module, component: str, adapter: str,
                         dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict
    state = get_peft_model_state_dict(model, adapter_name=adapter)
    return {f"{component}.{canonical_path(component, k.removeprefix('base_model.model.'))}":
            v.detach().to(dtype).contiguous() for k, v in state.items()}


def canonical_path(component: str, path: str) -> str:
    """Text-encoder paths as every LoRA on the hub writes them (`text_model.encoder…`), whatever the
    installed transformers calls them (version 5 dropped the `text_model` level)."""
    if component == "unet" or path.startswith(("text_model.", "text_projection")):
        return path
    return "text_model." + path


def model_path(model: torch.nn.Module, component: str, path: str) -> str:
    """A canonical path as it is named in this `model` (the inverse of `canonical_path`)."""
    if component != "unet" and path.startswith("text_model.") and not hasattr(model, "text_model"):
        return path.removeprefix("text_model.")
    return path


def adapter_config(model: torch.nn.Module, adapter: str) -> dict[str, Any]:
    """The peft LoraConfig as JSON-safe values (diffusers reads r, lora_alpha, patterns from it)."""
    config = model.peft_config[adapter].to_dict()
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


# ---------------------------------------------------------------- metadata


@dataclass(frozen=True)
class LoraMetadata:
    """What a LoRA file says about how it was made (sd-scripts `ss_*` and `modelspec.*` keys).

    Training fills what it knows; everything is optional. `extra` passes further `ss_*`/`modelspec.*`
    keys through verbatim.
    """

    title: str = ""
    trigger: str = ""
    resolution: tuple[int, int] = (512, 512)
    num_train_images: int = 0
    num_reg_images: int = 0
    tag_frequency: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    training_comment: str = ""
    learning_rate: float | None = None
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    optimizer: str = ""
    lr_scheduler: str = ""
    max_train_steps: int | None = None
    steps: int | None = None
    epoch: int | None = None
    num_epochs: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    clip_skip: int | None = None
    noise_offset: float | None = None
    min_snr_gamma: float | None = None
    mixed_precision: str = ""
    session_id: str = ""
    training_started_at: float | None = None
    base_model_name: str = ""
    dataset_hash: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: LoraMetadata | Mapping[str, Any] | None) -> LoraMetadata:
        if value is None:
            return cls()
        if isinstance(value, LoraMetadata):
            return value
        known = {f for f in cls.__dataclass_fields__}
        unknown = [k for k in value if k not in known and not k.startswith(("ss_", "modelspec."))]
        if unknown:
            raise UsageError(f"unknown LoRA metadata field(s): {', '.join(sorted(unknown))}")
        extra = {k: str(v) for k, v in value.items() if k not in known}
        fields = {k: v for k, v in value.items() if k in known}
        fields["extra"] = {**dict(fields.get("extra", {})), **extra}
        return cls(**fields)


def _mode(values: Iterable[float]) -> float:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else 0


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def architecture(family: Family, prediction_type: str) -> str:
    if family == "sdxl":
        return "stable-diffusion-xl-v1-base/lora"
    if family == "sd2":
        return "stable-diffusion-v2-768-v/lora" if prediction_type == "v_prediction" else "stable-diffusion-v2-512/lora"
    return "stable-diffusion-v1/lora"


def network_args(layers: list[LoraLayer], network_config: Any) -> dict[str, str]:
    conv = [layer for layer in layers if layer.is_conv]
    args: dict[str, str] = {}
    if conv:
        args["conv_dim"] = str(_mode(layer.rank for layer in conv))
        args["conv_alpha"] = _number(_mode(layer.alpha for layer in conv))
    if any(layer.magnitude is not None for layer in layers):
        args["dora_wd"] = "True"
    for key in ("preset", "dropout", "network_dropout"):
        value = network_config.get(key) if isinstance(network_config, Mapping) else getattr(network_config, key, None)
        if value not in (None, "", 0, 0.0):
            args[key] = str(value)
    return args


def build_metadata(layers: list[LoraLayer], base: BaseModel, meta: LoraMetadata, network_config: Any,
                   *, kohya: bool) -> dict[str, str]:
    """sd-scripts `ss_*` and `modelspec.*` string metadata for a LoRA file."""
    linear = [layer for layer in layers if not layer.is_conv] or layers
    dim, alpha = _mode(layer.rank for layer in linear), _mode(layer.alpha for layer in linear)
    width, height = meta.resolution
    started = meta.training_started_at or time.time()
    te_trained = any(layer.component != "unet" for layer in layers)
    comment = meta.training_comment or (f"trigger: {meta.trigger}" if meta.trigger else "")
    if meta.trigger and meta.trigger not in comment:
        comment = f"{comment}; trigger: {meta.trigger}" if comment else f"trigger: {meta.trigger}"
    data: dict[str, Any] = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim),
        "ss_network_alpha": _number(alpha),
        "ss_network_args": json.dumps(network_args(layers, network_config)),
        "ss_network_train_unet_only": str(not te_trained),
        "ss_base_model_version": BASE_MODEL_VERSION[base.family],
        "ss_v2": str(base.family == "sd2"),
        "ss_v_parameterization": str(base.prediction_type == "v_prediction"),
        "ss_sd_model_name": meta.base_model_name or Path(base.source).name,
        "ss_resolution": f"({width}, {height})",
        "ss_num_train_images": str(meta.num_train_images),
        "ss_num_reg_images": str(meta.num_reg_images),
        "ss_tag_frequency": json.dumps({k: dict(v) for k, v in meta.tag_frequency.items()}),
        "ss_training_comment": comment,
        "ss_output_name": meta.title,
        "ss_training_started_at": str(started),
        "ss_learning_rate": meta.learning_rate, "ss_unet_lr": meta.unet_lr,
        "ss_text_encoder_lr": meta.text_encoder_lr, "ss_optimizer": meta.optimizer,
        "ss_lr_scheduler": meta.lr_scheduler, "ss_max_train_steps": meta.max_train_steps,
        "ss_steps": meta.steps, "ss_epoch": meta.epoch, "ss_num_epochs": meta.num_epochs,
        "ss_total_batch_size": meta.batch_size, "ss_seed": meta.seed, "ss_clip_skip": meta.clip_skip,
        "ss_noise_offset": meta.noise_offset, "ss_min_snr_gamma": meta.min_snr_gamma,
        "ss_mixed_precision": meta.mixed_precision, "ss_session_id": meta.session_id,
        "ss_dataset_hash": meta.dataset_hash,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture(base.family, base.prediction_type),
        "modelspec.implementation": ("https://github.com/Stability-AI/generative-models"
                                     if kohya and base.family == "sdxl" else "diffusers"),
        "modelspec.title": meta.title or "LoRA",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": "v" if base.prediction_type == "v_prediction" else "epsilon",
        "modelspec.trigger_phrase": meta.trigger,
        "modelspec.encoder_layer": meta.clip_skip,
        "loraprep.format": "kohya" if kohya else "diffusers",
        "loraprep.base_model_id": base.model_id,
    }
    data.update(meta.extra)
    return {k: str(v) for k, v in data.items() if v not in (None, "")}


# ---------------------------------------------------------------- writing


def _safetensors_bytes(state: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    from safetensors.torch import save
    return save(state, metadata=metadata)


def addnet_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensor data after the safetensors header (sd-scripts' `sshs_model_hash`;
    unchanged by metadata, so the WebUI's "legacy hash" matches across re-tagging)."""
    blob = _safetensors_bytes(state, None)
    header = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + header:]).hexdigest()


def write_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomic write, then 0644 (safetensors' own writer leaves 0600)."""
    write_bytes_atomic(path, _safetensors_bytes(state, metadata))
    finalize_written_file(path)


def _component_models(unet: torch.nn.Module, text_encoders: Iterable[torch.nn.Module | None]) -> dict[str, torch.nn.Module]:
    models: dict[str, torch.nn.Module] = {"unet": unet}
    for component, model in zip(COMPONENTS[1:], text_encoders):
        if model is not None and getattr(model, "peft_config", None):
            models[component] = model
    return models


def save_lora(path_stem: str | Path, *, unet: torch.nn.Module, text_encoders: Iterable[torch.nn.Module | None] = (),
              base: BaseModel, network_config: Any = None,
              metadata: LoraMetadata | Mapping[str, Any] | None = None, adapter: str = "default",
              dtype: torch.dtype = torch.float16) -> tuple[Path, Path]:
    """Write `<stem>.safetensors` (kohya) and `<stem>.diffusers.safetensors` (diffusers/peft).

    `unet` / `text_encoders` carry peft adapters named `adapter` (text encoders without one are
    skipped). Returns (kohya_path, diffusers_path). `dtype` is the storage precision of both files.
    """
    stem = Path(path_stem)
    stem = stem.with_name(stem.name.removesuffix(DIFFUSERS_SUFFIX).removesuffix(KOHYA_SUFFIX))
    meta = LoraMetadata.coerce(metadata)
    models = _component_models(unet, text_encoders)
    layers = [layer for component, model in models.items() for layer in collect_layers(model, component, adapter)]
    if not layers:
        raise UsageError("no LoRA layers to save: the UNet carries no peft adapter named "
                         f"'{adapter}'", hint="inject the network before saving")
    kohya_state = kohya_state_dict(layers, base.family, dict(base.unet.config), dtype)
    kohya_meta = build_metadata(layers, base, meta, network_config, kohya=True)
    kohya_meta["sshs_model_hash"] = addnet_hash(kohya_state)
    kohya_path = stem.with_name(stem.name + KOHYA_SUFFIX)
    write_safetensors(kohya_path, kohya_state, kohya_meta)

    diffusers_state: dict[str, torch.Tensor] = {}
    adapter_meta: dict[str, Any] = {}
    for component, model in models.items():
        diffusers_state.update(diffusers_state_dict(model, component, adapter, dtype))
        adapter_meta.update({f"{component}.{k}": v for k, v in adapter_config(model, adapter).items()})
    diffusers_meta = build_metadata(layers, base, meta, network_config, kohya=False)
    diffusers_meta.update({"format": "pt", ADAPTER_METADATA_KEY: json.dumps(adapter_meta, indent=2, sort_keys=True)})
    diffusers_path = stem.with_name(stem.name + DIFFUSERS_SUFFIX)
    write_safetensors(diffusers_path, diffusers_state, diffusers_meta)
    return kohya_path, diffusers_path


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file as stored: its format, tensors, string metadata and (when it says or shows) family."""

    path: Path
    format: str  # "kohya" | "diffusers"
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    family: Family | None

    @property
    def adapter_metadata(self) -> dict[str, Any]:
        raw = self.metadata.get(ADAPTER_METADATA_KEY)
        return json.loads(raw) if raw else {}


def _family_from_metadata(metadata: Mapping[str, str]) -> Family | None:
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if version in FAMILY_FROM_VERSION:
        return FAMILY_FROM_VERSION[version]  # type: ignore[return-value]
    arch = metadata.get("modelspec.architecture", "")
    if arch.startswith("stable-diffusion-xl"):
        return "sdxl"
    if arch.startswith("stable-diffusion-v2"):
        return "sd2"
    if arch.startswith("stable-diffusion-v1"):
        return "sd1"
    return None


_CROSS_ATTENTION_FAMILY: dict[int, Family] = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def _family_from_tensors(tensors: Mapping[str, torch.Tensor]) -> Family | None:
    keys = list(tensors)
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) or "input_blocks" in k or "output_blocks" in k for k in keys):
        return "sdxl"
    for key, value in tensors.items():
        if "attn2" in key and re.search(r"to_k[._](lora_down|lora_A|lora\.down)", key):
            return _CROSS_ATTENTION_FAMILY.get(int(value.shape[1]))
    return None


def read_lora(path: str | Path) -> LoraFile:
    """Read a kohya or diffusers/peft LoRA file (safetensors only; LoRA pickles are refused)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"LoRA file {path} does not exist")
    if path.suffix != ".safetensors":
        raise UsageError(f"{path.name}: only .safetensors LoRA files are read (pickles can run code)",
                         hint="convert it to safetensors first")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:
        raise ModelMismatch(f"{path.name} is not a readable safetensors file: {exc}") from exc
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in tensors):
        fmt = "kohya"
    elif any(".lora_A." in k or ".lora_B." in k for k in tensors):
        fmt = "diffusers"
    else:
        raise ModelMismatch(f"{path.name} is not a LoRA in kohya or diffusers/peft format",
                            hint="loraprep reads LoRA files it wrote, sd-scripts LoRA/LoCon files and "
                                 "diffusers `save_lora_weights` files")
    family = _family_from_metadata(metadata) or _family_from_tensors(tensors)
    return LoraFile(path, fmt, tensors, metadata, family)


@dataclass(frozen=True)
class LoraState:
    """A LoRA file mapped onto a base model: per component, a peft state dict (module path +
    `.lora_A.weight` / `.lora_B.weight` / `.lora_magnitude_vector`) and each module's rank and alpha."""

    tensors: dict[str, dict[str, torch.Tensor]]
    ranks: dict[str, dict[str, int]]
    alphas: dict[str, dict[str, float]]
    source: LoraFile

    @property
    def components(self) -> list[str]:
        return [c for c in COMPONENTS if self.tensors.get(c)]

    def uses_dora(self, component: str) -> bool:
        return any(k.endswith("lora_magnitude_vector") for k in self.tensors.get(component, {}))

    def lora_config(self, component: str, **overrides: Any) -> Any:
        """A peft LoraConfig that recreates exactly this component's layers (ranks, alphas, DoRA)."""
        from peft import LoraConfig

        ranks, alphas = self.ranks[component], self.alphas[component]
        rank = int(_mode(ranks.values()))
        alpha = _mode(alphas.values())
        kwargs: dict[str, Any] = dict(
            r=rank, lora_alpha=alpha, target_modules=sorted(ranks), use_dora=self.uses_dora(component),
            init_lora_weights=False,
            rank_pattern={re.escape(p): r for p, r in ranks.items() if r != rank},
            alpha_pattern={re.escape(p): a for p, a in alphas.items() if a != alpha},
        )
        kwargs.update(overrides)
        return LoraConfig(**kwargs)


def _module_names(base: BaseModel) -> dict[str, tuple[str, str]]:
    """kohya name → (component, module path) for every Linear/Conv2d of the base model."""
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    names: dict[str, tuple[str, str]] = {}
    models = dict(zip(COMPONENTS, [base.unet, *base.text_encoders]))
    unet_config = dict(base.unet.config)
    for component, model in models.items():
        for path, module in model.named_modules():
            path = path.removeprefix("base_model.model.")
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, PeftLoraLayer)) or \
                    ".lora_" in path or "base_layer" in path:
                continue
            try:
                names[kohya_name(component, path, base.family, unet_config)] = (component, path)
            except UsageError:
                continue
    return names


def _kohya_to_peft(lora: LoraFile, base: BaseModel) -> dict[str, dict[str, tuple[str, torch.Tensor]]]:
    names = _module_names(base)
    grouped: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    unknown = []
    for key, value in lora.tensors.items():
        module, _, kind = key.partition(".")
        if module not in names:
            unknown.append(module)
            continue
        component, path = names[module]
        grouped.setdefault(component, {}).setdefault(path, {})  # type: ignore[arg-type]
        grouped[component][path][kind] = value  # type: ignore[index]
    if unknown:
        raise ModelMismatch(f"{lora.path.name} adapts {len(set(unknown))} module(s) this base model does not have "
                            f"(e.g. {sorted(set(unknown))[0]})",
                            hint="the LoRA was trained on a different architecture; pick a matching base model")
    return grouped  # type: ignore[return-value]


def _peft_alpha(config: Mapping[str, Any], path: str, rank: int) -> float:
    alpha = float(config.get("lora_alpha", rank))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            alpha = float(value)
    if config.get("use_rslora"):
        alpha = alpha * rank / rank ** 0.5
    return alpha


def load_lora_state(path: str | Path, base: BaseModel) -> LoraState:
    """Read a LoRA file (either format) and map it onto `base`, refusing a wrong family or shape.

    Used by `--init-weights`: build adapters with `state.lora_config(component)` and load
    `state.tensors[component]` with peft's `set_peft_model_state_dict`.
    """
    lora = read_lora(path)
    if lora.family is not None and lora.family != base.family:
        from train.model import FAMILY_LABELS
        raise ModelMismatch(f"{lora.path.name} is a {FAMILY_LABELS[lora.family]} LoRA but the base model is "
                            f"{FAMILY_LABELS[base.family]}", hint="use a base model of the LoRA's family")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    ranks: dict[str, dict[str, int]] = {}
    alphas: dict[str, dict[str, float]] = {}
    if lora.format == "kohya":
        for component, modules in _kohya_to_peft(lora, base).items():
            for module_path, parts in modules.items():
                parts_d: dict[str, torch.Tensor] = parts  # type: ignore[assignment]
                down, up = parts_d["lora_down.weight"], parts_d["lora_up.weight"]
                rank = int(down.shape[0])
                tensors.setdefault(component, {})[f"{module_path}.lora_A.weight"] = down
                tensors[component][f"{module_path}.lora_B.weight"] = up
                if "dora_scale" in parts_d:  # peft's layout: [out] linear, [1, out, 1, 1] conv
                    peft_shape = (1, -1, 1, 1) if up.dim() == 4 else (-1,)
                    tensors[component][f"{module_path}.lora_magnitude_vector"] = parts_d["dora_scale"].reshape(peft_shape)
                ranks.setdefault(component, {})[module_path] = rank
                alphas.setdefault(component, {})[module_path] = float(parts_d.get("alpha", torch.tensor(rank)).item())
    else:
        adapter_meta = lora.adapter_metadata
        models = dict(zip(COMPONENTS, [base.unet, *base.text_encoders]))
        for key, value in lora.tensors.items():
            component, _, rest = key.partition(".")
            if component not in models:
                raise ModelMismatch(f"{lora.path.name}: unexpected key '{key}' for this base model")
            rest = model_path(models[component], component, rest)
            tensors.setdefault(component, {})[rest] = value
            if rest.endswith(".lora_A.weight"):
                module_path = rest.removesuffix(".lora_A.weight")
                rank = int(value.shape[0])
                config = {k.partition(".")[2]: v for k, v in adapter_meta.items() if k.startswith(component + ".")}
                ranks.setdefault(component, {})[module_path] = rank
                alphas.setdefault(component, {})[module_path] = _peft_alpha(config, module_path, rank)
    _check_shapes(tensors, base, lora.path.name)
    return LoraState(tensors, ranks, alphas, lora)


def _check_shapes(tensors: Mapping[str, Mapping[str, torch.Tensor]], base: BaseModel, name: str) -> None:
    models = dict(zip(COMPONENTS, [base.unet, *base.text_encoders]))
    for component, state in tensors.items():
        if component not in models:
            raise ModelMismatch(f"{name} has {component} layers but the base model has no {component}")
        modules = dict(models[component].named_modules())
        for key, value in state.items():
            if not key.endswith(".lora_A.weight"):
                continue
            path = key.removesuffix(".lora_A.weight")
            module = modules.get(path)
            module = getattr(module, "base_layer", module)
            if module is None:
                raise ModelMismatch(f"{name} adapts {component}.{path}, which the base model does not have",
                                    hint="the LoRA was trained on a different architecture")
            expected_in = module.in_features if isinstance(module, torch.nn.Linear) else getattr(module, "in_channels", None)
            if expected_in is not None and int(value.shape[1]) != expected_in:
                raise ModelMismatch(f"{name}: {component}.{path} expects {value.shape[1]} inputs, the base model has "
                                    f"{expected_in}", hint="the LoRA was trained on a different base model family or size")


def load_into(model: torch.nn.Module, state: LoraState, component: str, adapter: str = "default") -> None:
    """Copy `state`'s weights for `component` into `model`'s existing peft adapter `adapter`."""
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, dict(state.tensors[component]), adapter_name=adapter)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if unexpected:
        raise ModelMismatch(f"{len(unexpected)} LoRA tensor(s) for {component} found no layer (e.g. {unexpected[0]})",
                            hint="create the adapter with state.lora_config(component)")


# ---------------------------------------------------------------- describing (`loraprep lora info`)


@dataclass(frozen=True)
class LoraInfo:
    path: Path
    format: str
    family: str | None
    size_bytes: int
    num_tensors: int
    modules: dict[str, int]  # component -> adapted module count
    ranks: dict[int, int]    # rank -> module count
    alphas: dict[float, int]
    dtypes: list[str]
    conv_modules: int
    dora: bool
    metadata: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["ranks"] = {str(k): v for k, v in self.ranks.items()}
        data["alphas"] = {_number(k): v for k, v in self.alphas.items()}
        return data


def describe_lora(path: str | Path) -> LoraInfo:
    """Summary of a LoRA file without a base model: format, family, modules, ranks, alphas, size."""
    lora = read_lora(path)
    modules: Counter[str] = Counter()
    ranks: Counter[int] = Counter()
    alphas: Counter[float] = Counter()
    conv = 0
    adapter_meta = lora.adapter_metadata
    for key, value in lora.tensors.items():
        if lora.format == "kohya" and key.endswith(".lora_down.weight"):
            module = key.removesuffix(".lora_down.weight")
            component = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
                         "lora_te2": "text_encoder_2"}.get(re.match(r"lora_(unet|te\d?)", module)[0], "?")  # type: ignore[index]
            alpha_tensor = lora.tensors.get(f"{module}.alpha")
            alpha = float(alpha_tensor.item()) if alpha_tensor is not None else float(value.shape[0])
        elif lora.format == "diffusers" and key.endswith(".lora_A.weight"):
            component = key.partition(".")[0]
            config = {k.partition(".")[2]: v for k, v in adapter_meta.items() if k.startswith(component + ".")}
            alpha = _peft_alpha(config, key.partition(".")[2].removesuffix(".lora_A.weight"), int(value.shape[0]))
        else:
            continue
        modules[component] += 1
        ranks[int(value.shape[0])] += 1
        alphas[round(alpha, 6)] += 1
        conv += int(value.dim() == 4 and tuple(value.shape[2:]) != (1, 1))
    return LoraInfo(
        path=lora.path, format=lora.format, family=lora.family, size_bytes=lora.path.stat().st_size,
        num_tensors=len(lora.tensors), modules=dict(modules), ranks=dict(sorted(ranks.items())),
        alphas=dict(sorted(alphas.items())), dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in lora.tensors.values()}),
        conv_modules=conv, dora=any("dora_scale" in k or "lora_magnitude_vector" in k for k in lora.tensors),
        metadata=lora.metadata,
    )


def load_lora_into(base: BaseModel, path: str | Path, adapter: str = "default") -> list[str]:
    """`--init-weights`: copy a LoRA file (either format) into the adapters already on `base`.

    The network must have the file's layers at the file's ranks (layers the file lacks keep their
    fresh initialisation). When the network's alpha differs from the file's, the up weights are
    rescaled so the LoRA starts out with exactly the file's effect. Returns the components loaded.
    """
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    state = load_lora_state(path, base)
    models = dict(zip(COMPONENTS, [base.unet, *base.text_encoders]))
    hint = "train with the LoRA's --preset, --rank, --conv-dim, --dora and --train-text-encoder settings"
    for component in state.components:
        layers = {name.removeprefix("base_model.model."): module for name, module in models[component].named_modules()
                  if isinstance(module, PeftLoraLayer) and adapter in module.lora_A}
        if not layers:
            raise ModelMismatch(f"the LoRA has {component} layers but the network trains no {component}", hint=hint)
        tensors = state.tensors[component]
        with torch.no_grad():
            for module_path, rank in state.ranks[component].items():
                layer = layers.get(module_path)
                if layer is None:
                    raise ModelMismatch(f"the LoRA adapts {component}.{module_path}, which the network does not train",
                                        hint=hint)
                if layer.r[adapter] != rank:
                    raise ModelMismatch(f"{component}.{module_path} has rank {rank} in the LoRA and "
                                        f"{layer.r[adapter]} in the network", hint=hint)
                file_scale = state.alphas[component][module_path] / rank
                up_scale = file_scale / float(layer.scaling[adapter])
                layer.lora_A[adapter].weight.copy_(tensors[f"{module_path}.lora_A.weight"])
                layer.lora_B[adapter].weight.copy_(tensors[f"{module_path}.lora_B.weight"] * up_scale)
                magnitude = tensors.get(f"{module_path}.lora_magnitude_vector")
                if magnitude is not None:
                    if adapter not in layer.lora_magnitude_vector:
                        raise ModelMismatch("the LoRA is a DoRA but the network is not", hint=hint)
                    target = layer.lora_magnitude_vector[adapter].weight
                    target.copy_(magnitude.reshape(target.shape))
    return state.components
