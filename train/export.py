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
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from prep.atomic import finalize_written_file, write_bytes_atomic
from prep.errors import ModelMismatch, UsageError
from train.lycoris import (ALGO_LABELS, ModuleWeights, algo_of, file_weights, layer_algo, lokr_factor,
                           set_peft_tensors)
from train.names import ADAPTER_PART, sgm_unet_name

if TYPE_CHECKING:
    from train.model import BaseModel, Family

KOHYA_SUFFIX = ".safetensors"
DIFFUSERS_SUFFIX = ".diffusers.safetensors"
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
BASE_MODEL_VERSION: dict[str, str] = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "sd3": "sd3"}
FAMILY_FROM_VERSION = {v: k for k, v in BASE_MODEL_VERSION.items()}


def base_components(base: BaseModel) -> dict[str, torch.nn.Module]:
    """The base model's parts by component name: unet, text_encoder (and text_encoder_2 for SDXL)."""
    return dict(zip(COMPONENTS, [base.unet, *base.text_encoders]))


def kohya_prefix(component: str, family: Family) -> str:
    if component == "unet":
        return "lora_transformer_" if family == "sd3" else "lora_unet_"  # SD3: train/sd3_export.py
    if family not in ("sdxl", "sd3"):
        return "lora_te_"
    return "lora_te1_" if component == "text_encoder" else "lora_te2_"


# ---------------------------------------------------------------- names (pure; the UNet layout mapping is train/names.py)

def kohya_name(component: str, path: str, family: Family, unet_config: Mapping[str, Any] | None = None) -> str:
    """kohya module name (`lora_unet_…`, `lora_te1_…`) of a module path inside a diffusers component."""
    if component == "unet":
        if family == "sdxl":
            assert unet_config is not None
            path = sgm_unet_name(path, unet_config)
    elif not path.startswith("text_model."):
        # transformers 5 flattened CLIPTextModel; sd-scripts' names keep the `text_model` level.
        path = "text_model." + path
    return kohya_prefix(component, family) + path.replace(".", "_")


# ---------------------------------------------------------------- collecting the adapted layers


@dataclass(frozen=True)
class AdaptedLayer:
    """One adapted layer, format-neutral: where it is, its trained alpha and its tensors in the LyCORIS
    layout (train.lycoris) with the alpha the file stores."""

    component: str
    path: str
    weights: ModuleWeights
    alpha: float  # what the layer trains with (alpha/rank = its scale); metadata reports this
    rank: int  # the configured rank (a full-matrix LoKr's too)
    is_conv: bool
    dora_axis: str | None = None

    @property
    def algo(self) -> str:
        return self.weights.algo


def _lora_layer(module: Any, component: str, path: str, adapter: str) -> AdaptedLayer:
    """A peft LoRA layer's tensors. DoRA layers are written with alpha = rank and the scale folded
    into `lora_up`, an identical file that WebUI builds which scale after decomposing apply alike."""
    from train.dora import layer_dora_axis

    down = module.lora_A[adapter].weight.detach()
    up = module.lora_B[adapter].weight.detach()
    rank = int(down.shape[0])
    alpha = float(module.lora_alpha[adapter]) if not module.use_rslora.get(adapter) \
        else float(module.scaling[adapter]) * rank
    tensors = {"lora_down.weight": down, "lora_up.weight": up}
    axis = None
    stored_alpha = alpha
    if adapter in module.lora_magnitude_vector:
        magnitude = module.lora_magnitude_vector[adapter].weight.detach()
        axis = layer_dora_axis(module, adapter)
        shape = (1, -1) if axis == "input" else (-1, 1)
        tensors["dora_scale"] = magnitude.reshape(shape + (1,) * (up.dim() - 2))
        tensors["lora_up.weight"] = up * (alpha / rank)
        stored_alpha = float(rank)
    is_conv = down.dim() == 4 and tuple(down.shape[2:]) != (1, 1)
    return AdaptedLayer(component, path, ModuleWeights("lora", tensors, stored_alpha), alpha, rank, is_conv, axis)


def _lycoris_layer(module: Any, component: str, path: str, adapter: str) -> AdaptedLayer:
    weights = file_weights(module, adapter)
    base = module.get_base_layer()
    is_conv = isinstance(base, torch.nn.Conv2d) and tuple(base.kernel_size) != (1, 1)
    alpha = float(module.scaling[adapter]) * int(module.r[adapter])
    return AdaptedLayer(component, path, weights, alpha, int(module.r[adapter]), is_conv)


def _ia3_layer(module: Any, component: str, path: str, adapter: str) -> AdaptedLayer:
    """(IA)³ in LyCORIS's layout: `weight` and `on_input`, no alpha (issue 22)."""
    from train.ia3 import file_tensors

    return AdaptedLayer(component, path, ModuleWeights("ia3", file_tensors(module, adapter), None), 1.0, 1, False)


