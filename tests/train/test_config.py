"""TrainConfig: defaults, TOML sections and flat keys, CLI overrides, unknown keys and bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from prep.errors import UsageError
from train.config import FIELD_SECTION, TrainConfig, load_config


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_valid_and_train_attention_lora_at_1e4() -> None:
    config = load_config()
    assert (config.network.preset, config.network.rank, config.optimizer.lr) == ("attn", 16, 1e-4)


@pytest.mark.parametrize("text", ["[network]\nrank = 8\n[optimizer]\nlr = 2e-4\n", "rank = 8\nlr = 2e-4\n"])
def test_toml_sections_and_flat_keys_mean_the_same(tmp_path: Path, text: str) -> None:
    config = load_config(_toml(tmp_path, text))
    assert (config.network.rank, config.optimizer.lr) == (8, 2e-4)


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    config = load_config(_toml(tmp_path, "rank = 8\nflip = true\n"), {"rank": 4, "flip": None})
    assert (config.network.rank, config.data.flip) == (4, True)


@pytest.mark.parametrize(("text", "overrides", "word"), [
    ("[network]\nrnak = 8\n", {}, "network.rnak"),
    ("learning_rte = 1e-4\n", {}, "learning_rte"),
    ("[network]\nlr = 1e-4\n", {}, "network.lr"),
    ("", {"rnak": 3}, "rnak"),
])
def test_unknown_keys_are_errors(tmp_path: Path, text: str, overrides: dict, word: str) -> None:
    with pytest.raises(UsageError, match=word):
        load_config(_toml(tmp_path, text), overrides)


@pytest.mark.parametrize(("overrides", "word"), [
    ({"rank": 0}, "rank"),
    ({"rank": "eight"}, "rank"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"scheduler": "cosine_forever"}, "scheduler"),
    ({"caption_dropout": 1.5}, "caption_dropout"),
    ({"lr": 0}, "lr"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"color_aug": True}, "color_aug"),
    ({"sample_every": 10}, "sample-prompts"),
    ({"name": "a/b"}, "name"),
    ({"vae_batch_size": 0}, "vae_batch_size"),
    ({"vae_dtype": "fp8"}, "vae_dtype"),
    ({"torch_compile": "fast"}, "torch_compile"),
])
def test_bad_values_are_refused_with_the_setting_named(overrides: dict, word: str) -> None:
    with pytest.raises(UsageError, match=word):
        load_config(None, overrides)


def test_string_values_from_the_command_line_are_coerced() -> None:
    config = load_config(None, {"rank": "8", "alpha": "4", "flip": "true", "min_snr_gamma": "5"})
    got = (config.network.rank, config.network.alpha, config.data.flip, config.loss.min_snr_gamma)
    assert got == (8, 4.0, True, 5.0)


def test_rows_list_every_setting_once() -> None:
    rows = TrainConfig().rows()
    assert sorted(name for _, name, _ in rows) == sorted(FIELD_SECTION)


def test_replace_validates_like_a_file() -> None:
    with pytest.raises(UsageError):
        TrainConfig().replace(tag_dropout=-0.1)
    assert TrainConfig().replace(color_aug=True, cache_latents="off").data.color_aug
