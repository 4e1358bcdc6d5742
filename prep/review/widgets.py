"""The editor's own widgets: a list that stays instant at 50,000 rows (it renders only the rows on
screen) and a preview pane that only shows pictures built elsewhere."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from prep.review.preview import Picture

# The keys a focused list takes, and its action for each: the same names as Textual's OptionList,
# so the editor's key router drives both kinds of list the same way.
LIST_KEYS: dict[str, str] = {"up": "cursor_up", "down": "cursor_down", "pageup": "page_up",
                             "pagedown": "page_down", "home": "first", "end": "last"}


class RowList(ScrollView, can_focus=True):
    """Rows labelled on demand by `label(row, width)` (text, or styled segments), a cursor row, and
    `on_move(row)` called at once
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

    def __init__(self, label: Callable[[int, int], str | list[Segment]], on_move: Callable[[int], None], *,
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
        label = self._label(row, width)
        base = self.rich_style
        segments = [Segment(label, base)] if isinstance(label, str) else \
            [Segment(seg.text, base + seg.style if seg.style else base) for seg in label]
        if row == self.cursor:
            cursor = self.get_component_rich_style("row-list--cursor")
            segments = [Segment(seg.text, (seg.style or base) + cursor) for seg in segments]
        return Strip(segments).crop_extend(0, width, base if row != self.cursor else base + cursor)


class PreviewPane(Widget):
    """Shows a finished `Picture`, centred; drawing it costs nothing here (it was built off the UI
    thread). `on_resize(cells)` lets the editor ask for a picture of the new size."""

    DEFAULT_CSS = "PreviewPane { width: 1fr; height: 1fr; }"

    def __init__(self, on_resize: Callable[[tuple[int, int]], None], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._on_resize = on_resize
        self.key: Hashable | None = None
        self.picture: Picture | None = None
        self.note = ""
        self._strips: tuple[tuple[int, int], list[Strip]] | None = None

    @property
    def cells(self) -> tuple[int, int]:
        return max(4, self.size.width), max(2, self.size.height)

    def show(self, key: Hashable | None, picture: Picture | None, note: str = "") -> None:
        self.key, self.picture, self.note, self._strips = key, picture, note, None
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self._strips = None
        self._on_resize(self.cells)

    def _lines(self) -> list[Strip]:
        width, height = self.size
        if self._strips is not None and self._strips[0] == (width, height):
            return self._strips[1]
        picture = self.picture
        blank = Strip.blank(width, self.rich_style)
        strips = [blank] * height
        if picture is not None and picture.lines:
            top, left = max(0, (height - len(picture.lines)) // 2), max(0, (width - picture.width) // 2)
            pad = [Segment(" " * left, self.rich_style)] if left else []
            for row, line in enumerate(picture.lines[:height]):
                strips[top + row] = Strip([*pad, *line], left + picture.width).crop_extend(0, width, self.rich_style)
        elif height:
            message = (picture.message if picture is not None else self.note)[:width]
            strips[height // 2] = Strip([Segment(message.center(width), self.rich_style + Style(italic=True))], width)
        self._strips = ((width, height), strips)
        return strips

    def render_line(self, y: int) -> Strip:
        lines = self._lines()
        return lines[y] if 0 <= y < len(lines) else Strip.blank(self.size.width, self.rich_style)
