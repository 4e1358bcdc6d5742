"""`loraprep captions edit`: a keyboard-first caption editor for the terminal (Textual).

Left: the file list and its filter. Centre: a half-block preview of the selected image only.
Right: the caption's tags with tagger score and dataset frequency, and the raw caption text.
All logic lives in `Session`; this module only lays out widgets and maps keys to its methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from prep.captions.lint import LintOptions
from prep.review.preview import render_preview
from prep.review.session import Outcome, Session
from prep.review.widgets import LIST_KEYS, RowList

def keymap(bindings: list[BindingType]) -> dict[str, str]:
    """key → action for every binding (a binding may list several keys, comma-separated)."""
    found: dict[str, str] = {}
    for binding in bindings:
        if isinstance(binding, Binding):
            for key in binding.key.split(","):
                found.setdefault(key.strip(), binding.action)
    return found


INPUT_KEYS = {k: v for k, v in keymap(Input.BINDINGS).items() if v != "submit"}

HELP = ("n/p next/prev · a accept · d delete · + add · t toggle · K/J move · u/U undo/redo · "
        "e next problem · / filter · A apply to filtered · q quit")


class CaptionEditor(App):
    """Edit a dataset's captions; every change is written to disk immediately."""

    TITLE = "loraprep captions"
    CSS = """
    Screen { layout: vertical; }
    #main { height: 1fr; }
    #left { width: 24; border-right: solid $panel-lighten-2; }
    #filter { margin: 0; }
    #preview { width: 1fr; height: 1fr; content-align: center middle; overflow: hidden; }
    #right { width: 32; border-left: solid $panel-lighten-2; }
    #heading { height: 1; text-style: bold; }
    #tags { height: 1fr; border: none; }
    #add { margin: 0; }
    #raw { height: auto; max-height: 4; color: $text-muted; }
    #status { height: 1; background: $panel; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "step(1)", "next"),
        Binding("p", "step(-1)", "prev"),
        Binding("a", "accept", "accept"),
        Binding("d,delete", "delete_tag", "delete"),
        Binding("plus,i", "add_tag", "add"),
        Binding("t,space", "toggle_tag", "toggle", show=False),
        Binding("K,ctrl+up", "move_tag(-1)", "move up", show=False),
        Binding("J,ctrl+down", "move_tag(1)", "move down", show=False),
        Binding("u,ctrl+z", "undo", "undo"),
        Binding("U,ctrl+y", "redo", "redo", show=False),
        Binding("e", "next_problem", "problem"),
        Binding("slash", "focus_filter", "filter"),
        Binding("A", "apply_all", "apply all", show=False),
        Binding("escape", "focus_tags", "back", show=False),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
    ]

    def __init__(self, root: Path, *, extension: str = ".txt", lint_options: LintOptions = LintOptions(),
                 session: Session | None = None) -> None:
        super().__init__()
        self.session = session or Session(Path(root), extension, lint_options)
        self.current: int | None = None  # item index shown
        self._scores: dict[str, tuple[float, str]] = {}
        self._keymap = keymap(self.BINDINGS)

    # ---- keys, strictly in order

    async def on_event(self, event: events.Event) -> None:
        """Every key is handled here, to the end, before the next one is looked at.

        Textual forwards a key to the focused widget's own queue and runs bindings when it bubbles
        back, so keys that arrive in one read (a paste, a fast typist, SSH) would run against the
        state from before the previous key: `+dress⏎` deleted a tag because `d` ran as a command
        before the add box had focus. Here each key runs its action or edits the focused input
        directly, and focus moves at once, so every key acts on the state the previous one left.
        """
        if isinstance(event, events.Key) and not event.is_forwarded:
            await self.handle_key(event)
        elif isinstance(event, events.Paste) and not event.is_forwarded:
            if isinstance(self.focused, Input):
                self.focused.insert_text_at_cursor(" ".join(event.text.splitlines()))
        else:
            await super().on_event(event)

    async def handle_key(self, event: events.Key) -> None:
        focused = self.focused
        keys = (event.key, *event.aliases)
        if "ctrl+c" in keys:
            await self.action_quit()
        elif isinstance(focused, Input):
            await self._input_key(focused, event)
        elif (name := next((LIST_KEYS[k] for k in keys if k in LIST_KEYS), None)) and \
                isinstance(focused, (RowList, OptionList)):
            getattr(focused, f"action_{name}")()
        elif (action := next((self._keymap[k] for k in keys if k in self._keymap), None)) is not None:
            await self.run_action(action)

    async def _input_key(self, box: Input, event: events.Key) -> None:
        """A key typed into an input box: text goes in, Enter submits, Escape leaves; never a command."""
        if event.key == "enter":
            self.submit(box)
        elif event.key == "escape":
            self.action_focus_tags()
        elif event.is_printable and event.character is not None:
            selection = box.selection
            if selection.is_empty:
                box.insert_text_at_cursor(event.character)
            else:
                box.replace(event.character, *selection)
        elif (action := INPUT_KEYS.get(event.key)) is not None:
            await box.run_action(action)

    # ---- layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Input(placeholder="/ filter: tag, -tag, lint, noface, todo", id="filter", compact=True)
                yield RowList(self._row_label, self.on_file_moved, id="files")
            yield Static(id="preview")
            with Vertical(id="right"):
                yield Static(id="heading")
                yield OptionList(id="tags")
                yield Input(placeholder="+ add tags (comma-separated)", id="add", compact=True)
                yield Static(id="raw")
        yield Static(id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        files = self.query_one(RowList)
        files.set_count(len(self.session.visible))
        self.set_focus(self.query_one("#tags", OptionList))
        cleaned = len(self.session.cleaned)
        self.set_status(f"{len(self.session.items)} images · "
                        + (f"removed {cleaned} temporary file(s) an interrupted run left · " if cleaned else "") + HELP)

    # ---- rendering

    def _row_label(self, row: int, width: int) -> str:
        index = self.session.visible[row]
        item = self.session.items[index]
        mark = "✓" if item.is_accepted else ("•" if item.edited else " ")
        if item.disk is None:
            mark = "∅"
        return f"{mark}{Path(self.session.name(index)).name}"

    def set_status(self, message: str, ok: bool = True) -> None:
        self.query_one("#status", Static).update(Text(message, style="" if ok else "bold yellow", no_wrap=True,
                                                      overflow="ellipsis"))

    def report(self, outcome: Outcome) -> None:
        self.set_status(outcome.message, outcome.ok)
        if not outcome.ok:
            self.notify(outcome.message, severity="warning")

    def show_item(self, index: int | None, *, preview: bool = True) -> None:
        """Fill the right panel (and, when the image changed, the preview) for item `index`."""
        changed = index != self.current
        self.current = index
        tags_list = self.query_one("#tags", OptionList)
        if index is None:
            tags_list.clear_options()
            self.query_one("#heading", Static).update("no images match the filter")
            self.query_one("#raw", Static).update("")
            self.query_one("#preview", Static).update("")
            return
        if changed:
            self._scores = self.session.scores(index)
        self._fill_tags(index, keep=not changed)
        problems = self.session.problems(index)
        locked = self.session.items[index].locked
        heading = f"{Path(self.session.name(index)).name}" + (f" ⚠ {len(problems)}" if problems else "") + \
            (" ⚠ not UTF-8: read-only" if locked else "")
        self.query_one("#heading", Static).update(Text(heading, no_wrap=True, overflow="ellipsis"))
        self.query_one("#raw", Static).update(Text(self.session.caption_text(index)))
        if changed and preview:
            self._draw_preview(index)

    def _fill_tags(self, index: int, keep: bool) -> None:
        """List the item's tags; the highlight stays put after an edit, and starts at the top on a new image."""
        item = self.session.items[index]
        tags_list = self.query_one("#tags", OptionList)
        row = (tags_list.highlighted or 0) if keep else 0
        width = max(12, (tags_list.content_region.width or 30) - 1)
        options = []
        for tag, on in zip(item.tags, item.on):
            score = self.session.score_of(self._scores, tag)
            numbers = (f"{score:.2f}" if score is not None else "    ") + f" ×{self.session.frequency[tag]}"
            name_width = max(4, width - len(numbers) - 1)
            name = tag if len(tag) <= name_width else tag[:name_width - 1] + "…"
            start = name_width + 1
            label = Text(name.ljust(start) + numbers, no_wrap=True, overflow="ellipsis")
            if not on:
                label.stylize("strike dim", 0, len(name))
            label.stylize("cyan", start, start + 4)
            label.stylize("dim", start + 4)
            options.append(Option(label))
        tags_list.set_options(options)
        if options:
            tags_list.highlighted = min(row, len(options) - 1)

    def _draw_preview(self, index: int) -> None:
        widget = self.query_one("#preview", Static)
        image = self.session.items[index].file.image
        size = widget.content_region.size
        cells = (max(4, size.width), max(2, size.height))
        widget.update(render_preview(self.session.root / image, cells) if image else Text(""))

    def refresh_list(self) -> None:
        files = self.query_one(RowList)
        files.refresh()

    # ---- events

    def on_file_moved(self, row: int) -> None:
        if self.session.visible:
            self.show_item(self.session.visible[row])

    def submit(self, box: Input) -> None:
        value = box.value
        if box.id == "filter":
            count = self.session.set_filter(value)
            files = self.query_one(RowList)
            files.set_count(count)
            if not count:
                self.show_item(None)
            self.set_status(f"{count} image(s) match '{value}'" if value else "filter cleared")
            self.set_focus(files)
        elif box.id == "add":
            if value.strip() and self.current is not None:
                self.report(self.session.add_tags(self.current, value))
            box.value = ""
            self.after_edit()
            self.action_focus_tags()

    def after_edit(self, index: int | None = None) -> None:
        """Redraw what an edit may have changed (the item, its list row)."""
        if index is not None and index != self.current and index in self.session.visible:
            self.query_one(RowList).move_to(self.session.visible.index(index))
        self.show_item(self.current, preview=False)
        self.refresh_list()

    def _selected_position(self) -> int | None:
        """Where the highlighted tag is in the caption (edits act on that occurrence only)."""
        if self.current is None:
            return None
        tags = self.session.items[self.current].tags
        highlighted = self.query_one("#tags", OptionList).highlighted
        return highlighted if highlighted is not None and highlighted < len(tags) else None

    # ---- actions

    def action_step(self, offset: int) -> None:
        files = self.query_one(RowList)
        files.move_to(files.cursor + offset)

    def action_accept(self) -> None:
        if self.current is not None:
            self.report(self.session.accept(self.current))
            self.refresh_list()
            self.action_step(1)

    def action_delete_tag(self) -> None:
        position = self._selected_position()
        if position is not None and self.current is not None:
            self.report(self.session.delete_tag(self.current, position))
            self.after_edit()

    def action_toggle_tag(self) -> None:
        position = self._selected_position()
        if position is not None and self.current is not None:
            self.report(self.session.toggle_tag(self.current, position))
            self.after_edit()

    def action_move_tag(self, offset: int) -> None:
        position = self._selected_position()
        if position is not None and self.current is not None:
            outcome = self.session.move_tag(self.current, position, offset)
            self.report(outcome)
            self.after_edit()
            if outcome.ok:
                last = len(self.session.items[self.current].tags) - 1
                self.query_one("#tags", OptionList).highlighted = max(0, min(last, position + offset))

    def action_add_tag(self) -> None:
        if self.current is not None:
            self.set_focus(self.query_one("#add", Input))

    def action_focus_filter(self) -> None:
        self.set_focus(self.query_one("#filter", Input))

    def action_focus_tags(self) -> None:
        self.set_focus(self.query_one("#tags", OptionList))

    def action_undo(self) -> None:
        outcome, index = self.session.undo()
        self.report(outcome)
        self.after_edit(index)

    def action_redo(self) -> None:
        outcome, index = self.session.redo()
        self.report(outcome)
        self.after_edit(index)

    def action_next_problem(self) -> None:
        files = self.query_one(RowList)
        if not self.session.visible:
            return
        row = self.session.next_problem(files.cursor)
        if row is None:
            self.set_status("no lint problems in the shown images")
            return
        files.move_to(row, force=True)
        self.set_status(" · ".join(self.session.problems(self.session.visible[row])), ok=False)

    def action_apply_all(self) -> None:
        self.report(self.session.apply_to_filtered())
        self.after_edit()
