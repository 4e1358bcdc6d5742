"""Carrying a source image's caption to an image made from it (a crop, a copy) without losing edits.

A crop's caption starts as a copy of its source's, and re-running `crop` refreshes it so an edit
to the source caption reaches the crop. But the crop's caption may have been edited since (by hand,
`captions` bulk edits, the editor, the tagger), and such an edit outranks anything derived. So the
step records the sha256 of the exact bytes it wrote in the image's `.loraprep.json`
(`caption_written`: step and hash), and a later run replaces the caption only while the file still
holds exactly those bytes, or is missing. Anything else is kept and reported; replacing it takes an
explicit choice and goes through the caption journal (`loraprep captions undo` restores it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from prep.captions.dataset import read_current
from prep.captions.journal import FileState, Written, apply_changes, write_guarded
from prep.progress import Reporter
from prep.sidecars import caption_bytes, caption_path, read_meta, update_meta

SECTION = "caption_written"
CarryState = Literal["same", "new", "ours", "edited"]


@dataclass(frozen=True)
class Carry:
    """One derived image's caption against the source caption it should carry.

    `state`: "same" (already holds it), "new" (no caption yet), "ours" (holds exactly what this step
    wrote last: safe to refresh) or "edited" (anything else: someone else's text, kept unless asked).
    """

    image: Path
    caption: str  # the caption sidecar, relative to the dataset root (POSIX)
    before: bytes | None
    after: bytes
    state: CarryState


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recorded_hash(meta: dict, step: str) -> str | None:
    """The sha256 of the caption `step` last wrote for this image, from its metadata sidecar."""
    record = meta.get(SECTION)
    if isinstance(record, dict) and record.get("step") == step and isinstance(record.get("sha256"), str):
        return record["sha256"]
    return None


def plan_carry(root: Path, image: Path, text: str, extension: str, step: str) -> Carry:
    """Compare `image`'s caption on disk with the source caption `text` (nothing is written)."""
    caption = caption_path(image, extension).relative_to(root).as_posix()
    before, after = read_current(root, caption), caption_bytes(text)
    if before == after:
        state: CarryState = "same"
    elif before is None:
        state = "new"
    elif recorded_hash(read_meta(image), step) == _digest(before):
        state = "ours"
    else:
        state = "edited"
    return Carry(image, caption, before, after, state)


def remember(carry: Carry, step: str) -> None:
    """Record that the image's caption holds what `step` wrote (only when the record differs)."""
    record = {"step": step, "sha256": _digest(carry.after)}
    if read_meta(carry.image).get(SECTION) != record:
        update_meta(carry.image, **{SECTION: record})


def carry_caption(root: Path, carry: Carry, step: str) -> Carry | None:
    """Write a caption that holds nothing anyone else wrote ("new"/"ours"), checked again at the
    moment of the write. Returns None when the image's caption now carries the source's, else the
    caption as it is on disk, as "edited" (an edit found before, or made meanwhile): left alone."""
    if carry.state == "edited":
        return carry
    if carry.state != "same" and not write_guarded(root, carry.caption, carry.before, carry.after):
        now = read_current(root, carry.caption)
        if now != carry.after:
            return replace(carry, before=now, state="edited")
    remember(carry, step)
    return None


def overwrite_edited(root: Path, carries: Sequence[Carry], step: str, description: str) -> Written:
    """Replace edited captions with their source's, by explicit choice: one journal entry, written
    through the journal's guarded writes (a caption changed again since it was read is left alone)."""
    written = apply_changes(root, description, [FileState(c.caption, c.before, c.after) for c in carries])
    done = {state.caption for state in written.written}
    for carry in carries:
        if carry.caption in done:
            remember(carry, step)
    return written


@dataclass(frozen=True)
class Settled:
    kept: tuple[str, ...]      # edited captions left as they are (relative to the root)
    replaced: tuple[str, ...]  # edited captions replaced by explicit choice (journalled)


def settle_edited(root: Path, edited: Sequence[Carry], step: str, *, overwrite: bool,
                  reporter: Reporter) -> Settled:
    """What a run does with the captions it found edited: keeps and names them, or (`overwrite`)
    replaces them with their source's caption as one journal entry, and says how to undo that."""
    edited = sorted(edited, key=lambda c: c.caption)
    names = [c.caption for c in edited]
    if not edited:
        return Settled((), ())
    if not overwrite:
        reporter.note(f"{len(names)} caption(s) in {root} were edited since {step} wrote them and differ from their "
                      f"source's caption; kept as they are: {shown(names)}. To replace them with the source's "
                      f"caption: --overwrite-captions (journalled; `loraprep captions undo {root}` reverts)")
        return Settled(tuple(names), ())
    written = overwrite_edited(root, edited, step, f"{step} --overwrite-captions ({len(edited)} caption(s) "
                                                   "from their sources)")
    replaced = [state.caption for state in written.written]
    if written.entry is not None:
        reporter.note(f"replaced {len(replaced)} edited caption(s) with their source's caption "
                      f"(--overwrite-captions): {shown(replaced)}; journalled in {written.entry.relative_to(root)}: "
                      f"`loraprep captions undo {root}` restores them")
    if written.conflicts:
        reporter.note(f"{len(written.conflicts)} caption(s) changed on disk during the run and were left as they "
                      f"are: {shown(sorted(written.conflicts))}")
    return Settled(tuple(sorted(written.conflicts)), tuple(replaced))


def shown(paths: Sequence[str], limit: int = 5) -> str:
    """A few names of a list, for a one-line note."""
    return ", ".join(paths[:limit]) + (f" … (+{len(paths) - limit})" if len(paths) > limit else "")
