"""`train --masked-loss` / `--alpha-mask`: the loss weighted by each image's subject mask, placed and
flipped exactly as the image, cached with its latent, and refused early when a mask is missing or
does not fit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import cli
from prep.errors import ManifestError
from prep.subjectmask import mask_path
from train.batcher import Batcher
from train.cache import latent_key
from train.config import load_config
from train.plan import plan_training
from trainsets import make_dataset, rebuild_manifest


def _red_mask(folder: Path) -> None:
    """Each image's mask is its own red channel: where the mask lands shows where the pixels went."""
    for image in folder.glob("*.png"):
        if not image.name.endswith(".mask.png"):
            Image.open(image).convert("RGB").getchannel("R").save(mask_path(image))


@pytest.fixture(scope="module")
def masked_set(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("masked") / "ds"
    make_dataset(testdata, folder, side=96)
    _red_mask(folder)
    return rebuild_manifest(folder)


@pytest.mark.parametrize("flip", [False, True])
def test_the_mask_is_placed_and_flipped_exactly_as_its_image(masked_set: Path, tiny_sd15: Path, tmp_path: Path,
                                                             flip: bool) -> None:
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path), "masked_loss": True,
                                "flip": True, "cache_latents": "off"})
    plan = plan_training(masked_set, config)
    from train.model import load_base

    batcher = Batcher(load_base(tiny_sd15), plan.data, config, "cpu")
    trimmed = [e for e in plan.data.examples if e.record.size[0] * e.bucket[1] != e.record.size[1] * e.bucket[0]]
    assert trimmed  # some image is cut to its bucket: the crop is exercised, not only the scale
    for example in plan.data.examples:
        pixels = batcher._pixels(example, flip, None)  # what the VAE sees, in [-1, 1]
        red = (pixels[0:1] + 1) / 2
        size = (example.bucket[1] // 8, example.bucket[0] // 8)
        expected = F.interpolate(red[None], size=size, mode="area")[0]
        mask = batcher._mask(example, flip)
        assert mask.shape == (1, *size)
        assert torch.allclose(mask, expected, atol=0.01)
        assert torch.allclose(batcher._mask(example, not flip), torch.flip(mask, dims=[2]), atol=1e-6)


def test_a_zero_mask_gives_the_lora_zero_gradient(testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    from train.loop import training_step
    from train.network import add_lora
    from train.prepare import load_model

    folder = tmp_path / "ds"
    make_dataset(testdata, folder)
    for image in [p for p in folder.glob("*.png")]:
        Image.new("L", Image.open(image).size, 0).save(mask_path(image))
    manifest = rebuild_manifest(folder)
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path / "out"), "masked_loss": True,
                                "batch_size": 2, "rank": 4})
    plan = plan_training(manifest, config)
    base = load_model(config, "cpu")
    network = add_lora(base.unet, base.text_encoders, config.network)
    batcher = Batcher(base, plan.data, config, "cpu")
    batcher.fill_caches()
    batch = batcher.condition([0, 1], 0, 0)
    assert batch.mask is not None and not batch.mask.any()
    loss = training_step(base, base.unet, batch, prediction_type="epsilon", loss=config.loss,
                         generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in network.unet_params]
    assert loss.item() == 0.0 and all(g is None or not g.any() for g in grads)


@pytest.mark.slow
def test_cached_and_uncached_masked_runs_give_the_same_loss(masked_set: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    from train.loop import train

    losses = {}
    for cache in ("memory", "off"):
        config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path / cache), "max_steps": 3,
                                    "batch_size": 1, "rank": 4, "lr": 1e-3, "masked_loss": True, "flip": True,
                                    "cache_latents": cache, "workers": 0})
        result = train(masked_set, config)
        assert math.isfinite(result.final_loss)
        losses[cache] = [float(line.split(",")[2]) for line in result.loss_csv.read_text().splitlines()[1:]]
    assert losses["memory"] == pytest.approx(losses["off"], rel=1e-4)


