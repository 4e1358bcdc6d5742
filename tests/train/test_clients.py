"""The WebUI and ComfyUI apply loraprep's files as loraprep trained them.

Each client's published weight merge is restated below in our own words (read from their public
code: the WebUI's extensions-builtin/Lora network*.py, ComfyUI's comfy/weight_adapter/*.py) and
applied to the tensors of a file loraprep wrote; the result must reproduce, within 1e-3, what the
trained layer computes. DoRA is the case that needs care: both clients divide by the norm of each
input column (ComfyUI does so for a [1, in] `dora_scale`), so loraprep trains and writes that
convention, while a row-norm [out, 1] file (peft's and LyCORIS ≥ 3.2's default) is misapplied.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from train.config import NetworkConfig
from train.export import describe_lora, kohya_name, save_lora
from train.model import BaseModel, load_base
from train.network import add_adapter, add_lora

TOLERANCE = 1e-3


# ---------------------------------------------------------------- the clients' merges, restated


def _up_down(t: dict[str, torch.Tensor], shape: torch.Size) -> tuple[torch.Tensor, int | None]:
    """The un-scaled ΔW of a module and the rank the client divides alpha by (None: no division)."""
    if "lora_up.weight" in t:
        return (t["lora_up.weight"].flatten(1) @ t["lora_down.weight"].flatten(1)).reshape(shape), \
            t["lora_down.weight"].shape[0]
    if "hada_w1_a" in t:
        return ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])).reshape(shape), \
            t["hada_w1_b"].shape[0]
    rank = None
    w1 = t.get("lokr_w1")
    if w1 is None:
        w1, rank = t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w1_b"].shape[0]
    w2 = t.get("lokr_w2")
    if w2 is None:
        w2, rank = t["lokr_w2_a"] @ t["lokr_w2_b"], t["lokr_w2_b"].shape[0]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2.contiguous()).reshape(shape), rank


def _scale(t: dict[str, torch.Tensor], rank: int | None) -> float:
    return float(t["alpha"]) / rank if "alpha" in t and rank is not None else 1.0


def comfyui_weight(weight: torch.Tensor, t: dict[str, torch.Tensor], strength: float = 1.0) -> torch.Tensor:
    """ComfyUI: W + strength·scale·ΔW; with a dora_scale, (W + scale·ΔW) times dora_scale over a norm —
    the row norm of the *original* W when dora_scale has one entry per output, else the column norm of
    W + scale·ΔW — then blended with W by strength."""
    diff, rank = _up_down(t, weight.shape)
    diff = diff * _scale(t, rank)
    if "dora_scale" not in t:
        return weight + strength * diff
    dora = t["dora_scale"]
    adapted = weight + diff
    if dora.shape[0] == weight.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))
    else:
        norm = adapted.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1).reshape(
            weight.shape[1], *[1] * (weight.dim() - 1)).transpose(0, 1)
    decomposed = adapted * (dora / (norm + torch.finfo(weight.dtype).eps))
    return weight + strength * (decomposed - weight)


def webui_weight(weight: torch.Tensor, t: dict[str, torch.Tensor], multiplier: float = 1.0) -> torch.Tensor:
    """The WebUI (1.10): updown = scale·ΔW; with a dora_scale, updown becomes (W + updown) times
    dora_scale over the column norm of W + updown, minus W; the layer gets W + multiplier·updown."""
    diff, rank = _up_down(t, weight.shape)
    updown = diff * _scale(t, rank)
    if "dora_scale" in t:
        merged = weight + updown
        norm = merged.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1, keepdim=True).reshape(
            weight.shape[1], *[1] * (weight.dim() - 1)).transpose(0, 1)
        updown = merged * (t["dora_scale"] / norm) - weight
    return weight + multiplier * updown


CLIENTS = {"ComfyUI": comfyui_weight, "WebUI": webui_weight}


# ---------------------------------------------------------------- what loraprep's layers compute


def adapted_layers(base: BaseModel) -> dict[str, torch.nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    components = dict(zip(("unet", "text_encoder", "text_encoder_2"), [base.unet, *base.text_encoders]))
    return {kohya_name(component, path, base.family, dict(base.unet.config)): module
            for component, model in components.items() for path, module in model.named_modules()
            if isinstance(module, BaseTunerLayer)}


def worst_difference(layer: torch.nn.Module, weight: torch.Tensor) -> float:
    """max |layer(x) − the base op with `weight`(x)| over a random input: how far a client's merged
    weight is from what the trained layer computes."""
    base = layer.get_base_layer()
    torch.manual_seed(0)
    if isinstance(base, torch.nn.Linear):
        x = torch.randn(3, base.in_features)
        theirs = F.linear(x, weight, base.bias)
    else:
        x = torch.randn(2, base.in_channels, 6, 6)
        theirs = F.conv2d(x, weight, base.bias, base.stride, base.padding, base.dilation, base.groups)
    with torch.no_grad():
        return float((layer(x) - theirs).abs().max())


def randomised(base: BaseModel, models: list[torch.nn.Module]) -> BaseModel:
    """Every trained tensor moved well away from its start (magnitudes by up to ±30 %)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for model in models:
            for name, param in model.named_parameters():
                if "lora_magnitude_vector" in name:
                    param.mul_(torch.empty_like(param).uniform_(0.7, 1.3))
                elif param.requires_grad or "lora_" in name or "hada_" in name or "lokr_" in name:
                    param.add_(torch.randn_like(param) * 0.3)
    return base