def collect_layers(model: torch.nn.Module, component: str, adapter: str = "default") -> list[AdaptedLayer]:
    """Every peft LoRA, LoHa, LoKr and (IA)³ layer of `adapter` in `model`, with alpha = effective scale × rank
    (so rsLoRA and per-layer alpha patterns export as the strength they train with)."""
    kinds = {"lora": _lora_layer, "ia3": _ia3_layer}
    return [kinds.get(layer_algo(module), _lycoris_layer)(module, component, path, adapter)
            for path, module in _adapter_layers(model, adapter).items()]


def kohya_state_dict(layers: Iterable[AdaptedLayer], family: Family, unet_config: Mapping[str, Any],
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """kohya module names with the LyCORIS suffixes of each layer's algorithm, plus `alpha`."""
    state: dict[str, torch.Tensor] = {}
    for layer in layers:
        name = kohya_name(layer.component, layer.path, family, unet_config)
        for suffix, tensor in layer.weights.tensors.items():
            state[f"{name}.{suffix}"] = tensor.to(dtype).contiguous()
        if layer.weights.alpha is not None:
            state[f"{name}.alpha"] = torch.tensor(layer.weights.alpha, dtype=dtype)
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


TRAINING_MODULES = {"dylora": "networks.dylora", "lora-fa": "networks.lora_fa"}  # issue 22: LoRA files
MODULE_METHODS = {v: k for k, v in TRAINING_MODULES.items()}


def network_module(layers: list[AdaptedLayer], network_config: Any = None) -> str:
    """sd-scripts' `networks.lora` for plain LoRA/LoCon (`networks.dylora`/`networks.lora_fa` when
    trained so); LyCORIS's `lycoris.kohya` for what only it trains."""
    plain = all(layer.algo == "lora" and layer.dora_axis is None for layer in layers)
    algo = getattr(network_config, "algo", None) if not isinstance(network_config, Mapping) else \
        network_config.get("algo")
    if plain and algo in TRAINING_MODULES:
        return TRAINING_MODULES[algo]
    return "networks.lora" if plain else "lycoris.kohya"


def network_args(layers: list[AdaptedLayer], network_config: Any) -> dict[str, str]:
    """`ss_network_args` as sd-scripts writes the `--network_args` it was given (all values strings)."""
    def setting(key: str) -> Any:
        return network_config.get(key) if isinstance(network_config, Mapping) else getattr(network_config, key, None)

    args: dict[str, str] = {}
    lycoris = network_module(layers) == "lycoris.kohya"
    if lycoris:
        args["algo"] = layers[0].algo
    conv = [layer for layer in layers if layer.is_conv]
    if conv:
        args["conv_dim"] = str(_mode(layer.rank for layer in conv))
        args["conv_alpha"] = _number(_mode(layer.alpha for layer in conv))
    if any(layer.algo == "lokr" for layer in layers):
        factor = setting("factor")
        linear = [layer.weights for layer in layers if not layer.is_conv]
        args["factor"] = str(factor if factor is not None else lokr_factor(linear))
    axes = {layer.dora_axis for layer in layers} - {None}
    if axes:
        args["dora_wd"] = "True"
        args["wd_on_output"] = str(axes == {"output"})
    for key in ("preset", "dropout", "network_dropout", "rank_dropout", "module_dropout", "down_lr_weight",
                "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_lr_weights"):
        value = setting(key)
        if value not in (None, "", 0, 0.0):
            args[key] = str(value)
    if lycoris and args["algo"] == "ia3":  # issue 22: LyCORIS's (IA)³ preset, which loraprep always uses
        args["preset"] = "ia3"
    if network_module(layers, network_config) == "networks.dylora":
        args["unit"] = str(setting("unit") or 1)
    return args


def build_metadata(layers: list[AdaptedLayer], base: BaseModel, meta: LoraMetadata, network_config: Any,
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
        "ss_network_module": network_module(layers, network_config),
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
    if base.family == "sd3":
        from train.sd3_export import metadata as sd3_metadata
        data.update(sd3_metadata(base))
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


def diffusers_can_load(layers: Iterable[AdaptedLayer]) -> bool:
    """diffusers loads plain LoRA and peft's row-norm DoRA; it has no LoHa/LoKr and no column-norm DoRA."""
    return all(layer.algo == "lora" and layer.dora_axis != "input" for layer in layers)


def save_lora(path_stem: str | Path, *, unet: torch.nn.Module, text_encoders: Iterable[torch.nn.Module | None] = (),
              base: BaseModel, network_config: Any = None,
              metadata: LoraMetadata | Mapping[str, Any] | None = None, adapter: str = "default",
              dtype: torch.dtype = torch.float16, bundle: Mapping[str, torch.Tensor] | None = None) -> tuple[Path, ...]:
    """Write `<stem>.safetensors` (kohya/LyCORIS) and, when diffusers can load the network,
    `<stem>.diffusers.safetensors` (diffusers/peft).

    `unet` / `text_encoders` carry peft adapters named `adapter` (text encoders without one are
    skipped). Returns the paths written, the kohya file first. `dtype` is the storage precision.
    `bundle` adds tensors to the kohya file only (pivotal tuning's `bundle_emb.NAME.*`).
    LoHa, LoKr and column-norm DoRA get no diffusers file (diffusers would misapply or refuse it);
    an earlier diffusers file of ours under the same name is removed so it cannot be mistaken for this one.
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
    kohya_state.update(bundle or {})  # pivotal tuning: `bundle_emb.NAME.*`, the WebUI's bundled embedding
    kohya_meta = build_metadata(layers, base, meta, network_config, kohya=True)
    kohya_meta["sshs_model_hash"] = addnet_hash(kohya_state)
    kohya_path = stem.with_name(stem.name + KOHYA_SUFFIX)
    write_safetensors(kohya_path, kohya_state, kohya_meta)
    diffusers_path = stem.with_name(stem.name + DIFFUSERS_SUFFIX)
    if not diffusers_can_load(layers):
        _remove_our_diffusers_file(diffusers_path)
        return (kohya_path,)

    diffusers_state: dict[str, torch.Tensor] = {}
    adapter_meta: dict[str, Any] = {}
    for component, model in models.items():
        diffusers_state.update(diffusers_state_dict(model, component, adapter, dtype))
        adapter_meta.update({f"{component}.{k}": v for k, v in adapter_config(model, adapter).items()})
    if base.family == "sd3":  # diffusers calls SD3's denoiser `transformer`
        from train.sd3_export import as_transformer
        diffusers_state, adapter_meta = as_transformer(diffusers_state), as_transformer(adapter_meta)
    diffusers_meta = build_metadata(layers, base, meta, network_config, kohya=False)
    diffusers_meta.update({"format": "pt", ADAPTER_METADATA_KEY: json.dumps(adapter_meta, indent=2, sort_keys=True)})
    write_safetensors(diffusers_path, diffusers_state, diffusers_meta)
    return kohya_path, diffusers_path


def _remove_our_diffusers_file(path: Path) -> None:
    from safetensors import safe_open

    if not path.is_file():
        return
    try:
        with safe_open(str(path), framework="pt") as handle:
            ours = (handle.metadata() or {}).get("loraprep.format") == "diffusers"
    except Exception:
        return
    if ours:
        path.unlink()


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
    if arch.startswith("stable-diffusion-v3"):
        return "sd3"
    if arch.startswith("stable-diffusion-xl"):
        return "sdxl"
    if arch.startswith("stable-diffusion-v2"):
        return "sd2"
    if arch.startswith("stable-diffusion-v1"):
        return "sd1"
    return None


_CROSS_ATTENTION_FAMILY: dict[int, Family] = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_transformer_")


def _family_from_tensors(tensors: Mapping[str, torch.Tensor]) -> Family | None:
    keys = list(tensors)
    if any(k.startswith(("lora_transformer_", "transformer.")) for k in keys):  # SD3's MMDiT
        return "sd3"
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) or "input_blocks" in k or "output_blocks" in k for k in keys):
        return "sdxl"
    for key, value in tensors.items():
        if "attn2" in key and re.search(r"to_k[._](lora_A|lora\.down)", key):
            return _CROSS_ATTENTION_FAMILY.get(int(value.shape[1]))
    for name, weights in _grouped({k: v for k, v in tensors.items() if k.startswith(_KOHYA_PREFIXES)}).items():
        if name.endswith("attn2_to_k"):
            return _CROSS_ATTENTION_FAMILY.get(weights.shape[1])
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
    if any(k.startswith(_KOHYA_PREFIXES) for k in tensors):
        fmt = "kohya"
    elif any(".lora_A." in k or ".lora_B." in k for k in tensors):
        fmt = "diffusers"
    else:
        raise ModelMismatch(f"{path.name} is not a LoRA in kohya or diffusers/peft format",
                            hint="loraprep reads LoRA files it wrote, sd-scripts LoRA/LoCon files, LyCORIS "
                                 "LoHa/LoKr files and diffusers `save_lora_weights` files")
    family = _family_from_metadata(metadata) or _family_from_tensors(tensors)
    return LoraFile(path, fmt, tensors, metadata, family)


def _grouped(tensors: Mapping[str, torch.Tensor], where: str = "the file") -> dict[str, ModuleWeights]:
    """kohya/LyCORIS tensors by module name, each module's algorithm told by its suffixes."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("bundle_emb."):  # the WebUI's bundled embeddings (pivotal tuning), not layers
            continue
        module, _, suffix = key.partition(".")
        parts.setdefault(module, {})[suffix] = value
    modules = {}
    for module, found in parts.items():
        algo = algo_of(set(found), f"{where}: {module}")
        alpha = found.pop("alpha", None)
        modules[module] = ModuleWeights(algo, found, float(alpha.item()) if alpha is not None else None)
    return modules


def _peft_alpha(config: Mapping[str, Any], path: str, rank: int) -> float:
    alpha = float(config.get("lora_alpha", rank))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            alpha = float(value)
    if config.get("use_rslora"):
        alpha = alpha * rank / rank ** 0.5
    return alpha


def _diffusers_modules(lora: LoraFile) -> dict[tuple[str, str], ModuleWeights]:
    """(component, module path) → weights of a diffusers/peft file, in the LyCORIS layout: peft's
    DoRA magnitude (row norm) becomes an [out, 1, …] `dora_scale`."""
    found: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in lora.tensors.items():
        component, _, rest = key.partition(".")
        component = "unet" if component == "transformer" else component  # SD3 (train/sd3_export.py)
        for peft_suffix, suffix in ((".lora_A.weight", "lora_down.weight"), (".lora_B.weight", "lora_up.weight"),
                                    (".lora_magnitude_vector", "dora_scale")):
            if rest.endswith(peft_suffix):
                found.setdefault((component, rest.removesuffix(peft_suffix)), {})[suffix] = value
                break
        else:
            raise ModelMismatch(f"{lora.path.name}: unexpected key '{key}' in a diffusers LoRA file")
    adapter_meta = lora.adapter_metadata
    adapter_meta = {("unet" + k[len("transformer"):] if k.startswith("transformer.") else k): v  # SD3
                    for k, v in adapter_meta.items()}
    modules = {}
    for (component, path), tensors in found.items():
        if "lora_down.weight" not in tensors or "lora_up.weight" not in tensors:
            raise ModelMismatch(f"{lora.path.name}: {component}.{path} lacks its lora_A or lora_B weight")
        rank = int(tensors["lora_down.weight"].shape[0])
        if "dora_scale" in tensors:
            up = tensors["lora_up.weight"]
            tensors["dora_scale"] = tensors["dora_scale"].reshape((-1,) + (1,) * (up.dim() - 1))
        config = {k.partition(".")[2]: v for k, v in adapter_meta.items() if k.startswith(component + ".")}
        modules[(component, path)] = ModuleWeights("lora", tensors, _peft_alpha(config, path, rank))
    return modules


def _kohya_component(module: str) -> str:
    prefix = re.match(r"lora_(unet|transformer|te\d?)_", module)
    return {"unet": "unet", "transformer": "unet", "te": "text_encoder", "te1": "text_encoder",  # transformer: SD3
            "te2": "text_encoder_2"}.get(prefix[1] if prefix else "", "?")


def file_modules(lora: LoraFile) -> dict[tuple[str, str], ModuleWeights]:
    """(component, name) → weights for every adapted module of a file; the name is the kohya module
    name for kohya files and the module path for diffusers files."""
    if lora.format == "diffusers":
        return _diffusers_modules(lora)
    return {(_kohya_component(name), name): weights for name, weights in _grouped(lora.tensors, lora.path.name).items()}


# ---------------------------------------------------------------- mapping a file onto a base model


@dataclass(frozen=True)
class LoraState:
    """A LoRA file mapped onto a base model: per component, each adapted module path (as the base
    model names it) with its weights in the LyCORIS layout."""

    modules: dict[str, dict[str, ModuleWeights]]
    source: LoraFile

    @property
    def components(self) -> list[str]:
        return [c for c in COMPONENTS if self.modules.get(c)]

    def algos(self, component: str) -> list[str]:
        return sorted({m.algo for m in self.modules[component].values()})

    def dora_axis(self, component: str) -> str | None:
        axes = {m.dora_axis for m in self.modules[component].values()}
        if len(axes - {None}) > 1:
            raise ModelMismatch(f"{self.source.path.name} mixes row- and column-norm DoRA in its {component}")
        return next(iter(axes - {None}), None)

    def adapter_configs(self, component: str) -> list[Any]:
        """peft configs (one per algorithm) whose layers hold exactly this component's modules once
        `load_into` fills them."""
        return [self._adapter_config(component, algo) for algo in self.algos(component)]

    def _adapter_config(self, component: str, algo: str) -> Any:
        modules = {path: m for path, m in self.modules[component].items() if m.algo == algo}
        targets = sorted(modules)
        ranks = {path: m.rank or 1 for path, m in modules.items()}
        rank = int(_mode(ranks.values()))
        rank_pattern = {re.escape(p): r for p, r in ranks.items() if r != rank}
        if algo == "loha":
            from peft import LoHaConfig
            return LoHaConfig(r=rank, alpha=rank, target_modules=targets, rank_pattern=rank_pattern)
        if algo == "lokr":
            from peft import LoKrConfig
            return LoKrConfig(r=rank, alpha=rank, target_modules=targets, rank_pattern=rank_pattern)
        if algo == "ia3":  # issue 22
            from train.ia3 import ia3_config, on_input
            return ia3_config(targets, [path for path, m in modules.items() if on_input(dict(m.tensors))])
        from peft import LoraConfig
        alphas = {path: m.scale * m.rank for path, m in modules.items() if m.rank}
        alpha = _mode(alphas.values())
        axis = self.dora_axis(component)
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, use_dora=axis is not None,
                            init_lora_weights=False, rank_pattern=rank_pattern,
                            alpha_pattern={re.escape(p): a for p, a in alphas.items() if a != alpha})
        if axis == "input":
            from train.dora import register
            register(config)
        return config


def _module_names(base: BaseModel) -> dict[str, tuple[str, str]]:
    """kohya name → (component, module path) for every Linear/Conv2d of the base model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names: dict[str, tuple[str, str]] = {}
    models = base_components(base)
    unet_config = dict(base.unet.config)
    for component, model in models.items():
        for path, module in model.named_modules():
            path = path.removeprefix("base_model.model.")
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, BaseTunerLayer)) or \
                    ADAPTER_PART.search(path) or "base_layer" in path:
                continue
            try:
                names[kohya_name(component, path, base.family, unet_config)] = (component, path)
            except UsageError:
                continue
    return names


def load_lora_state(path: str | Path, base: BaseModel) -> LoraState:
    """Read a LoRA file (either format, any of LoRA/LoHa/LoKr) and map it onto `base`, refusing a wrong
    family or shape. `generate` and `--init-weights` build adapters shaped like it and fill them
    (`add_file_adapters`); `load_lora_into` copies it into adapters already there."""
    lora = read_lora(path)
    if lora.family is not None and lora.family != base.family:
        from train.model import FAMILY_LABELS
        raise ModelMismatch(f"{lora.path.name} is a {FAMILY_LABELS[lora.family]} LoRA but the base model is "
                            f"{FAMILY_LABELS[base.family]}", hint="use a base model of the LoRA's family")
    models = base_components(base)
    modules: dict[str, dict[str, ModuleWeights]] = {}
    found = file_modules(lora)
    if lora.format == "kohya":
        names = _module_names(base)
        unknown = sorted(name for _, name in found if name not in names)
        if unknown:
            raise ModelMismatch(f"{lora.path.name} adapts {len(unknown)} module(s) this base model does not have "
                                f"(e.g. {unknown[0]})",
                                hint="the LoRA was trained on a different architecture; pick a matching base model")
        for (_, name), weights in found.items():
            component, module_path = names[name]
            modules.setdefault(component, {})[module_path] = weights
    else:
        for (component, module_path), weights in found.items():
            if component not in models:
                raise ModelMismatch(f"{lora.path.name}: unexpected component '{component}' for this base model")
            modules.setdefault(component, {})[model_path(models[component], component, module_path)] = weights
    _check_shapes(modules, models, lora.path.name)
    return LoraState(modules, lora)


def _check_shapes(modules: Mapping[str, Mapping[str, ModuleWeights]], models: Mapping[str, torch.nn.Module],
                  name: str) -> None:
    for component, found in modules.items():
        if component not in models:
            raise ModelMismatch(f"{name} has {component} layers but the base model has no {component}")
        named = dict(models[component].named_modules())
        for path, weights in found.items():
            module = named.get(path)
            module = getattr(module, "base_layer", module)
            if module is None:
                raise ModelMismatch(f"{name} adapts {component}.{path}, which the base model does not have",
                                    hint="the LoRA was trained on a different architecture")
            out, inputs = int(module.weight.shape[0]), int(module.weight[0].numel())
            if weights.algo == "ia3" and not isinstance(module, torch.nn.Linear):
                raise ModelMismatch(f"{name}: {component}.{path} is an (IA)³ convolution, which loraprep (like the "
                                    "WebUI) cannot apply", hint="LyCORIS's ia3 preset adapts linear layers only")
            if weights.algo == "ia3" and not weights.fits(out, inputs):
                size = weights.tensors["weight"].numel()
                raise ModelMismatch(f"{name}: {component}.{path} is an (IA)³ vector of {size} for a {out}×{inputs} "
                                    "weight", hint="the LoRA was trained on a different base model")
            if weights.algo != "ia3" and weights.shape != (out, inputs):
                raise ModelMismatch(f"{name}: {component}.{path} expects a {weights.shape[0]}×{weights.shape[1]} "
                                    f"weight, the base model has {out}×{inputs}",
                                    hint="the LoRA was trained on a different base model family or size")


def _adapter_layers(model: torch.nn.Module, adapter: str) -> dict[str, Any]:
    from peft.tuners.ia3 import IA3Layer
    from peft.tuners.loha.layer import LoHaLayer
    from peft.tuners.lokr.layer import LoKrLayer
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, PeftLoraLayer) and adapter in module.lora_A or \
                isinstance(module, IA3Layer) and adapter in module.ia3_l or \
                isinstance(module, (LoHaLayer, LoKrLayer)) and adapter in module._available_adapters:
            layers[name.removeprefix("base_model.model.")] = module
    return layers


def add_file_adapters(model: torch.nn.Module, state: LoraState, component: str, adapter: str = "default") -> list[Any]:
    """Add adapter `adapter` to `model` shaped like the file's `component` (one peft config per algorithm:
    LyCORIS files may mix them) and fill it with the file's weights; returns the configs."""
    from train.network import add_adapter

    configs = state.adapter_configs(component)
    with warnings.catch_warnings():  # peft warns when a second algorithm joins the first: intended here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        for config in configs:
            add_adapter(model, config, adapter)
    load_into(model, state, component, adapter)
    return configs


