"""A file list that stays instant at 50,000 images: it renders only the rows on screen."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.segment import Segment
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip


class FileList(ScrollView, can_focus=True):
    """Rows labelled on demand by `label(row)`; a cursor row; posts `Highlighted` when it moves.

    Textual's OptionList measures every option up front, which takes seconds for 50,000 rows; here
    a row's text is computed only when it is drawn.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"file-list--cursor"}
    DEFAULT_CSS = """
    FileList { height: 1fr; }
    FileList > .file-list--cursor { background: $accent 60%; text-style: bold; }
    FileList:focus > .file-list--cursor { background: $accent; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
    ]

    class Highlighted(Message):
        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    def __init__(self, label: Callable[[int], str], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._label = label
        self._count = 0
        self.cursor = 0

    def set_count(self, count: int, cursor: int = 0) -> None:
        self._count = count
        self.virtual_size = Size(self.size.width, count)
        self.move_to(cursor, force=True)
        self.refresh()

    @property
    def count(self) -> int:
        return self._count

    def move_to(self, row: int, *, force: bool = False) -> None:
        if self._count == 0:
            self.cursor = 0
            self.refresh()
            return
        row = max(0, min(self._count - 1, row))
        if row == self.cursor and not force:
            return
        previous, self.cursor = self.cursor, row
        self.refresh_line(previous)
        self.refresh_line(row)
        self.scroll_to_region(Region(0, row, 1, 1), animate=False, force=True, immediate=True)
        self.post_message(self.Highlighted(row))

    def action_move(self, offset: int) -> None:
        self.move_to(self.cursor + offset)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * max(1, self.scrollable_content_region.height - 1))

    def action_jump(self, row: int) -> None:
        self.move_to(row if row >= 0 else self._count - 1)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        row = y + self.scroll_offset.y
        if row >= self._count:
            return Strip.blank(width, self.rich_style)
        text = self._label(row)
        text = text[:width].ljust(width)
        style = self.get_component_rich_style("file-list--cursor") if row == self.cursor else self.rich_style
        return Strip([Segment(text, style)], width)
