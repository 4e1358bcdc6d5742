"""Tag operations: normalising, replace/exclude, trigger and keep_tokens, frequency, and character pruning."""

from __future__ import annotations

from pathlib import Path

import pytest

from prep.errors import UsageError
from prep.tags import (PruneOptions, apply_trigger, exclude_tags, keep_tokens_for, load_prune_rules, mcut_threshold,
                       normalise_tag, parse_prune_list, parse_replacements, prune_tags, replace_tags, tag_frequency)

KEEP = "keep"
CHARACTER = PruneOptions(character=True)
CHARACTER_AND_CLOTHES = PruneOptions(character=True, clothes=True)

# Real Danbooru tags → what --prune-character does with them (the group named when dropped).
# Outfit tags stay with --keep-clothes (the default); the substring traps must never be dropped
# because of a shorter tag hidden inside them.
CHARACTER_TABLE = [
    # hair: colour, length, style
    ("long_hair", "hair"), ("very long hair", "hair"), ("short hair", "hair"), ("blonde hair", "hair"),
    ("Silver_Hair", "hair"), ("multicolored hair", "hair"), ("streaked hair", "hair"), ("ponytail", "hair"),
    ("side ponytail", "hair"), ("twintails", "hair"), ("low twintails", "hair"), ("braid", "hair"),
    ("french braid", "hair"), ("twin braids", "hair"), ("bangs", "hair"), ("blunt bangs", "hair"),
    ("sidelocks", "hair"), ("ahoge", "hair"), ("hair between eyes", "hair"), ("hair over one eye", "hair"),
    ("hair bun", "hair"), ("double bun", "hair"), ("hair intakes", "hair"), ("drill hair", "hair"),
    ("hime cut", "hair"), ("hair rings", "hair"),
    # eyes, skin, marks
    ("blue eyes", "eyes"), ("red_eyes", "eyes"), ("heterochromia", "eyes"), ("slit pupils", "eyes"),
    ("dark skin", "skin"), ("pale skin", "skin"), ("dark-skinned female", "skin"),
    ("mole under eye", "facial marks"), ("freckles", "facial marks"), ("fang", "facial marks"),
    ("scar on face", "facial marks"), ("long eyelashes", "facial marks"),
    # ears, horns, tails, wings, body
    ("animal ears", "ears"), ("cat ears", "ears"), ("fox_ears", "ears"), ("pointy ears", "ears"),
    ("animal ear fluff", "ears"), ("horns", "horns"), ("demon horns", "horns"), ("single horn", "horns"),
    ("tail", "tail"), ("fox tail", "tail"), ("Cat Tail", "tail"), ("multiple tails", "tail"),
    ("wings", "wings"), ("demon wings", "wings"), ("halo", "wings"), ("large breasts", "body"),
    ("flat chest", "body"), ("cat girl", "body"),
    # the picture, not the character: expressions, pose, framing, background
    ("1girl", KEEP), ("solo", KEEP), ("smile", KEEP), ("open mouth", KEEP), ("blush", KEEP),
    ("closed eyes", KEEP), ("half-closed eyes", KEEP), ("one eye closed", KEEP), ("looking at viewer", KEEP),
    ("looking back", KEEP), ("upper body", KEEP), ("full body", KEEP), ("white background", KEEP),
    ("simple background", KEEP), ("breasts", KEEP), ("parted lips", KEEP), ("raised eyebrows", KEEP),
    ("tying hair", KEEP), ("adjusting hair", KEEP), ("hand in own hair", KEEP), ("holding tail", KEEP),
    ("hand on own ear", KEEP), ("covering eyes", KEEP), ("floating hair", KEEP), ("wet hair", KEEP),
    ("eyebrows visible through hair", KEEP), ("^_^", KEEP), ("o_o", KEEP),
    # substring traps: a trait word inside a longer word, or an object sharing the last word
    ("cocktail", KEEP), ("cocktail glass", KEEP), ("rainbow", KEEP), ("elbow gloves", KEEP),
    ("chair", KEEP), ("unicorn", KEEP), ("french horn", KEEP), ("earrings", KEEP), ("chicken wings", KEEP),
    ("tailcoat", KEEP), ("eyewear on head", KEEP), ("bow", KEEP), ("hair ornament", KEEP),
    ("fake animal ears", KEEP), ("hair bow", KEEP), ("school uniform", KEEP), ("thighhighs", KEEP),
]


@pytest.fixture(scope="module")
def rules():
    return load_prune_rules()


def _decision(tag: str, rules, options: PruneOptions) -> str:
    kept, removed = prune_tags([tag], rules, options)
    if kept:
        return KEEP
    return removed[0][1].split(": ", 1)[1]


def test_table_has_at_least_sixty_real_tags() -> None:
    assert len(CHARACTER_TABLE) >= 60


@pytest.mark.parametrize(("tag", "expected"), CHARACTER_TABLE)
def test_prune_character_decides_each_tag(tag: str, expected: str, rules) -> None:
    assert _decision(tag, rules, CHARACTER) == expected