def load_into(model: torch.nn.Module, state: LoraState, component: str, adapter: str = "default") -> None:
    """Fill `model`'s adapter `adapter`, built from `state.adapter_configs(component)`, with the file's weights."""
    layers = _adapter_layers(model, adapter)
    with torch.no_grad():
        for path, weights in state.modules[component].items():
            layer = layers.get(path)
            if layer is None:
                raise ModelMismatch(f"{component}.{path} found no adapter layer",
                                    hint="create the adapter with state.adapter_configs(component)")
            if weights.algo == "ia3":  # issue 22
                from train.ia3 import set_file_tensors
                set_file_tensors(layer, adapter, dict(weights.tensors))
                continue
            if weights.algo != "lora":
                if weights.dora_axis is not None:
                    raise ModelMismatch(f"{state.source.path.name} is a weight-decomposed (DoRA) "
                                        f"{ALGO_LABELS[weights.algo]}, which loraprep cannot apply",
                                        hint="apply it in the WebUI or ComfyUI")
                set_peft_tensors(layer, adapter, weights)
                continue
            layer.lora_A[adapter].weight.copy_(weights.tensors["lora_down.weight"])
            layer.lora_B[adapter].weight.copy_(weights.tensors["lora_up.weight"])
            if "dora_scale" in weights.tensors:
                target = layer.lora_magnitude_vector[adapter].weight
                target.copy_(weights.tensors["dora_scale"].reshape(target.shape))