def trained(source: Path, **settings) -> BaseModel:
    base = load_base(source)
    add_lora(base.unet, base.text_encoders, NetworkConfig(**{"rank": 4, "alpha": 2, "conv_dim": 2, "conv_alpha": 1,
                                                             "train_text_encoder": True, **settings}))
    return randomised(base, [base.unet, *base.text_encoders])


def sample_of(layers: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Module]:
    """Two layers of each kind (UNet linear, UNet 3×3 conv, UNet 1×1 conv, each text encoder): every
    code path a client takes, at a fraction of the cost of all layers."""
    kinds: dict[tuple, list[str]] = {}
    for name, layer in layers.items():
        base = layer.get_base_layer()
        kind = (name.split("_")[1], type(base).__name__, getattr(base, "kernel_size", None))
        kinds.setdefault(kind, []).append(name)
    return {name: layers[name] for names in kinds.values() for name in names[:2]}


def client_differences(base: BaseModel, path: Path, client: str, strength: float) -> dict[str, float]:
    tensors = load_file(path)
    layers = adapted_layers(base)
    assert {k.partition(".")[0] for k in tensors} == set(layers)  # the file holds every layer, and only those
    differences = {}
    for name, layer in sample_of(layers).items():
        found = {k.partition(".")[2]: v for k, v in tensors.items() if k.partition(".")[0] == name}
        weight = layer.get_base_layer().weight.detach()
        differences[name] = worst_difference(layer, CLIENTS[client](weight, found, strength))
    return differences


def set_strength(base: BaseModel, strength: float) -> None:
    for layer in adapted_layers(base).values():
        layer.set_scale("default", strength)


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def written(tiny_sd15: Path, tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    cases = {("sd15", "dora"): (tiny_sd15, {"dora": True}), ("sdxl", "dora"): (tiny_sdxl, {"dora": True}),
             ("sd15", "lora"): (tiny_sd15, {}), ("sd15", "loha"): (tiny_sd15, {"algo": "loha"}),
             ("sd15", "lokr"): (tiny_sd15, {"algo": "lokr", "rank": 2, "factor": 4}),
             ("sd15", "lokr-full"): (tiny_sd15, {"algo": "lokr", "rank": 100000})}
    found = {}
    for key, (source, settings) in cases.items():
        base = trained(source, **settings)
        paths = save_lora(tmp_path_factory.mktemp("-".join(key)) / "net", unet=base.unet,
                          text_encoders=base.text_encoders, base=base, dtype=torch.float32)
        found[key] = (base, paths)
    return found


@pytest.mark.parametrize("client", ["ComfyUI", "WebUI"])
@pytest.mark.parametrize("case", [("sd15", "dora"), ("sdxl", "dora"), ("sd15", "lora"), ("sd15", "loha"),
                                  ("sd15", "lokr"), ("sd15", "lokr-full")])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_client_reproduces_each_kind_of_trained_layer(written: dict, case: tuple[str, str], client: str,
                                               strength: float) -> None:
    base, paths = written[case]
    set_strength(base, strength)
    try:
        differences = client_differences(base, paths[0], client, strength)
    finally:
        set_strength(base, 1.0)
    worst = max(differences, key=differences.get)
    assert differences[worst] < TOLERANCE, f"{client} differs by {differences[worst]:.2e} at {worst}"


def test_trained_dora_is_written_per_input_column_without_a_diffusers_file(written: dict) -> None:
    base, paths = written[("sd15", "dora")]
    assert [p.name for p in paths] == ["net.safetensors"]  # diffusers would misapply it: none written
    tensors = load_file(paths[0])
    to_q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert list(tensors[f"{to_q}.dora_scale"].shape) == [1, 32]
    assert list(tensors[f"{conv}.dora_scale"].shape) == [1, 32, 1, 1]
    info = describe_lora(paths[0])
    assert (info.dora, info.dora_axis) == (True, "input")
    assert info.clients["WebUI / Forge"] == info.clients["ComfyUI"] == "exact"
    assert info.clients["sd-scripts"].startswith("no: ignores dora_scale")
    assert info.clients["diffusers"].startswith("no: drops dora_scale")


def test_row_norm_dora_files_are_what_the_clients_misapply(tiny_sd15: Path, tmp_path: Path) -> None:
    """Why loraprep changed convention: a peft-style [out, 1] file is off in both clients, and lora info says so."""
    from peft import LoraConfig

    base = load_base(tiny_sd15)
    add_adapter(base.unet, LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                      use_dora=True))
    randomised(base, [base.unet])
    kohya, diffusers = save_lora(tmp_path / "rows", unet=base.unet, base=base, dtype=torch.float32)
    worst = {client: max(client_differences(base, kohya, client, 1.0).values()) for client in CLIENTS}
    assert worst["WebUI"] > 0.05 and worst["ComfyUI"] > TOLERANCE
    info = describe_lora(kohya)
    assert info.dora_axis == "output"
    assert info.clients["ComfyUI"].startswith("approximate") and info.clients["WebUI / Forge"].startswith("no")
    assert describe_lora(diffusers).clients["diffusers"] == "exact"
