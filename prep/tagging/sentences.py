"""Captions that hold sentences: `--combine` templates, pruning inside sentences, the token limit.

Pure functions over text (the tag step calls them per image), so each rule is tested as a table:

- `render` fills a template such as `"{trigger}, {tags}. {caption}"` and tidies what an empty field
  leaves behind (`", . a cat"` → `"a cat"`).
- `prune_sentence` removes the character's name and its traits from a sentence as whole words
  (`long hair` goes, `ponytail` stays when `tail` is pruned), then mends the grammar the removal
  breaks (`"with and"`, a dangling `"a"`).
- `fit_tokens` cuts a caption over the prompt limit at a sentence boundary (then, if one sentence
  is still too long, at a comma), never inside the trigger prefix.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prep.errors import UsageError
from prep.tags import OUTFIT, TRAIT, PruneOptions, PruneRules

FIELDS = ("trigger", "tags", "caption")
# Words that join descriptions; a trait phrase found in a sentence never spans one of them.
JOINERS = frozenset({"a", "an", "the", "and", "or", "with", "of", "in", "on", "at", "to", "her", "his", "their",
                     "its", "is", "are", "has", "have", "having", "wearing", "who", "which", "that", "while",
                     "by", "for", "from", "as", "she", "he", "they", "it", "this", "there"})
_ARTICLES = r"(?:a|an|the|her|his|their|its)"
_CONNECTORS = r"(?:and|or|with|of|has|have|having|wearing|featuring)"
_MAX_PHRASE = 4  # words in the longest trait phrase looked for inside a sentence


@dataclass(frozen=True)
class Template:
    """A validated `--combine` template."""

    text: str

    @classmethod
    def parse(cls, text: str) -> Template:
        try:
            fields = [name for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
        except ValueError as exc:
            raise UsageError(f"--combine template '{text}' is malformed ({exc})",
                             hint="write fields as {trigger}, {tags} or {caption}; a literal brace as {{ or }}") from None
        unknown = [name for name in fields if name not in FIELDS]
        if unknown or not fields:
            raise UsageError(f"--combine template '{text}' uses {', '.join('{' + u + '}' for u in unknown) or 'no field'}",
                             hint="fields: {trigger}, {tags}, {caption}, e.g. \"{trigger}, {tags}. {caption}\"")
        return cls(text)

    def uses(self, field: str) -> bool:
        return "{" + field + "}" in self.text


def tidy(text: str) -> str:
    """Separators that empty fields left behind: doubled, leading, trailing or before punctuation."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)       # ", ," → ","
    text = re.sub(r"[,;:]\s*([.!?])", r"\1", text)             # ", ." → "."
    text = re.sub(r"([.!?])(?:\s*[,;:.])+", r"\1", text)       # ". ," → "."
    text = re.sub(r"^[\s,;:.!?]+", "", text)
    text = re.sub(r"[\s,;:]+$", "", text)
    return text.strip()


def render(template: Template, prefix: Sequence[str], tags: Sequence[str], caption: str | None) -> str:
    """The caption from `template`; a prefix (always-first + trigger) the template does not place goes first."""
    values = {"trigger": ", ".join(prefix), "tags": ", ".join(tags), "caption": (caption or "").strip()}
    text = tidy(template.text.format(**values))
    if prefix and not template.uses("trigger"):
        text = tidy(", ".join(prefix) + ", " + text)
    return text


# ---------------------------------------------------------------- pruning inside sentences


def _word_pattern(phrase: str) -> re.Pattern[str]:
    """`phrase` as whole words, case-insensitive; spaces/underscores/hyphens between its words match any of them."""
    words = [re.escape(w) for w in re.split(r"[\s_]+", phrase.strip()) if w]
    return re.compile(r"(?<![\w'-])" + r"[\s_-]+".join(words) + r"(?:e?s)?(?![\w'-])", re.IGNORECASE)


_GAP = "\x00"  # where a removed phrase was, while the sentence is mended
_ATTACH = r"(?:with|wearing|having|has|have|featuring)"


