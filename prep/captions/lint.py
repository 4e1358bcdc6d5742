"""Caption problems worth fixing before training, each tied to a file and said in a sentence.

Per-caption checks (missing, empty, trigger, duplicates, length) need only that caption; the
dataset-wide ones (one tag spelled several ways, rare tags that look like typos of common ones)
need the whole dataset's tag counts.
"""

from __future__ import annotations

import shlex
from collections import Counter, defaultdict
from dataclasses import dataclass

from prep.captions.dataset import CaptionDataset, CaptionFile
from prep.captions.edit import tag_key
from prep.captions.tokens import ESTIMATE_MARK, CaptionLengths, TokenCounter

KINDS: dict[str, str] = {
    "missing-caption": "image without a caption file",
    "orphan-caption": "caption file whose image is gone",
    "unreadable-caption": "caption file that is not UTF-8 text",
    "empty-caption": "caption file with no tags",
    "multi-line": "caption on several lines (kohya trains on the first line only)",
    "trigger-missing": "trigger word absent",
    "trigger-not-first": "trigger word present but not first",
    "duplicate-tag": "same tag twice in one caption (maybe spelled differently)",
    "tag-variants": "tag spelled differently elsewhere (case, spaces, underscores)",
    "likely-typo": "tag one or two letters away from a much more common one",
    "too-long": "caption longer than the token limit",
}


@dataclass(frozen=True)
class LintOptions:
    trigger: str | None = None
    max_tokens: int = 75
    rare_max: int = 1  # a tag in at most this many images is checked for any one-letter slip
    typo_ratio: int = 10  # a more frequent tag is a typo when one this many times as common is a swap/slip away


@dataclass(frozen=True)
class Problem:
    kind: str
    path: str
    message: str
    tag: str | None = None
    suggestion: str | None = None  # the spelling to use instead of `tag`

    def to_dict(self) -> dict:
        data = {"kind": self.kind, "path": self.path, "message": self.message}
        if self.tag is not None:
            data["tag"] = self.tag
        if self.suggestion is not None:
            data["suggestion"] = self.suggestion
        return data


@dataclass(frozen=True)
class LintReport:
    files: int
    counter: str
    problems: tuple[Problem, ...]

    def by_kind(self) -> Counter[str]:
        return Counter(p.kind for p in self.problems)

    def paths(self) -> set[str]:
        return {p.path for p in self.problems}

    def to_dict(self) -> dict:
        return {"files": self.files, "token_counter": self.counter, "problem_count": len(self.problems),
                "by_kind": dict(self.by_kind()), "problems": [p.to_dict() for p in self.problems]}


class _Keys(dict):
    """tag → tag_key, computed once per distinct tag (lint sees each tag thousands of times)."""

    def __missing__(self, tag: str) -> str:
        self[tag] = key = tag_key(tag)
        return key


def _file_problems(f: CaptionFile, options: LintOptions, keys: _Keys) -> list[Problem]:
    name = f.name
    if f.image is None:
        return [Problem("orphan-caption", f.caption, f"{f.caption} has no image beside it")]
    if not f.exists:
        return [Problem("missing-caption", name, f"no {f.caption.rpartition('/')[2]}")]
    if f.unreadable:
        return [Problem("unreadable-caption", name, f"{f.caption} is not UTF-8 text")]
    if not f.tags:
        return [Problem("empty-caption", name, f"{f.caption} is empty")]
    problems = []
    if "\n" in (f.text or ""):
        lines = f.text.count("\n") + 1  # type: ignore[union-attr]
        problems.append(Problem("multi-line", name, f"{f.caption} has {lines} lines; kohya reads only the first"))
    if options.trigger and options.trigger not in f.tags:
        problems.append(Problem("trigger-missing", name, f"no trigger '{options.trigger}'", options.trigger))
    elif options.trigger and f.tags[0] != options.trigger:
        problems.append(Problem("trigger-not-first", name, f"trigger '{options.trigger}' is not first",
                                options.trigger))
    tag_keys = [keys[t] for t in f.tags]
    if len(set(tag_keys)) == len(tag_keys):
        return problems
    spellings: dict[str, list[str]] = defaultdict(list)
    for tag, key in zip(f.tags, tag_keys):
        spellings[key].append(tag)
    for same in spellings.values():
        if len(same) > 1:
            shown = " and ".join(f"'{t}'" for t in dict.fromkeys(same))
            problems.append(Problem("duplicate-tag", name, f"{shown} {'twice' if len(set(same)) == 1 else 'both'}",
                                    same[0]))
    return problems


def _osa_distance(a: str, b: str) -> int:
    """Edit distance counting a swap of neighbours as one edit (typos are mostly these)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], previous2[j - 2] + 1)
        previous2, previous = previous, row
    return previous[-1]


def _deletions(word: str) -> set[str]:
    return {word} | {word[:i] + word[i + 1:] for i in range(len(word))}


def _one_edit(typo: str, word: str) -> tuple[str, int] | None:
    """How `typo` becomes `word` in one edit, and where: ("swap" | "insert" | "delete" | "replace", index)."""
    if len(typo) == len(word):
        diffs = [i for i, (a, b) in enumerate(zip(typo, word)) if a != b]
        if len(diffs) == 1:
            return "replace", diffs[0]
        if len(diffs) == 2 and diffs[1] == diffs[0] + 1 and typo[diffs[0]] == word[diffs[1]] \
                and typo[diffs[1]] == word[diffs[0]]:
            return "swap", diffs[0]
        return None
    if abs(len(typo) - len(word)) != 1:
        return None
    short, long = sorted((typo, word), key=len)
    at = next((i for i, (a, b) in enumerate(zip(short, long)) if a != b), len(short))
    if short[at:] != long[at + 1:]:
        return None
    return ("delete" if len(typo) > len(word) else "insert"), at


def _slip(typo: str, word: str) -> bool:
    """A fingers-slipped typo rather than another real word: neighbours swapped anywhere, or a letter
    dropped or doubled inside a word (`smlie`, `lng hair`, `smille`); never a changed letter (`shirt`
    / `skirt`) or a letter added or lost at a word's start (`hair` / `chair`)."""
    edit = _one_edit(typo, word)
    if edit is None or edit[0] == "replace":
        return False
    kind, at = edit
    longer = typo if kind == "delete" else word
    return kind == "swap" or (at > 0 and longer[at - 1] != " ")


