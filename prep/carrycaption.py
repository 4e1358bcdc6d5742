"""Carrying a source image's caption to an image made from it (a crop) without losing later edits.

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
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from prep.captions.dataset import read_current
from prep.captions.journal import FileState, Written, apply_changes, write_guarded
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


def shown(paths: Sequence[str], limit: int = 5) -> str:
    """A few names of a list, for a one-line note."""
    return ", ".join(paths[:limit]) + (f" … (+{len(paths) - limit})" if len(paths) > limit else "")


def relative(root: Path, path: str | os.PathLike[str]) -> str:
    return Path(path).relative_to(root).as_posix()
