"""User text printed through rich stays literal: markup-like captions neither crash nor vanish."""

from __future__ import annotations

import io

import pytest
from prep.console import esc, new_console


@pytest.mark.parametrize("text", ["[/]", "[blue eyes]", "[cat:dog:0.5]", "a[1].png", "trailing\\", "[bold]x[/bold]"])
def test_escaped_user_text_prints_verbatim(text):
    buffer = io.StringIO()
    new_console(file=buffer, width=200, color_system=None).print(f"[green]ok {esc(text)}[/]")
    assert buffer.getvalue() == f"ok {text}\n"