# ---------------------------------------------------------------- describing (`loraprep lora info`)

CLIENTS = ("loraprep", "WebUI / Forge", "ComfyUI", "sd-scripts", "diffusers")


def client_support(fmt: str, algo: str, dora_axis: str | None) -> dict[str, str]:
    """Which clients apply a file exactly as loraprep trained it, and what the others do instead.

    "exact" claims for the WebUI and ComfyUI are the formulas tests/train/test_clients.py restates.
    """
    exact = "exact"
    if fmt == "diffusers":
        kohya = "use the kohya .safetensors file"
        return {"loraprep": exact, "WebUI / Forge": kohya, "ComfyUI": kohya, "sd-scripts": kohya, "diffusers": exact}
    label = ALGO_LABELS.get(algo, algo)
    support = {"loraprep": exact, "WebUI / Forge": exact, "ComfyUI": exact, "sd-scripts": exact, "diffusers": exact}
    if algo != "lora":
        support["sd-scripts"] = f"only with LyCORIS installed (network_module lycoris.kohya): {label} is LyCORIS's"
        support["diffusers"] = f"no: diffusers cannot load {label}; use loraprep generate, the WebUI or ComfyUI"
    if dora_axis is not None:
        support["sd-scripts"] = "no: ignores dora_scale (applies it as plain LoRA)"
        support["diffusers"] = "no: drops dora_scale from kohya files (applies it as plain LoRA)"
    if dora_axis is not None and algo != "lora":
        support["loraprep"] = f"no: loraprep cannot apply weight-decomposed {label}"
    if dora_axis == "output":
        support["WebUI / Forge"] = "no: the WebUI divides by input-column norms, which an [out, 1] dora_scale does not fit"
        support["ComfyUI"] = "approximate: ComfyUI divides an [out, 1] dora_scale by the base weight's row norm"
    if algo == "ia3":  # issue 22
        support["WebUI / Forge"] = "exact: its built-in Lora extension scales each weight by (1 + multiplier·w)"
        support["ComfyUI"] = "no: ComfyUI has no (IA)³ loader (it skips the keys: 'lora key not loaded')"
        support["diffusers"] = "no: diffusers cannot load (IA)³; use loraprep generate or the WebUI"
    return support


