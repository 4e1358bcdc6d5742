"""`loraprep generate` and `loraprep lora info` through the CLI, on the tiny pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import cli
from train.network import add_adapter
from train.export import save_lora
from train.model import load_base

FAST = ["--width", "64", "--height", "64", "--steps", "2", "--device", "cpu"]


def _lora(source: Path, out: Path) -> tuple[Path, Path]:
    from peft import LoraConfig

    base = load_base(source)
    torch.manual_seed(0)
    add_adapter(base.unet, LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in base.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    return save_lora(out, unet=base.unet, base=base, metadata={"trigger": "sks", "title": "cli"})


@pytest.fixture(scope="module")
def sd15_lora(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _lora(tiny_sd15, tmp_path_factory.mktemp("cli-lora") / "sd15")


@pytest.fixture(scope="module")
def sdxl_lora(tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _lora(tiny_sdxl, tmp_path_factory.mktemp("cli-lora-xl") / "sdxl")


def test_generate_writes_count_images(tiny_sd15: Path, sd15_lora: tuple[Path, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["generate", "a photo of sks", "--base", str(tiny_sd15), "--lora",
                                          str(sd15_lora[0]), "--scale", "0.8", "--count", "2",
                                          "--out", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "out").glob("*.png"))
    assert [f.name for f in files] == ["image-000.png", "image-001.png"]
    with Image.open(files[0]) as image:
        assert image.size == (64, 64)


def test_generate_to_a_png_path_writes_that_file(tiny_sd15: Path, tmp_path: Path) -> None:
    target = tmp_path / "one.png"
    result = CliRunner().invoke(cli.app, ["generate", "cat", "--base", str(tiny_sd15), "--out", str(target), *FAST])
    assert result.exit_code == 0, result.output
    assert target.is_file()


def test_generate_refuses_a_lora_of_another_family(tiny_sd15: Path, sdxl_lora: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["generate", "cat", "--base", str(tiny_sd15), "--lora", str(sdxl_lora[0]),
                                          "--out", str(tmp_path), *FAST])
    assert result.exit_code == 1
    assert "SDXL LoRA but the base model is SD 1.x" in result.output
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(("args", "code"), [(["--steps", "0"], 2), (["--device", "cuda:99"], 2)])
def test_generate_bad_options_are_usage_errors(tiny_sd15: Path, tmp_path: Path, args: list[str], code: int) -> None:
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present, so cuda is a valid device here")
    result = CliRunner().invoke(cli.app, ["generate", "cat", "--base", str(tiny_sd15), "--out", str(tmp_path), *args])
    assert result.exit_code == code, result.output


def test_generate_offline_hub_id_says_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["generate", "cat", "--base", "nobody/no-such-model", "--out",
                                          str(tmp_path), *FAST])
    assert result.exit_code == 1
    assert "hint:" in result.output and "connected machine" in result.output


@pytest.mark.parametrize(("index", "fmt"), [(0, "kohya"), (1, "diffusers")])
def test_lora_info_json_reports_format_family_rank_alpha(sd15_lora: tuple[Path, Path], index: int, fmt: str) -> None:
    result = CliRunner().invoke(cli.app, ["lora", "info", str(sd15_lora[index]), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["format"], info["family"], info["ranks"], info["alphas"]) == (fmt, "sd1", {"4": 48}, {"2": 48})
    assert info["metadata"]["modelspec.trigger_phrase"] == "sks"


def test_lora_info_table_lists_keys(sd15_lora: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(cli.app, ["lora", "info", str(sd15_lora[0]), "--keys"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in result.output
    assert "ss_network_dim" in result.output


def test_lora_info_on_a_non_lora_file_fails_with_a_message(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"conv_in.weight": torch.zeros(2)}, path)
    result = CliRunner().invoke(cli.app, ["lora", "info", str(path)])
    assert result.exit_code == 1
    assert "not a LoRA" in result.output


def _image(tiny_sd15: Path, lora: Path | None, strengths) -> np.ndarray:
    from train.sample import GenerateOptions, generate

    options = GenerateOptions(width=64, height=64, steps=2, seed=5)
    return np.asarray(generate(load_base(tiny_sd15), lora, strengths, "sks", options)[0], dtype=np.int16)


def _cells(grid: np.ndarray, rows: int, columns: int, side: int = 64) -> list[np.ndarray]:
    """The grid's images, row by row (the labels sit above and to the left)."""
    top, left = grid.shape[0] - rows * side, grid.shape[1] - columns * side
    return [grid[top + r * side:top + (r + 1) * side, left + c * side:left + (c + 1) * side]
            for r in range(rows) for c in range(columns)]


