"""Load a base model for training or sampling, from wherever the user has it, and say what it is.

Three sources are accepted, in this order of precedence:

- a diffusers folder (`model_index.json` + `unet/`, `vae/`, `text_encoder*/`, `tokenizer*/`, `scheduler/`);
- a single checkpoint file (`.safetensors`; `.ckpt`/`.pt`/`.pth`/`.bin` only with `allow_pickle`, and then
  loaded with `weights_only`), converted by diffusers' `from_single_file`, which needs the diffusers
  configs of the family: offline they must be passed as `config=` (a diffusers folder of the same family);
- a hub id (`owner/name`), downloaded once into `models_cache/hub/owner--name` and used from there.

The family (SD1 / SD2 / SDXL; SD3 by its transformer, train.sd3) is read from the UNet's structure
and the prediction type from the scheduler config, so a LoRA trained here records what it was
trained on and refuses the wrong base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from prep.errors import ModelMismatch, ModelNotAvailable, UsageError
from prep.models import cache_dir

Family = Literal["sd1", "sd2", "sdxl", "sd3"]
PredictionType = Literal["epsilon", "v_prediction", "flow"]  # flow: SD3's rectified flow

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SINGLE_FILE_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
HUB_PATTERNS = (
    "model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder_2/config.json", "text_encoder_2/model.safetensors",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
    # SD3 / SD3.5: the transformer and T5 come in shards
    "transformer/*", "text_encoder_3/*", "tokenizer_3/*",
)
# Key prefixes that identify an original (LDM / sgm) single-file checkpoint's family.
_SINGLE_FILE_MARKERS: tuple[tuple[str, Family], ...] = (
    ("model.diffusion_model.joint_blocks.", "sd3"),  # SD3 / SD3.5 (MMDiT)
    ("conditioner.embedders.1.", "sdxl"),
    ("cond_stage_model.model.", "sd2"),
    ("cond_stage_model.transformer.", "sd1"),
)
FAMILY_LABELS: dict[Family, str] = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "sd3": "SD3"}


@dataclass
class BaseModel:
    """Everything the trainer and the sampler need from a base model, already on `device`/`dtype`.

    `model_id` is stable across runs for the same weights (name + fingerprint) so caches can key on
    it; `component_ids` does the same per component (e.g. latents depend only on `component_ids['vae']`).
    `noise_scheduler` is a DDPMScheduler built from the model's scheduler config (training noise and
    targets); `scheduler` is the model's own sampling scheduler.
    """

    family: Family
    prediction_type: PredictionType
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    scheduler: Any
    model_id: str
    pipeline_class: type
    source: str
    component_ids: dict[str, str] = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def pipeline(self, **overrides: Any) -> Any:
        """A diffusers pipeline sharing this model's modules (no copy), for sampling."""
        if self.family == "sd3":
            from train.sd3 import pipeline
            return pipeline(self, **overrides)
        parts: dict[str, Any] = dict(unet=self.unet, vae=self.vae, scheduler=self.scheduler,
                                     text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0])
        if self.is_sdxl:
            parts.update(text_encoder_2=self.text_encoders[1], tokenizer_2=self.tokenizers[1])
        else:
            parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        parts.update(overrides)
        pipe = self.pipeline_class(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def pick_device(name: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The device for `name` ("auto" picks cuda, then mps, then cpu) and the dtype to sample in:
    fp16 on accelerators (half the memory, same images to the eye), fp32 on CPU (fp16 is slow there)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but torch sees no CUDA GPU",
                         hint="install the torch build for your CUDA version, or use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'", hint="use auto, cpu, cuda, cuda:N or mps") from None
    return device, (torch.float32 if device.type == "cpu" else torch.float16)


# ---------------------------------------------------------------- detection (pure)


def family_from_unet_config(config: dict[str, Any]) -> Family:
    """SDXL by its text_time conditioning; SD1/SD2 by cross-attention width, or for tiny/unusual
    models by SD2's linear transformer projections."""
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    cross = config.get("cross_attention_dim")
    if cross == 768:
        return "sd1"
    if cross == 1024:
        return "sd2"
    return "sd2" if config.get("use_linear_projection") else "sd1"


def prediction_type_from_scheduler_config(config: dict[str, Any]) -> PredictionType:
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise ModelMismatch(f"the base model's scheduler predicts '{prediction}'; loraprep trains epsilon "
                            "and v_prediction models", hint="pass --prediction-type epsilon|v_prediction")
    return prediction


def family_from_checkpoint_keys(keys: list[str] | set[str]) -> Family | None:
    """Family of an original-format single-file checkpoint from its key names, None if unknown."""
    for prefix, family in _SINGLE_FILE_MARKERS:
        if any(k.startswith(prefix) for k in keys):
            return family
    return None


def pipeline_class_for(family: Family) -> type:
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    if family == "sd3":
        return StableDiffusion3Pipeline
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


# ---------------------------------------------------------------- fingerprints


def _file_fingerprint(path: Path, probe: int = 1 << 16) -> str:
    """Size plus hashes of the first and last 64 KiB: cheap on multi-GB weights, yet different for
    any two fine-tunes (the weights right after the header differ)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as handle:
        h.update(handle.read(probe))
        if size > probe:
            handle.seek(max(size - probe, probe))
            h.update(handle.read(probe))
    return h.hexdigest()


def _folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        h.update(rel.encode())
        if path.suffix in (".json", ".txt"):
            h.update(path.read_bytes())
        elif path.suffix in SINGLE_FILE_SUFFIXES:
            h.update(_file_fingerprint(path).encode())
    return h.hexdigest()[:16]


def _component_ids(name: str, fingerprint_of: dict[str, str]) -> dict[str, str]:
    return {component: f"{name}/{component}-{digest}" for component, digest in fingerprint_of.items()}


# ---------------------------------------------------------------- loading


def load_base(source: str | os.PathLike[str], *, allow_pickle: bool = False, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu", config: str | os.PathLike[str] | None = None,
              original_config: str | os.PathLike[str] | None = None,
              prediction_type: PredictionType | None = None, download: bool = True) -> BaseModel:
    """Load the base model at `source` (diffusers folder, single checkpoint file, or hub id).

    `config` / `original_config` are only used for single files (diffusers' from_single_file needs the
    family's configs; offline they must be local). `prediction_type` overrides the scheduler's for
    v-prediction fine-tunes whose files do not say so. `download=False` never touches the network.
    """
    text = str(source)
    path = Path(text).expanduser()
    if prediction_type is None and path.is_file():  # v-pred single files say so in their header
        from train.prediction import checkpoint_hints

        prediction_type = checkpoint_hints(path).prediction_type  # type: ignore[assignment]
    if path.is_dir():
        base = _load_folder(path, allow_pickle=allow_pickle, dtype=dtype)
    elif path.is_file():
        base = _load_single_file(path, allow_pickle=allow_pickle, dtype=dtype, config=config,
                                 original_config=original_config)
    elif _looks_like_hub_id(text):
        base = _load_folder(_resolve_hub(text, download=download), allow_pickle=allow_pickle, dtype=dtype,
                            name=text)
    else:
        raise UsageError(f"base model '{text}' is not a folder, a file, or a hub id (owner/name)",
                         hint="pass a diffusers folder, a .safetensors checkpoint, or a hub id such as "
                              "stable-diffusion-v1-5/stable-diffusion-v1-5")
    if prediction_type is not None:
        base.prediction_type = prediction_type
        base.noise_scheduler.register_to_config(prediction_type=prediction_type)
        base.scheduler.register_to_config(prediction_type=prediction_type)
    for module in (base.unet, base.vae, *base.text_encoders):
        module.to(device)
    return base


@dataclass(frozen=True)
class BaseCheck:
    """What `check_base` found: the kind of source, where it is on disk, and its family."""

    kind: Literal["folder", "file", "hub"]
    path: Path
    family: Family

    @property
    def label(self) -> str:
        return FAMILY_LABELS[self.family]


def check_base(source: str | os.PathLike[str], *, allow_pickle: bool = False,
               config: str | os.PathLike[str] | None = None) -> BaseCheck:
    """Everything `load_base` would refuse, found without loading weights (what `train --dry-run` runs):
    the source exists and looks like a diffusers folder, a single checkpoint file (its header only) or a
    hub id already in models_cache/; pickles need `allow_pickle`; `config` must be a diffusers folder."""
    text = str(source)
    if not text:
        raise UsageError("no base model given",
                         hint="pass --base MODEL (diffusers folder, .safetensors file or hub id)")
    path = Path(text).expanduser()
    if config is not None and not (Path(config).expanduser() / "model_index.json").is_file():
        raise UsageError(f"--base-config {config} is not a diffusers folder (no model_index.json)",
                         hint="pass a diffusers folder of the base model's family (its config and tokenizer files)")
    if path.is_dir():
        return BaseCheck("folder", path, _folder_family(path, allow_pickle=allow_pickle)[0])
    if path.is_file():
        return BaseCheck("file", path, _single_file_family(path, allow_pickle=allow_pickle))
    if _looks_like_hub_id(text):
        folder = hub_folder(text)
        if not ((folder / "model_index.json").is_file() and _has_denoiser(folder)):
            raise ModelNotAvailable(f"base model '{text}' is no local path, and as a hub id it is not downloaded "
                                    f"yet (not in {folder})",
                                    hint="a real run downloads it once on a connected machine; or pass a local "
                                         "diffusers folder or .safetensors file with --base")
        return BaseCheck("hub", folder, _folder_family(folder, allow_pickle=allow_pickle)[0])
    raise UsageError(f"base model '{text}' does not exist: not a folder, a file, or a hub id (owner/name)",
                     hint="pass a diffusers folder, a .safetensors checkpoint, or a hub id such as "
                          "stable-diffusion-v1-5/stable-diffusion-v1-5")


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Library progress bars and the `torch_dtype` rename warning (kept for diffusers < 0.36) are
    noise inside our own progress display."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    loggers = (diffusers_logging, transformers_logging)
    verbosities = [logger.get_verbosity() for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        for logger in loggers:
            logger.disable_progress_bar()
            logger.set_verbosity_error()
        try:
            yield
        finally:
            for logger, verbosity in zip(loggers, verbosities):
                logger.set_verbosity(verbosity)
                logger.enable_progress_bar()


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.endswith(SINGLE_FILE_SUFFIXES) and not text.startswith(".")


def _has_denoiser(folder: Path) -> bool:
    """A UNet, or SD3's transformer."""
    return any((folder / denoiser / "config.json").is_file() for denoiser in ("unet", "transformer"))


def hub_folder(repo_id: str) -> Path:
    """Where a hub model lives in models_cache/ (downloaded or not)."""
    return cache_dir() / "hub" / repo_id.replace("/", "--")


def _resolve_hub(repo_id: str, *, download: bool) -> Path:
    folder = hub_folder(repo_id)
    if (folder / "model_index.json").is_file() and _has_denoiser(folder):
        return folder
    hint = (f"run this once on a connected machine (it fills {folder}), or pass a local diffusers folder "
            f"or .safetensors file with --base")
    if not download:
        raise ModelNotAvailable(f"base model '{repo_id}' is not in {folder}", hint=hint)
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(repo_id, local_dir=folder, allow_patterns=list(HUB_PATTERNS))
    except Exception as exc:  # offline, unknown repo, gated repo: all mean "not available"
        raise ModelNotAvailable(f"base model '{repo_id}' is not in {folder} and could not be downloaded "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                                hint=hint) from exc
    if not _has_denoiser(folder):
        raise ModelMismatch(f"hub repo '{repo_id}' is not a diffusers Stable Diffusion model (no unet/config.json)",
                            hint="use a diffusers-format repo, or download its single .safetensors file and "
                                 "pass that path")
    return folder


def _folder_family(folder: Path, *, allow_pickle: bool) -> tuple[Family, bool]:
    """A diffusers folder's family and whether its UNet weights are safetensors; refuses what is not
    a Stable Diffusion folder, and pickle-only weights without `allow_pickle`."""
    denoiser = "transformer" if (folder / "transformer" / "config.json").is_file() else "unet"  # SD3: MMDiT
    unet_config_path = folder / denoiser / "config.json"
    for needed in (folder / "model_index.json", unet_config_path):
        if not needed.is_file():
            raise ModelMismatch(f"{folder} is not a diffusers Stable Diffusion folder (no "
                                f"{needed.relative_to(folder).as_posix()})",
                                hint="pass the folder that holds model_index.json, or a single .safetensors file")
    has_safetensors = any((folder / denoiser).glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        raise UsageError(f"{folder} holds only pickle (.bin) weights, which can run code when loaded",
                         hint="convert it to safetensors, or pass --allow-pickle if you trust its source "
                              "(then it is loaded with weights_only)")
    try:
        unet_config = json.loads(unet_config_path.read_text(encoding="utf-8"))
        return ("sd3" if denoiser == "transformer" else family_from_unet_config(unet_config)), has_safetensors
    except ValueError as exc:
        raise ModelMismatch(f"{unet_config_path} is not valid JSON ({exc})") from exc


def _load_folder(folder: Path, *, allow_pickle: bool, dtype: torch.dtype, name: str | None = None) -> BaseModel:
    family, has_safetensors = _folder_family(folder, allow_pickle=allow_pickle)
    with _quiet_loading():
        cls = pipeline_class_for(family)
    extra: dict[str, Any] = {} if family in ("sdxl", "sd3") else dict(safety_checker=None, feature_extractor=None,
                                                              requires_safety_checker=False)
    try:
        with _quiet_loading():
            pipe = cls.from_pretrained(folder, torch_dtype=dtype, use_safetensors=has_safetensors,
                                       local_files_only=True, **extra)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelMismatch(f"could not load the diffusers folder {folder}: {exc}",
                            hint="check that every component folder (unet, vae, text_encoder, tokenizer, "
                                 "scheduler) is complete") from exc
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    if family == "sd3":
        from train.sd3 import COMPONENTS as components
    fingerprints = {c: _folder_fingerprint(folder / c) for c in components if (folder / c).is_dir()}
    label = name or folder.name
    return _from_pipeline(pipe, family, label, fingerprints, source=str(folder))


def _checkpoint_keys(path: Path, *, allow_pickle: bool) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        except Exception as exc:
            raise ModelMismatch(f"{path} is not a readable safetensors file: {exc}") from exc
    if not allow_pickle:
        raise UsageError(f"{path.name} is a pickle checkpoint ({path.suffix}), which can run code when loaded",
                         hint="use a .safetensors version of the model, or pass --allow-pickle if you trust "
                              "its source (it is then loaded with torch.load(weights_only=True))")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise ModelMismatch(f"{path} could not be loaded with weights_only=True: {exc}",
                            hint="it may contain code objects; convert it to safetensors in a sandbox") from exc
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return list(state) if isinstance(state, dict) else []


def _single_file_family(path: Path, *, allow_pickle: bool) -> Family:
    """A single checkpoint file's family from its key names (the safetensors header; a pickle only
    with `allow_pickle`, memory-mapped with weights_only), refusing anything that is not one."""
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise UsageError(f"{path.name}: unknown model file type '{path.suffix}'",
                         hint="pass a .safetensors checkpoint or a diffusers folder")
    family = family_from_checkpoint_keys(_checkpoint_keys(path, allow_pickle=allow_pickle))
    if family is None:
        raise ModelMismatch(f"{path.name} is not an SD1/SD2/SDXL checkpoint (no text-encoder keys found)",
                            hint="a LoRA file or a bare UNet cannot be a base model; pass a full checkpoint")
    return family


def _load_single_file(path: Path, *, allow_pickle: bool, dtype: torch.dtype,
                      config: str | os.PathLike[str] | None,
                      original_config: str | os.PathLike[str] | None) -> BaseModel:
    family = _single_file_family(path, allow_pickle=allow_pickle)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    kwargs: dict[str, Any] = dict(torch_dtype=dtype, local_files_only=offline or config is not None)
    if config is not None:
        kwargs["config"] = str(config)
    if original_config is not None:
        kwargs["original_config"] = str(original_config)
    if family == "sd3" and config is not None:  # SD3.5 files often hold no text encoders (train.sd3)
        from train.sd3 import missing_text_encoders
        with _quiet_loading():
            kwargs.update(missing_text_encoders(_checkpoint_keys(path, allow_pickle=allow_pickle), config, dtype))
    if family not in ("sdxl", "sd3"):
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        with _quiet_loading():
            pipe = pipeline_class_for(family).from_single_file(str(path), **kwargs)
    except Exception as exc:  # diffusers raises OSError/ValueError/hub errors alike
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if config is not None:
            raise ModelMismatch(f"{path.name} could not be converted with the configs in {config} ({detail})",
                                hint=f"--base-config must be a diffusers folder of the same family "
                                     f"({FAMILY_LABELS[family]})") from exc
        raise ModelNotAvailable(
            f"{path.name} ({FAMILY_LABELS[family]}) needs the diffusers configs of its family to be "
            f"converted, and they could not be found ({detail})",
            hint="pass --base-config DIR (a diffusers folder of the same family, e.g. its config/tokenizer "
                 "files downloaded once), or run once online so diffusers caches them, or use a diffusers folder",
        ) from exc
    fingerprint = _file_fingerprint(path)[:16]
    ids = {c: fingerprint for c in ("unet", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")}
    return _from_pipeline(pipe, family, path.stem, ids, source=str(path))


def _from_pipeline(pipe: Any, family: Family, name: str, fingerprints: dict[str, str], *, source: str) -> BaseModel:
    from diffusers import DDPMScheduler

    if family == "sd3":  # the MMDiT in the unet slot, CLIP-L/G + T5, flow matching (train.sd3)
        from train.sd3 import pipeline_parts
        ids = _component_ids(name, fingerprints)
        digest = hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16]
        return BaseModel(**pipeline_parts(pipe, source), model_id=f"{name}-{digest}", source=source, component_ids=ids)
    family = family_from_unet_config(dict(pipe.unet.config))  # the loaded UNet is the final word
    text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    if any(m is None for m in (*text_encoders, *tokenizers, pipe.vae, pipe.unet)):
        raise ModelMismatch(f"{source} lacks a component ({FAMILY_LABELS[family]} needs unet, vae, text "
                            "encoder(s) and tokenizer(s))", hint="pass a complete model")
    prediction = prediction_type_from_scheduler_config(dict(pipe.scheduler.config))
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    ids = _component_ids(name, fingerprints)
    model_digest = hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16]
    for module in (pipe.unet, pipe.vae, *text_encoders):
        module.requires_grad_(False)
        module.eval()
    return BaseModel(
        family=family, prediction_type=prediction, unet=pipe.unet, vae=pipe.vae, text_encoders=text_encoders,
        tokenizers=tokenizers, noise_scheduler=noise_scheduler, scheduler=pipe.scheduler,
        model_id=f"{name}-{model_digest}", pipeline_class=type(pipe), source=source, component_ids=ids,
    )