def method_support(method: str, unit: int | None, rank: int | None) -> dict[str, str]:
    """How DyLoRA and LoRA-FA files (LoRA files trained another way) are applied (issue 22)."""
    if method == "dylora":
        cuts = f"; a prefix cut at any multiple of {unit} up to {rank} is a LoRA too" if unit and rank else ""
        how = f"exact, as a plain LoRA of its full rank{cuts}"
    elif method == "lora-fa":
        how = "exact, as a plain LoRA (its frozen down projection is stored)"
    else:
        return {}
    return {client: how for client in CLIENTS}


@dataclass(frozen=True)
class LoraInfo:
    path: Path
    format: str
    family: str | None
    algorithm: str  # lora | loha | lokr (or several, comma-separated)
    size_bytes: int
    num_tensors: int
    modules: dict[str, int]  # component -> adapted module count
    ranks: dict[int, int]    # rank -> module count (full-matrix LoKr modules are counted apart)
    full_matrix_modules: int
    alphas: dict[float, int]
    factor: int | None  # LoKr
    dtypes: list[str]
    conv_modules: int
    dora: bool
    dora_axis: str | None  # "input" (column norm), "output" (row norm)
    clients: dict[str, str]  # client -> "exact" or what it does instead
    metadata: dict[str, str]
    method: str = ""  # issue 22: how it was trained: the algorithm, or dylora / lora-fa (a LoRA file)
    dylora_unit: int | None = None
    valid_cuts: list[int] = field(default_factory=list)  # DyLoRA: the ranks a prefix cut may keep
    bundled_embeddings: dict[str, int] = field(default_factory=dict)  # pivotal tuning: NAME -> vectors

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["ranks"] = {str(k): v for k, v in self.ranks.items()}
        data["alphas"] = {_number(k): v for k, v in self.alphas.items()}
        return data


