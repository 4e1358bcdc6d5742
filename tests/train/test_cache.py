"""Caches: content keys mean an edited caption or crop invalidates exactly its own entry, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prep.images import open_image, save_image_atomic
from train.cache import TensorCache, latent_key, text_key
from train.config import load_config
from train.data import load_training_set, placement
from train.batcher import Batcher
from train.prepare import load_model
from elsewhere import TRAINING_DEVICE, Elsewhere, outputs_elsewhere
from trainsets import make_dataset, rebuild_manifest


def _latent_keys(manifest: Path, vae_id: str = "vae-1") -> list[str]:
    data = load_training_set(manifest)
    keys = []
    for e in data.examples:
        place = placement(e.record.size, e.bucket)
        keys.append(latent_key(e.record, resized=place.resized, trim=place.trim, bucket=e.bucket, flip=False,
                               vae_id=vae_id))
    return keys


def _text_keys(manifest: Path) -> list[str]:
    return [text_key(e.caption, encoder_id="te-1") for e in load_training_set(manifest).examples]


def _recrop(folder: Path, name: str) -> None:
    """A different crop of the same picture: the left 80% of it, written over the file."""
    image = open_image(folder / name)
    save_image_atomic(image.crop((0, 0, int(image.width * 0.8), image.height)), folder / name)


@pytest.mark.parametrize(("edit", "changed_latents", "changed_texts"), [
    (lambda ds: (ds / "chelsea.txt").write_text("sks, cat, sleeping"), 0, 1),
    (lambda ds: _recrop(ds, "eileen_happy.png"), 1, 0),
])
def test_an_edit_changes_exactly_the_affected_keys(testdata: Path, tmp_path: Path, edit, changed_latents: int,
                                                   changed_texts: int) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    before = (_latent_keys(manifest), _text_keys(manifest))
    edit(tmp_path / "ds")
    manifest = rebuild_manifest(tmp_path / "ds")
    after = (_latent_keys(manifest), _text_keys(manifest))
    assert sum(a != b for a, b in zip(before[0], after[0], strict=True)) == changed_latents
    assert sum(a != b for a, b in zip(before[1], after[1], strict=True)) == changed_texts


@pytest.mark.parametrize("field", ["flip", "vae_id", "bucket"])
def test_every_part_of_the_latent_identity_is_in_the_key(testdata: Path, tmp_path: Path, field: str) -> None:
    example = load_training_set(make_dataset(testdata, tmp_path / "ds")).examples[0]
    place = placement(example.record.size, example.bucket)
    args = dict(resized=place.resized, trim=place.trim, bucket=example.bucket, flip=False, vae_id="v")
    changed = {"flip": True, "vae_id": "w", "bucket": (128, 64)}
    assert latent_key(example.record, **args) != latent_key(example.record, **{**args, field: changed[field]})


def test_disk_cache_recomputes_only_the_recropped_image(testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path / "out"), "cache_latents": "disk",
                                "shuffle_caption": False})
    base = load_model(config, "cpu")

    def warm(path: Path) -> Batcher:
        batcher = Batcher(base, load_training_set(path, shuffle_caption=False), config, "cpu")
        batcher.condition(range(len(batcher.data.examples)), epoch=0, batch_number=0)
        return batcher

    first = warm(manifest)
    assert (first.latents.stats.misses, first.texts.stats.misses) == (4, 4)
    again = warm(manifest)
    assert again.latents.stats.misses == 0
    _recrop(tmp_path / "ds", "astronaut.png")
    edited = warm(rebuild_manifest(tmp_path / "ds"))
    assert (edited.latents.stats.misses, edited.latents.stats.hits) == (1, 3)


def test_cached_latents_equal_fresh_ones(testdata: Path, tmp_path: Path, tiny_sd15: Path) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    config = load_config(None, {"base": str(tiny_sd15), "cache_latents": "off", "output_dir": str(tmp_path)})
    base = load_model(config, "cpu")
    fresh = Batcher(base, load_training_set(manifest, shuffle_caption=False), config, "cpu")
    singles = [fresh.condition([i], epoch=0, batch_number=0) for i in (0, 1)]
    cached = Batcher(base, load_training_set(manifest, shuffle_caption=False), config.replace(cache_latents="memory"),
                     "cpu")
    cached.fill_caches()
    both = cached.condition([0, 1], epoch=0, batch_number=0)
    assert cached.latents.stats.misses == 0 and len(cached.latents) == 4
    assert torch.equal(both.latents, torch.cat([s.latents for s in singles]))
    assert torch.allclose(both.prompt.embeds, torch.cat([s.prompt.embeds for s in singles]), atol=1e-6)


@pytest.mark.parametrize(("settings", "needs_text_encoders"), [
    ({"shuffle_caption": False, "caption_dropout": 0.1}, False),
    ({"shuffle_caption": True}, True),
    ({"shuffle_caption": False, "tag_dropout": 0.1}, True),
])
def test_filling_caches_first_frees_the_encoders_when_no_step_needs_them(
        testdata: Path, tmp_path: Path, tiny_sd15: Path, settings: dict, needs_text_encoders: bool) -> None:
    manifest = make_dataset(testdata, tmp_path / "ds")
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path), "flip": True, **settings})
    data = load_training_set(manifest, shuffle_caption=config.data.shuffle_caption)
    batcher = Batcher(load_model(config, "cpu"), data, config, "cpu")
    batcher.fill_caches()
    assert len(batcher.latents) == 8 and not batcher.needs_vae  # 4 images, each also flipped
    assert batcher.needs_text_encoders == needs_text_encoders
    if not needs_text_encoders:  # each caption, and the empty one for caption dropout
        assert len(batcher.texts) == 5 and batcher.texts.stats.misses == 0
        batcher.condition([0, 1, 2, 3], epoch=0, batch_number=0)
        batcher.condition([0, 1, 2, 3], epoch=1, batch_number=3)
        assert batcher.texts.stats.misses == 0 and batcher.latents.stats.misses == 0


def test_a_cached_latent_does_not_depend_on_what_was_cached_before(testdata: Path, tmp_path: Path,
                                                                     tiny_sd15: Path) -> None:
    """A batched VAE encode differs from single ones in the last bits: groups are fixed, never by misses."""
    manifest = make_dataset(testdata, tmp_path / "ds")
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path), "vae_batch_size": 2,
                                "flip": True})
    base = load_model(config, "cpu")
    whole = Batcher(base, load_training_set(manifest), config, "cpu")
    whole.fill_caches()
    piecemeal = Batcher(base, load_training_set(manifest), config, "cpu")
    piecemeal.condition([3, 1], epoch=0, batch_number=0)  # a few entries first, as after a resume
    piecemeal.fill_caches()
    assert whole.latents._memory.keys() == piecemeal.latents._memory.keys()
    assert all(torch.equal(whole.latents._memory[k]["latent"], piecemeal.latents._memory[k]["latent"])
               for k in whole.latents._memory)


def test_a_damaged_disk_entry_is_recomputed(tmp_path: Path) -> None:
    cache = TensorCache(directory=tmp_path, keep_in_memory=False)
    cache.put("ab" * 32, {"latent": torch.ones(2)})
    cache.path_for("ab" * 32).write_bytes(b"not safetensors")
    value = cache.get_or_compute("ab" * 32, lambda: {"latent": torch.zeros(2)})
    assert torch.equal(value["latent"], torch.zeros(2)) and cache.stats.misses == 1


def test_a_miss_hands_out_the_host_copy_like_a_hit() -> None:
    cache = TensorCache()
    computed = cache.get_or_compute("k", lambda: {"x": torch.ones(3).as_subclass(Elsewhere)})
    found = cache.get_or_compute("k", lambda: {"x": torch.zeros(3)})
    assert type(computed["x"]) is torch.Tensor and computed["x"].device.type == "cpu"
    assert torch.equal(computed["x"], found["x"]) and (cache.stats.hits, cache.stats.misses) == (1, 1)


@pytest.mark.parametrize("cache_latents", ["memory", "off"])
def test_a_batch_mixing_cached_and_fresh_entries_lands_on_the_training_device(
        testdata: Path, tmp_path: Path, tiny_sd15: Path, cache_latents: str) -> None:
    """Encoders on an accelerator, caches on the host: batch > 1 with some entries cached (issue 15 §1)."""
    manifest = make_dataset(testdata, tmp_path / "ds")
    config = load_config(None, {"base": str(tiny_sd15), "output_dir": str(tmp_path / "out"),
                                "cache_latents": cache_latents, "shuffle_caption": False})
    base = load_model(config, "cpu")
    batcher = Batcher(base, load_training_set(manifest, shuffle_caption=False), config, TRAINING_DEVICE)
    with outputs_elsewhere(*base.text_encoders, base.vae.quant_conv):
        batcher.condition([0], epoch=0, batch_number=0)
        batch = batcher.condition([0, 1, 2], epoch=0, batch_number=1)
    assert batcher.texts.stats.hits == 1 and batcher.texts.stats.misses == 3
    for tensor in (batch.latents, batch.prompt.embeds, batch.weights):
        assert tensor.device == TRAINING_DEVICE and tensor.shape[0] == 3
    assert all(type(entry["embeds"]) is torch.Tensor for entry in batcher.texts._memory.values())
