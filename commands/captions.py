"""`loraprep captions`: caption stats, lint, bulk edits with undo/redo, and the terminal editor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from commands.common import Tokenizer, guard, print_json, sweep_leftovers
from prep.console import err, esc, out

app = typer.Typer(
    name="captions",
    help="Check and edit captions in the terminal: stats, lint, bulk edits with undo, and an editor.",
    no_args_is_help=True, rich_markup_mode="rich",
)

_CaptionDir = Annotated[Path, typer.Argument(help="Dataset folder (images with caption sidecars, searched recursively).")]
_CaptionExtension = Annotated[str, typer.Option("--caption-extension", help="Caption sidecar extension.")]
_AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
_Where = Annotated[Optional[list[str]], typer.Option("--where", help="Only captions with this tag (repeatable: all must match).")]
_WhereNot = Annotated[Optional[list[str]], typer.Option("--where-not", help="Only captions without this tag (repeatable).")]
_DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing.")]


def _token_counter(tokenizer: Path | None):
    from prep.captions.tokens import load_token_counter

    return load_token_counter(tokenizer)


@app.command("stats")
@guard
def captions_stats(
    folder: _CaptionDir,
    tag: Annotated[Optional[str], typer.Option("--tag", help="Also list the images carrying this tag.")] = None,
    top: Annotated[int, typer.Option("--top", help="Tags shown in the frequency table (0: all).")] = 30,
    tokenizer: Tokenizer = None,
    caption_extension: _CaptionExtension = ".txt",
    as_json: _AsJson = False,
) -> None:
    """Tag frequencies (images and % per tag) and caption lengths in CLIP tokens.

    Lengths above 75 tokens (one CLIP window) or 225 (kohya's longest setting) are truncated in
    training. Tokens are counted with the real CLIP vocabulary when available, else estimated (≈).
    """
    from rich.table import Table

    from prep.captions.dataset import load_dataset
    from prep.captions.stats import TOKEN_LIMITS, StatsOptions, caption_stats

    stats = caption_stats(load_dataset(folder, caption_extension), _token_counter(tokenizer), StatsOptions(tag, top))
    if as_json:
        print_json(stats.to_dict())
        return
    table = Table(title=f"{stats.distinct_tags} tags over {stats.images} images (top {len(stats.top_tags)})")
    table.add_column("tag", overflow="fold")
    table.add_column("images", justify="right")
    table.add_column("%", justify="right")
    for name, count in stats.top_tags:
        table.add_row(esc(name), str(count), f"{stats.percent(count):.1f}")
    out.print(table)
    out.print(f"captioned {stats.captioned}/{stats.images}; missing {stats.missing}, empty {stats.empty}, "
              f"orphan captions {stats.orphans}")
    tokens = stats.tokens.to_dict()
    mark = stats.tokens.mark
    out.print(f"caption length in CLIP tokens, counted by {esc(stats.tokens.counter)}:", highlight=False)
    lengths = Table()
    lengths.add_column("tokens")
    lengths.add_column("images", justify="right")
    for label, count in stats.tokens.histogram():
        lengths.add_row(f"{mark}{esc(label)}", str(count))
    out.print(lengths)
    out.print(f"min {mark}{tokens['min']}, median {mark}{tokens['median']}, mean {mark}{tokens['mean']}, "
              f"max {mark}{tokens['max']}")
    for limit in TOKEN_LIMITS:
        if over := stats.tokens.over(limit):
            err.print(f"[yellow]warning:[/] {over} caption(s) longer than {limit} tokens (truncated in training)")
    if tag is not None:
        out.print(f"{len(stats.tagged)} image(s) tagged '{esc(tag)}':", highlight=False)
        for image in stats.tagged:
            out.print(f"  {esc(image)}", highlight=False)


@app.command("lint")
@guard
def captions_lint(
    folder: _CaptionDir,
    trigger: Annotated[Optional[str], typer.Option("--trigger", help="Check this trigger word is in every caption, first.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Token limit per caption (75, 150 or 225).")] = 75,
    rare_max: Annotated[int, typer.Option("--rare-max", help="Tags in at most this many images are checked for any one-letter difference from a tag 3× as common.")] = 1,
    typo_ratio: Annotated[int, typer.Option("--typo-ratio", help="Any tag is a likely typo when a tag this many times as common is a swapped, dropped or doubled letter away (smlie → smile).")] = 10,
    limit: Annotated[int, typer.Option("--limit", help="Problems listed per kind (0: all).")] = 20,
    tokenizer: Tokenizer = None,
    caption_extension: _CaptionExtension = ".txt",
    as_json: _AsJson = False,
) -> None:
    """Find caption problems: missing/empty/orphan/non-UTF-8 captions, captions on several lines,
    trigger missing or not first, duplicate tags, one tag spelled several ways, likely typos of
    common tags, captions over the token limit.

    Exit code 1 when there is any problem (use it in scripts and CI).
    """
    from rich.table import Table

    from prep.captions.dataset import load_dataset
    from prep.captions.lint import KINDS, LintOptions, fix_commands, lint_dataset

    dataset = load_dataset(folder, caption_extension)
    report = lint_dataset(dataset, _token_counter(tokenizer), LintOptions(trigger, max_tokens, rare_max, typo_ratio))
    if as_json:
        print_json(report.to_dict())
        raise typer.Exit(1 if report.problems else 0)
    _note_left_out(dataset)
    counts = report.by_kind()
    for kind, description in KINDS.items():
        if not counts[kind]:
            continue
        out.print(f"[bold]{esc(kind)}[/] ({counts[kind]}): {esc(description)}", highlight=False)
        table = Table(show_header=False)
        table.add_column("file", overflow="fold")
        table.add_column("problem", overflow="fold")
        rows = [p for p in report.problems if p.kind == kind]
        for problem in rows[:limit or None]:
            table.add_row(esc(problem.path), esc(problem.message))
        if limit and len(rows) > limit:
            table.add_row("…", f"{len(rows) - limit} more (--limit 0 shows all)")
        out.print(table)
        for command in fix_commands(report, str(folder), kind, trigger):
            out.print(f"  [cyan]fix:[/] {esc(command)}", highlight=False)
    if report.problems:
        out.print(f"[bold red]{len(report.problems)} problem(s)[/] in {len(report.paths())} of {report.files} files")
        raise typer.Exit(1)
    out.print(f"[green]no problems[/] in {report.files} files (tokens: {esc(report.counter)})")


@app.command("show")
@guard
def captions_show(
    folder: _CaptionDir,
    image: Annotated[Optional[str], typer.Argument(help="One image (path relative to the folder, or its name); default: all.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Images shown without IMAGE (0: all; --json shows all).")] = 20,
    caption_extension: _CaptionExtension = ".txt",
    as_json: _AsJson = False,
) -> None:
    """An image's caption with each tag's tagger score (from its .loraprep.json) and dataset frequency."""
    from rich.table import Table

    from prep.captions.dataset import load_dataset
    from prep.captions.show import show_captions

    dataset = load_dataset(folder, caption_extension)
    views = show_captions(dataset, image, None if as_json or not limit else limit)
    if as_json:
        print_json([v.to_dict() for v in views] if image is None else views[0].to_dict())
        return
    for view in views:
        faces = "" if view.faces is None else f", faces: {view.faces:d}"
        table = Table(title=f"{esc(view.image or view.caption)}{faces}", title_justify="left")
        table.add_column("tag", overflow="fold")
        table.add_column("score", justify="right")
        table.add_column("images", justify="right")
        for t in view.tags:
            table.add_row(esc(t.tag), "" if t.score is None else f"{t.score:.2f}", str(t.frequency))
        out.print(table)
        out.print(esc(view.text) if view.text is not None else "[red](no caption)[/]", highlight=False)
    if image is None and len(views) < len(dataset.files):
        out.print(f"… {len(dataset.files) - len(views)} more (--limit 0 shows all)")


def _note_left_out(dataset) -> None:
    """Folder links not entered and images sharing a caption file: said, never silently skipped."""
    for drop in dataset.skipped[:10]:
        err.print(f"[yellow]left out:[/] {esc(drop.path)}: {esc(drop.reason)}", highlight=False)
    if len(dataset.skipped) > 10:
        err.print(f"[yellow]left out:[/] … and {len(dataset.skipped) - 10} more", highlight=False)


def _run_caption_edit(folder: Path, operation, having: list[str] | None, lacking: list[str] | None,
                      dry_run: bool, as_json: bool, caption_extension: str, *, include_missing: bool = False) -> None:
    """Plan, journal and write one bulk edit; print what it really changed (shared by add/remove/…)."""
    import dataclasses

    from prep.captions.dataset import load_dataset
    from prep.captions.edit import Where, parse_tags, plan_edit, summarize
    from prep.captions.journal import apply_plan

    if not dry_run:
        sweep_leftovers(folder)
    dataset = load_dataset(folder, caption_extension)
    where = Where(tuple(parse_tags(having or [])), tuple(parse_tags(lacking or [])), include_missing)
    plan = plan_edit(dataset, operation, where)
    result = apply_plan(folder, plan, dry_run=dry_run)
    done = plan if dry_run else dataclasses.replace(plan, changes=result.written)
    summary = summarize(done)
    if as_json:
        print_json({"operation": plan.description, "dry_run": dry_run, **summary.to_dict(),
                    "written": [c.caption for c in result.written] if not dry_run else [],
                    "conflicts": list(result.conflicts),
                    "skipped": [{"path": caption, "reason": why} for caption, why in plan.skipped],
                    "changes": [{"path": c.caption, "before": list(c.old), "after": list(c.new)} for c in done.changes]})
    else:
        _note_left_out(dataset)
        _print_edit_summary(done, summary, result, dry_run, folder)
    if result.conflicts or plan.skipped:
        raise typer.Exit(1)


def _print_edit_summary(plan, summary, result, dry_run: bool, folder: Path) -> None:
    from rich.table import Table


    verb = "would change" if dry_run else "changed"
    out.print(f"[bold]{esc(plan.description)}[/]: {verb} {summary.files} of {summary.matched} matching caption(s)",
              highlight=False)
    if summary.added or summary.removed:
        table = Table(show_edge=False)
        table.add_column("tag", overflow="fold")
        table.add_column("+captions", justify="right", style="green")
        table.add_column("−captions", justify="right", style="red")
        for tag in dict.fromkeys([*summary.added, *summary.removed]):
            table.add_row(esc(tag), str(summary.added[tag] or ""), str(summary.removed[tag] or ""))
        out.print(table)
    if summary.reordered:
        out.print(f"{summary.reordered} caption(s) only reordered")
    for change in plan.changes[:5]:
        out.print(f"  {esc(change.caption)}: [red]- {esc(', '.join(change.old))}[/]", highlight=False)
        out.print(f"  {' ' * len(change.caption)}  [green]+ {esc(', '.join(change.new))}[/]", highlight=False)
    if len(plan.changes) > 5:
        out.print(f"  … and {len(plan.changes) - 5} more")
    for caption, why in plan.skipped:
        err.print(f"[yellow]skipped:[/] {esc(caption)} is {esc(why)}", highlight=False)
    for caption in result.conflicts:
        err.print(f"[yellow]warning:[/] {esc(caption)} changed on disk since it was read; left as it is",
                  highlight=False)
    if result.conflicts:
        err.print(f"{len(result.conflicts)} caption(s) left alone: run the command again to edit them", highlight=False)
    if dry_run:
        out.print("[cyan]dry run: nothing written[/]")
    elif result.entry is not None:
        out.print(f"undo with [bold]loraprep captions undo {esc(folder)}[/]", highlight=False)


@app.command("add")
@guard
def captions_add(
    folder: _CaptionDir,
    tags: Annotated[list[str], typer.Argument(help="Tags to add (each argument may be a comma-separated list).")],
    front: Annotated[bool, typer.Option("--front", help="Insert at the front (e.g. a trigger word) instead of the end.")] = False,
    where: _Where = None, where_not: _WhereNot = None, dry_run: _DryRun = False,
    caption_extension: _CaptionExtension = ".txt", as_json: _AsJson = False,
) -> None:
    """Add tags to every matching caption that lacks them; creates missing caption files."""
    from prep.captions.edit import AddTags, require_tags

    _run_caption_edit(folder, AddTags(require_tags(tags, "add"), front), where, where_not, dry_run, as_json,
                      caption_extension, include_missing=not where)


@app.command("remove")
@guard
def captions_remove(
    folder: _CaptionDir,
    tags: Annotated[list[str], typer.Argument(help="Tags to remove (or regular expressions with --regex).")],
    regex: Annotated[bool, typer.Option("--regex", help="Treat each tag as a regex that must match a whole tag.")] = False,
    where: _Where = None, where_not: _WhereNot = None, dry_run: _DryRun = False,
    caption_extension: _CaptionExtension = ".txt", as_json: _AsJson = False,
) -> None:
    """Remove tags from every matching caption. Example: `remove DS --regex '.*_background'`."""
    from prep.captions.edit import RemoveTags, require_tags

    values = require_tags(tags, "remove") if not regex else tuple(t for t in tags if t.strip()) or \
        require_tags((), "remove")
    _run_caption_edit(folder, RemoveTags(values, regex), where, where_not, dry_run, as_json, caption_extension)


@app.command("replace")
@guard
def captions_replace(
    folder: _CaptionDir,
    old: Annotated[str, typer.Argument(help="The tag to replace (a regex with --regex).")],
    new: Annotated[str, typer.Argument(help="Its replacement: '' removes it, commas make several tags, \\1 refers to groups.")],
    regex: Annotated[bool, typer.Option("--regex", help="Substitute the regex in every tag (re.sub).")] = False,
    where: _Where = None, where_not: _WhereNot = None, dry_run: _DryRun = False,
    caption_extension: _CaptionExtension = ".txt", as_json: _AsJson = False,
) -> None:
    """Replace a tag in place (position kept). Replacing a tag with itself changes nothing.

    Example: `replace DS --regex '(\\w+)_hair' '\\1 hair'`.
    """
    from prep.captions.edit import ReplaceTag

    _run_caption_edit(folder, ReplaceTag(old.strip(), new, regex), where, where_not, dry_run, as_json, caption_extension)


@app.command("move-first")
@guard
def captions_move_first(
    folder: _CaptionDir,
    tags: Annotated[list[str], typer.Argument(help="Tags to move to the front, in this order (e.g. the trigger).")],
    where: _Where = None, where_not: _WhereNot = None, dry_run: _DryRun = False,
    caption_extension: _CaptionExtension = ".txt", as_json: _AsJson = False,
) -> None:
    """Move tags to the front where present (kohya's keep_tokens keeps the first ones unshuffled)."""
    from prep.captions.edit import MoveFirst, require_tags

    _run_caption_edit(folder, MoveFirst(require_tags(tags, "move-first")), where, where_not, dry_run, as_json,
                      caption_extension)


@app.command("sort")
@guard
def captions_sort(
    folder: _CaptionDir,
    by: Annotated[str, typer.Option("--by", help="alpha, or frequency (most common tags first).")] = "alpha",
    keep_first: Annotated[int, typer.Option("--keep-first", help="Leave the first N tags in place (trigger).")] = 0,
    where: _Where = None, where_not: _WhereNot = None, dry_run: _DryRun = False,
    caption_extension: _CaptionExtension = ".txt", as_json: _AsJson = False,
) -> None:
    """Sort each caption's tags, alphabetically or by how many images carry them."""
    from prep.captions.dataset import load_dataset
    from prep.captions.edit import SortTags
    from prep.errors import UsageError

    if by not in ("alpha", "frequency"):
        raise UsageError(f"--by {by}: choose alpha or frequency")
    frequency = load_dataset(folder, caption_extension).tag_counts() if by == "frequency" else None
    _run_caption_edit(folder, SortTags(keep_first, frequency), where, where_not, dry_run, as_json, caption_extension)


@app.command("dedupe")
@guard
def captions_dedupe(
    folder: _CaptionDir,
    loose: Annotated[bool, typer.Option("--loose", help="Also treat tags differing only by case/spaces/underscores as repeats.")] = False,
    where: _Where = None, where_not: _WhereNot = None, dry_run: _DryRun = False,
    caption_extension: _CaptionExtension = ".txt", as_json: _AsJson = False,
) -> None:
    """Remove repeated tags within each caption, keeping the first occurrence."""
    from prep.captions.edit import Dedupe

    _run_caption_edit(folder, Dedupe(loose), where, where_not, dry_run, as_json, caption_extension)


@app.command("join-lines")
@guard
def captions_join_lines(
    folder: _CaptionDir,
    where: _Where = None, where_not: _WhereNot = None, dry_run: _DryRun = False,
    caption_extension: _CaptionExtension = ".txt", as_json: _AsJson = False,
) -> None:
    """Put captions written on several lines on one line (kohya trains on the first line only).

    The other bulk edits leave such captions alone, so an added tag never lands on a line that is
    not trained; `captions lint` lists them (multi-line).
    """
    from prep.captions.edit import JoinLines

    _run_caption_edit(folder, JoinLines(), where, where_not, dry_run, as_json, caption_extension)


@app.command("undo")
@guard
def captions_undo(
    folder: _CaptionDir,
    force: Annotated[bool, typer.Option("--force", help="Restore even captions changed since that edit.")] = False,
    dry_run: _DryRun = False,
    as_json: _AsJson = False,
) -> None:
    """Revert the last caption edit exactly (byte for byte), from the journal in DIR/.loraprep/journal/.

    Bulk commands and the editor (`captions edit`) share the journal: this undoes the newest edit,
    whoever made it. Run it again to undo the one before; `captions redo` re-applies. Refuses if a
    caption changed since the edit, unless --force.
    """
    from prep.captions.journal import undo_last

    if not dry_run:
        sweep_leftovers(folder)
    _print_journal_step(undo_last(folder, force=force, dry_run=dry_run), "undo", dry_run, as_json)


@app.command("redo")
@guard
def captions_redo(
    folder: _CaptionDir,
    force: Annotated[bool, typer.Option("--force", help="Write even over captions changed since the undo.")] = False,
    dry_run: _DryRun = False,
    as_json: _AsJson = False,
) -> None:
    """Re-apply the edit the last `captions undo` (or the editor's `u`) reverted, if nothing was edited since."""
    from prep.captions.journal import redo_last

    if not dry_run:
        sweep_leftovers(folder)
    _print_journal_step(redo_last(folder, force=force, dry_run=dry_run), "redo", dry_run, as_json)


def _print_journal_step(result, verb: str, dry_run: bool, as_json: bool) -> None:
    """Say what an undo/redo did, or would do; exit 1 when a caption changed meanwhile was left alone."""
    if as_json:
        print_json({f"{verb}ne": result.entry.description if result.entry else None, "dry_run": dry_run,
                    "restored": list(result.restored), "unchanged": list(result.unchanged),
                    "forced": list(result.conflicts), "skipped": list(result.skipped)})
    elif result.entry is None:
        out.print(f"nothing to {verb}", markup=False)
    else:
        entry = result.entry
        head = esc(f"would {verb}" if dry_run else f"{verb}ne")
        count = len(result.restored)
        out.print(f"{head} [bold]{esc(entry.description)}[/] ({esc(entry.time)}): "
                  f"{'would restore' if dry_run else 'restored'} {count} caption(s)"
                  + (f", {len(result.unchanged)} already as before" if result.unchanged else ""), highlight=False)
        for caption in result.skipped:
            err.print(f"[yellow]warning:[/] {esc(caption)} changed while it was being restored; left as it is",
                      highlight=False)
    if result.skipped:
        raise typer.Exit(1)


@app.command("edit")
@guard
def captions_edit(
    folder: _CaptionDir,
    trigger: Annotated[Optional[str], typer.Option("--trigger", help="Trigger word, for the lint checks.")] = None,
    caption_extension: _CaptionExtension = ".txt",
) -> None:
    """Edit captions in a terminal UI (works over SSH, 80×24 and up); every change is saved at once,
    in the same undo journal as the bulk commands (`captions undo` sees editor edits and `u` sees theirs).

    Keys: n/p next/previous image, a accept, d delete tag, + add tags (Tab completes from the
    dataset's tags), r rename a tag, R replace it in all filtered images, t toggle, K/J move,
    u/U undo/redo, e next lint problem, / filter (`=1girl =smile -hat`: all must hold; also tag,
    lint, lint:KIND, noface, todo, done, in:FOLDER), A repeat the last change on all filtered images
    (asks first), T the dataset's tags with counts, f full paths, ? every key, q quit.
    """
    from prep.captions.lint import LintOptions
    from prep.review.app import CaptionEditor

    # The editor removes leftovers itself, off the UI thread, and says so in its status line.
    CaptionEditor(folder, extension=caption_extension, lint_options=LintOptions(trigger=trigger)).run()
