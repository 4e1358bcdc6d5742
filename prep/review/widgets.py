"""A list that stays instant at 50,000 rows: it renders only the rows on screen."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.segment import Segment
from textual import events
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

# The keys a focused list takes, and its action for each: the same names as Textual's OptionList,
# so the editor's key router drives both kinds of list the same way.
LIST_KEYS: dict[str, str] = {"up": "cursor_up", "down": "cursor_down", "pageup": "page_up",
                             "pagedown": "page_down", "home": "first", "end": "last"}


class RowList(ScrollView, can_focus=True):
    """Rows labelled on demand by `label(row)`, a cursor row, and `on_move(row)` called at once
    (not through a message) when the cursor moves, so the next key already sees the new row.

    Textual's OptionList measures every option up front, which takes seconds for 50,000 rows; here
    a row's text is computed only when it is drawn.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {"row-list--cursor"}
    DEFAULT_CSS = """
    RowList { height: 1fr; }
    RowList > .row-list--cursor { background: $accent 60%; text-style: bold; }
    RowList:focus > .row-list--cursor { background: $accent; }
    """

    def __init__(self, label: Callable[[int, int], str], on_move: Callable[[int], None], *,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self._label = label
        self._on_move = on_move
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
        self._on_move(row)

    def action_cursor_up(self) -> None:
        self.move_to(self.cursor - 1)

    def action_cursor_down(self) -> None:
        self.move_to(self.cursor + 1)

    def action_page_up(self) -> None:
        self.move_to(self.cursor - max(1, self.scrollable_content_region.height - 1))

    def action_page_down(self) -> None:
        self.move_to(self.cursor + max(1, self.scrollable_content_region.height - 1))

    def action_first(self) -> None:
        self.move_to(0)

    def action_last(self) -> None:
        self.move_to(self._count - 1)

    def on_click(self, event: events.Click) -> None:
        row = event.y + self.scroll_offset.y
        if 0 <= row < self._count:
            self.move_to(row)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        row = y + self.scroll_offset.y
        if row >= self._count:
            return Strip.blank(width, self.rich_style)
        text = self._label(row, width)
        text = text[:width].ljust(width)
        style = self.get_component_rich_style("row-list--cursor") if row == self.cursor else self.rich_style
        return Strip([Segment(text, style)], width)
