"""Caption findings: everything `loraprep captions lint` knows, plus two dataset-wide checks.

The lint (`prep.captions.lint`) is run as it is, and its own fix commands are used. Added here:

- **identical captions** on different images (captions compared as sets of tags, since training
  shuffles them; images that are duplicates of each other are not reported again here);
- **a tag in nearly every image** that is neither the trigger nor a class token: it says nothing
  that tells images apart, so for a character LoRA it is a pruning candidate (the trigger should
  learn it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

from prep.captions.dataset import CaptionDataset
from prep.captions.lint import LintOptions, LintReport, fix_commands, lint_dataset
from prep.captions.tokens import TokenCounter
from prep.doctor.report import Finding, quote
from prep.sidecars import META_SUFFIX
from prep.tags import split_tags, tag_key

COMMON_MIN_IMAGES = 8  # below this many images, "nearly every image" means nothing


def _lint_fix(report: LintReport, label: str, kind: str, trigger: str | None) -> str | None:
    commands = fix_commands(report, label, kind, trigger, limit=1)
    if commands:
        return commands[0]
    return {"missing-caption": f"loraprep tag {quote(label)}",
            "empty-caption": f"loraprep tag {quote(label)} --mode overwrite",
            "unreadable-caption": f"loraprep captions edit {quote(label)}",
            "too-long": f"loraprep captions edit {quote(label)}"}.get(kind)


def lint_findings(dataset: CaptionDataset, counter: TokenCounter, label: str, trigger: str | None,
                  max_tokens: int) -> list[Finding]:
    report = lint_dataset(dataset, counter, LintOptions(trigger=trigger, max_tokens=max_tokens))
    fixes = {kind: _lint_fix(report, label, kind, trigger) for kind in report.by_kind()}
    found = []
    for problem in report.problems:
        data = {k: v for k, v in problem.to_dict().items() if k not in ("kind", "path", "message")}
        fix = fixes[problem.kind]
        if problem.kind in ("tag-variants", "likely-typo") and problem.tag and problem.suggestion:
            fix = f"loraprep captions replace {quote(label)} {quote(problem.tag)} {quote(problem.suggestion)}"
        found.append(Finding("captions", problem.kind, (problem.path,), problem.message, fix, data))
    return found


def _protected(trigger: str | None, class_tokens: Iterable[str]) -> set[str]:
    """Tag keys a caption is meant to carry everywhere: the trigger and the class tokens (each
    class-token string whole, each of its comma-separated tags, and each word)."""
    keys = set()
    for value in ([trigger] if trigger else []) + list(class_tokens):
        keys.add(tag_key(value))
        for tag in split_tags(value):
            keys.add(tag_key(tag))
            keys.update(tag_key(word) for word in tag.split())
    return keys


def common_tag_findings(dataset: CaptionDataset, label: str, trigger: str | None,
                        class_tokens: Sequence[str], share: float) -> list[Finding]:
    images = [f for f in dataset.files if f.image is not None]
    if len(images) < COMMON_MIN_IMAGES:
        return []
    protected = _protected(trigger, class_tokens)
    found = []
    for tag, count in dataset.tag_counts().items():
        if count / len(images) < share or tag_key(tag) in protected:
            continue
        carrying = tuple(f.image for f in images if tag in f.tags)  # type: ignore[misc]
        found.append(Finding(
            "captions", "common-tag", carrying,
            f"'{tag}' is in {count} of {len(images)} images ({count / len(images):.0%}) and is neither the "
            "trigger nor a class token: it tells no image apart (for a character LoRA, prune it so the "
            "trigger learns it)",
            f"loraprep captions remove {quote(label)} {quote(tag)}",
            {"tag": tag, "count": count, "share": round(count / len(images), 4)}))
    return found


def identical_caption_findings(dataset: CaptionDataset, label: str, same_picture: dict[str, int]) -> list[Finding]:
    """Captions with the same set of tags on two or more images that are not copies of each other.

    `same_picture` maps an image to its duplicate group's number."""
    groups: dict[frozenset[str], list[str]] = defaultdict(list)
    texts: dict[frozenset[str], str] = {}
    for f in dataset.files:
        if f.image is None or not f.tags:
            continue
        key = frozenset(tag_key(t) for t in f.tags)
        groups[key].append(f.image)
        texts.setdefault(key, f.text or "")
    found = []
    for key, paths in groups.items():
        pictures = {same_picture.get(p, -i - 1) for i, p in enumerate(paths)}
        if len(paths) < 2 or len(pictures) < 2:
            continue
        found.append(Finding(
            "captions", "identical-captions", tuple(paths),
            f"{len(paths)} different images share the caption '{texts[key]}': training cannot tell them apart",
            f"loraprep tag {quote(label)} --mode append",
            {"caption": texts[key]}))
    return found


def shared_sidecar_findings(groups: Sequence[Sequence[str]], label: str, extension: str) -> list[Finding]:
    """Images of one folder that share a caption and metadata file (`a.png` and `a.jpg` both own
    `a.txt`): one caption trains two pictures, and a step writing one's metadata overwrites the
    other's. The fix renames all but the first, keeping the extension in the name, and tags them."""
    found = []
    where = label.rstrip("/") + "/"
    for group in groups:
        first = PurePosixPath(group[0])
        caption = first.with_suffix(extension).as_posix()
        renames = [f"mv {quote(where + other)} {quote(where + _with_extension_in_stem(other))}" for other in group[1:]]
        found.append(Finding(
            "captions", "shared-sidecar", tuple(group),
            f"{' and '.join(group)} share one caption file, {caption} (and {first.stem}{META_SUFFIX}): both "
            "train on one caption, and a step writing one's metadata overwrites the other's",
            " && ".join([*renames, f"loraprep tag {quote(label)}"]), {"caption": caption}))
    return found


def _with_extension_in_stem(path: str) -> str:
    """`sub/a.png` → `sub/a_png.png`: the name prep.naming gives such an image's outputs."""
    pure = PurePosixPath(path)
    return pure.with_name(f"{pure.stem}_{pure.suffix.lstrip('.').lower()}{pure.suffix}").as_posix()
