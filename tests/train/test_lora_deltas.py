"""The tools' reader: every kind of LoRA file becomes the ΔW its trained layers add, under kohya names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loras import random_network, single_thread, written  # noqa: F401  (autouse)
from train.export import base_components, kohya_name
from train.loratools.deltas import block_label, read_deltas


def trained_deltas(base) -> dict[str, torch.Tensor]:
    """kohya name → what each peft layer adds to its weight (its own get_delta_weight)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    deltas = {}
    for component, model in base_components(base).items():
        for path, module in model.named_modules():
            if isinstance(module, BaseTunerLayer) and "default" in getattr(module, "scaling", {}):
                path = path.removeprefix("base_model.model.")
                name = kohya_name(component, path, base.family, dict(base.unet.config))
                deltas[name] = module.get_delta_weight("default").detach().float()
    return deltas


@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
def test_each_module_reads_as_the_delta_its_layer_trained(tiny_sd15: Path, tmp_path: Path, algo: str) -> None:
    base = random_network(tiny_sd15, algo)
    deltas = read_deltas(written(base, tmp_path)[0])
    expected = trained_deltas(base)
    assert deltas.family == "sd1" and deltas.algos == {algo} and set(deltas.modules) == set(expected)
    assert any(m.is_conv for m in deltas.modules.values())
    for name, module in deltas.modules.items():
        assert module.shape == tuple(expected[name].shape), name
        torch.testing.assert_close(module.delta(), expected[name], rtol=1e-4, atol=1e-5)


def test_sdxl_diffusers_file_reads_under_the_kohya_files_names(tiny_sdxl: Path, tmp_path: Path) -> None:
    base = random_network(tiny_sdxl)
    kohya, diffusers = written(base, tmp_path)
    from_kohya = read_deltas(kohya)
    from_diffusers = read_deltas(diffusers, unet_config=dict(base.unet.config))
    assert from_diffusers.format == "diffusers" and from_diffusers.family == "sdxl"
    assert set(from_diffusers.modules) == set(from_kohya.modules)
    assert {m.component for m in from_kohya.modules.values()} == {"unet", "text_encoder", "text_encoder_2"}
    for name, module in from_kohya.modules.items():
        other = from_diffusers.modules[name]
        assert other.path is not None and other.shape == module.shape
        torch.testing.assert_close(other.delta(), module.delta())
        up, down = module.factors()
        torch.testing.assert_close(up @ down, module.matrix())


def test_factors_of_a_plain_lora_fold_the_scale_into_up(tmp_path: Path) -> None:
    up, down = torch.randn(8, 2), torch.randn(2, 4)
    path = tmp_path / "x.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": up,
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": down,
               "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0)}, str(path))
    module = read_deltas(path).modules["lora_te_text_model_encoder_layers_0_mlp_fc1"]
    assert (module.rank, module.alpha, module.scale, module.component) == (2, 1.0, 0.5, "text_encoder")
    torch.testing.assert_close(module.delta(), 0.5 * up @ down)
    torch.testing.assert_close(module.factors()[0], 0.5 * up)


def test_flattened_lycoris_convolutions_get_their_kernel_back(tmp_path: Path) -> None:
    """LyCORIS stores a non-Tucker LoHa conv as [r, in·k·k]; the weight's shape comes from the name."""
    r, out, inputs = 2, 8, 4
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    proj = "lora_unet_down_blocks_0_attentions_0_proj_in"
    tensors = {}
    for name, width in ((conv, inputs * 9), (proj, inputs)):
        tensors |= {f"{name}.hada_w1_a": torch.randn(out, r), f"{name}.hada_w1_b": torch.randn(r, width),
                    f"{name}.hada_w2_a": torch.randn(out, r), f"{name}.hada_w2_b": torch.randn(r, width),
                    f"{name}.alpha": torch.tensor(1.0)}
    path = tmp_path / "loha.safetensors"
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sd_v1"})
    modules = read_deltas(path).modules
    assert modules[conv].shape == (out, inputs, 3, 3) and modules[conv].is_conv
    assert modules[proj].shape == (out, inputs, 1, 1) and not modules[proj].is_conv  # SD1: a 1×1 conv
    assert modules[conv].factors() is None and modules[conv].delta().shape == (out, inputs, 3, 3)


def test_bundled_embeddings_dora_and_dylora_are_reported_not_lost(tmp_path: Path) -> None:
    name = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    embedding = torch.randn(2, 32)
    path = tmp_path / "x.safetensors"
    save_file({f"{name}.lora_up.weight": torch.randn(8, 4), f"{name}.lora_down.weight": torch.randn(4, 6),
               f"{name}.dora_scale": torch.rand(1, 6), "bundle_emb.sks.string_to_param.*": embedding},
              str(path), metadata={"ss_network_module": "networks.dylora", "ss_network_args": '{"unit": "2"}'})
    deltas = read_deltas(path)
    assert list(deltas.extras) == ["bundle_emb.sks.string_to_param.*"]
    assert torch.equal(deltas.extras["bundle_emb.sks.string_to_param.*"], embedding)
    assert deltas.dora_modules == [name] and deltas.modules[name].dora_axis == "input"
    assert deltas.dylora_unit == 2 and deltas.modules[name].alpha == 4.0  # no alpha stored: alpha = rank


@pytest.mark.parametrize(("name", "label"), [
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1", "TE1"), ("lora_te_text_model_x", "TE"),
    ("lora_unet_input_blocks_4_1_proj_in", "IN04"), ("lora_unet_output_blocks_11_0_in_layers_2", "OUT11"),
    ("lora_unet_middle_block_1_proj_out", "mid"), ("lora_unet_down_blocks_1_resnets_0_conv1", "down 1"),
    ("lora_unet_mid_block_attentions_0_proj_in", "mid"), ("lora_unet_conv_in", "other"),
])
def test_block_labels(name: str, label: str) -> None:
    assert block_label(name) == label
