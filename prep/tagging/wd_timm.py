"""WD v3 taggers on torch through timm: GPU tagging with the torch already installed.

SmilingWolf's v3 repositories ship, beside model.onnx, the timm weights they were trained as
(`config.json` naming the timm architecture and its arguments, `model.safetensors`). The network
takes NCHW BGR normalised by the config's mean/std and returns logits; `TimmScorer` wraps it so it
takes exactly what the ONNX graph takes ([N, S, S, 3] float32 BGR 0-255) and returns sigmoid
probabilities, so the two paths share preprocessing, thresholds and tests.

timm imports torchvision at import time for one layer class WD models never use
(`FrozenBatchNorm2d`). Where no working torchvision is installed (CPU-only torch has no companion
wheel on PyPI), `import_timm` lends timm a stand-in for that one name while it imports, and removes
it again, so nothing else in the process sees a torchvision.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from prep.errors import LoraprepError, ModelMismatch, UsageError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TIMM_FILES = (CONFIG_FILE, WEIGHTS_FILE)
INSTALL_HINT = ("install timm (`pip install 'loraprep[timm]'`; with CPU-only torch: "
                "`pip install --no-deps timm pyyaml`)")


def has_timm_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in TIMM_FILES)


def torchvision_works() -> bool:
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision.ops.misc  # noqa: F401
    except Exception:  # a wheel built for another torch fails in its C++ ops registration
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_timm() -> Any:
    """`import timm`, lending it a torchvision stand-in when none works (see the module docstring)."""
    if "timm" in sys.modules:
        return sys.modules["timm"]
    try:
        import torch
    except ImportError as exc:
        raise UsageError("the timm backend needs torch, which is not installed", hint=INSTALL_HINT) from exc
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        raise UsageError("the timm backend needs the timm package, which is not installed", hint=INSTALL_HINT)
    if torchvision_works():
        import timm
        return timm
    finder = _StandInFinder(_frozen_batch_norm(torch))
    sys.meta_path.insert(0, finder)
    try:
        import timm
    finally:
        sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    return timm


class _Missing(type):
    """A torchvision name timm binds at import time but WD models never call: any attribute of it is
    another such name, and using one says what is missing."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Missing(name, (), {})

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise UsageError(f"torchvision's {cls.__name__} is needed here and torchvision is not installed")


class _StandInModule(types.ModuleType):
    def __init__(self, name: str, known: dict[str, Any]) -> None:
        super().__init__(name)
        self.__path__: list[str] = []  # a package: its submodules are stand-ins too
        self._known = known

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._known.get(name) or _Missing(name, (), {})


class _StandInFinder:
    """Serves every `torchvision…` import with a `_StandInModule` while timm imports."""

    def __init__(self, frozen_batch_norm: Any) -> None:
        self.known = {"FrozenBatchNorm2d": frozen_batch_norm}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        import importlib.machinery

        if fullname != "torchvision" and not fullname.startswith("torchvision."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: Any) -> types.ModuleType:
        return _StandInModule(spec.name, self.known)

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _frozen_batch_norm(torch: Any) -> Any:
    """torchvision's FrozenBatchNorm2d (statistics and affine parameters as buffers), the one class
    timm binds by name; WD v3 networks do not use it."""

    class FrozenBatchNorm2d(torch.nn.Module):
        def __init__(self, num_features: int, eps: float = 1e-5) -> None:
            super().__init__()
            self.eps = eps
            for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
                self.register_buffer(name, torch.full((num_features,), value))

        def forward(self, x: Any) -> Any:
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale[None, :, None, None] + shift[None, :, None, None]

    return FrozenBatchNorm2d


def read_config(folder: Path) -> dict[str, Any]:
    """config.json as timm's hub format writes it; ModelMismatch when it is not one."""
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelMismatch(f"{path} is not a readable timm config: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ModelMismatch(f"{path} names no timm architecture (a WD v3 repository's config.json does)")
    return config


class TimmScorer:
    """A WD v3 timm model on `device` (cuda: bf16 where supported, else fp16; cpu: fp32)."""

    fixed_batch: int | None = None

    def __init__(self, folder: Path, device: str = "cpu") -> None:
        import torch

        if not has_timm_files(folder):
            raise ModelMismatch(f"{folder} has no timm weights ({', '.join(TIMM_FILES)})",
                                hint="WD v3 repositories ship them; e.g. `loraprep models pull wd-vit-tagger-v3-timm`")
        config = read_config(folder)
        timm = import_timm()
        pretrained = config.get("pretrained_cfg", {})
        mean, std = pretrained.get("mean", (0.5, 0.5, 0.5)), pretrained.get("std", (0.5, 0.5, 0.5))
        self.input_size = int(pretrained.get("input_size", (3, 448, 448))[-1])
        try:
            network = timm.create_model(f"local-dir:{folder}", pretrained=False)
            from safetensors.torch import load_file

            network.load_state_dict(load_file(folder / WEIGHTS_FILE))
        except LoraprepError:
            raise
        except Exception as exc:  # timm and safetensors raise untyped errors (TypeError, SafetensorError) for bad files
            raise ModelMismatch(f"{folder}: timm cannot build {config['architecture']} from these weights: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        self.device = torch.device(device)
        self.dtype = torch.float32
        if self.device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.network = network.eval().to(self.device, self.dtype)
        # (x / 255 - mean) / std as one multiply-add, in fp32 before the cast
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.scale = 1 / (255 * std_t)
        self.shift = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) / std_t
        self._classes = int(getattr(network, "num_classes", 0)) or None
        self.provider = f"timm on {self.device.type}" + (f" ({str(self.dtype).removeprefix('torch.')})"
                                                         if self.device.type == "cuda" else "")

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def output_count(self) -> int | None:
        return self._classes

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            x = (pixels.permute(0, 3, 1, 2) * self.scale - self.shift).to(self.dtype)  # BGR, as trained
            return torch.sigmoid(self.network(x).float()).cpu().numpy()
