"""Caption lint: each problem kind found on the file that has it, and nothing on a clean dataset."""

from __future__ import annotations

from collections import Counter

import pytest
from captionsets import write_dataset

from prep.captions.dataset import load_dataset
from prep.captions.lint import LintOptions, fix_commands, lint_dataset, typo_suggestions
from prep.captions.tokens import EstimateCounter, InstantClipCounter

# Five clean captions give the common tags enough weight for the dataset-wide checks.
CLEAN = {f"ok{i}.png": "sks, 1girl, red hair, smile, long hair" for i in range(5)}


def _lint(tmp_path, extra, **options):
    write_dataset(tmp_path, {**CLEAN, **extra})
    report = lint_dataset(load_dataset(tmp_path), EstimateCounter(), LintOptions(**options))
    return {(p.kind, p.path) for p in report.problems}


@pytest.mark.parametrize("extra, options, expected", [
    ({"x.png": None}, {}, {("missing-caption", "x.png")}),
    ({"gone.txt": "sks, smile"}, {}, {("orphan-caption", "gone.txt")}),
    ({"x.png": b"caf\xe9"}, {}, {("unreadable-caption", "x.png")}),
    ({"x.png": " , \n"}, {}, {("empty-caption", "x.png")}),
    ({"x.png": "1girl, smile"}, {"trigger": "sks"}, {("trigger-missing", "x.png")}),
    ({"x.png": "1girl, sks, smile"}, {"trigger": "sks"}, {("trigger-not-first", "x.png")}),
    ({"x.png": "sks, smile, smile"}, {}, {("duplicate-tag", "x.png")}),
    ({"x.png": "sks, red hair, Red_Hair"}, {}, {("duplicate-tag", "x.png")}),
    ({"x.png": "sks, red_hair"}, {}, {("tag-variants", "x.png")}),
    ({"x.png": "sks, smiel"}, {}, {("likely-typo", "x.png")}),
    ({"x.png": "sks, " + ", ".join(f"tag{i}" for i in range(40))}, {"max_tokens": 75}, {("too-long", "x.png")}),
    ({"x.png": "sks, smile\nlong hair, 1girl\n"}, {}, {("multi-line", "x.png")}),
    ({"x.png": "sks, smile\r\n"}, {}, set()),                                   # one line and its newline
])
def test_each_problem_is_reported_on_its_file(tmp_path, extra, options, expected):
    assert _lint(tmp_path, extra, **options) == expected


def test_clean_dataset_has_no_problems(tmp_path):
    assert _lint(tmp_path, {}, trigger="sks") == set()


def test_the_same_problem_is_not_flagged_as_a_typo_and_a_variant(tmp_path):
    assert _lint(tmp_path, {"x.png": "sks, long_hair"}) == {("tag-variants", "x.png")}


@pytest.mark.parametrize("counts, expected", [
    ({"smile": 9, "smiel": 1}, {"smiel": "smile"}),                        # transposition
    ({"looking at viewer": 9, "looking at veiwer": 1}, {"looking at veiwer": "looking at viewer"}),
    ({"long hair": 9, "lng hair": 1}, {"lng hair": "long hair"}),          # deletion
    ({"smile": 2, "smiel": 1}, {}),                                         # neither is common
    ({"flower": 9, "flowers": 1}, {}),                                      # plurals are real tags
    ({"hat": 9, "cat": 1}, {}),                                              # too short to guess
    ({"red hair": 9, "blue hair": 1}, {}),                                   # two edits on a short tag
    ({"smile": 200, "smlie": 11}, {"smlie": "smile"}),                       # a common typo is still one
    ({"long hair": 300, "lng hair": 12}, {"lng hair": "long hair"}),         # a dropped letter
    ({"smile": 200, "smille": 15}, {"smille": "smile"}),                     # a doubled letter
    ({"smile": 90, "smlie": 11}, {}),                                        # not 10× as common
    ({"skirt": 300, "shirt": 20}, {}),                                       # another word, not a slip
    ({"hair": 300, "chair": 12}, {}),                                        # a letter at a word's start
    ({"red hair": 300, "red chair": 12}, {}),
])
def test_typo_suggestions(counts, expected):
    assert typo_suggestions(Counter(counts)) == expected


def test_a_typo_in_eleven_images_is_caught_with_the_default_rare_max(tmp_path):
    captions = {f"{i:03d}.png": "sks, smile, 1girl" for i in range(200)}
    captions.update({f"t{i:02d}.png": "sks, smlie, 1girl" for i in range(11)})
    write_dataset(tmp_path, captions)
    report = lint_dataset(load_dataset(tmp_path), EstimateCounter(), LintOptions())
    typos = [p for p in report.problems if p.kind == "likely-typo"]
    assert len(typos) == 11 and typos[0].message == "'smlie' (11×) looks like 'smile' (200×)"
    assert fix_commands(report, "DS", "likely-typo", None) == ["loraprep captions replace DS smlie smile"]


def test_token_limit_uses_exact_counts_when_the_vocabulary_is_there(tmp_path):
    pytest.importorskip("instant_clip_tokenizer", reason="instant-clip-tokenizer has no wheel for this Python")
    caption = ", ".join(["smile"] * 38)  # 38 words + 37 commas = 75 tokens: at the limit, not over
    write_dataset(tmp_path, {"a.png": caption, "b.png": caption + ", smile"})
    report = lint_dataset(load_dataset(tmp_path), InstantClipCounter(), LintOptions(max_tokens=75))
    assert [(p.path, p.message) for p in report.problems if p.kind == "too-long"] == [("b.png", "77 CLIP tokens > 75")]


def test_estimated_lengths_say_so(tmp_path):
    write_dataset(tmp_path, {"a.png": ", ".join(["smile"] * 60)})
    report = lint_dataset(load_dataset(tmp_path), EstimateCounter(), LintOptions())
    assert [p.message for p in report.problems if p.kind == "too-long"] == ["≈119 CLIP tokens > 75"]


@pytest.mark.parametrize("extra, kind, commands", [
    ({"x.png": "1girl, sks"}, "trigger-not-first", ["loraprep captions move-first DS sks"]),
    ({"x.png": "1girl"}, "trigger-missing", ["loraprep captions add DS sks --front"]),
    ({"x.png": "sks, red_hair"}, "tag-variants", ["loraprep captions replace DS red_hair 'red hair'"]),
    ({"x.png": "sks, smiel"}, "likely-typo", ["loraprep captions replace DS smiel smile"]),
])
def test_fix_commands_are_runnable_suggestions(tmp_path, extra, kind, commands):
    write_dataset(tmp_path, {**CLEAN, **extra})
    report = lint_dataset(load_dataset(tmp_path), EstimateCounter(), LintOptions(trigger="sks"))
    assert fix_commands(report, "DS", kind, "sks") == commands