def test_the_latent_cache_key_includes_the_mask(masked_set: Path, tiny_sd15: Path, tmp_path: Path) -> None:
    from train.model import load_base

    base = load_base(tiny_sd15)
    keys = {}
    for name, settings in {"plain": {}, "masked": {"masked_loss": True}, "alpha": {"alpha_mask": True}}.items():
        config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path), **settings})
        plan = plan_training(masked_set, config)
        keys[name] = Batcher(base, plan.data, config, "cpu")._latent_key(plan.data.examples[0], False)
    assert len(set(keys.values())) == 3
    example = plan.data.examples[0]
    args = {"resized": (64, 64), "trim": (0, 0, 64, 64), "bucket": (64, 64), "flip": False, "vae_id": "v"}
    assert latent_key(example.record, **args) == latent_key(example.record, **args, mask=None)
    assert latent_key(example.record, **args, mask="sidecar:a") != latent_key(example.record, **args, mask="sidecar:b")


def test_alpha_mask_reads_the_alpha_channel_and_opaque_images_train_whole(testdata: Path, tmp_path: Path,
                                                                          tiny_sd15: Path) -> None:
    from train.model import load_base

    folder = tmp_path / "ds"
    make_dataset(testdata, folder, images={"photos/astronaut.png": "sks, woman", "photos/chelsea.png": "sks, cat"},
                 side=64)
    rgba = Image.open(folder / "astronaut.png").convert("RGBA")
    alpha = np.zeros((rgba.height, rgba.width), np.uint8)
    alpha[:, : rgba.width // 2] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "astronaut.png")
    manifest = rebuild_manifest(folder)
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path / "out"), "alpha_mask": True})
    plan = plan_training(manifest, config)
    batcher = Batcher(load_base(tiny_sd15), plan.data, config, "cpu")
    by_name = {Path(e.record.path).name: e for e in plan.data.examples}
    half = batcher._mask(by_name["astronaut.png"], False)
    assert torch.equal(half[..., :4], torch.ones_like(half[..., :4])) and not half[..., 4:].any()
    assert torch.equal(batcher._mask(by_name["chelsea.png"], False), torch.ones_like(batcher._mask(by_name["chelsea.png"], False)))


def test_a_missing_mask_is_named_and_exits_1_or_trains_unmasked_when_asked(testdata: Path, tmp_path: Path,
                                                                            tiny_sd15: Path) -> None:
    folder = tmp_path / "ds"
    make_dataset(testdata, folder)
    first = sorted(p for p in folder.glob("*.png"))[0]
    Image.new("L", Image.open(first).size, 255).save(mask_path(first))
    manifest = rebuild_manifest(folder)
    args = ["train", str(manifest), "--base", str(tiny_sd15), "--masked-loss", "--max-steps", "1", "--rank", "4",
            "--output", str(tmp_path / "out")]
    refused = CliRunner().invoke(cli.app, args)
    assert refused.exit_code == 1
    message = next(line for line in refused.output.splitlines() if line.startswith("error:"))
    assert "--masked-loss: 3 image(s) have no subject mask:" in message and "chelsea.png" in message
    assert not (tmp_path / "out").exists()
    trained = CliRunner().invoke(cli.app, [*args, "--mask-missing", "unmasked"])
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "out" / "lora.safetensors").is_file()


def test_a_mask_of_another_size_is_refused_before_loading(testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    folder = tmp_path / "ds"
    make_dataset(testdata, folder, images={"photos/astronaut.png": "sks, woman"})
    Image.new("L", (10, 12), 255).save(mask_path(folder / "astronaut.png"))
    manifest = rebuild_manifest(folder)
    config = load_config(None, {"base": str(tiny_sd15), "masked_loss": True})
    with pytest.raises(ManifestError) as info:
        plan_training(manifest, config)
    assert info.value.message == "astronaut.png: its mask astronaut.mask.png is 10×12, the image 80×80"
