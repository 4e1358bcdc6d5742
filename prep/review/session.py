"""The caption editor's state and every edit it can make, with no UI in it.

Each edit is journalled and written to disk at once (prep.captions.journal, the journal the bulk
commands use), so quitting, Ctrl-C, a crash or a dropped SSH connection never loses one, and both
`u` after a restart and `loraprep captions undo` see it. A caption changed on disk by someone else
since the editor read it is never overwritten: the edit is refused and the disk version reloaded.
Undo/redo restore exact bytes. A caption that is not UTF-8 is shown but never rewritten.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from prep.atomic import clean_stale_temporaries, write_text_atomic
from prep.captions.dataset import STATE_DIR, CaptionDataset, CaptionFile, list_captions, read_current
from prep.captions.edit import AddTags, Operation, RemoveTags, ReplaceTag, caption_bytes, tag_key
from prep.captions.journal import FileState, UndoResult, apply_changes, redo_last, undo_last
from prep.captions.lint import LintOptions, LintReport, Problem, lint_dataset
from prep.captions.show import tagger_scores
from prep.captions.tokens import TokenCounter, load_token_counter
from prep.errors import LoraprepError
from prep.records import Drop
from prep.review.filters import Term, parse_filter
from prep.review.items import LAZY_FROM, ItemList, digest, item_for
from prep.sidecars import check_caption_extension, read_meta
from prep.tags import split_tags


REVIEW_FILE = Path(STATE_DIR) / "review.json"
REVIEW_SCHEMA = "loraprep.review/1"


def read_accepted(root: Path) -> dict[str, str]:
    """caption path → sha256 of the bytes that were accepted ({} when nothing was)."""
    try:
        data = json.loads((root / REVIEW_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    accepted = data.get("accepted") if isinstance(data, dict) and data.get("schema") == REVIEW_SCHEMA else None
    return accepted if isinstance(accepted, dict) else {}


def write_accepted(root: Path, accepted: dict[str, str | None]) -> None:
    write_text_atomic(root / REVIEW_FILE, json.dumps({"schema": REVIEW_SCHEMA, "accepted": accepted}) + "\n")


@dataclass(frozen=True)
class Edit:
    """One item's change: exact bytes and editor state before and after (for undo/redo)."""

    index: int
    before: bytes | None
    after: bytes | None
    tags_before: tuple[str, ...]
    tags_after: tuple[str, ...]
    on_before: tuple[bool, ...]
    on_after: tuple[bool, ...]


@dataclass(frozen=True)
class Outcome:
    """What an action did, in a line for the status bar; `ok` False when nothing was written."""

    message: str
    ok: bool = True


