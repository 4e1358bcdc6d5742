"""User text is data, never console markup: captions, tags and file names like `[/]`, `[blue eyes]`,
`[cat:dog:0.5]` or `a[1].png` print verbatim through every command, and the CLI source is checked
statically for unescaped interpolation into rich markup."""

from __future__ import annotations

import ast
import io
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from prep.console import new_console, print_dropped, rich_reporter
from prep.jpegcrop import ENABLE_HINT
from prep.records import Drop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from markupcheck import cli_sources, safe, violations  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
CAPTION = "[/], [blue eyes], [cat:dog:0.5], :smile:, back\\slash"


SOURCES = [path.relative_to(ROOT).as_posix() for path in cli_sources(ROOT)] + ["prep/console.py"]


def test_every_command_module_is_checked():
    assert {"cli.py", "commands/common.py", "commands/lora.py", "commands/captions.py"} <= set(SOURCES)


@pytest.mark.parametrize("source", SOURCES)
def test_no_unescaped_user_text_reaches_rich_markup(source):
    """Every value interpolated into printed markup, table cells or titles is esc()'d or a number."""
    found = violations(ROOT / source)
    assert not found, "wrap these in prep.console.esc(...):\n" + "\n".join(map(str, found))


@pytest.mark.parametrize("code, expected", [
    ('f"{esc(name)} has {count} images"', True),
    ('f"{loss:.4f}"', True),
    ('f"[green]✓[/] {path}"', False),
    ('caption', False),
    ('esc(caption) if caption else "[red]none[/]"', True),
    ('", ".join(f"{t} ({n})" for t, n in common)', False),
    ('esc(", ".join(f"{t} ({n})" for t, n in common))', True),
    ('str(value)', False),
    ('str(count)', True),
])
def test_the_static_check_tells_escaped_from_unescaped(code, expected):
    assert safe(ast.parse(code, mode="eval").body) is expected


def test_the_static_check_finds_an_unescaped_print(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text("def show(table, name):\n    out.print(f'wrote {name}')\n    table.add_row(name, 'x')\n")
    assert [v.line for v in violations(source)] == [2, 3]


@pytest.fixture()
def odd(tmp_path, testdata):
    """Images named like SD prompt syntax, with captions full of markup-like tags."""
    root = tmp_path / "ds [v2]"
    root.mkdir()
    shutil.copy(testdata / "anime/eileen_happy.png", root / "a[1].png")
    shutil.copy(testdata / "anime/lucy_happy.png", root / "[b].png")
    (root / "a[1].txt").write_text(CAPTION + "\n")
    (root / "[b].txt").write_text("[blue eyes], 1girl\n")
    return root


def _ok(result, *expected: str) -> str:
    assert "MarkupError" not in repr(result.exception), result.exception
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.output, (text, result.output)
    return result.output


def test_scan_prints_names_and_captions_verbatim(odd):
    result = runner.invoke(app, ["scan", str(odd)])
    assert result.exit_code == 0
    _ok(result, "a[1].png", "[b].png", "[/], [blue eyes],", "[blue eyes], 1girl")


@pytest.mark.parametrize("args, expected", [
    (["stats"], ["[blue eyes]", "[cat:dog:0.5]", ":smile:"]),
    (["stats", "--tag", "[/]"], ["tagged '[/]'", "a[1].png"]),
    (["show"], ["a[1].png", "[cat:dog:0.5]", "[b].png"]),
    (["show", "a[1].png"], ["back\\slash", "[/]"]),
    (["lint", "--trigger", "[x]"], ["[x]"]),
    (["add", "[new tag]", "--dry-run"], ["[new tag]", "add"]),
    (["add", "[/]", "--front"], ["[/]", "undo with"]),
])
def test_captions_commands_print_markup_like_text_verbatim(odd, args, expected):
    result = runner.invoke(app, ["captions", args[0], str(odd), *args[1:]])
    assert result.exit_code in (0, 1), result.output
    _ok(result, *expected)


def test_captions_add_writes_then_reports_without_crashing(odd):
    result = runner.invoke(app, ["captions", "add", str(odd), "[/]"])
    _ok(result)
    assert result.exit_code == 0
    assert (odd / "[b].txt").read_text() == "[blue eyes], 1girl, [/]\n"
    undo = runner.invoke(app, ["captions", "undo", str(odd)])
    assert undo.exit_code == 0
    _ok(undo, "[/]")


def test_manifest_bucket_export_with_markup_like_names(odd):
    manifest = runner.invoke(app, ["manifest", str(odd), "--trigger", "[sks]", "--class-tokens", "[/]"])
    assert manifest.exit_code == 0, manifest.output
    _ok(manifest, "trigger: [sks]", str(odd / "manifest.json"))
    bucket = runner.invoke(app, ["bucket", str(odd)])
    assert bucket.exit_code == 0
    _ok(bucket, str(odd / "buckets.json"))
    (odd / "a[1].txt").write_text("[hand edit]\n")
    refused = runner.invoke(app, ["export", str(odd), "--format", "txt"])
    assert refused.exit_code == 1
    _ok(refused, "a[1].txt", "--from-manifest")


def test_tag_dry_run_with_markup_like_trigger(odd, wd14_model):
    result = runner.invoke(app, ["tag", str(odd), "--model-dir", str(wd14_model), "--trigger", "[cat:dog:0.5]",
                                 "--mode", "overwrite", "--dry-run"])
    assert result.exit_code == 0, result.output
    _ok(result, "[cat:dog:0.5]", "a[1].png")


def test_errors_quoting_user_text_print_verbatim(tmp_path):
    missing = tmp_path / "[/]gone[bold]"
    result = runner.invoke(app, ["scan", str(missing)])
    assert result.exit_code == 2
    _ok(result, f"{missing} is not a folder")


def test_progress_notes_and_dropped_tables_are_verbatim():
    buffer = io.StringIO()
    console = new_console(file=buffer, width=400, color_system=None)
    with rich_reporter(console) as reporter:
        reporter.note(f"lossless JPEG crops are off; to enable: {ENABLE_HINT}")
        with reporter.task("scanning [x]", 1) as advance:
            advance()
    print_dropped([Drop("a[1].png", "scan", "caption [/] is odd")], console)
    text = buffer.getvalue()
    assert "pip install 'loraprep[fast-jpeg]'" in text
    assert "scanning [x]" in text and "a[1].png" in text and "caption [/] is odd" in text
