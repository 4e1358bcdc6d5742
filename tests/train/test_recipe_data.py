"""The guide's remaining data options: --caption-dropout-every-n-epochs, --workers, and their sd-scripts names."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.batcher import Batcher, dropout_epoch
from train.config import load_config
from train.data import load_training_set
from train.prepare import load_model
from trainsets import make_dataset


@pytest.mark.parametrize(("every", "epoch", "dropped"), [
    (0, 0, False), (0, 5, False), (1, 0, True), (2, 0, False), (2, 1, True), (2, 2, False), (3, 5, True),
])
def test_every_nth_epoch_counts_from_one_as_sd_scripts_does(every: int, epoch: int, dropped: bool) -> None:
    assert dropout_epoch(every, epoch) is dropped


def test_dropout_epochs_train_the_empty_caption_from_the_text_cache(testdata: Path, tmp_path: Path,
                                                                   tiny_sd15: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path), "shuffle_caption": False,
                                "caption_dropout_every_n_epochs": 2})
    data = load_training_set(manifest, shuffle_caption=False)
    batcher = Batcher(load_model(config, "cpu"), data, config, "cpu")
    batcher.fill_caches()
    assert not batcher.needs_text_encoders and len(batcher.texts) == 5  # four captions and the empty one
    example = data.examples[0]
    assert batcher._draw(example, 0, 0, 0)[1] == example.caption
    assert batcher._draw(example, 1, 0, 0)[1] == ""
    batcher.condition([0, 1, 2, 3], epoch=1, batch_number=0)
    assert batcher.texts.stats.misses == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("max_data_loader_n_workers = 4\n", {"workers": 4}),
    ("caption_dropout_every_n_epochs = 3\n", {"caption_dropout_every_n_epochs": 3}),
    ('log_with = "wandb"\n', {"report_to": "wandb", "tensorboard": False}),
    ('log_with = "tensorboard"\n', {"report_to": None, "tensorboard": True}),
])
def test_sd_scripts_names_map_onto_loraprep_settings(tmp_path: Path, text: str, expected: dict) -> None:
    path = tmp_path / "kohya.toml"
    path.write_text('pretrained_model_name_or_path = "sd15"\nnetwork_module = "networks.lora"\n' + text)
    config = load_config(path)
    flat = {key: value for _, key, value in config.rows()}
    assert {key: flat[key] for key in expected} == expected
