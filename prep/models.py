"""Model registry: what each model is, where it comes from, and where it lives on disk.

Only this module knows where weights come from. Everything else asks `resolve(name)` for a local
folder. The hub is consulted only by `pull` (explicitly, or by `resolve(..., download=True)`);
offline, a missing model is a `ModelNotAvailable` error that says how to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from prep.errors import ModelNotAvailable, UsageError

CACHE_ENV = "LORAPREP_MODELS"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "face-detector", "tagger", "captioner", "segmenter", ...
    repo_id: str
    revision: str
    files: tuple[str, ...]
    licence: str
    description: str
    # local file name -> file name in the repo, where they differ
    renames: dict[str, str] = field(default_factory=dict)

    def repo_file(self, local_name: str) -> str:
        return self.renames.get(local_name, local_name)


# Revisions are pinned so a dataset tagged today is tagged the same way next year.
REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


register(ModelSpec(
    name="yunet",
    kind="face-detector",
    repo_id="opencv/face_detection_yunet",
    revision="main",
    files=("face_detection_yunet.onnx",),
    renames={"face_detection_yunet.onnx": "face_detection_yunet_2023mar.onnx"},
    licence="MIT (OpenCV model zoo)",
    description="OpenCV YuNet face detector (photos; finds many anime faces too)",
))

# --- face detectors and segmenters (crop/clean) ---

# --- taggers and captioners (tag) ---


def cache_dir() -> Path:
    """`$LORAPREP_MODELS`, else the checkout's models_cache/, else ~/.cache/loraprep/models."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent / "models_cache"
    if checkout.is_dir():
        return checkout
    return Path.home() / ".cache" / "loraprep" / "models"


def spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UsageError(f"unknown model '{name}'", hint=f"known models: {known} (`loraprep models list`)") from None


def model_path(name: str) -> Path:
    """The folder where model `name` lives (whether or not it has been pulled)."""
    return cache_dir() / name


def is_available(name: str) -> bool:
    folder = model_path(name)
    return all((folder / f).is_file() for f in spec(name).files)


def _missing_error(model: ModelSpec, reason: str) -> ModelNotAvailable:
    folder = model_path(model.name)
    files = ", ".join(model.files)
    return ModelNotAvailable(
        f"model '{model.name}' is not in {folder} ({reason})",
        hint=(f"run `loraprep models pull {model.name}` on a connected machine, or copy {files} "
              f"from https://huggingface.co/{model.repo_id} into {folder}"),
    )


def resolve(name: str, *, download: bool = False) -> Path:
    """Local folder holding every file of model `name`; downloads only when `download` is true."""
    model = spec(name)
    if is_available(name):
        return model_path(name)
    if not download:
        raise _missing_error(model, "not downloaded yet")
    return pull(name)


def pull(name: str) -> Path:
    """Download model `name` at its pinned revision into the cache (idempotent)."""
    model = spec(name)
    folder = model_path(name)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        from huggingface_hub import hf_hub_download
        for local_name in model.files:
            if (folder / local_name).is_file():
                continue
            downloaded = Path(hf_hub_download(model.repo_id, model.repo_file(local_name),
                                              revision=model.revision, local_dir=folder))
            if downloaded.name != local_name:
                os.replace(downloaded, folder / local_name)
    except Exception as exc:  # network errors come in many types; all mean the same here
        raise _missing_error(model, f"download failed: {type(exc).__name__}: {exc}") from exc
    return folder
