"""Pure tag operations on comma-separated captions: normalise, replace, exclude, prune, trigger, count.

Everything here is a function of its arguments (no I/O except `load_prune_rules`, which reads the
prune lists), so the tag step, the manifest builder and the caption tools share one behaviour.

Matching is by *whole words*, case- and underscore-insensitive and plural-aware: the rule `tail`
matches `tail`, `tails` and (as `* tail`) `fox tail`, but never `ponytail` or `cocktail`, because
words are compared, not substrings.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from prep.errors import UsageError

# Kaomoji tags from the Danbooru tag set: their underscores are part of the face, not word breaks.
KAOMOJI = frozenset({
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
    ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||", "-_-", "._.;", "t_t", "q_q", ";_;",
})

_SPACES = re.compile(r"\s+")
_WORDISH = re.compile(r"[a-z0-9]{2,}", re.IGNORECASE)


def split_tags(caption: str | None) -> list[str]:
    """`"a, b ,c"` → `["a", "b", "c"]`; empty pieces dropped, order kept."""
    if not caption:
        return []
    return [piece.strip() for piece in caption.split(",") if piece.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def is_kaomoji(tag: str) -> bool:
    """True for emoticon tags like `^_^` or `o_o`, whose underscores must survive normalising.

    Besides the known list, any underscore tag without a run of two letters/digits is a face
    (`>_<`, `T_T`), never words joined by underscores (`long_hair`).
    """
    text = tag.strip()
    if text.lower() in KAOMOJI:
        return True
    return "_" in text and len(text) <= 7 and not _WORDISH.search(text)


def normalise_tag(tag: str) -> str:
    """Booru spelling → caption spelling: `long_hair` → `long hair`; kaomoji and case kept."""
    text = tag.strip()
    if is_kaomoji(text):
        return text
    return _SPACES.sub(" ", text.replace("_", " ")).strip()


# A tagger has a fixed label set (WD14: ~10,000, most above threshold with some models) and every
# operation below asks for the same keys again for every image: remembered, not recomputed.
KEY_CACHE = 1 << 16


@functools.lru_cache(maxsize=KEY_CACHE)
def tag_key(tag: str) -> str:
    """The identity of a tag for comparisons: normalised and lower-cased."""
    return normalise_tag(tag).lower()


def dedupe(tags: Iterable[str]) -> list[str]:
    """First occurrence wins; `Long_Hair` and `long hair` are the same tag."""
    seen: set[str] = set()
    result: list[str] = []
    key_of = tag_key  # a local name: this loop runs for every tag of every image
    for tag in tags:
        key = key_of(tag)
        if key and key not in seen:
            seen.add(key)
            result.append(tag)
    return result


def replace_tags(tags: Sequence[str], replacements: Mapping[str, str]) -> list[str]:
    """Rename tags (`{"1girl": "woman"}`); an empty replacement removes the tag. Order kept, deduplicated."""
    table = {tag_key(old): new.strip() for old, new in replacements.items()}
    renamed = [table.get(tag_key(tag), tag) for tag in tags]
    return dedupe(tag for tag in renamed if tag)


def exclude_tags(tags: Sequence[str], excluded: Iterable[str]) -> list[str]:
    """Drop the listed tags (whole tags, case/underscore-insensitive)."""
    drop = {tag_key(tag) for tag in excluded}
    return [tag for tag in tags if tag_key(tag) not in drop]


def parse_replacements(pairs: Iterable[str]) -> dict[str, str]:
    """`["old=new", "a=b"]` → `{"old": "new", "a": "b"}`; a missing `=` is a usage error."""
    table: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip():
            raise UsageError(f"--replace '{pair}' is not OLD=NEW", hint="e.g. --replace '1girl=woman'")
        table[old.strip()] = new.strip()
    return table


# ---------------------------------------------------------------- trigger word and keep_tokens


def _prefix(trigger: str | None, always_first: Sequence[str]) -> list[str]:
    return dedupe([*always_first, *split_tags(trigger)])


def apply_trigger(tags: Sequence[str], trigger: str | None, always_first: Sequence[str] = ()) -> list[str]:
    """`always_first` tags (in the order given), then the trigger, then the other tags, deduplicated.

    The prefix is always present (added when missing) so that one `keep_tokens` value protects it
    in every caption when the trainer shuffles tags; see `keep_tokens_for`.
    """
    prefix = _prefix(trigger, always_first)
    taken = {tag_key(tag) for tag in prefix}
    return prefix + [tag for tag in dedupe(tags) if tag_key(tag) not in taken]


def keep_tokens_for(trigger: str | None, always_first: Sequence[str] = ()) -> int:
    """How many leading comma-separated tokens `apply_trigger` fixes in place (kohya's keep_tokens)."""
    return len(_prefix(trigger, always_first))


def tag_frequency(captions: Iterable[Sequence[str]]) -> list[tuple[str, int]]:
    """How many captions use each tag, most common first (ties alphabetical)."""
    counts: Counter[str] = Counter()
    for tags in captions:
        counts.update({tag_key(tag) for tag in tags})
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def mcut_threshold(probs: Sequence[float]) -> float:
    """Maximum Cut Thresholding: the midpoint of the widest gap between sorted scores.

    Adapts the cut to each image instead of one fixed number (Largeron et al., 2012).
    """
    ordered = sorted((float(p) for p in probs), reverse=True)
    if len(ordered) < 2:
        return ordered[0] if ordered else 1.0
    gaps = [ordered[i] - ordered[i + 1] for i in range(len(ordered) - 1)]
    best = max(range(len(gaps)), key=gaps.__getitem__)
    return (ordered[best] + ordered[best + 1]) / 2


# ---------------------------------------------------------------- character-tag pruning

DEFAULT_PRUNE_LIST = "prune_character.toml"
TRAIT = "trait"
OUTFIT = "outfit"


def singular(word: str) -> str:
    """A crude singular that only has to agree with itself: `horns`→`horn`, `eyelashes`→`eyelash`."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes")):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    return [singular(word) for word in tag_key(text).split(" ") if word]


def _pattern_regex(pattern: str) -> str:
    """`* hair` → words regex; `*` stands for zero or more whole words."""
    parts = [r"(?:\S+ )*" if word == "*" else re.escape(word) + " " for word in _words(pattern)]
    return "".join(parts)


@dataclass(frozen=True)
class PruneGroup:
    """Tags of one kind (hair, eyes, outfit…): a `trait` group is learned by the trigger word under
    --prune-character; an `outfit` group only under --prune-clothes."""

    name: str
    kind: str
    patterns: tuple[str, ...]
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in (TRAIT, OUTFIT):
            raise UsageError(f"prune group '{self.name}' has kind '{self.kind}'",
                             hint=f"use kind = \"{TRAIT}\" or \"{OUTFIT}\"")
        alternatives = "|".join(_pattern_regex(p) for p in self.patterns) or r"(?!)"
        object.__setattr__(self, "regex", re.compile(f"(?:{alternatives})"))

    def matches(self, words: str) -> bool:
        return self.regex.fullmatch(words) is not None


@dataclass(frozen=True)
class PruneRules:
    """The whitelist (checked first) and the groups, in order; the first group that matches decides.
    `classify` remembers its answers (one per distinct tag: a tagger's label set, not every image's)."""

    keep: PruneGroup
    groups: tuple[PruneGroup, ...]
    known: dict[str, PruneGroup | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def merged(self, other: PruneRules) -> PruneRules:
        """Add a user list: its whitelist extends ours, its groups are checked before ours."""
        keep = PruneGroup("keep", TRAIT, self.keep.patterns + other.keep.patterns)
        return PruneRules(keep, other.groups + self.groups)

    def keeps(self, tag: str) -> bool:
        """True when the whitelist names `tag` (an action or object that shares a trait's words)."""
        words = "".join(word + " " for word in _words(tag))
        return bool(words) and self.keep.matches(words)

    def classify(self, tag: str) -> PruneGroup | None:
        """The group that describes `tag`, or None (not a trait, or whitelisted)."""
        if tag in self.known:
            return self.known[tag]
        if len(self.known) >= KEY_CACHE:
            self.known.clear()
        group = self.known[tag] = self._classify(tag)
        return group

    def _classify(self, tag: str) -> PruneGroup | None:
        words = "".join(word + " " for word in _words(tag))
        if not words or self.keep.matches(words):
            return None
        for group in self.groups:
            if group.matches(words):
                return group
        return None


@dataclass(frozen=True)
class PruneOptions:
    character: bool = False
    clothes: bool = False


def prune_tags(tags: Sequence[str], rules: PruneRules, options: PruneOptions) -> tuple[list[str], list[tuple[str, str]]]:
    """Split tags into (kept, removed-with-reason). The reason names the group, e.g. `hair`."""
    kept: list[str] = []
    removed: list[tuple[str, str]] = []
    for tag in tags:
        group = rules.classify(tag) if (options.character or options.clothes) else None
        drop = group is not None and (
            (group.kind == TRAIT and options.character) or (group.kind == OUTFIT and options.clothes))
        if drop:
            assert group is not None
            removed.append((tag, f"{group.kind}: {group.name}"))
        else:
            kept.append(tag)
    return kept, removed


def _rules_from_toml(data: dict, source: str) -> PruneRules:
    try:
        keep = PruneGroup("keep", TRAIT, tuple(str(p) for p in data.get("keep", {}).get("patterns", [])))
        groups = tuple(PruneGroup(str(g["name"]), str(g.get("kind", TRAIT)), tuple(str(p) for p in g["patterns"]))
                       for g in data.get("group", []))
    except (KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"prune list {source} is malformed ({type(exc).__name__}: {exc})",
                         hint="see prep/data/prune_character.toml for the format") from exc
    return PruneRules(keep, groups)


def _rules_from_lines(text: str, source: str) -> PruneRules:
    """Plain-text list: one pattern per line, `!pattern` to keep, `#` comments."""
    drop: list[str] = []
    keep: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("!"):
            keep.append(line[1:].strip())
        elif line:
            drop.append(line)
    return PruneRules(PruneGroup("keep", TRAIT, tuple(keep)),
                      (PruneGroup(Path(source).stem, TRAIT, tuple(drop)),) if drop else ())


def parse_prune_list(text: str, source: str = "prune list") -> PruneRules:
    """A prune list from TOML (groups with kinds, see the bundled file) or plain lines."""
    if source.endswith(".toml"):
        try:
            return _rules_from_toml(tomllib.loads(text), source)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"prune list {source} is not valid TOML: {exc}") from exc
    return _rules_from_lines(text, source)


def load_prune_rules(extra: Iterable[Path] = ()) -> PruneRules:
    """The bundled character-tag list, extended by user lists (`--prune-list FILE`)."""
    bundled = resources.files("prep") / "data" / DEFAULT_PRUNE_LIST
    rules = parse_prune_list(bundled.read_text(encoding="utf-8"), DEFAULT_PRUNE_LIST)
    for path in extra:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read prune list {path}: {exc.strerror or exc}") from exc
        rules = rules.merged(parse_prune_list(text, str(path)))
    return rules