def test_scale_list_renders_one_labelled_grid_of_the_single_scale_images(tiny_sd15: Path, sd15_lora: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["generate", "sks", "--base", str(tiny_sd15), "--lora", str(sd15_lora[0]),
                                          "--scale", "0,1", "--seed", "5", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.glob("*.png")] == ["grid-000.png"]
    with Image.open(tmp_path / "grid-000.png") as image:
        grid = np.asarray(image.convert("RGB"), dtype=np.int16)
    base_cell, full_cell = _cells(grid, 1, 2)
    assert np.array_equal(base_cell, _image(tiny_sd15, None, 1.0))
    assert np.array_equal(full_cell, _image(tiny_sd15, sd15_lora[0], 1.0))
    assert not np.array_equal(base_cell, full_cell)


def test_unet_by_text_encoder_grid_has_a_row_per_text_weight(tiny_sdxl: Path, tmp_path: Path) -> None:
    from peft import LoraConfig

    from train.sample import generate, strengths

    base = load_base(tiny_sdxl)
    torch.manual_seed(0)
    add_adapter(base.unet, LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]))
    add_adapter(base.text_encoders[0], LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for model in (base.unet, base.text_encoders[0]):
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
    lora = save_lora(tmp_path / "xl", unet=base.unet, text_encoders=base.text_encoders, base=base)[0]
    plan = strengths(1.0, "0,1", "0,1")
    from train.sample import GenerateOptions

    grid = generate(load_base(tiny_sdxl), lora, plan, "sks", GenerateOptions(width=64, height=64, steps=2, seed=5))
    assert len(grid) == 1
    cells = _cells(np.asarray(grid[0], dtype=np.int16), 2, 2)
    plain = np.asarray(generate(load_base(tiny_sdxl), None, 1.0, "sks",
                                GenerateOptions(width=64, height=64, steps=2, seed=5))[0], dtype=np.int16)
    assert np.array_equal(cells[0], plain)  # UNet 0, text encoder 0: the base model
    assert len({c.tobytes() for c in cells}) == 4  # each part changes the image on its own


def test_block_weights_act_like_a_lora_without_the_zeroed_blocks(tiny_sd15: Path, sd15_lora: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from train.sample import strengths

    tensors = load_file(str(sd15_lora[0]))
    only_up = {k: v for k, v in tensors.items() if k.startswith("lora_unet_up_blocks_")}
    assert 0 < len(only_up) < len(tensors)
    save_file(only_up, str(tmp_path / "up.safetensors"))
    weighted = _image(tiny_sd15, sd15_lora[0], strengths(1.0, block_weights="OUTALL"))
    assert np.array_equal(weighted, _image(tiny_sd15, tmp_path / "up.safetensors", 1.0))


@pytest.mark.parametrize(("args", "message"), [
    (["--scale", "0,x"], "comma-separated list"),
    (["--scale", "0,1", "--unet-scale", "1"], "cannot be combined"),
    (["--block-weights", "1,0"], "has 2 values"),
    (["--sampler", "euler_b"], "unknown sampler"),
])
def test_generate_sweep_options_are_checked(tiny_sd15: Path, sd15_lora: tuple[Path, Path], tmp_path: Path,
                                            args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.app, ["generate", "cat", "--base", str(tiny_sd15), "--lora", str(sd15_lora[0]),
                                          "--out", str(tmp_path), *FAST, *args])
    assert result.exit_code != 0 and message in result.output