_CONV_NAME = re.compile(r"(conv[12]?|conv_in|conv_out|_op|in_layers_2|out_layers_3|input_blocks_0_0|lora_unet_out_2)$")


def _network_arg(metadata: Mapping[str, str], key: str) -> str | None:
    try:
        args = json.loads(metadata.get("ss_network_args") or "{}")
    except json.JSONDecodeError:
        return None
    value = args.get(key) if isinstance(args, dict) else None
    return None if value is None else str(value)


def describe_lora(path: str | Path) -> LoraInfo:
    """Summary of a LoRA file without a base model: format, family, algorithm, modules, ranks, alphas,
    LoKr factor, DoRA convention and which clients apply it exactly."""
    lora = read_lora(path)
    found = file_modules(lora)
    modules: Counter[str] = Counter(component for component, _ in found)
    ranks = Counter(w.rank for w in found.values() if w.rank is not None)
    alphas = Counter(round(w.alpha if w.alpha is not None else float(w.rank or 1), 6) for w in found.values())
    convs = {key for key, w in found.items() if w.is_conv or (w.algo != "lora" and _CONV_NAME.search(key[1]))}
    algos = sorted({w.algo for w in found.values()})
    axes = sorted({w.dora_axis for w in found.values() if w.dora_axis})
    factor = None
    if "lokr" in algos:
        stated = _network_arg(lora.metadata, "factor")
        linear = [w for key, w in found.items() if key not in convs]
        factor = int(stated) if stated and stated.lstrip("-").isdigit() else lokr_factor(linear)
    axis = axes[0] if len(axes) == 1 else None
    method = _training_method(lora.metadata, algos, ranks)
    if lora.format != "kohya":
        method.pop("clients", None)
    clients = method.pop("clients", None) or client_support(lora.format, algos[0] if len(algos) == 1 else "mixed", axis)
    if lora.family == "sd3":
        from train.sd3_export import client_support as sd3_clients
        clients = sd3_clients(lora.format, algos[0] if len(algos) == 1 else "mixed")
        modules = Counter({("transformer" if c == "unet" else c): n for c, n in modules.items()})
    return LoraInfo(
        path=lora.path, format=lora.format, family=lora.family, algorithm=", ".join(algos),
        size_bytes=lora.path.stat().st_size, num_tensors=len(lora.tensors), modules=dict(modules),
        ranks=dict(sorted(ranks.items())),
        full_matrix_modules=sum(1 for w in found.values() if w.rank is None and w.algo != "ia3"),
        alphas=dict(sorted(alphas.items())), factor=factor,
        dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in lora.tensors.values()}),
        conv_modules=len(convs), dora=bool(axes), dora_axis=axis,
        clients=clients,
        metadata=lora.metadata, bundled_embeddings=_bundled(lora), **method,
    )


