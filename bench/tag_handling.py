"""Benchmark: per-image tag handling (threshold, replace/exclude, --prune-character, trigger,
formatting) on a WD14-signature label set, without the network.

A random-weight tagger scores most of its ~7,100 labels near 0.5, so thousands of tags per image go
through every rule: the worst case for the per-tag work (a trained model passes a few dozen). Prints
CPU milliseconds per image (process time: the shared machine's load does not count).

    python bench/tag_handling.py [--tags 7100] [--images 20]

Measured (issue 23): 116 ms/image before tag keys and prune classes were remembered per label,
11 ms after (2-core shared machine, CPU time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prep.tag import TagOptions, compose_text, model_tags  # noqa: E402
from prep.tagging.wd14 import Labels, Thresholds, scores_to_tags  # noqa: E402
from prep.tags import load_prune_rules  # noqa: E402

WORDS = ["hair", "eyes", "dress", "smile", "sky", "ribbon", "long", "blue", "red", "holding", "shirt", "tail"]


def labels(count: int) -> Labels:
    """Danbooru-like names (two or three words, some of them traits), 4 ratings, 1/7 characters."""
    rng = np.random.default_rng(1)
    names = [f"{WORDS[rng.integers(len(WORDS))]}_{WORDS[rng.integers(len(WORDS))]}_{i}" for i in range(count)]
    categories = np.zeros(count, int)
    categories[:4] = 9
    categories[-count // 7:] = 4
    return Labels(tuple(names), np.flatnonzero(categories == 9), np.flatnonzero(categories == 0),
                  np.flatnonzero(categories == 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=7_100)
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    table = labels(args.tags)
    options = TagOptions(trigger="sks", prune_character=True, exclude=("smile_sky_5",), replace=(("blue_red_6", "six"),))
    rules = load_prune_rules(())
    rng = np.random.default_rng(0)
    scores = [1 / (1 + np.exp(-rng.normal(0, 1, args.tags))) for _ in range(args.images)]
    passed = 0
    start = time.process_time()
    for probs in scores:
        tags = scores_to_tags(probs, table, Thresholds())
        kept, _ = model_tags(tags, options, rules)
        passed += len(tags.general) + len(tags.character)
        compose_text(kept, None, None, options)
    per_image = (time.process_time() - start) / args.images * 1000
    print(f"{args.tags} labels, {passed / args.images:.0f} tags above threshold per image: "
          f"{per_image:.1f} ms/image (CPU)")


if __name__ == "__main__":
    main()
