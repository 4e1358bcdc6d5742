"""`--init-weights` builds the network from the file: its layers, ranks, alphas (sd-scripts' dim_from_weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.config import NetworkConfig
from train.export import save_lora
from train.from_weights import add_lora_from_file
from train.model import load_base
from train.network import add_adapter


@pytest.fixture(scope="module")
def resized_lora(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kohya file with two ranks (like a resized LoRA), alpha ≠ rank, and text-encoder layers."""
    from peft import LoraConfig

    base = load_base(tiny_sd15)
    torch.manual_seed(0)
    add_adapter(base.unet, LoraConfig(r=4, lora_alpha=3, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                      rank_pattern={"to_q": 2}, init_lora_weights=False))
    add_adapter(base.text_encoders[0], LoraConfig(r=2, lora_alpha=1, target_modules=["q_proj"],
                                                  init_lora_weights=False))
    return save_lora(tmp_path_factory.mktemp("resized") / "resized", unet=base.unet,
                     text_encoders=base.text_encoders, base=base)[0]


def _layers(model: torch.nn.Module) -> dict[str, tuple[int, float]]:
    return {n: (m.r["default"], m.scaling["default"]) for n, m in model.named_modules() if hasattr(m, "lora_A")
            and "default" in m.lora_A}


def test_the_file_decides_ranks_and_alphas_whatever_the_settings_say(tiny_sd15: Path, resized_lora: Path) -> None:
    base = load_base(tiny_sd15)
    network, notes = add_lora_from_file(base, resized_lora, NetworkConfig(rank=16, alpha=16, train_text_encoder=True))
    layers = _layers(base.unet)
    assert {v for n, v in layers.items() if n.endswith("to_q")} == {(2, 1.5)}
    assert {v for n, v in layers.items() if n.endswith("to_k")} == {(4, 0.75)}
    assert set(_layers(base.text_encoders[0]).values()) == {(2, 0.5)}
    assert network.unet_params and network.text_encoder_params
    assert any("unet from resized.safetensors: lora rank 4 alpha 3 (other ranks on" in n for n in notes)


def test_the_network_starts_at_the_files_weights(tiny_sd15: Path, resized_lora: Path) -> None:
    from safetensors.torch import load_file

    base = load_base(tiny_sd15)
    add_lora_from_file(base, resized_lora, NetworkConfig())
    tensors = load_file(str(resized_lora))
    layer = base.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    down = tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"]
    assert torch.equal(layer.lora_A["default"].weight, down.float())


def test_file_parts_that_do_not_train_are_left_out_and_said(tiny_sd15: Path, resized_lora: Path) -> None:
    base = load_base(tiny_sd15)
    network, notes = add_lora_from_file(base, resized_lora, NetworkConfig())
    assert not network.text_encoder_params and not _layers(base.text_encoders[0])
    assert any("text_encoder layers are left out" in n and "--train-text-encoder" in n for n in notes)


def test_parts_the_file_lacks_get_fresh_layers_from_the_settings(tiny_sd15: Path, resized_lora: Path,
                                                                tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(resized_lora), framework="pt") as handle:
        unet_only = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith("lora_unet_")}
        metadata = handle.metadata()
    save_file(unet_only, str(tmp_path / "unet.safetensors"), metadata=metadata)
    base = load_base(tiny_sd15)
    add_lora_from_file(base, tmp_path / "unet.safetensors", NetworkConfig(rank=8, train_text_encoder=True))
    assert {r for r, _ in _layers(base.unet).values()} == {2, 4}
    assert set(_layers(base.text_encoders[0]).values()) == {(8, 1.0)}
