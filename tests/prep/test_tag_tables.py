"""Per-image tag handling does its per-tag work once per label, not once per image: tag keys and
prune classes are remembered (a WD14 label set is ~7,100-10,861 tags, most above threshold with a
random-weight model), and remembering changes no answer."""

from __future__ import annotations

import numpy as np

from prep.tag import TagOptions, model_tags
from prep.tagging.wd14 import Labels, Thresholds, scores_to_tags
from prep.tags import PruneOptions, load_prune_rules, prune_tags, tag_key

NAMES = tuple(f"w{i}_{noun}" for i, noun in enumerate(["hair", "eyes", "sky", "holding_cup", "smile", "dress", "cat"] * 300))


def _labels() -> Labels:
    categories = np.zeros(len(NAMES), int)
    categories[:4] = 9
    categories[-300:] = 4
    return Labels(NAMES, np.flatnonzero(categories == 9), np.flatnonzero(categories == 0),
                  np.flatnonzero(categories == 4))


def test_the_second_image_classifies_no_tag_again_and_gets_the_same_answers() -> None:
    rules = load_prune_rules()
    options = TagOptions(trigger="sks", prune_character=True)
    rng = np.random.default_rng(0)
    first, second = (1 / (1 + np.exp(-rng.normal(0, 1, len(NAMES)))) for _ in range(2))
    labels = _labels()
    model_tags(scores_to_tags(first, labels, Thresholds(general=0.0, character=0.0)), options, rules)
    assert len(rules.known) == len(NAMES) - 4  # every label but the ratings, classified once
    known = dict(rules.known)
    tag_key.cache_clear()
    kept, removed = model_tags(scores_to_tags(second, labels, Thresholds()), options, rules)
    assert rules.known == known  # nothing classified anew
    assert tag_key.cache_info().misses <= len(NAMES)  # each key computed at most once for the image
    fresh = load_prune_rules()  # nothing remembered: the answers must be the same
    again_kept, again_removed = prune_tags(kept + [t for t, _ in removed], fresh, PruneOptions(character=True))
    assert sorted(again_kept) == sorted(kept) and sorted(t for t, _ in again_removed) == sorted(t for t, _ in removed)
    assert removed and all(tag.endswith(("hair", "eyes")) for tag, _ in removed)
