"""Manifest → examples → batches: buckets never mixed, repeats, caption rules, stale-manifest refusal."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from prep.errors import ManifestError
from prep.records import BucketSettings
from train.data import (CaptionOptions, balanced_reg_repeats, caption_variants, epoch_batches, load_pixels,
                        load_training_set, process_caption, split_caption, to_array)
from trainsets import IMAGES, TRIGGER, make_dataset

MULTI = BucketSettings(resolution=(64, 64), step=32, min=32, max=128)


@pytest.fixture(scope="module")
def multi_bucket(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven real images of different aspects in several 32-step buckets, 3 repeats each."""
    images = {**IMAGES, "photos/rocket.jpg": "sks, rocket", "anime/panorama.jpg": "sks, city",
              "anime/concert1.jpg": "sks, concert"}
    return make_dataset(testdata, tmp_path_factory.mktemp("multi") / "ds", images=images, side=120,
                        buckets=MULTI, repeats=3)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
def test_batches_never_mix_buckets_and_hold_every_repeat(multi_bucket: Path, batch_size: int) -> None:
    data = load_training_set(multi_bucket)
    assert len(data.buckets) > 1
    batches = epoch_batches(data.examples, batch_size, seed=1, epoch=0)
    for batch in batches:
        assert len({data.examples[i].bucket for i in batch}) == 1
        assert len(batch) <= batch_size
    assert Counter(i for b in batches for i in b) == {i: 3 for i in range(len(data.examples))}


def test_epoch_order_depends_only_on_seed_and_epoch(multi_bucket: Path) -> None:
    data = load_training_set(multi_bucket)
    first = epoch_batches(data.examples, 2, seed=7, epoch=3)
    assert first == epoch_batches(data.examples, 2, seed=7, epoch=3)
    assert first != epoch_batches(data.examples, 2, seed=7, epoch=4)


@pytest.mark.parametrize(("caption", "keep"), [
    ("sks, 1girl, solo, smile, blue hair, outdoors", 0),
    ("sks, 1girl, solo, smile, blue hair, outdoors", 1),
    ("sks, 1girl, solo, smile, blue hair, outdoors", 3),
    ("woman, sks, smile, hat, red dress", 0),
])
@pytest.mark.parametrize("tag_dropout", [0.0, 0.5])
def test_keep_tokens_never_move_or_drop_the_trigger(caption: str, keep: int, tag_dropout: float) -> None:
    tags = split_caption(caption)
    fixed = tags[:max(keep, tags.index(TRIGGER) + 1)]
    options = CaptionOptions(trigger=TRIGGER, tag_dropout=tag_dropout)
    for seed in range(300):
        result = split_caption(process_caption(caption, keep_tokens=keep, shuffle=True, options=options,
                                               rng=random.Random(seed)))
        assert result[:len(fixed)] == fixed
        assert set(result) <= set(tags)


def test_shuffle_moves_the_unkept_tags() -> None:
    caption = "sks, a, b, c, d, e"
    seen = {process_caption(caption, keep_tokens=1, shuffle=True, options=CaptionOptions(TRIGGER),
                            rng=random.Random(s)) for s in range(50)}
    assert len(seen) > 10


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_caption_dropout_rate_is_honoured(rate: float) -> None:
    rng, n = random.Random(0), 6000
    empty = sum(process_caption("sks, a, b", keep_tokens=1, shuffle=False, options=CaptionOptions(TRIGGER, rate),
                                rng=rng) == "" for _ in range(n))
    assert abs(empty / n - rate) < 4 * (rate * (1 - rate) / n) ** 0.5


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_tag_dropout_rate_is_honoured_on_unkept_tags(rate: float) -> None:
    rng, n, rest = random.Random(1), 1500, [f"t{i}" for i in range(8)]
    caption = ", ".join([TRIGGER, *rest])
    kept = sum(len(split_caption(process_caption(caption, keep_tokens=1, shuffle=False,
                                                 options=CaptionOptions(TRIGGER, 0.0, rate), rng=rng))) - 1
               for _ in range(n))
    trials = n * len(rest)
    assert abs(1 - kept / trials - rate) < 4 * (rate * (1 - rate) / trials) ** 0.5