def _training_method(metadata: Mapping[str, str], algos: list[str], ranks: Mapping[int, int]) -> dict[str, Any]:
    """Issue 22: DyLoRA and LoRA-FA files are LoRA files; their metadata says how they were trained."""
    method = MODULE_METHODS.get(metadata.get("ss_network_module", "")) if algos == ["lora"] else None
    if method is None:
        return {"method": ", ".join(algos)}
    unit = _network_arg(metadata, "unit")
    unit_value = int(unit) if method == "dylora" and unit and unit.isdigit() and int(unit) > 0 else \
        1 if method == "dylora" else None
    rank = max(ranks) if ranks else None
    cuts = []
    if unit_value and rank:
        from train.dylora import valid_cuts
        cuts = valid_cuts(rank, unit_value)  # a layer of lower rank (a conv's) keeps its own in a larger cut
    return {"method": method, "dylora_unit": unit_value, "valid_cuts": cuts,
            "clients": method_support(method, unit_value, rank)}


def _bundled(lora: LoraFile) -> dict[str, int]:
    """The WebUI's bundled embeddings (`bundle_emb.NAME.*`, pivotal tuning) by name → vectors."""
    counts: dict[str, int] = {}  # read here, not through train.embedding (which imports this module)
    for key, value in lora.tensors.items():
        if key.startswith("bundle_emb."):
            name = key[len("bundle_emb."):].partition(".")[0]
            counts[name] = max(counts.get(name, 0), int(value.shape[0]) if value.ndim > 1 else 1)
    return counts


