"""The editor's items, and opening a big dataset without waiting for every caption.

Listing 50,000 captions costs a tenth of reading them, and on a cold page cache the reading is most
of the wait. So `ItemList` starts from the listing: an item is read the first time it is looked
at (the first screen needs a few dozen), and the editor reads the rest in batches on its own
event loop between keys and repaints (`read_batch`), so keys stay answered while it reads. No
thread is involved: threads reading files hand the interpreter lock back and forth often enough
to starve the UI (a key took over a second while eight of them read). Whatever needs every
caption (iterating the list: filters, lint, accept, apply to all, the vocabulary) reads what is
left first (`complete`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

from prep.captions.dataset import (BATCH, CaptionFile, Pair, collector_paused, decode_caption, read_current, read_many,
                                   split_caption)

LAZY_FROM = 2_000  # images; smaller sets are read in a few hundredths of a second, before the first screen


@dataclass
class Item:
    """One image as the editor holds it: the tags shown, and the bytes last seen on disk.

    `on[i]` is False for a tag toggled off (shown, not written). Edits address a tag by its
    position, so a tag written twice can be fixed one occurrence at a time. `locked` says why the
    caption cannot be edited here (not UTF-8: rewriting it would replace what the editor cannot read).
    """

    file: CaptionFile
    disk: bytes | None
    tags: list[str]
    on: list[bool] = field(default_factory=list)
    accepted: bytes | None = None  # the caption bytes a person accepted (stale once they change)
    edited: bool = False
    locked: str | None = None

    def __post_init__(self) -> None:
        if len(self.on) != len(self.tags):
            self.on = [True] * len(self.tags)

    @property
    def is_accepted(self) -> bool:
        return self.accepted is not None and self.accepted == self.disk

    @property
    def written_tags(self) -> list[str]:
        return [t for t, on in zip(self.tags, self.on) if on]


def not_utf8(caption: str) -> str:
    return (f"{caption} is not UTF-8 text: left as it is (convert it first, e.g. "
            f"`iconv -f latin1 -t utf-8`, then reopen)")


def item_for(file: CaptionFile, disk: bytes | None) -> Item:
    """The editor's view of a caption file's bytes.

    A caption on several lines shows every line's tags: kohya reads only the first line, and the
    first edit writes them all on one.
    """
    if disk is file.raw and "\n" not in (file.text or ""):
        return Item(file, disk, list(file.tags), locked=not_utf8(file.caption) if file.unreadable else None)
    text = decode_caption(disk) if disk is not None else ""
    if text is None:
        return Item(file, disk, [], locked=not_utf8(file.caption))
    return Item(file, disk, list(split_caption(text.replace("\n", ","))))


def digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def _opened(file: CaptionFile, accepted: dict[str, str]) -> Item:
    """An item as read from disk, marked accepted when review.json holds these very bytes."""
    item = item_for(file, file.raw)
    if file.caption in accepted and accepted[file.caption] == digest(item.disk):
        item.accepted = item.disk
    return item


class ItemList(Sequence[Item]):
    """The dataset's images (each with its caption), read on first touch or in batches.

    `frequency` counts the images carrying each tag among the items read so far (every image's
    once `loaded`); edits keep it current (`Session._show`).
    """

    def __init__(self, root: Path, pairs: Sequence[Pair], accepted: dict[str, str]) -> None:
        self._root = root
        self._pairs = list(pairs)
        self._accepted = accepted
        self._items: list[Item | None] = [None] * len(self._pairs)
        self._next = 0  # the batches have read every item before this one
        self.frequency: Counter[str] = Counter()
        self.loaded = not self._pairs

    def _add(self, index: int, raw: bytes | None) -> Item:
        caption, image, _ = self._pairs[index]
        item = self._items[index] = _opened(CaptionFile.make(caption, image, raw), self._accepted)
        self.frequency.update(set(item.tags))
        return item

    def read_batch(self, size: int = BATCH) -> bool:
        """Read the next `size` items not read yet; True once every item is."""
        if self.loaded:
            return True
        stop = min(len(self._pairs), self._next + size)
        todo = [i for i in range(self._next, stop) if self._items[i] is None]
        raws = read_many(self._root, [self._pairs[i][0] if self._pairs[i][2] else None for i in todo])
        with collector_paused():
            for index, raw in zip(todo, raws):
                self._add(index, raw)
        self._next = stop
        self.loaded = stop == len(self._pairs)
        return self.loaded

    def complete(self) -> None:
        """Read every item not read yet."""
        while not self.read_batch(16 * BATCH):
            pass

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> Item: ...

    @overload
    def __getitem__(self, index: slice) -> list[Item]: ...

    def __getitem__(self, index: int | slice) -> Item | list[Item]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        item = self._items[index]
        if item is None:
            index = range(len(self._items))[index]  # a negative index too
            item = self._add(index, read_current(self._root, self._pairs[index][0]))
        return item

    def __iter__(self) -> Iterator[Item]:
        self.complete()
        return iter(self._items)  # type: ignore[arg-type]  # complete() filled every slot

    def name(self, index: int) -> str:
        """What to show a person for item `index` (its image), known without reading its caption."""
        caption, image, _ = self._pairs[index]
        return image or caption