def test_pixels_fill_the_bucket_and_flip_mirrors(multi_bucket: Path) -> None:
    data = load_training_set(multi_bucket)
    for example in data.examples:
        image, place = load_pixels(example)
        assert image.size == example.bucket == place.bucket
        plain, flipped = to_array(image), to_array(image, flip=True)
        assert plain.shape == (3, example.bucket[1], example.bucket[0])
        assert np.array_equal(plain[:, :, ::-1], flipped)
        assert plain.min() >= -1 and plain.max() <= 1


def test_the_frozen_caption_is_what_trains(testdata: Path, tmp_path: Path) -> None:
    path = make_dataset(testdata, tmp_path / "ds", images={"photos/coffee.png": "coffee, cup"})
    data = load_training_set(path)
    assert data.examples[0].caption == "sks, coffee, cup"  # trigger put first by the manifest builder


@pytest.mark.parametrize(("damage", "message"), [
    (lambda ds: (ds / "astronaut.png").unlink(), "astronaut.png: image is missing"),
    (lambda ds: (ds / "chelsea.png").write_bytes((ds / "astronaut.png").read_bytes()), "chelsea.png: image changed"),
    (lambda ds: (ds / "eileen_happy.txt").write_text("sks, edited"), "eileen_happy.txt changed"),
])
def test_a_manifest_out_of_date_with_its_files_is_refused(testdata: Path, tmp_path: Path, damage, message: str) -> None:
    path = make_dataset(testdata, tmp_path / "ds")
    damage(tmp_path / "ds")
    with pytest.raises(ManifestError, match=message) as info:
        load_training_set(path)
    assert "loraprep manifest" in info.value.hint


def test_a_manifest_from_a_newer_schema_is_refused(testdata: Path, tmp_path: Path) -> None:
    path = make_dataset(testdata, tmp_path / "ds")
    data = json.loads(path.read_text())
    data["schema"] = "loraprep.manifest/2"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="newer"):
        load_training_set(path)


def test_regularisation_images_are_marked(testdata: Path, tmp_path: Path) -> None:
    path = make_dataset(testdata, tmp_path / "ds", reg={"photos/camera.png": "man, camera"})
    data = load_training_set(path)
    assert [e.record.path for e in data.examples if e.is_reg] == ["reg/camera.png"]


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(("caption", "sidecar", "class_tokens", "trigger", "expected"), [
    ("sks", None, "woman", "sks", "sks woman"),              # no sidecar: identifier + class
    ("sks", "", "woman", "sks", "sks woman"),                # blank sidecar counts as none
    ("sks", None, "sks woman", "sks", "sks woman"),          # 10_sks woman folder: already named
    ("", None, "woman", None, "woman"),                      # no trigger, or a reg image: the class alone
    ("sks", None, None, "sks", "sks"),                       # no class tokens: frozen caption
    ("sks", "sks", "woman", "sks", "sks"),                   # a hand-written trigger-only caption wins
    ("sks, smile", "sks, smile", "woman", "sks", "sks, smile"),
])
def test_images_without_a_caption_train_on_their_class_tokens(caption: str, sidecar: str | None,
                                                              class_tokens: str | None, trigger: str | None,
                                                              expected: str) -> None:
    from prep.records import ImageRecord, Subset
    from train.data import training_caption

    record = ImageRecord("a.png", "0" * 64, 64, 64, caption=caption,
                         caption_sha256=None if sidecar is None else _sha(sidecar))
    assert training_caption(record, Subset(class_tokens=class_tokens), trigger) == expected


def test_manifest_class_tokens_reach_the_trainer_for_uncaptioned_and_reg_images(testdata: Path,
                                                                               tmp_path: Path) -> None:
    from prep.dataset import ManifestOptions, build_manifest, write_manifest

    make_dataset(testdata, tmp_path / "ds", reg={"photos/chelsea.png": "unused"})
    (tmp_path / "ds" / "astronaut.txt").unlink()          # no sidecar
    (tmp_path / "ds" / "eileen_happy.txt").write_text("")  # blank sidecar
    (tmp_path / "ds" / "reg" / "chelsea.txt").unlink()
    (tmp_path / "ds" / "manifest.json").unlink()  # a fresh build: the class tokens given here apply to reg too
    options = ManifestOptions(trigger=TRIGGER, class_tokens="woman", buckets=BucketSettings((64, 64), 64, 64, 128),
                              reg_dirs=(tmp_path / "ds" / "reg",), allow_empty_captions=True)
    write_manifest(build_manifest(tmp_path / "ds", options), tmp_path / "ds" / "manifest.json")
    captions = {e.path.name: (e.caption, e.is_reg) for e in load_training_set(tmp_path / "ds").examples}
    assert captions["astronaut.png"] == ("sks woman", False)
    assert captions["eileen_happy.png"] == ("sks woman", False)
    assert captions["sylvie_blue_normal.png"] == (IMAGES["anime/sylvie_blue_normal.png"], False)
    assert captions["chelsea.png"] == ("woman", True)