# ---------------------------------------------------------------- `--init-weights`


def load_lora_into(base: BaseModel, path: str | Path, adapter: str = "default") -> list[str]:
    """`--init-weights`: copy a LoRA file (either format, LoRA/LoHa/LoKr) into the adapters already on `base`.

    The network must have the file's layers, algorithm and shapes (layers the file lacks keep their
    fresh initialisation). When the network's alpha differs from the file's, one factor of each
    layer is rescaled so the network starts out with exactly the file's effect. Returns the
    components loaded.
    """
    state = load_lora_state(path, base)
    models = base_components(base)
    hint = ("train with the file's --algo, --preset, --rank, --factor, --conv-dim, --dora and "
            "--train-text-encoder settings")
    for component in state.components:
        layers = _adapter_layers(models[component], adapter)
        if not layers:
            raise ModelMismatch(f"the LoRA has {component} layers but the network trains no {component}", hint=hint)
        with torch.no_grad():
            for module_path, weights in state.modules[component].items():
                layer = layers.get(module_path)
                if layer is None:
                    raise ModelMismatch(f"the LoRA adapts {component}.{module_path}, which the network does not train",
                                        hint=hint)
                _copy_into(layer, adapter, weights, f"{component}.{module_path}", hint)
    return state.components


def _copy_into(layer: Any, adapter: str, weights: ModuleWeights, where: str, hint: str) -> None:
    """One file module into one trainable layer, rescaled to the layer's own alpha/rank."""
    from train.lycoris import peft_tensors

    algo = layer_algo(layer)
    if algo != weights.algo:
        raise ModelMismatch(f"{where} is {ALGO_LABELS[weights.algo]} in the file and {ALGO_LABELS[algo]} in the "
                            "network", hint=f"train with --algo {weights.algo}")
    if algo == "ia3":  # issue 22: no alpha, nothing to rescale
        from train.ia3 import on_input, set_file_tensors
        if on_input(dict(weights.tensors)) != layer.is_feedforward:
            raise ModelMismatch(f"{where} scales the other side of the weight in the file", hint=hint)
        set_file_tensors(layer, adapter, dict(weights.tensors))
        return
    ratio = weights.scale / float(layer.scaling[adapter])
    if algo == "lora":
        rank = weights.rank
        if layer.r[adapter] != rank:
            raise ModelMismatch(f"{where} has rank {rank} in the LoRA and {layer.r[adapter]} in the network", hint=hint)
        layer.lora_A[adapter].weight.copy_(weights.tensors["lora_down.weight"])
        layer.lora_B[adapter].weight.copy_(weights.tensors["lora_up.weight"] * ratio)
        if "dora_scale" in weights.tensors:
            _copy_magnitude(layer, adapter, weights, where, hint)
        return
    if weights.dora_axis is not None:
        raise ModelMismatch(f"{where} is a weight-decomposed {ALGO_LABELS[algo]}, which loraprep does not train")
    current = peft_tensors(layer, adapter)
    shapes = {k: tuple(v.shape) for k, v in weights.tensors.items()}
    if shapes != {k: tuple(v.shape) for k, v in current.items()}:
        raise ModelMismatch(f"{where} is split differently in the file ({_shapes(shapes)}) and the network "
                            f"({_shapes({k: tuple(v.shape) for k, v in current.items()})})", hint=hint)
    first = "hada_w1_a" if algo == "loha" else "lokr_w1" if "lokr_w1" in current else "lokr_w1_a"
    for key, tensor in weights.tensors.items():
        getattr(layer, key)[adapter].copy_(tensor * (ratio if key == first else 1.0))


def _shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in sorted(shapes.items()))


def _copy_magnitude(layer: Any, adapter: str, weights: ModuleWeights, where: str, hint: str) -> None:
    from train.dora import layer_dora_axis

    if adapter not in layer.lora_magnitude_vector:
        raise ModelMismatch("the LoRA is a DoRA but the network is not", hint=hint)
    network_axis = layer_dora_axis(layer, adapter)
    if weights.dora_axis != network_axis:
        raise ModelMismatch(f"{where}: the file's DoRA normalises each {weights.dora_axis} "
                            f"({'row' if weights.dora_axis == 'output' else 'column'}), loraprep trains the "
                            f"{network_axis} convention", hint="start without --init-weights, or apply the file "
                                                              "with `loraprep generate`")
    target = layer.lora_magnitude_vector[adapter].weight
    target.copy_(weights.tensors["dora_scale"].reshape(target.shape))