@pytest.mark.parametrize(("tag", "expected"), [
    ("elbow gloves", "clothes"), ("school uniform", "clothes"), ("thighhighs", "clothes"), ("bow", "accessory"),
    ("hair ornament", "accessory"), ("hair bow", "accessory"), ("fake animal ears", "accessory"),
    ("rainbow", KEEP), ("cocktail", KEEP), ("cocktail glass", KEEP), ("long hair", "hair"), ("smile", KEEP),
])
def test_prune_clothes_also_drops_outfit_tags(tag: str, expected: str, rules) -> None:
    assert _decision(tag, rules, CHARACTER_AND_CLOTHES) == expected


def test_no_prune_option_keeps_everything(rules) -> None:
    tags = [tag for tag, _ in CHARACTER_TABLE]
    assert prune_tags(tags, rules, PruneOptions()) == (tags, [])


@pytest.mark.parametrize(("tag", "expected"), [
    ("tail", "user"), ("tails", "user"), ("bow", "user"), ("red bow", "user"),
    ("ponytail", KEEP), ("cocktail", KEEP), ("elbow gloves", KEEP), ("rainbow", KEEP), ("bowtie", KEEP),
    ("bow (weapon)", KEEP), ("detached tail", KEEP),
])
def test_user_list_matches_whole_words_only(tag: str, expected: str) -> None:
    rules = parse_prune_list("tail\n* bow\n!detached tail\n", "user.txt")
    assert _decision(tag, rules, CHARACTER) == expected


def test_user_toml_list_extends_bundled_list(tmp_path: Path) -> None:
    extra = tmp_path / "mine.toml"
    extra.write_text('[keep]\npatterns = ["cat ears"]\n\n[[group]]\nname = "signature"\nkind = "trait"\n'
                     'patterns = ["star hair ornament", "* star"]\n', encoding="utf-8")
    rules = load_prune_rules([extra])
    kept, removed = prune_tags(["cat ears", "star hair ornament", "long hair", "smile"], rules, CHARACTER)
    assert kept == ["cat ears", "smile"]
    assert removed == [("star hair ornament", "trait: signature"), ("long hair", "trait: hair")]


def test_malformed_user_list_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[group]]\nname = "x"\nkind = "colour"\npatterns = ["a"]\n', encoding="utf-8")
    with pytest.raises(UsageError, match="kind"):
        load_prune_rules([bad])


@pytest.mark.parametrize(("raw", "expected"), [
    ("long_hair", "long hair"), ("looking_at_viewer", "looking at viewer"), ("^_^", "^_^"), ("o_o", "o_o"),
    (">_<", ">_<"), ("T_T", "T_T"), ("x_x", "x_x"), ("  hatsune_miku ", "hatsune miku"), ("0_0", "0_0"),
])
def test_normalise_turns_underscores_into_spaces_except_kaomoji(raw: str, expected: str) -> None:
    assert normalise_tag(raw) == expected


@pytest.mark.parametrize(("tags", "trigger", "first", "expected", "keep"), [
    (["1girl", "smile"], "sks", (), ["sks", "1girl", "smile"], 1),
    (["1girl", "sks", "smile"], "sks", (), ["sks", "1girl", "smile"], 1),
    (["smile", "1girl"], "sks", ("1girl",), ["1girl", "sks", "smile"], 2),
    (["smile"], "sks", ("1girl", "solo"), ["1girl", "solo", "sks", "smile"], 3),
    (["smile", "solo", "1girl"], None, ("1girl", "solo"), ["1girl", "solo", "smile"], 2),
    (["smile"], "sks, woman", (), ["sks", "woman", "smile"], 2),
    (["smile", "smile"], None, (), ["smile"], 0),
])
def test_trigger_goes_first_after_always_first_and_keep_tokens_counts_the_prefix(
        tags, trigger, first, expected, keep) -> None:
    assert apply_trigger(tags, trigger, first) == expected
    assert keep_tokens_for(trigger, first) == keep


def test_replace_renames_and_removes() -> None:
    table = parse_replacements(["1girl=woman", "Long_Hair=long hair (style)", "blush="])
    assert replace_tags(["1girl", "long hair", "blush", "smile"], table) == ["woman", "long hair (style)", "smile"]


def test_replace_without_equals_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_replacements(["1girl"])


def test_exclude_matches_whole_tags_case_and_underscore_insensitive() -> None:
    assert exclude_tags(["Long_Hair", "hair", "long hair ornament"], ["long hair"]) == ["hair", "long hair ornament"]


def test_frequency_counts_each_tag_once_per_caption() -> None:
    assert tag_frequency([["a", "b", "a"], ["b"], ["B", "c"]]) == [("b", 3), ("a", 1), ("c", 1)]


@pytest.mark.parametrize(("probs", "expected"), [
    ([0.9, 0.8, 0.2, 0.1], 0.5), ([0.95, 0.3, 0.25], 0.625), ([0.7], 0.7),
])
def test_mcut_cuts_in_the_widest_gap(probs, expected) -> None:
    assert mcut_threshold(probs) == pytest.approx(expected)
