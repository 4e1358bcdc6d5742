"""BLIP captions through the real loading path, on a tiny random BLIP built offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from tagmodels import BLIP_WORDS

from prep.errors import ModelMismatch
from prep.sidecars import read_meta
from prep.tag import TagOptions, tag_folder
from prep.tagging.blip import BlipCaptioner, BlipSettings

WORDS = set(BLIP_WORDS) - {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"}


@pytest.fixture
def dataset(testdata: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in ("photos/chelsea.png", "anime/lucy_happy.png"):
        shutil.copy(testdata / name, folder / Path(name).name)
    return folder


def test_captioner_generates_a_sentence_from_the_vocabulary(tiny_blip, testdata) -> None:
    captioner = BlipCaptioner(tiny_blip, settings=BlipSettings(beams=2, min_length=3, max_length=8))
    images = [Image.open(testdata / "photos/chelsea.png"), Image.open(testdata / "anime/lucy_happy.png")]
    captions = captioner.caption(images)
    assert len(captions) == 2
    for caption in captions:
        words = caption.split()
        assert 2 <= len(words) <= 7 and set(words) <= WORDS


def test_blip_caption_is_deterministic(tiny_blip, testdata) -> None:
    captioner = BlipCaptioner(tiny_blip, settings=BlipSettings(beams=2, min_length=3, max_length=8))
    image = Image.open(testdata / "photos/chelsea.png")
    assert captioner.caption([image]) == captioner.caption([image])


def test_folder_without_blip_files_is_refused(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelMismatch, match="not a BLIP model folder"):
        BlipCaptioner(tmp_path / "empty")


def test_blip_step_writes_caption_and_records_it(tiny_blip, dataset) -> None:
    result = tag_folder(dataset, TagOptions(captioner="blip", blip_dir=tiny_blip, trigger="sks",
                                            blip=BlipSettings(beams=2, min_length=3, max_length=8)))
    assert len(result.done) == 2 and not result.dropped
    caption = (dataset / "chelsea.txt").read_text(encoding="utf-8").strip()
    trigger, sentence = caption.split(", ", 1)
    assert trigger == "sks" and set(sentence.split()) <= WORDS
    meta = read_meta(dataset / "chelsea.png")
    assert meta["tag"]["caption"] == sentence and meta["tag"]["blip_model"] == "tiny-blip"
    assert "tags" not in meta  # no tagger ran, so no scores


def test_both_puts_the_sentence_before_the_tags(tiny_blip, wd14_model, dataset) -> None:
    tag_folder(dataset, TagOptions(captioner="both", blip_dir=tiny_blip, model_dir=wd14_model,
                                   blip=BlipSettings(beams=1, min_length=3, max_length=8)))
    parts = (dataset / "chelsea.txt").read_text(encoding="utf-8").strip().split(", ")
    assert set(parts[0].split()) <= WORDS
    assert parts[1] == "hatsune miku" and "red theme" in parts


@pytest.mark.parametrize("combine, sentence_first", [("both", True), ("tags", False)])
def test_combine_option_chooses_what_the_caption_holds(tiny_blip, wd14_model, dataset, combine, sentence_first) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["tag", str(dataset), "--combine", combine, "--blip-dir", str(tiny_blip),
                                      "--model-dir", str(wd14_model), "--beams", "1", "--min-length", "3",
                                      "--max-length", "8"])
    assert result.exit_code == 0, result.output
    first = (dataset / "chelsea.txt").read_text(encoding="utf-8").strip().split(", ")[0]
    assert (first == "hatsune miku") is not sentence_first


def test_unknown_combine_value_is_a_usage_error(dataset) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["tag", str(dataset), "--combine", "everything"])
    assert result.exit_code == 2 and "--combine must be tags, caption or both" in result.output
