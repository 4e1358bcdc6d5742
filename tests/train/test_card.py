"""The model card beside every trained LoRA, and diffusers' --validation-prompt on the sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from train.card import base_model_name
from train.config import load_config
from train.loop import train
from trainsets import make_dataset


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


@pytest.fixture(scope="module")
def trained(testdata: Path, tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs with a validation prompt (2 images every second epoch); returns OUTPUT."""
    root = tmp_path_factory.mktemp("card")
    manifest = make_dataset(testdata, root / "ds")
    out = root / "out"
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(out), "epochs": 2, "batch_size": 4,
                                "rank": 4, "validation_prompt": "sks, 1girl, smile", "num_validation_images": 2,
                                "validation_epochs": 2, "name": "zzq"})
    train(manifest, config)
    return out


@pytest.mark.slow
def test_card_front_matter_is_what_a_hub_page_reads(trained: Path, tiny_sd15: Path) -> None:
    meta = _front_matter((trained / "README.md").read_text(encoding="utf-8"))
    assert meta["base_model"] == tiny_sd15.name  # a local model by its name, never its path
    assert {"lora", "text-to-image", "diffusers", "stable-diffusion"} <= set(meta["tags"])
    assert meta["instance_prompt"] == "sks"
    widget = meta["widget"][0]
    assert widget["text"] == "sks, 1girl, smile" and (trained / widget["output"]["url"]).is_file()


@pytest.mark.slow
def test_card_body_says_how_to_load_it_and_what_trained(trained: Path) -> None:
    text = (trained / "README.md").read_text(encoding="utf-8")
    body = text.split("---\n", 2)[2]
    assert "load_lora_weights" in body and "zzq.diffusers.safetensors" in body
    assert "<lora:zzq:0.8>" in body and "models/loras" in body  # WebUI and ComfyUI
    assert "| rank | 4 |" in body and "4 training image(s)" in body
    assert "`1girl` (2)" in body  # top tags, the trigger left out
    assert str(trained.parent) not in text  # no local absolute path anywhere


@pytest.mark.slow
def test_validation_prompt_renders_n_images_every_e_epochs(trained: Path) -> None:
    from PIL import Image

    grids = sorted((trained / "samples").glob("zzq-step*.png"))
    assert [p.name for p in grids] == ["zzq-step00000002.png"]  # after epoch 2, not epoch 1
    with Image.open(grids[-1]) as grid:
        assert grid.width >= 2 * 64  # two validation images side by side


@pytest.mark.parametrize(("base", "expected"), [
    ("runwayml/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),
    ("/home/me/models/sd15.safetensors", "sd15.safetensors"),
    ("./models/sdxl-base", "sdxl-base"),
])
def test_base_model_is_named_without_local_paths(base: str, expected: str) -> None:
    assert base_model_name(base) == expected


@pytest.mark.parametrize(("flags", "message"), [
    ({"report_to": "comet"}, "report_to"),
    ({"num_validation_images": 0}, "num_validation_images"),
    ({"push_to_hub": "a/b/c"}, "not a Hub repository id"),
    ({"hub_private": True}, "need --push-to-hub"),
])
def test_recipe_settings_are_checked(flags: dict, message: str) -> None:
    from prep.errors import UsageError

    with pytest.raises(UsageError, match=message):
        load_config(None, flags)
