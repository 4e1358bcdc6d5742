"""Captions that hold sentences: --combine templates, pruning inside sentences, the CLIP token limit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from prep.captions.tokens import load_token_counter
from prep.errors import UsageError
from prep.sidecars import read_meta
from prep.tag import resolve_combine
from prep.tagging.sentences import Template, fit_tokens, prune_sentence, render
from prep.tags import PruneOptions, load_prune_rules

RULES = load_prune_rules()
CHARACTER = PruneOptions(character=True)


@pytest.mark.parametrize(("template", "prefix", "tags", "caption", "expected"), [
    ("{trigger}, {tags}. {caption}", ["sks"], ["1girl", "smile"], "A girl sits.", "sks, 1girl, smile. A girl sits."),
    ("{trigger}, {tags}. {caption}", [], [], "A girl sits.", "A girl sits."),                 # empty fields leave no ", ."
    ("{trigger}, {tags}. {caption}", ["sks"], ["smile"], None, "sks, smile."),
    ("{caption} {tags}", ["solo", "sks"], ["smile"], "A girl.", "solo, sks, A girl. smile"),  # prefix not placed: first
    ("{tags}", [], ["a", "b"], "ignored", "a, b"),
])
def test_templates_place_fields_and_tidy_what_empty_ones_leave(template, prefix, tags, caption, expected) -> None:
    assert render(Template.parse(template), prefix, tags, caption) == expected


@pytest.mark.parametrize("template", ["{trigger}, {tgs}", "no fields", "{caption", "{0}"])
def test_a_template_with_unknown_or_no_fields_is_a_usage_error(template) -> None:
    with pytest.raises(UsageError):
        Template.parse(template)


# sentence, character names, expected sentence, removed phrases
SENTENCES = [
    ("A girl with long hair and blue eyes sitting on a bench.", [], "A girl sitting on a bench.",
     {"long hair", "blue eyes"}),
    ("A girl with long hair and a red bow.", [], "A girl with a red bow.", {"long hair"}),
    ("Hatsune Miku with twin tails, holding a fox tail.", ["hatsune miku"], "Holding a fox tail.",
     {"hatsune miku", "twin tails"}),                                          # "holding *" is an action: kept
    ("A woman with long blonde hair smiles. She wears a red dress.", [], "A woman smiles. She wears a red dress.",
     {"long blonde hair"}),
    ("A cocktail on a table and a ponytail.", [], "A cocktail on a table.", {"ponytail"}),  # never inside "cocktail"
    ("Mikuni waves at Miku.", ["miku"], "Mikuni waves at.", {"miku"}),           # whole words: Mikuni stays
    ("A photo of a mountain lake.", ["miku"], "A photo of a mountain lake.", set()),
]


@pytest.mark.parametrize(("sentence", "names", "expected", "removed"), SENTENCES)
def test_prune_character_removes_names_and_traits_from_sentences_as_whole_words(sentence, names, expected, removed) -> None:
    text, gone = prune_sentence(sentence, names=names, rules=RULES, options=CHARACTER)
    assert text == expected
    assert {phrase.lower() for phrase, _ in gone} == removed


def test_clothes_are_pruned_from_sentences_only_with_prune_clothes() -> None:
    sentence = "A girl with cat ears wearing a school uniform."
    assert prune_sentence(sentence, rules=RULES, options=CHARACTER)[0] == "A girl wearing a school uniform."
    assert prune_sentence(sentence, rules=RULES, options=PruneOptions(True, True))[0] == "A girl."


def test_a_caption_over_the_limit_is_cut_at_a_sentence_end_with_the_real_tokenizer() -> None:
    counter = load_token_counter()
    long = "sks, 1girl, smile. " + " ".join(f"The girl number {i} waves at the camera." for i in range(12))
    text, cut = fit_tokens(long, 75, counter.count, keep="sks")
    assert cut is not None and cut.before > 75 and cut.after == counter.count(text) <= 75
    assert text.endswith(".") and long.startswith(text) and cut.dropped.startswith("The girl number")
    assert fit_tokens("sks, a cat.", 75, counter.count) == ("sks, a cat.", None)


def test_one_long_sentence_is_cut_at_a_comma_and_never_inside_the_trigger() -> None:
    counter = load_token_counter()
    long = "sks, " + ", ".join(f"tag{i}" for i in range(60))
    text, cut = fit_tokens(long, 20, counter.count, keep="sks")
    assert cut is not None and counter.count(text) <= 20 and text.startswith("sks, tag0")
    text, cut = fit_tokens("supercalifragilistic expialidocious", 2, counter.count, keep="supercalifragilistic")
    assert text == "supercalifragilistic expialidocious" and cut is not None and cut.dropped == ""


@pytest.mark.parametrize(("captioner", "combine", "expected"), [
    ("wd14", None, ("wd14", None)),
    ("wd14", "both", ("both", None)),
    ("florence2", "both", ("florence2", "{caption}, {tags}")),
    ("wd14", "caption", ("blip", None)),
    ("qwen-vl", "caption", ("qwen-vl", None)),
    ("wd14", "{trigger}, {tags}. {caption}", ("blip", "{trigger}, {tags}. {caption}")),
    ("joycaption", "{tags}. {caption}", ("joycaption", "{tags}. {caption}")),
    ("blip", "{trigger}, {tags}", ("wd14", "{trigger}, {tags}")),
])
def test_combine_names_and_templates_choose_the_models(captioner, combine, expected) -> None:
    assert resolve_combine(captioner, combine) == expected


@pytest.fixture
def dataset(testdata: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    for name in ("photos/rocket.jpg", "photos/astronaut.png"):
        shutil.copy(testdata / name, folder / Path(name).name)
    return folder


def test_template_caption_holds_trigger_tags_and_sentence(tiny_blip, wd14_model, dataset) -> None:
    result = CliRunner().invoke(app, ["tag", str(dataset), "--model-dir", str(wd14_model), "--blip-dir", str(tiny_blip),
                                      "--combine", "{trigger}, {tags}. {caption}", "--trigger", "sks",
                                      "--prune-character", "--beams", "1", "--max-length", "8"])
    assert result.exit_code == 0, result.output
    caption = (dataset / "rocket.txt").read_text(encoding="utf-8").strip()
    sentence = read_meta(dataset / "rocket.jpg")["tag"]["caption"]
    assert caption.startswith("sks, hatsune miku, ") and caption.endswith(". " + sentence)
    assert "long hair" not in caption  # pruned from the tags (and from the sentence, were it there)
    assert read_meta(dataset / "rocket.jpg")["tag"]["combine"] == "{trigger}, {tags}. {caption}"


def test_captions_over_max_tokens_are_cut_and_reported_in_a_dry_run(tiny_blip, wd14_model, dataset) -> None:
    result = CliRunner().invoke(app, ["tag", str(dataset), "--model-dir", str(wd14_model), "--blip-dir", str(tiny_blip),
                                      "--combine", "{trigger}, {tags}. {caption}", "--trigger", "sks", "--dry-run",
                                      "--max-tokens", "6", "--beams", "1", "--max-length", "8"])
    assert result.exit_code == 0, result.output
    assert "Captions cut to 6 CLIP tokens" in result.output
    assert sorted(p.name for p in dataset.iterdir()) == ["astronaut.png", "rocket.jpg"]