@pytest.mark.parametrize(("text", "size"), [("64", (64, 64)), ("64x96", (64, 96)), ("96,64", (96, 64))])
def test_fixed_resolution_puts_every_image_at_one_size(multi_bucket: Path, text: str, size: tuple[int, int]) -> None:
    from train.config import load_config, parse_size
    from train.plan import plan_training

    config = load_config(None, {"fixed_resolution": text, "batch_size": 3})
    plan = plan_training(multi_bucket, config)
    assert parse_size(text) == size and list(plan.bucket_batches) == [size]
    assert {load_pixels(e)[0].size for e in plan.data.examples} == {size}  # scaled to cover, centre-trimmed


@pytest.mark.parametrize("text", ["0", "63", "64x", "big"])
def test_fixed_resolution_must_be_a_size(text: str) -> None:
    from prep.errors import UsageError
    from train.config import load_config

    with pytest.raises(UsageError, match="fixed_resolution"):
        load_config(None, {"fixed_resolution": text})


@pytest.mark.parametrize(("train_count", "reg_repeats", "expected"), [
    (4, [1, 1, 1, 1], [1, 1, 1, 1]),  # as many: each once
    (6, [1, 1, 1, 1], [2, 2, 1, 1]),  # too few: a second pass adds one repeat each, in order
    (9, [1, 1], [5, 4]),
    (2, [1, 1, 1, 1], [1, 1, 0, 0]),  # too many: the rest are not used
    (3, [5], [5]),  # the first pass keeps a subset's repeats, even past the count (as sd-scripts)
    (7, [2, 0, 1], [4, 0, 3]),  # a subset with repeats 0 stays off
    (5, [], []),
])
def test_regularisation_repeats_balance_by_count_like_sd_scripts(train_count: int, reg_repeats: list[int],
                                                                  expected: list[int]) -> None:
    assert balanced_reg_repeats(train_count, reg_repeats) == expected


@pytest.mark.parametrize(("balance", "reg_samples"), [(True, 8), (False, 1)])
def test_an_epoch_holds_as_many_regularisation_samples_as_training_ones(testdata: Path, tmp_path: Path,
                                                                        balance: bool, reg_samples: int) -> None:
    path = make_dataset(testdata, tmp_path / "ds", repeats=2, reg={"photos/camera.png": "man, camera"})
    data = load_training_set(path, balance_reg=balance)
    batches = epoch_batches(data.examples, 1, seed=1, epoch=0)
    shown = Counter(data.examples[b[0]].is_reg for b in batches)
    assert shown == {False: 8, True: reg_samples}


@pytest.mark.parametrize(("caption", "shuffle", "options", "expected"), [
    ("sks, a,  b", False, CaptionOptions("sks"), ("sks, a, b",)),
    ("sks, a, b", False, CaptionOptions("sks", caption_dropout=0.1), ("sks, a, b", "")),
    ("sks, a", True, CaptionOptions("sks"), ("sks, a",)),  # one tag after the kept ones cannot move
    ("sks, a, b", True, CaptionOptions("sks"), None),
    ("sks, a, b", False, CaptionOptions("sks", tag_dropout=0.1), None),
    ("sks", False, CaptionOptions("sks", tag_dropout=0.1), ("sks",)),  # nothing to drop
])
def test_caption_variants_list_what_process_caption_can_return(caption: str, shuffle: bool,
                                                               options: CaptionOptions, expected: tuple | None) -> None:
    assert caption_variants(caption, keep_tokens=1, shuffle=shuffle, options=options) == expected
    if expected is not None:
        seen = {process_caption(caption, keep_tokens=1, shuffle=shuffle, options=options, rng=random.Random(i))
                for i in range(200)}
        assert seen <= set(expected)
