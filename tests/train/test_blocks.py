"""Per-block learning rates and weights: kohya's block names, sd-scripts' and the extension's lists."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from prep.errors import UsageError
from train.blocks import (BlockWeights, block_of, kohya_lr_weights, lora_block_weights, parse_block_weights,
                          parse_lr_weight, training_param_groups)
from train.config import NetworkConfig, load_config
from train.model import load_base
from train.network import add_lora


@pytest.mark.parametrize(("text", "expected"), [
    ("1,0.5,,2", [1.0, 0.5, 0.0, 2.0]),
    ("0.25", [0.25]),
    ("zeros+0.5", [0.5] * 4),
    ("linear", [0, 1 / 3, 2 / 3, 1]),
    ("reverse_linear", [1, 2 / 3, 1 / 3, 0]),
    ("sine", [0, math.sin(math.pi / 6), math.sin(math.pi / 3), 1]),
    ("cosine", [1, math.sin(math.pi / 3), math.sin(math.pi / 6), 0]),
])
def test_lr_weight_lists_and_shapes_follow_sd_scripts(text: str, expected: list[float]) -> None:
    assert parse_lr_weight(text, where="w", length=4) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["wave", "cosine+x", "1,a,2"])
def test_bad_lr_weights_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_lr_weight(text, where="down_lr_weight", length=12)


def test_short_lists_pad_with_one_long_ones_are_cut_and_the_threshold_zeroes() -> None:
    weights, notes = kohya_lr_weights("0,0.05,0.5", "0.2", ",".join(["1"] * 14), "sd", zero_threshold=0.1)
    assert [weights(f"IN{i:02d}") for i in range(4)] == [0.0, 0.0, 0.5, 1.0]
    assert [weights(f"M0{k}") for k in range(3)] == [0.2, 0.2, 0.2]  # SD1/SD2: one weight, whole middle
    assert weights("OUT11") == 1.0 and len(notes) == 2
    sdxl, _ = kohya_lr_weights(None, "0.1,0.2,0.3", None, "sdxl")
    assert [sdxl(f"M0{k}") for k in range(3)] == [0.1, 0.2, 0.3] and sdxl("IN08") == 1.0


def test_extension_lists_name_their_blocks_and_zero_the_rest() -> None:
    weights = lora_block_weights("OUTALL", "sd")
    assert weights.text_encoder == 1.0 and weights("IN01") == 0.0 and weights("M01") == 0.0
    assert weights("OUT03") == 1.0 and weights("OUT00") == 0.0  # OUT00 is not in the 17-value layout
    xl = lora_block_weights("0.5,1,0,1,0,0.25,1,1,1,1,1,0", "sdxl")
    assert (xl.text_encoder, xl("IN04"), xl("IN05"), xl("M02"), xl("OUT05")) == (0.5, 1, 0, 0.25, 0)


@pytest.mark.parametrize(("text", "family", "message"), [
    ("1,0,0", "sd", "has 3 values"),
    ("ALL", "sdxl", "17 values, a layout for SD1/SD2"),
    (",".join(["1"] * 12), "sd", "12 values, a layout for SDXL"),
])
def test_block_weight_lists_must_fit_the_family(text: str, family: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        lora_block_weights(text, family)


def test_presets_are_the_extensions() -> None:
    assert parse_block_weights("ind") == [1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize(("family", "expected"), [
    ("sd15", {"IN01", "IN02", "M01", "OUT03", "OUT04", "OUT05"}),
    ("sdxl", {"IN04", "IN05", "M01", "OUT00", "OUT01", "OUT02"}),
])
def test_attention_layers_sit_in_kohyas_blocks(request: pytest.FixtureRequest, family: str, expected: set) -> None:
    unet = load_base(request.getfixturevalue(f"tiny_{family}")).unet
    config = dict(unet.config)
    blocks = {block_of(name, config) for name, _ in unet.named_modules() if name.endswith("attn1.to_q")}
    assert blocks == expected
    assert block_of("down_blocks.0.downsamplers.0.conv", config) == "IN03"


def test_zero_weight_blocks_get_no_lora_and_others_train_at_scaled_rates(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    config = load_config(None, {"rank": 4, "lr": 1e-3, "down_lr_weight": "zeros", "mid_lr_weight": "0.25",
                                "up_lr_weight": "1,1,1,0.5,0.5,0.5"})
    network = add_lora(base.unet, base.text_encoders, config.network)
    adapted = {n for n, _ in base.unet.named_modules() if n.endswith(".lora_A")}
    assert adapted and not any(n.startswith("down_blocks.") for n in adapted)
    groups, _ = training_param_groups(base.unet, network, config)
    assert [g["lr"] for g in groups] == pytest.approx([5e-4, 2.5e-4])
    assert sum(len(g["params"]) for g in groups) == len(network.unet_params)


def test_extension_layout_trains_the_text_encoder_at_base_weight(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    config = load_config(None, {"rank": 4, "lr": 1e-3, "text_encoder_lr": 1e-4, "train_text_encoder": True,
                                "block_lr_weights": "0.5,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"})
    network = add_lora(base.unet, base.text_encoders, config.network)
    assert {block_of(n.removesuffix(".lora_A"), dict(base.unet.config))
            for n, _ in base.unet.named_modules() if n.endswith(".lora_A")} == {"OUT03", "OUT04", "OUT05"}
    groups, _ = training_param_groups(base.unet, network, config)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 5e-5])


def test_block_weights_that_leave_nothing_are_an_error(tiny_sd15: Path) -> None:
    base = load_base(tiny_sd15)
    with pytest.raises(UsageError, match="0 for every block"):
        add_lora(base.unet, [], NetworkConfig(rank=4, block_lr_weights="NONE"))


def test_down_mid_up_and_one_list_are_exclusive() -> None:
    with pytest.raises(UsageError, match="not both"):
        load_config(None, {"block_lr_weights": "ALL", "up_lr_weight": "1"})


def test_toml_arrays_of_weights_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[network]\ndown_lr_weight = [0, 0.5, 1]\nup_lr_weight = \"cosine+0.1\"\n", encoding="utf-8")
    config = load_config(path)
    assert (config.network.down_lr_weight, config.network.up_lr_weight) == ("0,0.5,1", "cosine+0.1")


def test_block_weights_default_to_one() -> None:
    weights = BlockWeights({"IN01": 0.5})
    assert (weights("IN01"), weights("OUT01")) == (0.5, 1.0)


def test_generate_block_weights_scale_every_algorithm_by_block(tiny_sd15: Path) -> None:
    from peft import LoHaConfig

    from train.blocks import set_block_scales
    from train.network import add_adapter

    base = load_base(tiny_sd15)
    add_adapter(base.unet, LoHaConfig(r=2, alpha=2, target_modules=["to_q", "to_v"]))
    used = set_block_scales(base, lora_block_weights("OUTALL", "sd"), unet_scale=0.5, text_encoder_scale=1.0)
    assert used == {"IN01": 0.0, "IN02": 0.0, "M01": 0.0, "OUT03": 0.5, "OUT04": 0.5, "OUT05": 0.5}
    scales = {n: m.scaling["default"] for n, m in base.unet.named_modules() if hasattr(m, "hada_w1_a")}
    assert {s for n, s in scales.items() if n.startswith("up_blocks.1")} == {0.5}
    assert {s for n, s in scales.items() if not n.startswith("up_blocks.1")} == {0.0}
