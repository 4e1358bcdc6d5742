"""`loraprep captions edit`: a keyboard-first caption editor for the terminal (Textual).

Left: the filter and the file list. Centre: a half-block preview of the selected image (drawn off
the UI thread), or the dataset's tag panel. Right: the caption's tags with tagger score and dataset
frequency, the add/rename box with autocomplete, and the raw caption. All logic lives in `Session`;
this module lays out widgets and maps keys to its methods, one key at a time, in order.

Every piece of user text (captions, tags, file names) reaches the screen as a rich `Text` or plain
segments, never parsed as markup; the one place markup is parsed (notifications) escapes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.keys import format_key
from textual.widgets import Input, Static

from prep.captions.dataset import collector_paused
from prep.captions.edit import ReplaceTag
from prep.captions.lint import LintOptions
from prep.console import esc
from prep.errors import UsageError
from prep.review.filters import __doc__ as FILTER_HELP
from prep.review.preview import Picture, PreviewRenderer
from prep.review.session import Outcome, Session
from prep.review.widgets import LIST_KEYS, PreviewPane, RowList


def keymap(bindings: list[BindingType]) -> dict[str, str]:
    """key → action for every binding (a binding may list several keys, comma-separated)."""
    found: dict[str, str] = {}
    for binding in bindings:
        if isinstance(binding, Binding):
            for key in binding.key.split(","):
                found.setdefault(key.strip(), binding.action)
    return found


INPUT_KEYS = {k: v for k, v in keymap(Input.BINDINGS).items() if v != "submit"}
PREVIEW_DELAY_S = 0.04
READ_PAUSE_S = 0.002  # between batches of captions read after the first screen …
TYPING_PAUSE_S, TYPING_S = 0.03, 0.3  # … and within TYPING_S of a key
MARKS = {"locked": "!", "missing": "∅", "accepted": "✓", "edited": "•", "": " "}


def fit_path(path: str, width: int) -> str:
    """A relative path in `width` cells, keeping the file name whole when it can:
    `anime/characters/sylvie.png` → `…racters/sylvie.png`."""
    if len(path) <= width:
        return path
    folder, _, name = path.rpartition("/")
    if len(name) + 1 >= width or not folder:
        return name[:max(0, width - 1)] + "…"
    return "…" + path[len(path) - width + 1:]


@dataclass(frozen=True)
class Pending:
    """A bulk change waiting for `y`: said in the status bar, run only when confirmed."""

    question: str
    run: Callable[[], Outcome]


class CaptionEditor(App):
    """Edit a dataset's captions; every change is journalled and written to disk immediately."""

    TITLE = "loraprep captions"
    CSS = """
    Screen { layout: vertical; layers: base help; }
    #main { height: 1fr; }
    #left { width: 26; border-right: solid $panel-lighten-2; }
    #left.wide { width: 70%; }
    #filter { margin: 0; }
    #centre { width: 1fr; }
    #vocab { display: none; }
    #centre.vocab #vocab { display: block; }
    #centre.vocab #preview { display: none; }
    #right { width: 34; border-left: solid $panel-lighten-2; }
    #heading { height: 1; text-style: bold; }
    #tags { height: 1fr; }
    #add { margin: 0; }
    #suggest { height: auto; max-height: 6; display: none; background: $panel; }
    #suggest.open { display: block; }
    #raw { height: 3; color: $text-muted; }
    #status { height: 1; background: $panel; padding: 0 1; }
    #keys { height: 1; color: $text-muted; }
    #help { layer: help; display: none; width: 100%; height: 100%; background: $surface; padding: 0 1;
            overflow-y: auto; }
    #help.open { display: block; }
    """
    # The footer shows `show=True` bindings, with their short label, in one line that fits 80 columns;
    # `?` lists every key.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "step(1)", "next image", key_display="n/p"),
        Binding("p", "step(-1)", "previous image", show=False),
        Binding("a", "accept", "accept the caption and go to the next image", key_display="a"),
        Binding("d,delete", "delete_tag", "delete the highlighted tag", key_display="d"),
        Binding("plus,i", "add_tag", "add tags (Tab completes from the dataset's tags)", key_display="+"),
        Binding("r,enter,f2", "rename_tag", "rename the highlighted tag on this image", key_display="r"),
        Binding("R", "replace_tag", "replace the highlighted tag on every filtered image (asks first)",
                show=False),
        Binding("t,space", "toggle_tag", "turn the highlighted tag off/on (kept in the list, not written)",
                show=False),
        Binding("K,ctrl+up", "move_tag(-1)", "move the highlighted tag up", show=False),
        Binding("J,ctrl+down", "move_tag(1)", "move the highlighted tag down", show=False),
        Binding("u,ctrl+z", "undo", "undo the last edit (the journal's: survives restarts)", key_display="u/U"),
        Binding("U,ctrl+y", "redo", "redo", show=False),
        Binding("e", "next_problem", "go to the next image with a lint problem", show=False),
        Binding("slash", "focus_filter", "filter the images (see below)", key_display="/"),
        Binding("A", "apply_all", "repeat the last add/delete/rename on every filtered image (asks first)",
                key_display="A"),
        Binding("T", "toggle_vocab", "the dataset's tags with counts (Enter filters by one)", key_display="T"),
        Binding("f", "toggle_wide", "wide file list with full paths", show=False),
        Binding("tab", "cycle_focus", "switch between the file list, the tags and the tag panel", show=False),
        Binding("escape", "focus_tags", "back to the tags (closes the box or panel)", show=False),
        Binding("question_mark", "help", "every key", key_display="?"),
        Binding("q", "quit", "quit (everything is already saved)", key_display="q"),
        Binding("ctrl+c", "quit", "quit", show=False),
    ]
    SHORT = {"step(1)": "next", "accept": "ok", "delete_tag": "del", "add_tag": "add", "rename_tag": "ren",
             "undo": "undo", "focus_filter": "filter", "apply_all": "all", "toggle_vocab": "tags",
             "help": "keys", "quit": "quit"}

    def __init__(self, root: Path, *, extension: str = ".txt", lint_options: LintOptions = LintOptions(),
                 session: Session | None = None) -> None:
        super().__init__()
        self.session = session or Session(Path(root), extension, lint_options)
        self.current: int | None = None  # item index shown
        self.caption_shown_at = 0.0      # when the current caption reached the screen (bench/editor.py)
        self._scores: dict[str, tuple[float, str]] = {}
        self._keymap = keymap(self.BINDINGS)
        self._renderer = PreviewRenderer(self._preview_done)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mode = "add"               # what the #add box does on Enter: add / rename / replace
        self._renaming: tuple[int, int] | None = None  # (item, tag position) being renamed
        self._suggestions: list[tuple[str, int]] = []
        self._suggestion: int | None = None  # highlighted suggestion, once the user moved to one
        self.pending: Pending | None = None
        self.wide = False
        self._frozen = False  # objects moved out of the collector's sight after reading (`_read_captions`)
        self._key_at = 0.0  # when the last key arrived

    # ---- layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Input(placeholder="/ =tag -tag lint todo in:DIR", id="filter", compact=True)
                yield RowList(self._file_label, self._file_moved, id="files")
            with Vertical(id="centre"):
                yield PreviewPane(self._preview_resized, id="preview")
                yield RowList(self._vocab_label, lambda row: None, id="vocab")
            with Vertical(id="right"):
                yield Static(id="heading")
                yield RowList(self._tag_label, lambda row: None, id="tags")
                yield Input(placeholder="+ add tags", id="add", compact=True)
                yield Static(id="suggest")
                yield Static(id="raw")
        yield Static(id="status")
        yield Static(self.footer_text(), id="keys")
        yield Static(Text(self.help_text()), id="help")

    def on_mount(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.pane = self.query_one(PreviewPane)
        self.query_one("#files", RowList).set_count(len(self.session.visible))
        self.set_focus(self.query_one("#tags", RowList))
        if self.session.loaded:
            self._ready_status()
        else:  # a big dataset: the first screen comes first, the other captions are read after it
            self.set_status(f"{len(self.session.items)} images · reading captions (counts follow) · ? shows every key")
            self.call_after_refresh(lambda: self.run_worker(self._read_captions(), name="captions", group="captions"))
        threading.Thread(target=self._clean_temporaries, name="loraprep-clean", daemon=True).start()

    def _ready_status(self) -> None:
        left_out = len(self.session.skipped)
        self.set_status(f"{len(self.session.items)} images · ? shows every key" + (
            f" · {left_out} left out (folder links, shared captions): `loraprep captions lint` lists them"
            if left_out else ""))

    async def _read_captions(self) -> None:
        """Read the captions not read yet a batch at a time (a few milliseconds each), then show the
        counts that needed all of them. The pause after each batch lets a key through all the steps
        of its handling (each waits its turn on the loop) before the next batch, not one per batch.

        The cyclic GC is off meanwhile and what was read is then frozen (`gc.freeze`): collections
        triggered as the items pile up would rescan all of them again and again (pauses of a tenth of
        a second between keys), and they hold nothing a collection could free.
        """
        waited = time.perf_counter()
        while not self.caption_shown_at and time.perf_counter() - waited < 1:  # the first screen first
            await asyncio.sleep(0.005)
        with collector_paused():
            while not self.session.read_more():  # a person typing comes first: longer pauses then
                typing = time.perf_counter() - self._key_at < TYPING_S
                await asyncio.sleep(TYPING_PAUSE_S if typing else READ_PAUSE_S)
            gc.freeze()
            self._frozen = True
        self.after_edit()
        self._ready_status()

    def _clean_temporaries(self) -> None:
        removed = self.session.clean_temporaries()
        if removed and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(
                    self.set_status, f"removed {len(removed)} temporary file(s) an interrupted run left")

    def on_unmount(self) -> None:
        self._renderer.stop()
        if self._frozen:  # let the collector see the items again, now that they may go
            gc.unfreeze()

    @classmethod
    def footer_text(cls) -> Text:
        """`key label` for each shown binding, in one line (80 columns)."""
        text = Text(no_wrap=True, overflow="ellipsis")
        for binding in cls.BINDINGS:
            if isinstance(binding, Binding) and binding.show:
                text.append(f" {binding.key_display or format_key(binding.key)}", style="bold")
                text.append(f" {cls.SHORT.get(binding.action, binding.description)}")
        return text

    @classmethod
    def help_text(cls) -> str:
        """Every key and what it does, then the filter syntax (plain text: shown as is)."""
        lines = ["Keys (everything is saved the moment you make it; any key closes this)", ""]
        for binding in cls.BINDINGS:
            if isinstance(binding, Binding):
                keys = ", ".join(format_key(k.strip()) for k in binding.key.split(","))
                lines.append(f"  {keys:<22} {binding.description}")
        lines += ["  ↑ ↓ PgUp PgDn Home End  move in the focused list", "",
                  "In the add / rename box: Tab completes the highlighted suggestion, ↑/↓ choose one,",
                  "Enter saves, Escape cancels. A confirmation (A, R) runs on y; any other key cancels.",
                  "", "Filter (/):", *FILTER_HELP.strip().splitlines()[1:]]
        return "\n".join(lines)

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
            if isinstance(self.focused, Input):  # pasted lines of tags become comma-separated tags
                separator = ", " if self.focused.id == "add" else " "
                self.focused.insert_text_at_cursor(separator.join(filter(None, map(str.strip, event.text.splitlines()))))
                self._input_changed(self.focused)
        else:
            await super().on_event(event)

    async def handle_key(self, event: events.Key) -> None:
        self._key_at = time.perf_counter()
        focused = self.focused
        keys = (event.key, *event.aliases)
        if "ctrl+c" in keys:
            await self.action_quit()
        elif self.query_one("#help").has_class("open"):
            self.query_one("#help").remove_class("open")
        elif self.pending is not None:
            self._answer(event.key)
        elif isinstance(focused, Input):
            await self._input_key(focused, event)
        elif (name := next((LIST_KEYS[k] for k in keys if k in LIST_KEYS), None)) and isinstance(focused, RowList):
            getattr(focused, f"action_{name}")()
        elif focused is not None and focused.id == "vocab" and event.key == "enter":
            self.filter_by_vocab()
        elif focused is not None and focused.id == "files" and event.key == "enter":
            self.action_focus_tags()
        elif (action := next((self._keymap[k] for k in keys if k in self._keymap), None)) is not None:
            await self.run_action(action)

    async def _input_key(self, box: Input, event: events.Key) -> None:
        """A key typed into an input box: text goes in, Enter submits, Escape leaves; never a command."""
        key = event.key
        if key == "enter":
            if box.id == "add" and self._suggestion is not None:
                self._complete(box)
            self.submit(box)
        elif key == "escape":
            box.value = ""
            self._close_suggestions()
            self.action_focus_tags()
        elif box.id == "add" and key == "tab":
            self._complete(box)
        elif box.id == "add" and key in ("up", "down") and self._suggestions:
            step = 1 if key == "down" else -1
            self._suggestion = ((self._suggestion if self._suggestion is not None else -1) + step) % len(self._suggestions)
            self._draw_suggestions()
        elif event.is_printable and event.character is not None:
            selection = box.selection
            if selection.is_empty:
                box.insert_text_at_cursor(event.character)
            else:
                box.replace(event.character, *selection)
            self._input_changed(box)
        elif (action := INPUT_KEYS.get(key)) is not None:
            await box.run_action(action)
            self._input_changed(box)

    # ---- autocomplete

    def _input_changed(self, box: Input) -> None:
        if box.id != "add":
            return
        fragment = box.value if self._mode != "add" else box.value.rpartition(",")[2]
        shown = set(self.session.items[self.current].tags) if self.current is not None and self._mode == "add" else set()
        self._suggestions = self.session.suggest(fragment, exclude=shown)
        self._suggestion = None
        self._draw_suggestions()

    def _draw_suggestions(self) -> None:
        widget = self.query_one("#suggest", Static)
        if not self._suggestions:
            self._close_suggestions()
            return
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, (tag, count) in enumerate(self._suggestions):
            chosen = i == (self._suggestion if self._suggestion is not None else 0)
            text.append(("› " if chosen else "  ") + tag, style="bold reverse" if i == self._suggestion else
                        ("bold" if chosen else ""))
            text.append(f" ×{count}\n" if i < len(self._suggestions) - 1 else f" ×{count}", style="dim")
        widget.update(text)
        widget.add_class("open")

    def _close_suggestions(self) -> None:
        self._suggestions, self._suggestion = [], None
        self.query_one("#suggest").remove_class("open")

    def _complete(self, box: Input) -> None:
        """Put the highlighted (or first) suggestion in place of what is being typed."""
        if not self._suggestions:
            return
        tag = self._suggestions[self._suggestion or 0][0]
        if self._mode == "add":
            head, comma, _ = box.value.rpartition(",")
            box.value = f"{head}{comma} {tag}".lstrip() if comma else tag
        else:
            box.value = tag
        box.cursor_position = len(box.value)
        self._close_suggestions()

    # ---- rendering

    def _file_label(self, row: int, width: int) -> str:
        index = self.session.visible[row]
        item = self.session.items[index]
        state = ("locked" if item.locked else "missing" if item.disk is None else
                 "accepted" if item.is_accepted else "edited" if item.edited else "")
        return MARKS[state] + fit_path(self.session.name(index), width - 1)

    def _tag_label(self, row: int, width: int) -> list[Segment]:
        """One line per tag at any width: name (cut with …), tagger score, images carrying it."""
        if self.current is None:
            return []
        item = self.session.items[self.current]
        tag, on = item.tags[row], item.on[row]
        score = self.session.score_of(self._scores, tag)
        count = self.session.tag_count(tag)
        numbers = (f"{score:.2f}" if score is not None else "    ") + f" ×{'…' if count is None else count}"
        name_width = max(4, width - len(numbers) - 1)
        shown = tag.replace("\n", "⏎")
        name = shown if len(shown) <= name_width else shown[:name_width - 1] + "…"
        return [Segment(name.ljust(name_width + 1), Style(strike=True, dim=True) if not on else None),
                Segment(numbers[:4], Style(color="cyan")), Segment(numbers[4:], Style(dim=True))]

    def _vocab_label(self, row: int, width: int) -> list[Segment]:
        tag, count = self.session.ranked_tags()[row]
        return [Segment(f"{count:>6} ", Style(dim=True)), Segment(tag.replace("\n", "⏎")[:max(0, width - 7)])]

    def set_status(self, message: str, ok: bool = True) -> None:
        self.query_one("#status", Static).update(
            Text(message, style="" if ok else "bold yellow", no_wrap=True, overflow="ellipsis"), layout=False)

    def report(self, outcome: Outcome) -> None:
        self.set_status(outcome.message, outcome.ok)
        if not outcome.ok:
            self.notify(esc(outcome.message), severity="warning")

    def show_item(self, index: int | None, *, preview: bool = True) -> None:
        """Fill the right panel (and, when the image changed, the preview) for item `index`.

        Nothing here changes a widget's size, so the screen is repainted without a new layout,
        and the preview is shown only after the caption has been painted.
        """
        changed = index != self.current
        self.current = index
        tags = self.query_one("#tags", RowList)
        heading = self.query_one("#heading", Static)
        if index is None:
            tags.set_count(0)
            heading.update(Text("no images match the filter"), layout=False)
            self.query_one("#raw", Static).update("", layout=False)
            self.pane.show(None, None)
            return
        if changed:
            self._scores = self.session.scores(index)
        item = self.session.items[index]
        tags.set_count(len(item.tags), tags.cursor if not changed else 0)
        problems = self.session.problems(index)
        notes = ([f"⚠ {len(problems)}"] if problems else []) + (["⚠ not UTF-8: read-only"] if item.locked else []) \
            + (["⚠ several lines"] if self.session.multiline(index) else [])
        width = max(8, (heading.size.width or 33) - sum(len(n) + 1 for n in notes))
        heading.update(Text(" ".join([fit_path(self.session.name(index), width), *notes]), no_wrap=True,
                            overflow="ellipsis"), layout=False)
        self.query_one("#raw", Static).update(Text(self.session.caption_text(index)), layout=False)
        if changed and preview:
            self.pane.show(None, None, note="…")
            self.call_after_refresh(self._caption_painted, index)

    def _caption_painted(self, index: int) -> None:
        """The caption is on screen; the picture follows unless another key moves on first (holding
        `n` skims captions without painting every picture on the way)."""
        if index == self.current:
            self.caption_shown_at = time.perf_counter()
            self.set_timer(PREVIEW_DELAY_S, lambda: self._draw_preview(index))

    def refresh_list(self) -> None:
        self.query_one("#files", RowList).refresh()

    # ---- the preview

    def _preview_request(self, index: int, cells: tuple[int, int]) -> tuple[Hashable, Path] | None:
        image = self.session.items[index].file.image
        return ((image, cells), self.session.root / image) if image else None

    def _draw_preview(self, index: int) -> None:
        """Show the cached picture, or ask the renderer thread for it (and the next images ahead)."""
        pane = self.pane
        if index != self.current or not pane.is_attached:
            return
        cells = pane.cells
        request = self._preview_request(index, cells)
        if request is None:
            pane.show(None, None)
            return
        key, path = request
        picture = self._renderer.cached(key)
        if picture is not None:
            pane.show(key, picture)
            return
        pane.show(key, None, note="…")
        ahead = []
        visible, row = self.session.visible, self.query_one("#files", RowList).cursor
        if row < len(visible) and visible[row] == index:
            for next_row in (row + 1, row + 2, row - 1):
                if 0 <= next_row < len(visible) and (found := self._preview_request(visible[next_row], cells)):
                    ahead.append((found[0], found[1], cells))
        self._renderer.request(key, path, cells, ahead)

    def _preview_done(self, key: Hashable, picture: Picture) -> None:
        """Called on the renderer's thread: hand the picture to the UI thread."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the app has closed
                self._loop.call_soon_threadsafe(self._show_preview, key, picture)

    def _show_preview(self, key: Hashable, picture: Picture) -> None:
        pane = self.pane
        if pane.key == key and pane.is_attached:
            pane.show(key, picture)

    def _preview_resized(self, cells: tuple[int, int]) -> None:
        if self.current is not None:
            self._draw_preview(self.current)

    def preview_ready(self) -> bool:
        """True when the shown image's picture (or the reason there is none) is on screen."""
        if self.current is None:
            return True
        pane = self.pane
        request = self._preview_request(self.current, pane.cells)
        return request is None or (pane.picture is not None and pane.key == request[0])

    # ---- events and edits

    def _file_moved(self, row: int) -> None:
        if self.session.visible:
            self.show_item(self.session.visible[row])

    def submit(self, box: Input) -> None:
        value = box.value
        if box.id == "filter":
            self.apply_filter(value)
            return
        self._close_suggestions()
        box.value = ""
        mode, renaming = self._mode, self._renaming
        self._set_mode("add")
        self.action_focus_tags()
        if mode == "add" and value.strip() and self.current is not None:
            self.report(self.session.add_tags(self.current, value))
        elif mode == "rename" and renaming is not None and renaming[0] == self.current:
            self.report(self.session.rename_tag(*renaming, value))
        elif mode == "replace" and renaming is not None and renaming[0] == self.current:
            old = self.session.items[renaming[0]].tags[renaming[1]]
            self.confirm(ReplaceTag(old, value.strip()))
        self.after_edit()

    def apply_filter(self, text: str) -> None:
        """Filter the list; the selected image stays selected when it still matches."""
        try:
            count = self.session.set_filter(text)
        except UsageError as exc:
            self.set_status(f"filter not changed: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), ok=False)
            return
        files = self.query_one("#files", RowList)
        keep = self.current
        row = self.session.visible.index(keep) if keep is not None and keep in set(self.session.visible) else 0
        self.current = None if not count else self.current
        files.set_count(count, row)
        if not count:
            self.show_item(None)
        self.set_status(f"{count} image(s) match '{text.strip()}'" if text.strip() else
                        f"filter cleared: all {count} images")
        self.set_focus(files)

    def filter_by_vocab(self) -> None:
        vocab = self.query_one("#vocab", RowList)
        ranked = self.session.ranked_tags()
        if ranked:
            tag = ranked[vocab.cursor][0]
            self.query_one("#filter", Input).value = f"={tag}"
            self.apply_filter(f"={tag}")

    def after_edit(self, index: int | None = None) -> None:
        """Redraw what an edit may have changed (the item, its list row)."""
        if index is not None and index != self.current and index in set(self.session.visible):
            self.query_one("#files", RowList).move_to(self.session.visible.index(index))
        self.show_item(self.current, preview=False)
        self.refresh_list()
        if self.query_one("#centre").has_class("vocab"):
            self.query_one("#vocab", RowList).set_count(len(self.session.ranked_tags()),
                                                        self.query_one("#vocab", RowList).cursor)

    def _selected_position(self) -> int | None:
        """Where the highlighted tag is in the caption (edits act on that occurrence only)."""
        if self.current is None:
            return None
        tags = self.session.items[self.current].tags
        row = self.query_one("#tags", RowList).cursor
        return row if row < len(tags) else None

    def _set_mode(self, mode: str) -> None:
        self._mode = mode
        self.query_one("#add", Input).placeholder = {"add": "+ add tags", "rename": "rename to (Enter saves)",
                                                     "replace": "replace in all filtered with"}[mode]

    def confirm(self, operation) -> None:
        """Ask before a change to every filtered image; `y` runs it."""
        count = self.session.affected(operation)
        if not count:
            self.set_status(f"{operation.describe()}: nothing to change in the {len(self.session.visible)} "
                            "filtered image(s)")
            return
        self.pending = Pending(f"{operation.describe()} on {count} filtered image(s)? y = yes, any other key = no",
                               lambda: self.session.apply_to_filtered(operation))
        self.set_status(self.pending.question, ok=False)

    def _answer(self, key: str) -> None:
        pending, self.pending = self.pending, None
        if key == "y" and pending is not None:
            self.report(pending.run())
            self.after_edit()
        else:
            self.set_status("cancelled: nothing changed")

    # ---- actions

    def action_step(self, offset: int) -> None:
        files = self.query_one("#files", RowList)
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
                self.query_one("#tags", RowList).move_to(max(0, min(last, position + offset)))

    def _open_box(self, mode: str, value: str = "") -> None:
        box = self.query_one("#add", Input)
        self._set_mode(mode)
        box.value = value
        box.cursor_position = len(value)
        self._close_suggestions()
        self.set_focus(box)

    def action_add_tag(self) -> None:
        if self.current is not None:
            self._open_box("add")

    def action_rename_tag(self) -> None:
        position = self._selected_position()
        if position is not None and self.current is not None:
            self._renaming = (self.current, position)
            self._open_box("rename", self.session.items[self.current].tags[position])

    def action_replace_tag(self) -> None:
        position = self._selected_position()
        if position is not None and self.current is not None:
            self._renaming = (self.current, position)
            self._open_box("replace", self.session.items[self.current].tags[position])

    def action_focus_filter(self) -> None:
        self.set_focus(self.query_one("#filter", Input))

    def action_focus_tags(self) -> None:
        self.query_one("#centre").remove_class("vocab")
        self.set_focus(self.query_one("#tags", RowList))

    def action_cycle_focus(self) -> None:
        order = [self.query_one("#files"), self.query_one("#tags")]
        if self.query_one("#centre").has_class("vocab"):
            order.append(self.query_one("#vocab"))
        position = order.index(self.focused) if self.focused in order else -1
        self.set_focus(order[(position + 1) % len(order)])

    def action_toggle_vocab(self) -> None:
        centre = self.query_one("#centre")
        if centre.has_class("vocab"):
            self.action_focus_tags()
            return
        centre.add_class("vocab")
        vocab = self.query_one("#vocab", RowList)
        vocab.set_count(len(self.session.ranked_tags()))
        self.set_focus(vocab)
        self.set_status(f"{len(self.session.ranked_tags())} tags in the dataset · Enter filters by the highlighted one")

    def action_toggle_wide(self) -> None:
        self.wide = not self.wide
        self.query_one("#left").set_class(self.wide, "wide")
        self.refresh_list()

    def action_help(self) -> None:
        self.query_one("#help").add_class("open")

    def action_undo(self) -> None:
        outcome, index = self.session.undo()
        self.report(outcome)
        self.after_edit(index)

    def action_redo(self) -> None:
        outcome, index = self.session.redo()
        self.report(outcome)
        self.after_edit(index)

    def action_next_problem(self) -> None:
        files = self.query_one("#files", RowList)
        if not self.session.visible:
            return
        row = self.session.next_problem(files.cursor)
        if row is None:
            self.set_status("no lint problems in the shown images")
            return
        files.move_to(row, force=True)
        self.set_status(" · ".join(self.session.problems(self.session.visible[row])), ok=False)

    def action_apply_all(self) -> None:
        operation = self.session.last_operation
        if operation is None:
            self.set_status("no tag change to repeat yet: add, delete or rename a tag first", ok=False)
            return
        self.confirm(operation)
