"""WD14 tagging on a WD14-signature ONNX whose scores are a known function of the pixels it is fed.

The tags each real image gets prove the preprocessing: white padding and alpha compositing,
BGR channel order, the 0-255 value range and the input size read from the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tagmodels import build_wd14_model

from prep.errors import ModelMismatch, ModelNotAvailable
from prep.images import open_image
from prep.records import Tags
from prep.sidecars import read_meta
from prep.tag import TagOptions, tag_folder
from prep.tagging.wd14 import Thresholds, Wd14Tagger


def _square_sprite(testdata: Path, folder: Path) -> Path:
    """The top square of a transparent sprite: no padding needed, so its corner is pure transparency."""
    sprite = Image.open(testdata / "anime" / "sylvie_blue_normal.png")
    path = folder / "sprite_square.png"
    sprite.crop((0, 0, sprite.width, sprite.width)).save(path)
    return path


def _tags_for(tagger: Wd14Tagger, path: Path) -> Tags:
    return tagger.predict(tagger.preprocess(open_image(path))[None])[0]


# image, tags it must get, tags it must not get
PREPROCESSING_CASES = [
    ("photos/rocket.jpg", {"letterboxed", "white background", "blue theme"}, {"red theme"}),  # wide, dark, blue
    ("photos/coffee.png", {"letterboxed", "white background", "red theme"}, {"blue theme"}),  # wide, red
    ("anime/bg_meadow.jpg", {"letterboxed", "blue theme"}, {"red theme"}),                    # 16:9
    ("photos/astronaut.png", {"red theme"}, {"letterboxed", "white background", "blue theme"}),  # square: no pad
    ("sprite", {"white background", "bright"}, set()),  # transparent corner → composited on white
]


@pytest.mark.parametrize(("image", "present", "absent"), PREPROCESSING_CASES)
def test_preprocessing_pads_white_keeps_bgr_and_0_255(image, present, absent, wd14_model, testdata, tmp_path) -> None:
    tagger = Wd14Tagger(wd14_model)
    path = _square_sprite(testdata, tmp_path) if image == "sprite" else testdata / image
    general = set(_tags_for(tagger, path).general)
    assert present <= general
    assert not absent & general


def test_input_size_is_read_from_the_model(tmp_path, testdata) -> None:
    tagger = Wd14Tagger(build_wd14_model(tmp_path / "m320", size=320))
    assert tagger.preprocess(open_image(testdata / "photos/rocket.jpg")).shape == (320, 320, 3)
    assert {"letterboxed", "blue theme"} <= set(_tags_for(tagger, testdata / "photos/rocket.jpg").general)


@pytest.mark.parametrize(("general", "character", "present", "absent"), [
    (0.35, 0.85, {"middling", "cat ears", "hatsune miku"}, {"kafuu chino"}),
    (0.55, 0.85, {"long hair", "looking at viewer"}, {"middling", "cat ears"}),
    (0.35, 0.75, {"hatsune miku", "kafuu chino", "cat ears"}, set()),
    (0.10, 0.95, {"middling"}, {"hatsune miku", "kafuu chino"}),
])
def test_general_and_character_thresholds_are_separate(general, character, present, absent, wd14_model, testdata) -> None:
    tagger = Wd14Tagger(wd14_model, thresholds=Thresholds(general, character))
    tags = _tags_for(tagger, testdata / "photos/astronaut.png")
    found = set(tags.general) | set(tags.character)
    assert present <= found
    assert not absent & found


def test_mcut_replaces_the_fixed_thresholds(wd14_model, testdata) -> None:
    tagger = Wd14Tagger(wd14_model, thresholds=Thresholds(general=0.95, character=0.5, mcut=True))
    tags = _tags_for(tagger, testdata / "photos/astronaut.png")
    assert list(tags.character) == ["hatsune miku"]  # widest gap is 0.9 → 0.8, not the fixed 0.5
    assert "cat ears" in tags.general and "bright" not in tags.general  # gap 0.45 → 0.21, not the fixed 0.95


def test_scores_are_kept_with_the_best_rating(wd14_model, testdata) -> None:
    tags = _tags_for(Wd14Tagger(wd14_model), testdata / "photos/astronaut.png")
    assert tags.rating == "general"
    assert tags.general["long hair"] == pytest.approx(0.6, abs=1e-5)
    assert list(tags.general) == sorted(tags.general, key=lambda t: -tags.general[t])


# ---------------------------------------------------------------- the folder step


@pytest.fixture
def dataset(testdata: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in ("photos/rocket.jpg", "photos/coffee.png", "photos/astronaut.png", "anime/eileen_happy.png"):
        shutil.copy(testdata / name, folder / Path(name).name)
    return folder


def _caption(folder: Path, stem: str) -> str:
    return (folder / f"{stem}.txt").read_text(encoding="utf-8").strip()


@pytest.mark.parametrize(("rating", "check"), [
    ("first", lambda tags: tags[0] == "general"),
    ("last", lambda tags: tags[-1] == "general"),
    ("none", lambda tags: "general" not in tags and "sensitive" not in tags),
])
def test_rating_goes_first_last_or_nowhere(rating, check, wd14_model, dataset) -> None:
    tag_folder(dataset, TagOptions(model_dir=wd14_model, rating=rating))
    assert check(_caption(dataset, "astronaut").split(", "))


def test_caption_uses_spaces_but_keeps_kaomoji(wd14_model, dataset) -> None:
    tag_folder(dataset, TagOptions(model_dir=wd14_model))
    tags = _caption(dataset, "astronaut").split(", ")
    assert tags[0] == "hatsune miku"  # characters first
    assert {"^_^", "long hair", "looking at viewer"} <= set(tags)
    assert not any("_" in t for t in tags if t != "^_^")


def test_replace_exclude_always_first_and_trigger(wd14_model, dataset) -> None:
    options = TagOptions(model_dir=wd14_model, trigger="sks", always_first=("solo", "^_^"),
                         replace=(("hatsune_miku", "miku"), ("long hair", "long locks")), exclude=("middling", "cat_ears"))
    result = tag_folder(dataset, options)
    tags = _caption(dataset, "astronaut").split(", ")
    assert tags[:4] == ["solo", "^_^", "sks", "miku"]
    assert "long locks" in tags and "long hair" not in tags
    assert "middling" not in tags and "cat ears" not in tags
    assert result.keep_tokens == 3


def test_prune_character_removes_traits_and_records_why(wd14_model, dataset) -> None:
    tag_folder(dataset, TagOptions(model_dir=wd14_model, trigger="sks", prune_character=True))
    tags = _caption(dataset, "astronaut").split(", ")
    assert "long hair" not in tags and "cat ears" not in tags and "looking at viewer" in tags
    assert ["long hair", "trait: hair"] in read_meta(dataset / "astronaut.png")["tag"]["pruned"]


def test_batch_1_and_batch_8_give_identical_results(wd14_model, testdata, tmp_path) -> None:
    results = []
    for batch in (1, 8):
        folder = tmp_path / f"b{batch}"
        shutil.copytree(testdata / "photos", folder)
        shutil.copy(testdata / "anime" / "lucy_happy.png", folder)
        shutil.copy(testdata / "anime" / "bg_meadow.jpg", folder)
        result = tag_folder(folder, TagOptions(model_dir=wd14_model, batch_size=batch))
        assert result.batch_size == batch and len(result.done) == 7
        results.append({p.name: (c, read_meta(p)["tags"]) for p, c in result.captions.items()})
    assert results[0] == results[1]


def test_scores_and_settings_go_to_the_metadata_sidecar(wd14_model, dataset) -> None:
    tag_folder(dataset, TagOptions(model_dir=wd14_model, thresholds=Thresholds(0.48, 0.75)))
    meta = json.loads((dataset / "rocket.loraprep.json").read_text(encoding="utf-8"))
    assert meta["tags"]["rating"] == "general"
    assert meta["tags"]["character"] == {"hatsune miku": 0.9, "kafuu chino": 0.8}
    assert meta["tags"]["general"]["blue theme"] > 0.9 and "middling" in meta["tags"]["general"] and "cat ears" not in meta["tags"]["general"]
    assert meta["tag"]["model"] == "wd-stand-in"
    assert meta["tag"]["thresholds"] == {"general": 0.48, "character": 0.75, "mcut": False}


@pytest.mark.parametrize(("mode", "expected_start", "expected_has_model_tags"), [
    ("skip-existing", "my own words", False),
    ("append", "my own words, keep me", True),
    ("overwrite", "hatsune miku", True),
])
def test_existing_captions_are_kept_appended_or_replaced(mode, expected_start, expected_has_model_tags,
                                                         wd14_model, dataset) -> None:
    (dataset / "coffee.txt").write_text("my own words, keep me\n", encoding="utf-8")
    result = tag_folder(dataset, TagOptions(model_dir=wd14_model, mode=mode))
    caption = _caption(dataset, "coffee")
    assert caption.startswith(expected_start)
    assert ("red theme" in caption) == expected_has_model_tags
    assert (dataset / "coffee.png" in result.skipped) == (mode == "skip-existing")


def test_dry_run_writes_nothing_and_reports_removals(wd14_model, dataset) -> None:
    before = sorted(p.name for p in dataset.iterdir())
    result = tag_folder(dataset, TagOptions(model_dir=wd14_model, prune_character=True, dry_run=True))
    assert sorted(p.name for p in dataset.iterdir()) == before
    assert ("long hair", "trait: hair") in result.removed[dataset / "rocket.jpg"]
    assert "long hair" not in result.captions[dataset / "rocket.jpg"]


def test_corrupt_image_is_dropped_and_the_rest_tagged(wd14_model, dataset) -> None:
    (dataset / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    result = tag_folder(dataset, TagOptions(model_dir=wd14_model, batch_size=2))
    assert [d.path for d in result.dropped] == ["broken.png"]
    assert len(result.done) == 4 and not (dataset / "broken.txt").exists()


@pytest.mark.parametrize(("build", "message"), [
    (lambda f: (build_wd14_model(f), (f / "selected_tags.csv").unlink()), "selected_tags.csv"),
    (lambda f: build_wd14_model(f, csv_rows=10), "outputs 16 scores but selected_tags.csv lists 10"),
    (lambda f: build_wd14_model(f, layout="NCHW"), "NHWC"),
    (lambda f: (f.mkdir(), (f / "model.onnx").write_bytes(b"junk"), build_wd14_model(f.parent / "x"),
                shutil.copy(f.parent / "x" / "selected_tags.csv", f)), "cannot be loaded"),
])
def test_inconsistent_model_is_refused_before_any_image(build, message, dataset, tmp_path) -> None:
    folder = tmp_path / "bad-model"
    build(folder)
    with pytest.raises(ModelMismatch, match=message):
        tag_folder(dataset, TagOptions(model_dir=folder))
    assert not list(dataset.glob("*.txt")) and not list(dataset.glob("*.loraprep.json"))


def test_missing_registry_model_says_how_to_pull_it(dataset) -> None:
    with pytest.raises(ModelNotAvailable) as info:
        tag_folder(dataset, TagOptions(model="wd-vit-tagger-v3"))
    assert "loraprep models pull wd-vit-tagger-v3" in info.value.hint


def test_registry_model_in_the_cache_is_used(wd14_model, dataset, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(wd14_model, cache / "wd-vit-tagger-v3")
    monkeypatch.setenv("LORAPREP_MODELS", str(cache))
    result = tag_folder(dataset, TagOptions(model="wd-vit-tagger-v3"))
    assert len(result.done) == 4 and result.provider == "CPUExecutionProvider" and result.batch_size == 1
    assert np.isclose(read_meta(dataset / "rocket.jpg")["tags"]["general"]["long hair"], 0.6)


def test_rerun_with_every_image_captioned_opens_no_model(dataset) -> None:
    for image in list(dataset.iterdir()):
        image.with_suffix(".txt").write_text("done\n", encoding="utf-8")
    result = tag_folder(dataset, TagOptions(model="wd-vit-tagger-v3"))  # not in the cache, and not needed
    assert len(result.skipped) == 4 and not result.done and not result.dropped
