"""`train --base-weights F[:W]` (sd-scripts' base_weights / base_weights_multiplier): LoRAs merged
into the base before training, from flags, loraprep TOML and sd-scripts TOML alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli
from loras import lora_file
from train.config import TrainConfig, load_config
from train.loratools.deltas import read_deltas
from train.loratools.layout import open_base
from train.prepare import load_model
from trainsets import make_dataset


@pytest.mark.parametrize("text, expected", [
    ('[model]\nbase_weights = ["a.safetensors:0.5"]\n', ("a.safetensors:0.5",)),
    ('base_weights = ["a.safetensors", "b.safetensors:-1"]\n', ("a.safetensors", "b.safetensors:-1")),
    ('network_dim = 4\nbase_weights = ["a.safetensors", "b.safetensors"]\nbase_weights_multiplier = [0.5]\n',
     ("a.safetensors:0.5", "b.safetensors:1")),
])
def test_base_weights_read_from_either_toml(tmp_path: Path, text: str, expected: tuple[str, ...]) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    assert load_config(path).model.base_weights == expected
    assert load_config(path, {"base_weights": None}).model.base_weights == expected


def test_base_weights_change_the_starting_weights(tiny_sd15: Path, tmp_path: Path) -> None:
    lora = lora_file(tiny_sd15, tmp_path, seed=7)
    plain = load_model(TrainConfig().replace(base=str(tiny_sd15)), "cpu")
    merged = load_model(TrainConfig().replace(base=str(tiny_sd15), base_weights=[f"{lora}:-0.5"]), "cpu")
    old = open_base(tiny_sd15)
    modules = read_deltas(lora).modules
    name = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v"
    expected = old.weight(old.slots[name]) - 0.5 * modules[name].delta()
    actual = merged.unet.up_blocks[1].attentions[0].transformer_blocks[0].attn2.to_v.weight
    torch.testing.assert_close(actual, expected)
    assert torch.equal(merged.vae.decoder.conv_in.weight, plain.vae.decoder.conv_in.weight)
    assert any(m.component == "text_encoder" for m in modules.values())
    assert merged.component_ids["text_encoder"] != plain.component_ids["text_encoder"]  # no stale TE cache
    assert merged.component_ids["vae"] == plain.component_ids["vae"]  # latents still reusable


def test_base_weights_for_another_family_are_refused_before_training(tiny_sd15: Path, tiny_sdxl: Path,
                                                                    tmp_path: Path) -> None:
    lora = lora_file(tiny_sdxl, tmp_path, seed=1)
    with pytest.raises(Exception, match="SDXL LoRA but the base is SD 1.x"):
        load_model(TrainConfig().replace(base=str(tiny_sd15), base_weights=[str(lora)]), "cpu")


@pytest.mark.parametrize("spec, message", [("missing.safetensors", "does not exist"),
                                           ("a.safetensors:heavy", "not a number")])
def test_dry_run_checks_base_weights(testdata: Path, tiny_sd15: Path, tmp_path: Path, spec: str, message: str) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    result = CliRunner().invoke(cli.app, ["train", str(manifest), "--base", str(tiny_sd15), "--base-weights",
                                          str(tmp_path / spec), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_base_weights_from_the_config_survive_a_command_line_without_them(testdata: Path, tiny_sd15: Path,
                                                                         tmp_path: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    config = tmp_path / "c.toml"
    config.write_text(f'base_weights = ["{tmp_path / "gone.safetensors"}:0.3"]\n', encoding="utf-8")
    result = CliRunner().invoke(cli.app, ["train", str(manifest), "--base", str(tiny_sd15), "--config", str(config),
                                          "--dry-run"])
    assert result.exit_code == 2 and "gone.safetensors does not exist" in result.output, result.output


@pytest.mark.slow
def test_training_runs_from_the_merged_base(testdata: Path, tiny_sd15: Path, tmp_path: Path) -> None:
    import math

    from train.loop import train

    lora = lora_file(tiny_sd15, tmp_path / "loras", seed=9)
    manifest = make_dataset(testdata, tmp_path / "ds")
    config = load_config(None, {"base": str(tiny_sd15), "base_weights": [f"{lora}:0.5"], "max_steps": 2,
                                "batch_size": 2, "rank": 4, "output_dir": str(tmp_path / "out")})
    result = train(manifest, config)
    assert result.steps == 2 and math.isfinite(result.final_loss)


def test_an_ia3_base_weight_scales_the_starting_weights(tiny_sd15: Path, tmp_path: Path) -> None:
    ia3 = lora_file(tiny_sd15, tmp_path, "ia3", seed=8)
    merged = load_model(TrainConfig().replace(base=str(tiny_sd15), base_weights=[f"{ia3}:0.5"]), "cpu")
    name = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v"
    module, old = read_deltas(ia3).modules[name], open_base(tiny_sd15)
    weight = old.weight(old.slots[name]).float()
    vector = module.weights.tensors["weight"].float()
    path = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    torch.testing.assert_close(merged.unet.state_dict()[path].float(), weight * (1 + 0.5 * vector)[:, None])
