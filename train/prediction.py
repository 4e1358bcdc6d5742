"""What a base model or LoRA predicts (epsilon or v), read from files without loading weights.

Why: v-prediction SDXL fine-tunes are shipped as single .safetensors files whose diffusers
conversion would default to epsilon; trained as epsilon they learn garbage. Such files say what they
are in their header: sd-scripts' `ss_v_parameterization`, the model spec's `modelspec.prediction_type`,
or marker tensors named `v_pred` / `ztsnr` (what ComfyUI reads). `train` then needs no flag, and
zero-terminal SNR with an epsilon model is refused before any weights load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TrainConfig = Any  # train.config.TrainConfig: config → samplers → model → this module, so not imported here

V_NAMES = ("v", "v_prediction", "v-prediction", "v_pred")


@dataclass(frozen=True)
class CheckpointHints:
    """What a single checkpoint file says about itself (None: it does not say)."""

    prediction_type: str | None = None
    zero_terminal_snr: bool = False


def _true(value: str | None) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def prediction_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """epsilon / v_prediction from sd-scripts' or the model spec's metadata keys, None when absent."""
    spec = metadata.get("modelspec.prediction_type")
    if spec is not None:
        return "v_prediction" if spec.strip().lower() in V_NAMES else "epsilon"
    if "ss_v_parameterization" in metadata:
        return "v_prediction" if _true(metadata["ss_v_parameterization"]) else "epsilon"
    return None


def _header(path: Path) -> tuple[dict[str, str], set[str]]:
    """A safetensors file's metadata and tensor names, from its JSON header alone."""
    with path.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if size <= 0 or size > 100_000_000:
            return {}, set()
        header = json.loads(handle.read(size))
    metadata = header.pop("__metadata__", None) or {}
    return {str(k): str(v) for k, v in metadata.items()}, set(header)


def checkpoint_hints(source: str | Path | None) -> CheckpointHints:
    """The hints of a single .safetensors base file; empty for folders, hub ids and unreadable files."""
    if not source:
        return CheckpointHints()
    path = Path(str(source)).expanduser()
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return CheckpointHints()
    try:
        metadata, keys = _header(path)
    except (OSError, ValueError):
        return CheckpointHints()
    prediction = prediction_from_metadata(metadata)
    if "v_pred" in keys:
        prediction = "v_prediction"
    ztsnr = "ztsnr" in keys or _true(metadata.get("ss_zero_terminal_snr"))
    return CheckpointHints(prediction, ztsnr)


def folder_prediction_type(folder: Path) -> str | None:
    """A diffusers folder's prediction type from its scheduler config (None when unreadable)."""
    try:
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("prediction_type", "epsilon") if isinstance(config, dict) else None
    return value if value in ("epsilon", "v_prediction") else None


def expected_prediction_type(config: TrainConfig) -> str | None:
    """The prediction type a run will train with, known before loading: the setting, else what the
    base file or folder says; None when only loading can tell."""
    if config.model.prediction_type != "auto":
        return config.model.prediction_type
    base = config.model.base
    if not base:
        return None
    path = Path(base).expanduser()
    if path.is_dir():
        return folder_prediction_type(path)
    if path.is_file():
        return checkpoint_hints(path).prediction_type
    from prep.models import cache_dir

    folder = cache_dir() / "hub" / base.replace("/", "--")  # train.model.hub_folder (which imports this module)
    return folder_prediction_type(folder) if folder.is_dir() else None


def check_run_prediction(config: TrainConfig) -> None:
    """Refuse, before any weights load, loss settings the base model's prediction type cannot train."""
    from train.losses import check_prediction

    prediction = expected_prediction_type(config)
    if prediction is not None:
        check_prediction(config.loss, prediction)


def lora_prediction(metadata: Mapping[str, str]) -> str | None:
    """What a LoRA file says it was trained to predict, with ' + zero terminal SNR' when it says so."""
    prediction = prediction_from_metadata(metadata)
    if prediction is not None and _true(metadata.get("ss_zero_terminal_snr")):
        return f"{prediction} + zero terminal SNR"
    return prediction
