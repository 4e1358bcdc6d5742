"""Where a tagger runs: onnxruntime (CPU or its GPU provider) or timm on torch, chosen once.

`onnxruntime` and `onnxruntime-gpu` conflict in one environment, so most installs have the CPU
build even on a CUDA machine. There the WD v3 taggers run on the torch that is already installed
(timm backend) instead of on the CPU. Asking torch about CUDA costs a second or more of import,
so it is asked only when the machine shows an NVIDIA/AMD driver and torch is a GPU build.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prep.errors import UsageError

Backend = Literal["auto", "onnx", "timm"]
Device = Literal["auto", "cpu", "cuda"]
BACKENDS: tuple[str, ...] = ("auto", "onnx", "timm")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
_DRIVER_MARKS = ("/proc/driver/nvidia/version", "/dev/nvidia0", "/dev/kfd")


@dataclass(frozen=True)
class Placement:
    """The chosen backend and device, and a note for the user when the choice is a fallback."""

    backend: Literal["onnx", "timm"]
    device: Literal["cpu", "cuda"]
    note: str | None = None


def torch_is_gpu_build() -> bool:
    """True when the installed torch ships CUDA/ROCm libraries (looked up on disk, not imported)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return any(lib.glob("libtorch_cuda*")) or any(lib.glob("libtorch_hip*")) or any(lib.glob("torch_cuda*.dll"))


def torch_cuda_available() -> bool:
    """torch.cuda.is_available(), imported only when a GPU driver and a GPU build of torch are there."""
    if not torch_is_gpu_build() or not any(Path(mark).exists() for mark in _DRIVER_MARKS):
        return False
    import torch

    return bool(torch.cuda.is_available())


def onnx_gpu_available() -> bool:
    from prep.tagging.wd14 import GPU_PROVIDERS

    import onnxruntime as ort

    return any(provider in ort.get_available_providers() for provider in GPU_PROVIDERS)


def place(backend: Backend, device: Device, *, has_onnx: bool, has_timm: bool, onnx_gpu: bool,
          torch_cuda: bool, timm_hint: str = "") -> Placement:
    """The backend and device for a WD tagger, from what was asked and what this machine has.

    auto prefers onnxruntime's GPU provider, then timm on CUDA (when the timm weights are here),
    then onnxruntime on the CPU. An explicit choice that cannot be met is a usage error.
    """
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be {', '.join(BACKENDS)}, not '{backend}'")
    if device not in DEVICES:
        raise UsageError(f"--device must be {', '.join(DEVICES)}, not '{device}'")
    if backend == "onnx" and not has_onnx or backend == "timm" and not has_timm:
        needed = "model.onnx" if backend == "onnx" else "config.json + model.safetensors"
        raise UsageError(f"--backend {backend} needs {needed} in the model folder", hint=timm_hint or None)
    if device == "cuda" and not (torch_cuda or onnx_gpu):
        raise UsageError("--device cuda: no CUDA GPU is visible to torch or onnxruntime",
                         hint="install the torch build for your CUDA, or pass --device cpu")
    if backend == "auto":
        backend = _auto_backend(device, has_onnx=has_onnx, has_timm=has_timm, onnx_gpu=onnx_gpu, torch_cuda=torch_cuda)
    if backend == "onnx":
        if device == "cuda" and not onnx_gpu:
            raise UsageError("--device cuda: this onnxruntime has no GPU provider"
                             + ("" if has_timm else " and the model's timm weights are not here"),
                             hint=timm_hint or "drop --backend onnx: the timm backend runs v3 taggers on torch's CUDA")
        on_gpu = device != "cpu" and onnx_gpu
        note = None
        if device == "auto" and not onnx_gpu and torch_cuda:
            note = "onnxruntime has no GPU provider and the timm weights are not here, so tagging runs on the CPU"
            note += f" ({timm_hint})" if timm_hint else ""
        return Placement("onnx", "cuda" if on_gpu else "cpu", note)
    if device == "cuda" and not torch_cuda:
        raise UsageError("--device cuda: torch sees no CUDA GPU (only onnxruntime does)",
                         hint="drop --backend timm to tag on onnxruntime's GPU provider")
    return Placement("timm", "cuda" if device != "cpu" and torch_cuda else "cpu")


def _auto_backend(device: Device, *, has_onnx: bool, has_timm: bool, onnx_gpu: bool,
                  torch_cuda: bool) -> Literal["onnx", "timm"]:
    if has_onnx and (device == "cpu" or onnx_gpu):
        return "onnx"
    if has_timm and torch_cuda and device != "cpu":
        return "timm"
    if has_onnx:
        return "onnx"
    if has_timm:
        return "timm"
    raise UsageError("the model folder holds neither model.onnx nor config.json + model.safetensors")


def torch_device(device: Device) -> Literal["cpu", "cuda"]:
    """Where a torch captioner (BLIP, a VLM) runs: `--device` honoured, auto = CUDA when torch sees one."""
    if device not in DEVICES:
        raise UsageError(f"--device must be {', '.join(DEVICES)}, not '{device}'")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UsageError("--device cuda: torch sees no CUDA GPU for the captioner",
                         hint="install the torch build for your CUDA, or pass --device cpu")
    return "cpu"
