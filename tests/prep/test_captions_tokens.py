"""Caption length in CLIP tokens: the real vocabulary when present, CLIP's rules on a local one, else ≈."""

from __future__ import annotations

import json

import pytest

from prep.captions.dataset import split_caption
from prep.captions.tokens import (CaptionLengths, ClipBpeCounter, EstimateCounter, InstantClipCounter,
                                  _bytes_to_unicode, load_token_counter)
from prep.errors import ModelMismatch

MERGES = [("r", "e"), ("re", "d</w>"), ("h", "a"), ("ha", "i"), ("hai", "r</w>"), ("s", "m"), ("sm", "i"),
          ("smi", "l"), ("smil", "e</w>"), ("g", "i"), ("gi", "r"), ("gir", "l</w>"), ("l", "o"), ("lo", "n"),
          ("lon", "g</w>")]
TEXTS = ["1girl, long red hair, smile", "Smile!! girl's hair", "  red_hair\tlong  ", "café 42 …", "LONG, longer"]


def _vocab() -> dict[str, int]:
    chars = sorted(set(_bytes_to_unicode().values()))
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars] + ["".join(m) for m in MERGES]:
        vocab.setdefault(token, len(vocab))
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return vocab


@pytest.fixture(scope="module")
def reference():
    """transformers' CLIPTokenizer over a small BPE (the tokenizer SD trainers use)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_vocab(), merges=MERGES)


@pytest.fixture(params=["merges.txt", "tokenizer.json"])
def tokenizer_dir(request, tmp_path, reference):
    """The same tokenizer as a base model ships it: vocab.json + merges.txt, or a fast tokenizer.json."""
    if request.param == "merges.txt":
        (tmp_path / "vocab.json").write_text(json.dumps(_vocab()))
        (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in MERGES) + "\n")
    else:
        reference.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("text", TEXTS)
def test_clip_rules_over_local_vocab_count_like_transformers(tokenizer_dir, reference, text):
    assert ClipBpeCounter(tokenizer_dir).count(text) == len(reference.tokenize(text))


@pytest.mark.parametrize("text, tokens", [
    ("A person riding a motorcycle", 5),   # the example in OpenAI CLIP's and the package's docs
    ("1girl, solo, long hair, red_hair, smile", 13),
])
def test_packaged_clip_vocab_counts_exactly(text, tokens):
    pytest.importorskip("instant_clip_tokenizer", reason="instant-clip-tokenizer has no wheel for this Python")
    assert InstantClipCounter().count(text) == tokens


def test_folder_without_tokenizer_files_is_refused(tmp_path):
    with pytest.raises(ModelMismatch):
        ClipBpeCounter(tmp_path)


def test_explicit_tokenizer_folder_wins(tokenizer_dir):
    counter = load_token_counter(tokenizer_dir)
    assert isinstance(counter, ClipBpeCounter) and counter.exact


def test_base_model_tokenizer_in_models_cache_is_found_without_the_package(tmp_path, reference):
    reference.save_pretrained(tmp_path / "sd15" / "tokenizer")
    counter = load_token_counter(models=tmp_path, use_package=False)
    assert isinstance(counter, ClipBpeCounter) and counter.folder == tmp_path / "sd15" / "tokenizer"


def test_without_any_vocabulary_the_count_is_labelled_an_estimate(tmp_path):
    counter = load_token_counter(models=tmp_path, use_package=False)
    assert isinstance(counter, EstimateCounter) and not counter.exact and "estimate" in counter.name
    assert counter.count("1girl, long red hair") == 6  # 1 · girl · , · long · red · hair


@pytest.mark.parametrize("text", [
    "1girl, long red hair, smile", "a,b,,c", "trailing, comma,", "^_^, smile", "smile!, hair", "'s, girl",
    "über, café 42", "one tag",
])
def test_counting_tag_by_tag_equals_counting_the_whole_caption(tokenizer_dir, text):
    counter = ClipBpeCounter(tokenizer_dir)
    lengths = CaptionLengths(counter)
    assert lengths(text, split_caption(text)) == counter.count(text)
