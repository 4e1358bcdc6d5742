"""`loraprep doctor`: what is wrong with a dataset, and setting problem images aside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from commands.common import CaptionExt, MaxPixels, Tokenizer, guard, parse_resolution, print_json, split_option
from prep.console import err, esc, out, rich_reporter

app = typer.Typer()

_QUARANTINE_HELP = "What --apply sets aside: duplicates (default; the copy kept never moves), blurry, tiny, aspect, no-face, small-crop (repeat or comma-separate)."


@app.command()
@guard
def doctor(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (searched recursively) or its manifest.json.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (duplicates, blurry, upscale, captions, buckets …) instead of tables.")] = False,
    sheet_path: Annotated[Optional[Path], typer.Option("--sheet", help="Also draw the problem images on a contact sheet (.png or .jpg), duplicate groups side by side.")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Move the chosen images with their sidecars into DS/.loraprep/quarantine/ (journalled; --restore brings them back). Nothing is ever deleted.")] = False,
    quarantine_kind: Annotated[Optional[list[str]], typer.Option("--quarantine", help=_QUARANTINE_HELP)] = None,
    restore: Annotated[bool, typer.Option("--restore", help="Move the images of the last --apply back where they were, then stop (run again for the one before).")] = False,
    force: Annotated[bool, typer.Option("--force", help="With --restore: bring back what can be, leave files whose place is taken.")] = False,
    trigger: Annotated[Optional[str], typer.Option("--trigger", help="Trigger word (default: the manifest's). Checked first in captions, never a pruning candidate.")] = None,
    class_tokens: Annotated[Optional[list[str]], typer.Option("--class-tokens", help="Class tokens, e.g. '1girl' (default: the manifest's); never pruning candidates.")] = None,
    resolution: Annotated[Optional[str], typer.Option("--resolution", help="Training resolution for the bucket checks (default: buckets.json / the manifest's, else 512).")] = None,
    common: Annotated[float, typer.Option("--common", help="A tag in at least this share of images is a pruning candidate.")] = 0.9,
    blur_sensitivity: Annotated[float, typer.Option("--blur-sensitivity", help="Robust spreads below the dataset's median sharpness that count as blurry (lower flags more).")] = 3.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Caption token limit (75, 150 or 225).")] = 75,
    limit: Annotated[int, typer.Option("--limit", help="Findings listed per section (0: all; --json lists all).")] = 10,
    tokenizer: Tokenizer = None,
    workers: Annotated[int, typer.Option("--workers", help="Images decoded in parallel (threads; default: CPU count).")] = 0,
    caption_extension: CaptionExt = ".txt",
    max_pixels: MaxPixels = 150_000_000,
) -> None:
    """What is wrong with a dataset, each problem with its files and the command that fixes it.

    Checks exact and near duplicates (resized, recompressed, cropped, recoloured or mirrored copies,
    confirmed pixel by pixel), blurry and low-detail images (judged against the dataset itself, so
    flat anime art is not "blurry"), images their bucket must upscale, tiny images, extreme aspect
    ratios, faces not found and crops flagged for upscaling (from the sidecars), caption problems
    (the lint, identical captions, a tag in nearly every image), and bucket usage. Changes nothing
    unless --apply. Exit code 0 when clean, 1 when anything was found.
    """
    from prep.dataset import bucket_plan
    from prep.doctor import DoctorOptions, diagnose, restore_last, set_aside
    from prep.progress import SILENT

    if restore:
        result = restore_last(dataset.parent if dataset.is_file() else dataset, force=force)
        _print_doctor_restore(result, as_json)
        return
    plan = bucket_plan(parse_resolution(resolution)) if resolution is not None else None
    options = DoctorOptions(trigger=trigger, class_tokens=tuple(class_tokens or ()), buckets=plan,
                            caption_extension=caption_extension, max_pixels=max_pixels,
                            blur_sensitivity=blur_sensitivity, common_share=common, max_tokens=max_tokens,
                            tokenizer=tokenizer, **({"workers": workers} if workers else {}))
    kinds = split_option(quarantine_kind) or ("duplicates",)
    if as_json:
        report = diagnose(dataset, options, SILENT)
    else:
        with rich_reporter() as reporter:
            report = diagnose(dataset, options, reporter)
    sheet_file = applied = None
    if sheet_path is not None:
        from prep.doctor.sheet import problem_sheet

        sheet_file = problem_sheet(report, sheet_path)
    if apply:
        applied = set_aside(report, kinds, caption_extension=caption_extension)
    if as_json:
        extra = {"sheet": str(sheet_file) if sheet_file else None}
        if applied is not None:
            extra["applied"] = {"moved": list(applied.images), "missing": list(applied.missing),
                                "journal": str(applied.entry) if applied.entry else None}
        print_json(report.to_dict() | extra)
    else:
        _print_doctor_report(report, limit)
        if sheet_file is not None:
            out.print(f"problem sheet written to {esc(sheet_file)}", highlight=False)
        if applied is not None:
            _print_doctor_applied(report, applied, kinds)
    raise typer.Exit(0 if report.clean else 1)


def _print_doctor_report(report: Any, limit: int) -> None:
    from prep.doctor.report import SECTIONS

    out.print(f"[bold]loraprep doctor[/] {esc(report.label)}: {report.images} images ({esc(report.source)})",
              highlight=False)
    for section, title in SECTIONS.items():
        found = report.section(section)
        if found:
            out.print(f"\n[bold]{esc(title)}[/] ({len(found)})", highlight=False)
            for kind in dict.fromkeys(f.kind for f in found):
                _print_doctor_findings([f for f in found if f.kind == kind], limit)
    out.print(_doctor_bucket_table(report.buckets))
    if report.clean:
        out.print(f"[green]no problems found[/] in {report.images} images")
    else:
        paths = {p for f in report.findings for p in f.paths[:1]}
        out.print(f"[bold red]{len(report.findings)} finding(s)[/] about {len(paths)} file(s) in {report.images} images")


def _print_doctor_findings(found: list, limit: int) -> None:
    """One kind of finding: a table of files and sentences (at most `limit` rows), then its fixes."""
    from rich.table import Table

    table = Table(show_lines=any(len(f.paths) > 1 for f in found), header_style="dim")
    table.add_column("file" if all(len(f.paths) == 1 for f in found) else "files", overflow="fold")
    table.add_column(esc(found[0].kind), overflow="fold")
    for finding in found[:limit or None]:
        shown = finding.paths if len(finding.paths) <= 8 else (*finding.paths[:8], f"… {len(finding.paths) - 8} more")
        table.add_row("\n".join(esc(p) for p in shown), esc(finding.message))
    if limit and len(found) > limit:
        table.add_row("…", f"{len(found) - limit} more {esc(found[0].kind)} (--limit 0 shows all)")
    out.print(table)
    fixes = list(dict.fromkeys(f.fix for f in found if f.fix))
    for command in fixes[:3]:
        out.print(f"  [cyan]fix:[/] {esc(command)}", highlight=False)
    if len(fixes) > 3:
        out.print(f"  [cyan]fix:[/] … {len(fixes) - 3} more (--json gives every finding's fix)", highlight=False)


def _doctor_bucket_table(usage: Any) -> Any:
    from rich.table import Table

    table = Table(title=f"bucket usage at {usage.resolution[0]:d}×{usage.resolution[1]:d}: "
                        f"{usage.wasted:.1%} of the pixels trimmed on average", title_justify="left")
    for column in ("bucket", "images", "trimmed"):
        table.add_column(column, justify="right")
    for (width, height), count in usage.counts.items():
        table.add_row(f"{width}×{height}", str(count), f"{usage.trimmed[(width, height)]:.1%}")
    return table


def _print_doctor_applied(report: Any, applied: Any, kinds: tuple[str, ...]) -> None:
    if applied.entry is None:
        out.print(f"--apply: nothing to set aside ({esc(', '.join(kinds))})")
        return
    out.print(f"[bold]moved {len(applied.images)} image(s)[/] with their sidecars into "
              f"{esc(report.root / '.loraprep' / 'quarantine')}:", highlight=False)
    for image in applied.images[:20]:
        out.print(f"  {esc(image)}", highlight=False)
    if len(applied.images) > 20:
        out.print(f"  … and {len(applied.images) - 20} more")
    for image in applied.missing:
        err.print(f"[yellow]warning:[/] {esc(image)} is no longer there; left alone", highlight=False)
    out.print(f"undo with [bold]loraprep doctor {esc(report.label)} --restore[/]", highlight=False)
    if report.manifest is not None:
        out.print(f"[yellow]the manifest {esc(report.manifest)} still lists them:[/] rebuild it with "
                  f"loraprep manifest {esc(report.label)}", highlight=False)


def _print_doctor_restore(result: Any, as_json: bool) -> None:
    if as_json:
        print_json({"restored": [m.source for m in result.restored], "unchanged": [m.source for m in result.unchanged],
                    "left": [m.source for m in result.conflicts],
                    "entry": result.entry.description if result.entry else None})
        return
    if result.entry is None:
        out.print("nothing to restore")
        return
    out.print(f"restored {len(result.restored)} file(s) set aside by [bold]{esc(result.entry.description)}[/] "
              f"({esc(result.entry.time)})", highlight=False)
    for move in result.conflicts:
        err.print(f"[yellow]left in the quarantine:[/] {esc(move.target)} (its place {esc(move.source)} is taken "
                  "or it changed)", highlight=False)