def _mend(text: str) -> str:
    """Grammar the removals broke: an article or joiner that only served a removed phrase goes with
    it (`"with long hair and blue eyes sitting"` → `"sitting"`), one still serving a kept phrase stays
    (`"with long hair and a red bow"` → `"with a red bow"`)."""
    gap, flags = _GAP, re.IGNORECASE
    rules = [
        (rf"\b{_ARTICLES}\s+{gap}", gap),                                   # "a <gap>" → "<gap>"
        (rf"{gap}(?:\s*(?:,|\band\b|\bor\b)\s*{gap})+", gap),            # "<gap>, <gap> and <gap>"
        (rf"\b({_ATTACH})\s+{gap}\s*,?\s+and\s+", r"\1 "),                # "with <gap> and X" → "with X"
        (rf"(?:,\s*)?\b{_ATTACH}\s+{gap}", ""),                              # "with <gap>" → ""
        (rf"(?:,\s*|\s+\b(?:and|or)\s+){gap}", ""),                          # "X and <gap>" → "X"
        (rf"{gap}\s*(?:,\s*|\b(?:and|or)\b\s*)?", ""),                       # "<gap> and X" → "X"
    ]
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text, flags=flags)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])\s*(?=[,;:.!?]|$)", "", text)
    text = re.sub(r"(^|[.!?]\s*)[,;:]\s*", r"\1", text)
    return text.strip()


def _trait_phrases(sentence: str, rules: PruneRules, options: PruneOptions) -> list[tuple[str, str]]:
    """Runs of up to four descriptive words (no joiner inside) that the prune rules remove, longest first."""
    found: list[tuple[str, str]] = []
    kept_context = {m.group(2).lower() for m in re.finditer(
        rf"\b([\w'-]+)\s+(?:{_ARTICLES}\s+)?([\w'-]+(?:\s+[\w'-]+){{0,{_MAX_PHRASE - 1}}})", sentence)
        if rules.keeps(f"{m.group(1)} {m.group(2)}")}  # "holding a fox tail": an action, not a trait
    for run in re.split(r"[^\w'-]*\b(?:" + "|".join(JOINERS) + r")\b[^\w'-]*|[,.;:!?()]", sentence, flags=re.IGNORECASE):
        words = run.split()
        i = 0
        while i < len(words):
            step = 1
            for length in range(min(_MAX_PHRASE, len(words) - i), 0, -1):
                phrase = " ".join(words[i:i + length])
                group = rules.classify(phrase)
                if group is None:
                    continue
                step = length  # found: its words are decided, removed or kept
                if phrase.lower() not in kept_context and ((group.kind == TRAIT and options.character)
                                                           or (group.kind == OUTFIT and options.clothes)):
                    found.append((phrase, f"{group.kind}: {group.name}"))
                break
            i += step
    return found


def prune_sentence(sentence: str, *, names: Sequence[str] = (), phrases: Sequence[tuple[str, str]] = (),
                   rules: PruneRules | None = None,
                   options: PruneOptions = PruneOptions()) -> tuple[str, list[tuple[str, str]]]:
    """`sentence` without the character's `names`, the pruned tags `phrases` (tag, why) and the
    trait phrases `rules` find, each as whole words; and what was removed, with why."""
    targets: list[tuple[str, str]] = [(name, "character name") for name in names] + list(phrases)
    if rules is not None and (options.character or options.clothes):
        targets += _trait_phrases(sentence, rules, options)
    removed: list[tuple[str, str]] = []
    text = sentence
    for phrase, why in sorted(targets, key=lambda item: -len(item[0])):
        pattern = _word_pattern(phrase)
        if pattern.search(text):
            text = pattern.sub(_GAP, text)
            removed.append((phrase, why))
    if not removed:
        return sentence, removed
    text = _mend(text)
    if sentence[:1].isupper() and text[:1].islower():
        text = text[0].upper() + text[1:]
    return text, removed


# ---------------------------------------------------------------- the prompt limit

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Cut:
    """A caption shortened to fit: tokens before and after, and the text dropped."""

    before: int
    after: int
    dropped: str


def fit_tokens(text: str, limit: int, count: Callable[[str], int], *, keep: str = "") -> tuple[str, Cut | None]:
    """`text` if it fits in `limit` tokens; else cut at the last sentence end that fits, or failing
    that at the last comma that fits. `keep` (the trigger prefix) is never cut."""
    before = count(text)
    if limit <= 0 or before <= limit:
        return text, None
    pieces = _SENTENCE_END.split(text)
    for end in range(len(pieces) - 1, 0, -1):
        candidate = " ".join(pieces[:end])
        if count(candidate) <= limit and len(candidate) >= len(keep):
            return candidate, Cut(before, count(candidate), text[len(candidate):].strip())
    parts = text.split(",")
    for end in range(len(parts) - 1, 0, -1):
        candidate = ",".join(parts[:end]).rstrip()
        if len(candidate) < len(keep.rstrip(", ")):
            break
        if count(candidate) <= limit:
            return candidate, Cut(before, count(candidate), text[len(candidate):].lstrip(", ").strip())
    return text, Cut(before, before, "")  # nothing can go without cutting the trigger: reported, kept