def typo_suggestions(counts: Counter[str], rare_max: int = 1, keys: _Keys | None = None,
                     ratio: int = 10) -> dict[str, str]:
    """Tag → the much more common tag it is probably a typo of.

    A rare tag (at most `rare_max` images) is checked against tags at least 3× as common, one edit
    away (two for long tags). Any other tag is checked against tags `ratio`× as common, for a slip
    of the fingers only (`_slip`): `smlie` in 11 images next to `smile` in 200 is still a typo.
    Candidates come from a deletion index (every tag with one letter removed), so the cost grows
    with the number of tags, not its square.
    """
    keys = keys if keys is not None else _Keys()
    index: dict[str, list[str]] = defaultdict(list)
    for tag, n in counts.items():
        if n > rare_max and len(tag) >= 4:
            for variant in _deletions(tag):
                index[variant].append(tag)
    found = {}
    for tag, n in counts.items():
        if len(tag) < 4:
            continue
        candidates = {c for v in _deletions(tag) for c in index.get(v, ())}
        candidates = {c for c in candidates if keys[c] != keys[tag] and c.rstrip("s") != tag.rstrip("s")}
        if n <= rare_max:
            limit = 1 if len(tag) < 8 else 2
            good = [c for c in candidates if counts[c] >= max(3, 3 * n) and _osa_distance(tag, c) <= limit]
        else:
            good = [c for c in candidates if counts[c] >= ratio * n and _slip(tag, c)]
        if good:
            found[tag] = max(good, key=lambda c: (counts[c], c))
    return found


def _dataset_problems(dataset: CaptionDataset, counts: Counter[str], options: LintOptions,
                      keys: _Keys) -> list[Problem]:
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    for tag, n in counts.items():
        spellings[keys[tag]][tag] = n
    preferred = {tag: group.most_common(1)[0][0] for group in spellings.values() if len(group) > 1 for tag in group}
    typos = typo_suggestions(counts, options.rare_max, keys, options.typo_ratio)
    problems = []
    for f in dataset.files:
        if f.image is None:
            continue
        for tag in dict.fromkeys(f.tags):
            if tag in preferred and preferred[tag] != tag and preferred[tag] not in f.tags:
                best = preferred[tag]
                problems.append(Problem("tag-variants", f.name,
                                        f"'{tag}' is written '{best}' in {counts[best]} image(s)", tag, best))
            if tag in typos:
                best = typos[tag]
                problems.append(Problem("likely-typo", f.name,
                                        f"'{tag}' ({counts[tag]}×) looks like '{best}' ({counts[best]}×)", tag, best))
    return problems


def _length_problems(dataset: CaptionDataset, counter: TokenCounter, limit: int) -> list[Problem]:
    mark = "" if counter.exact else ESTIMATE_MARK
    length = CaptionLengths(counter)
    problems = []
    for f in dataset.files:
        if f.image is not None and f.text and (n := length(f.text, f.tags)) > limit:
            problems.append(Problem("too-long", f.name, f"{mark}{n} CLIP tokens > {limit}"))
    return problems


def fix_commands(report: LintReport, folder: str, kind: str, trigger: str | None, limit: int = 3) -> list[str]:
    """`loraprep captions …` commands that fix problems of `kind` (for the CLI to suggest)."""
    q = shlex.quote
    if kind == "trigger-missing" and trigger:
        return [f"loraprep captions add {q(folder)} {q(trigger)} --front"]
    if kind == "trigger-not-first" and trigger:
        return [f"loraprep captions move-first {q(folder)} {q(trigger)}"]
    if kind == "duplicate-tag":
        return [f"loraprep captions dedupe {q(folder)} --loose"]
    if kind == "multi-line":
        return [f"loraprep captions join-lines {q(folder)}"]
    if kind in ("tag-variants", "likely-typo"):
        pairs = dict.fromkeys((p.tag, p.suggestion) for p in report.problems if p.kind == kind and p.tag and p.suggestion)
        return [f"loraprep captions replace {q(folder)} {q(old)} {q(new)}" for old, new in list(pairs)[:limit]]
    return []


def lint_dataset(dataset: CaptionDataset, counter: TokenCounter, options: LintOptions = LintOptions()) -> LintReport:
    """Every problem found, grouped by file in dataset order."""
    keys = _Keys()
    problems = [p for f in dataset.files for p in _file_problems(f, options, keys)]
    problems += _dataset_problems(dataset, dataset.tag_counts(), options, keys)
    problems += _length_problems(dataset, counter, options.max_tokens)
    order = {f.name: i for i, f in enumerate(dataset.files)}
    kinds = list(KINDS)
    problems.sort(key=lambda p: (order.get(p.path, len(order)), kinds.index(p.kind)))
    return LintReport(len(dataset.files), counter.name, tuple(problems))