class Session:
    """The open dataset: items, filter, journal-backed undo/redo, vocabulary, and lazily computed lint
    and face info."""

    def __init__(self, root: Path, extension: str = ".txt", lint_options: LintOptions = LintOptions(),
                 counter: TokenCounter | None = None, *, lazy_from: int = LAZY_FROM) -> None:
        """Lists the dataset and reads its captions; from `lazy_from` images on, only as they are
        needed (the editor reads the rest between keys: see `prep.review.items`)."""
        self.root = Path(root)
        self.extension = check_caption_extension(extension)
        self.skipped: list[Drop] = []  # folder links not entered, images sharing a caption (prep.walk)
        pairs = [pair for pair in list_captions(self.root, self.extension, self.skipped) if pair[1] is not None]
        self.items = ItemList(self.root, pairs, read_accepted(self.root))
        if len(pairs) < lazy_from:
            self.items.complete()
        self.lint_options = lint_options
        self._counter = counter
        self._lint: LintReport | None = None
        self._problems: dict[str, list[Problem]] = {}
        self._faces: dict[int, bool] = {}
        self._by_caption = {caption: i for i, (caption, _, _) in enumerate(pairs)}
        # (journal entry, caption) → tags and on/off before and after: the editor-only state
        # (tags turned off) that an undo or redo of this session's edits puts back on screen.
        self._views: dict[tuple[str, str], tuple[tuple[str, ...], tuple[bool, ...], tuple[str, ...], tuple[bool, ...]]] = {}
        self.last_operation: AddTags | RemoveTags | ReplaceTag | None = None
        self._keys: dict[str, str] = {}
        self._ranked: list[tuple[str, int]] | None = None
        self.filter_text = ""
        self.visible: list[int] = list(range(len(self.items)))

    @property
    def frequency(self) -> Counter[str]:
        """How many images carry each tag (every image's once `loaded`)."""
        return self.items.frequency

    @property
    def loaded(self) -> bool:
        """Whether every caption has been read."""
        return self.items.loaded

    def read_more(self) -> bool:
        """Read the next batch of captions not read yet; True once all are."""
        return self.items.read_batch()

    def finish_loading(self) -> None:
        """Read every caption not read yet (what needs all of them calls this first)."""
        if not self.items.loaded:
            self.items.complete()
            self._lint = self._ranked = None

    def tag_count(self, tag: str) -> int | None:
        """Images carrying `tag`; None until every caption has been read."""
        return self.items.frequency[tag] if self.items.loaded else None

    def clean_temporaries(self) -> list[Path]:
        """Remove what a killed editor or command left half-written (only our own, only dead runs'):
        safe on any thread, and run off the UI thread because it walks the whole folder."""
        return clean_stale_temporaries(self.root)

    # ---- reading

    def name(self, index: int) -> str:
        return self.items.name(index)

    def caption_text(self, index: int) -> str:
        item = self.items[index]
        if item.disk is None:
            return "(no caption file)"
        text = item.disk.decode("utf-8", "replace").strip()
        return f"{item.locked}\n{text}" if item.locked else text

    def multiline(self, index: int) -> bool:
        """True when the caption file has several lines (kohya trains on the first one only)."""
        disk = self.items[index].disk
        return disk is not None and b"\n" in disk.strip()

    def scores(self, index: int) -> dict[str, tuple[float, str]]:
        image = self.items[index].file.image
        return tagger_scores(read_meta(self.root / image)) if image else {}

    def score_of(self, scores: dict[str, tuple[float, str]], tag: str) -> float | None:
        found = scores.get(tag_key(tag))
        return found[0] if found else None

    def no_face(self, index: int) -> bool:
        """True when a face detector ran on this image and found nothing (`faces: []` in its meta)."""
        if index not in self._faces:
            image = self.items[index].file.image
            faces = read_meta(self.root / image).get("faces") if image else None
            self._faces[index] = isinstance(faces, list) and not faces
        return self._faces[index]

    def lint(self) -> LintReport:
        """Problems in the captions as they are now (recomputed after edits, only when asked)."""
        self.finish_loading()
        if self._lint is None:
            if self._counter is None:
                self._counter = load_token_counter()
            current = CaptionDataset(self.root, self.extension, tuple(
                CaptionFile.make(i.file.caption, i.file.image, i.disk) for i in self.items))
            self._lint = lint_dataset(current, self._counter, self.lint_options)
            self._problems = defaultdict(list)
            for problem in self._lint.problems:
                self._problems[problem.path].append(problem)
        return self._lint

    def problems(self, index: int) -> list[str]:
        """The image's lint problems, if lint has run since the last edit."""
        return [p.message for p in self._problems.get(self.name(index), ())] if self._lint else []

    # ---- filtering and moving

    def key(self, tag: str) -> str:
        """`Red_Hair` → `red hair`: how filters and autocomplete compare tags (computed once per tag)."""
        found = self._keys.get(tag)
        if found is None:
            found = self._keys[tag] = tag_key(tag)
        return found

    def matches(self, index: int, term: Term) -> bool:
        item = self.items[index]
        kind = term.kind
        if kind == "contains":
            return any(term.value in self.key(t) for t in item.tags)
        if kind == "exact":
            return any(term.value == self.key(t) for t in item.tags)
        if kind == "without":
            return all(term.value != self.key(t) for t in item.tags)
        if kind == "lint":
            self.lint()
            return any(not term.value or p.kind == term.value for p in self._problems.get(self.name(index), ()))
        if kind == "noface":
            return self.no_face(index)
        if kind == "todo":
            return not item.is_accepted
        if kind == "done":
            return item.is_accepted
        if kind == "folder":
            return self.name(index).startswith(term.value + "/")
        raise ValueError(kind)

    def set_filter(self, text: str) -> int:
        """Show only images matching every term; returns how many match.

        Raises UsageError (and keeps the current filter) for a term that cannot match, such as
        an unknown lint kind.
        """
        terms = parse_filter(text)
        self.finish_loading()
        self.filter_text = text.strip()
        self.visible = [i for i in range(len(self.items)) if all(self.matches(i, t) for t in terms)]
        return len(self.visible)

    # ---- the dataset's vocabulary

    def ranked_tags(self) -> list[tuple[str, int]]:
        """Every tag with the number of images carrying it, most common first."""
        self.finish_loading()
        if self._ranked is None:
            self._ranked = [(t, n) for t, n in sorted(self.frequency.items(), key=lambda tn: (-tn[1], tn[0])) if n > 0]
        return self._ranked

    def suggest(self, fragment: str, limit: int = 6, exclude: set[str] = frozenset()) -> list[tuple[str, int]]:
        """Tags for what is being typed: those starting with it first, then those containing it,
        each most common first (case and `_`/space ignored)."""
        needle = self.key(fragment)
        if not needle:
            return []
        starts, inside = [], []
        for tag, count in self.ranked_tags():
            if tag in exclude:
                continue
            key = self.key(tag)
            if key.startswith(needle):
                if key != needle or tag != fragment.strip():
                    starts.append((tag, count))
                if len(starts) >= limit:
                    break
            elif needle in key and len(inside) < limit:
                inside.append((tag, count))
        return (starts + inside)[:limit]

    def next_problem(self, position: int) -> int | None:
        """The visible position of the next image with a lint problem after `position` (wrapping)."""
        self.lint()
        paths = self._problems
        count = len(self.visible)
        for step in range(1, count + 1):
            candidate = (position + step) % count
            if self.name(self.visible[candidate]) in paths:
                return candidate
        return None

    # ---- editing

    def _state(self, index: int, tags: list[str], on: list[bool]) -> Edit:
        item = self.items[index]
        written = [t for t, keep in zip(tags, on) if keep]
        after = caption_bytes(written) if (written or item.disk is not None) else None
        return Edit(index, item.disk, after, tuple(item.tags), tuple(tags), tuple(item.on), tuple(on))

    def _show(self, index: int, disk: bytes | None, tags: tuple[str, ...], on: tuple[bool, ...]) -> None:
        item = self.items[index]
        self.frequency.subtract(set(item.tags))
        item.tags, item.on, item.disk, item.edited, item.locked = list(tags), list(on), disk, True, None
        self.frequency.update(set(item.tags))
        self._lint = self._ranked = None

    def _commit(self, description: str, edits: list[Edit]) -> tuple[list[Edit], list[Edit]]:
        """Journal and write edits (only those whose files still hold what the editor saw).

        The same journal as the bulk commands: `captions undo` sees editor edits and `u` sees theirs.
        Returns (written, left alone); left-alone items are reloaded from disk.
        """
        visible = [e for e in edits if e.before == e.after]  # e.g. moving a tag that is off: nothing on disk
        for edit in visible:
            self._show(edit.index, edit.after, edit.tags_after, edit.on_after)
        to_write = [e for e in edits if e.before != e.after]
        if not to_write:
            return visible, []
        result = apply_changes(self.root, description, [
            FileState(self.items[e.index].file.caption, e.before, e.after) for e in to_write])
        written = {s.caption for s in result.written}
        done, skipped = [], []
        for edit in to_write:
            caption = self.items[edit.index].file.caption
            if caption in written:
                self._show(edit.index, edit.after, edit.tags_after, edit.on_after)
                if result.entry is not None:
                    self._views[(result.entry.name, caption)] = (edit.tags_before, edit.on_before,
                                                                 edit.tags_after, edit.on_after)
                done.append(edit)
            else:
                self.reload(edit.index)
                skipped.append(edit)
        return visible + done, skipped

    def reload(self, index: int) -> None:
        item = self.items[index]
        self.frequency.subtract(set(item.tags))
        fresh = item_for(item.file, read_current(self.root, item.file.caption))
        item.disk, item.tags, item.on, item.locked = fresh.disk, fresh.tags, fresh.on, fresh.locked
        self.frequency.update(set(item.tags))
        self._lint = self._ranked = None

    def change(self, index: int, tags: list[str], on: list[bool] | None = None, *, what: str = "edit") -> Outcome:
        """Set an item's tags (and which are on); journalled and saved at once, undoable."""
        item = self.items[index]
        if item.locked:
            return Outcome(item.locked, ok=False)
        on = list(item.on if on is None else on)
        if tags == item.tags and on == item.on:
            return Outcome("no change")
        done, _ = self._commit(f"editor: {what} in {item.file.caption}", [self._state(index, tags, on)])
        if not done:
            return Outcome(f"{item.file.caption} changed on disk since it was opened: not saved, reloaded", ok=False)
        return Outcome(f"saved {item.file.caption}")

    def delete_tag(self, index: int, position: int) -> Outcome:
        """Remove the tag at `position` (only that occurrence of a tag written twice)."""
        item = self.items[index]
        tag = item.tags[position]
        self.last_operation = RemoveTags((tag,))
        outcome = self.change(index, item.tags[:position] + item.tags[position + 1:],
                              item.on[:position] + item.on[position + 1:], what=f"remove '{tag}'")
        return Outcome(f"removed '{tag}' — {outcome.message}", outcome.ok) if outcome.ok else outcome

    def add_tags(self, index: int, text: str) -> Outcome:
        item = self.items[index]
        new = [t for t in dict.fromkeys(split_tags(text)) if t not in item.tags]
        if not new:
            return Outcome("nothing to add")
        self.last_operation = AddTags(tuple(new))
        outcome = self.change(index, item.tags + new, item.on + [True] * len(new), what=f"add {', '.join(new)}")
        return Outcome(f"added {', '.join(new)} — {outcome.message}", outcome.ok) if outcome.ok else outcome

    def toggle_tag(self, index: int, position: int) -> Outcome:
        """Turn the tag at `position` off (kept in the list, not written) or back on."""
        item = self.items[index]
        on = list(item.on)
        on[position] = not on[position]
        state = "on" if on[position] else "off"
        outcome = self.change(index, list(item.tags), on, what=f"turn '{item.tags[position]}' {state}")
        return Outcome(f"'{item.tags[position]}' {state} — {outcome.message}", outcome.ok) if outcome.ok else outcome

    def move_tag(self, index: int, position: int, offset: int) -> Outcome:
        item = self.items[index]
        tags, on = list(item.tags), list(item.on)
        target = max(0, min(len(tags) - 1, position + offset))
        tags.insert(target, tags.pop(position))
        on.insert(target, on.pop(position))
        return self.change(index, tags, on, what=f"move '{tags[target]}'")

    def accept(self, index: int) -> Outcome:
        """Mark the caption as reviewed; remembered in `.loraprep/review.json` until it changes."""
        item = self.items[index]
        item.accepted = item.disk
        self.finish_loading()
        write_accepted(self.root, {i.file.caption: digest(i.disk) for i in self.items if i.is_accepted})
        return Outcome(f"accepted {self.name(index)}")

    def rename_tag(self, index: int, position: int, text: str) -> Outcome:
        """Replace the tag at `position` in place: by one tag, by several (commas), or by none."""
        item = self.items[index]
        old = item.tags[position]
        new = [t for t in dict.fromkeys(split_tags(text)) if t == old or t not in item.tags]
        if new == [old]:
            return Outcome("no change")
        self.last_operation = ReplaceTag(old, text.strip())
        tags = item.tags[:position] + new + item.tags[position + 1:]
        on = item.on[:position] + [item.on[position]] * len(new) + item.on[position + 1:]
        outcome = self.change(index, tags, on, what=f"rename '{old}' → '{', '.join(new)}'")
        return Outcome(f"'{old}' → '{', '.join(new) or '(removed)'}' — {outcome.message}", True) if outcome.ok \
            else outcome

    def affected(self, operation: Operation) -> int:
        """How many shown images `operation` would change (for the confirmation before it runs)."""
        self.finish_loading()
        return sum(1 for i in self.visible if not self.items[i].locked
                   and list(operation(tuple(self.items[i].tags))) != self.items[i].tags)

    def apply_to_filtered(self, operation: Operation | None = None) -> Outcome:
        """Apply `operation` (default: repeat the last tag add/delete/rename) to every shown image,
        as one journal entry (one undo)."""
        operation = operation or self.last_operation
        if operation is None:
            return Outcome("no tag change to repeat yet: add, delete or rename a tag first", ok=False)
        self.finish_loading()
        edits = []
        locked = sum(1 for index in self.visible if self.items[index].locked)
        for index in self.visible:
            item = self.items[index]
            if item.locked:
                continue
            tags = list(operation(tuple(item.tags)))
            if tags != item.tags:
                off = {t for t, on in zip(item.tags, item.on) if not on}
                edits.append(self._state(index, tags, [t not in off for t in tags]))
        unreadable = f", {locked} not UTF-8 and left alone" if locked else ""
        if not edits:
            return Outcome(f"{operation.describe()}: nothing to change in {len(self.visible)} image(s){unreadable}",
                           ok=not locked)
        done, skipped = self._commit(f"editor: {operation.describe()} ({self.filter_text or 'all'})", edits)
        return Outcome(f"{operation.describe()}: {len(done)} caption(s) changed"
                       + (f", {len(skipped)} changed on disk and left alone" if skipped else "") + unreadable,
                       ok=not skipped and not locked)

    def _restored(self, result: UndoResult, *, forward: bool) -> int | None:
        """Show what an undo/redo put on disk; returns the first item it touched."""
        assert result.entry is not None
        first = None
        for state in result.entry.files:
            index = self._by_caption.get(state.caption)
            if index is None:
                continue
            first = index if first is None else first
            self.reload(index)
            view = self._views.get((result.entry.path.name, state.caption))
            if view is not None and self.items[index].disk == (state.after if forward else state.before):
                tags, on = (view[2], view[3]) if forward else (view[0], view[1])
                self._show(index, self.items[index].disk, tags, on)
        return first

    def undo(self) -> tuple[Outcome, int | None]:
        """Undo the newest journal entry (this editor's, an earlier session's or a bulk command's)."""
        return self._step(undo_last, forward=False)

    def redo(self) -> tuple[Outcome, int | None]:
        return self._step(redo_last, forward=True)

    def _step(self, step, *, forward: bool) -> tuple[Outcome, int | None]:
        verb = "redo" if forward else "undo"
        try:
            result = step(self.root)
        except LoraprepError as exc:  # files changed since (UndoConflict), or an entry that is not loraprep's
            return Outcome(f"not {verb}ne: {exc.message}", ok=False), None
        if result.entry is None:
            return Outcome(f"nothing to {verb}", ok=False), None
        index = self._restored(result, forward=forward)
        what = result.entry.description.removeprefix("editor: ")
        message = f"{verb}ne: {what} ({len(result.restored) + len(result.unchanged)} caption(s))"
        if result.skipped:
            message += f"; {len(result.skipped)} changed meanwhile and left alone: {', '.join(result.skipped[:3])}"
        return Outcome(message, ok=not result.skipped), index
