"""Caption statistics: tag frequencies per image, caption counts, token-length distribution."""

from __future__ import annotations

import pytest
from captionsets import write_dataset

from prep.captions.dataset import load_dataset
from prep.captions.stats import StatsOptions, caption_stats
from prep.captions.tokens import EstimateCounter


@pytest.fixture
def stats_dataset(tmp_path):
    return load_dataset(write_dataset(tmp_path, {
        "a.png": "sks, smile, smile", "b.png": "sks, red hair", "c.png": "sks", "d.png": None, "e.png": "",
        "o.txt": "sks, orphan",
    }))


def test_counts_images_per_tag_not_occurrences(stats_dataset):
    stats = caption_stats(stats_dataset, EstimateCounter())
    assert stats.top_tags == (("sks", 3), ("smile", 1), ("red hair", 1))
    assert stats.percent(3) == 60.0


def test_counts_images_by_caption_state(stats_dataset):
    stats = caption_stats(stats_dataset, EstimateCounter())
    assert (stats.images, stats.captioned, stats.missing, stats.empty, stats.orphans) == (5, 3, 1, 1, 1)


@pytest.mark.parametrize("options, top, tagged", [
    (StatsOptions(top=1), (("sks", 3),), ()),
    (StatsOptions(tag="smile"), None, ("a.png",)),
    (StatsOptions(tag="sks"), None, ("a.png", "b.png", "c.png")),
    (StatsOptions(tag="absent"), None, ()),
])
def test_top_and_tag_filter(stats_dataset, options, top, tagged):
    stats = caption_stats(stats_dataset, EstimateCounter(), options)
    assert stats.tagged == tagged
    if top is not None:
        assert stats.top_tags == top


def test_token_lengths_histogram_and_limits(tmp_path):
    long = ", ".join(["smile"] * 50)   # ≈99 tokens with the estimate
    dataset = load_dataset(write_dataset(tmp_path, {"a.png": "sks", "b.png": long, "c.png": long}))
    tokens = caption_stats(dataset, EstimateCounter()).tokens
    assert tokens.lengths == (1, 99, 99) and tokens.mark == "≈"
    assert (tokens.over(75), tokens.over(225)) == (2, 0)
    assert dict(tokens.histogram()) == {"0–25": 1, "26–50": 0, "51–75": 0, "76–150": 2, "151–225": 0, ">225": 0}
    assert tokens.to_dict()["median"] == 99
