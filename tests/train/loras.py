"""LoRA files for the `lora` tool tests: networks built the way training builds them (any algorithm,
LoCon convs, text encoders), every factor random so each module has a real ΔW, written by save_lora."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.config import NetworkConfig
from train.export import save_lora
from train.model import BaseModel, load_base
from train.network import add_lora


def random_network(source: Path, algo: str = "lora", *, seed: int = 0, **settings) -> BaseModel:
    """The base at `source` with a network whose factors are all drawn at random (no zero ΔW)."""
    base = load_base(source)
    torch.manual_seed(seed)
    config = dict(algo=algo, rank=4, alpha=2.0, conv_dim=2, conv_alpha=1.0, train_text_encoder=True)
    if algo == "lokr":
        config.update(rank=2, factor=4)
    add_lora(base.unet, base.text_encoders, NetworkConfig(**{**config, **settings}))
    with torch.no_grad():
        for model in (base.unet, *base.text_encoders):
            for param in model.parameters():
                if param.requires_grad:
                    param.normal_(0, 0.3)
    return base


def written(base: BaseModel, folder: Path, name: str = "lora", **metadata) -> tuple[Path, ...]:
    """The network's kohya file (and diffusers file when diffusers loads it), in float32."""
    folder.mkdir(parents=True, exist_ok=True)
    return save_lora(folder / name, unet=base.unet, text_encoders=base.text_encoders, base=base,
                     dtype=torch.float32, metadata={"title": name, **metadata})


def lora_file(source: Path, folder: Path, algo: str = "lora", *, seed: int = 0, name: str = "lora",
              **settings) -> Path:
    """A kohya-format file of a random network."""
    return written(random_network(source, algo, seed=seed, **settings), folder, name)[0]


def base_weights(source: Path) -> dict[str, torch.Tensor]:
    """kohya module name → the tiny base model's weight there."""
    from train.export import _module_names, base_components

    base = load_base(source)
    models = base_components(base)
    return {name: dict(models[component].named_modules())[path].weight.detach()
            for name, (component, path) in _module_names(base).items()}


def grouped(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """kohya module name → its tensors by suffix, as the clients read a file."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(path).items():
        name, _, suffix = key.partition(".")
        modules.setdefault(name, {})[suffix] = tensor.float()
    return modules


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Many tiny SVDs: on a shared CPU one thread is ~50× faster than threads spinning against each
    other (import this fixture into a test module to use it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
