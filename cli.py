"""loraprep's command line: parse arguments, call one library function, render the result.

No logic lives here. Every command is wrapped by `guard`, the single place a `LoraprepError`
becomes a message with a hint and an exit code (0 ok, 1 some files skipped or a run failed,
2 usage error). Heavy libraries (torch, diffusers, peft) are imported inside the commands that
need them so `loraprep --help` stays fast.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from prep.console import err, esc, out, print_dropped, rich_reporter
from prep.errors import LoraprepError

F = TypeVar("F", bound=Callable[..., Any])


def _tidy_help() -> None:
    """Help that reads cleanly at 80 columns: flags show no `<bool>` value, values show click's
    plain metavars (TEXT, INTEGER, PATH), usage lines name arguments as FOLDER (not `{folder}`), and
    docstring paragraphs are re-flowed to the terminal instead of keeping the source's line breaks.

    These are presentation hooks into typer's help renderer (typer 0.29 changed all three); if a
    future typer renames them, help falls back to typer's own rendering. typer imports its
    `rich_utils` (and with it rich's markdown and traceback modules) only to render help or an
    error, so its hooks are set when help is first rendered, not on every start.
    """
    try:
        from typer import core
        option_type = core.TyperOption.display_type_rich
        core.TyperArgument._usage_display_name  # noqa: B018
        formatters = {cls: cls.format_help for cls in (core.TyperCommand, core.TyperGroup)}
    except (ImportError, AttributeError):
        return
    plain = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "Path": "PATH", "file": "FILE",
             "directory": "DIR"}

    def option_metavar(self: Any, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        shown = option_type(self, ctx)
        if not shown or self.metavar is not None:
            return shown
        label = shown.strip("<>.").removeprefix("list[").removesuffix("]")
        return plain.get(label, label.upper())

    def usage_name(self: Any) -> str:
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    @functools.cache
    def tidy_renderer() -> None:
        try:
            from typer import rich_utils
            rich_utils._fix_linebreaks  # noqa: B018
            rich_utils.Table  # noqa: B018
        except (ImportError, AttributeError):
            return

        def reflow(paragraphs: list[str], markup_mode: Any) -> str:
            return "\n\n".join(p if p.startswith("\b") else " ".join(p.split("\n")) for p in paragraphs)

        class FoldingTable(rich_utils.Table):  # type: ignore[name-defined, misc]
            """Typer's option tables with long names folded onto a second line instead of cut with '…'."""

            def add_row(self, *renderables: Any, **kwargs: Any) -> None:
                super().add_row(*renderables, **kwargs)
                for column in self.columns:
                    column.overflow = "fold"

        rich_utils._fix_linebreaks = reflow
        rich_utils.Table = FoldingTable

    def tidied(format_help: Callable[..., None]) -> Callable[..., None]:
        def format_help_tidily(self: Any, ctx: Any, formatter: Any) -> None:
            tidy_renderer()
            return format_help(self, ctx, formatter)

        return format_help_tidily

    core.TyperOption.display_type_rich = option_metavar
    core.TyperArgument.display_type_rich = lambda self, ctx: None
    core.TyperArgument.display_name_raw = property(lambda self: self.metavar or (self.name or "").upper())
    core.TyperArgument._usage_display_name = usage_name
    for cls, format_help in formatters.items():
        cls.format_help = tidied(format_help)


_tidy_help()

app = typer.Typer(
    name="loraprep",
    help="Turn a folder of raw images into a clean, captioned, bucketed LoRA dataset, and train a LoRA on it.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def guard(fn: F) -> F:
    """Render a LoraprepError once, with its hint, and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LoraprepError as exc:
            err.print(f"[bold red]error:[/] {esc(exc.message)}", highlight=False)
            if exc.hint:
                err.print(f"[yellow]hint:[/] {esc(exc.hint)}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _shorten(text: str, width: int) -> str:
    """One table cell's worth of a long caption."""
    return text if len(text) < width else text[:width - 3] + "…"


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    typer.echo(json.dumps(data, indent=1, ensure_ascii=False))


def sweep_leftovers(folder: Path | None) -> None:
    """Before a command writes into `folder`: remove the temporaries killed loraprep runs left there
    (only our own `.NAME.lp<pid>.*.tmp`, of processes no longer running) and say so."""
    from prep import atomic

    if folder is not None and folder.is_dir() and (note := atomic.sweep_leftovers(folder)):
        err.print(f"[cyan]•[/] {esc(note)}", highlight=False)


def finish(dropped: list, *, quiet: bool = False) -> None:
    """Show skipped files and exit 1 when there were any (documented exit-code contract)."""
    if not quiet:
        print_dropped(dropped)
    if dropped:
        raise typer.Exit(1)


# ---------------------------------------------------------------- foundation: scan, bucket, manifest, export, prep

CaptionExt = Annotated[str, typer.Option("--caption-extension", help="Caption sidecar extension, used end to end.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", help="Refuse images above this many pixels (decompression-bomb guard).")]
OverwriteCaptions = Annotated[bool, typer.Option(
    "--overwrite-captions",
    help="Re-running into an existing dataset: also replace crop captions edited since crop wrote them with "
         "the source's caption (journalled: `loraprep captions undo` restores them). Default: keep them and say which.")]


@app.command()
@guard
def scan(
    folder: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
    caption_extension: CaptionExt = ".txt",
    max_pixels: MaxPixels = 150_000_000,
) -> None:
    """Look before you prep: every image with its size, aspect ratio and caption, and every problem.

    Follows kohya's `N_name` repeat-folder convention (`10_sks woman/` = 10 repeats, class tokens
    "sks woman"). Sizes come from file headers; nothing is decoded. Exit code 1 if any file is unreadable.
    """
    from rich.table import Table

    from prep.dataset import scan_summary
    from prep.scan import require_images, scan_folder

    if as_json:
        result = require_images(scan_folder(folder, caption_extension=caption_extension, max_pixels=max_pixels))
        print_json(scan_summary(result))
        raise typer.Exit(1 if result.dropped else 0)
    with rich_reporter() as reporter:
        result = scan_folder(folder, caption_extension=caption_extension, max_pixels=max_pixels, reporter=reporter)
    require_images(result)
    table = Table(title=f"{len(result.entries)} images in {esc(folder)}")
    for column in ("image", "size", "aspect", "repeats", "caption"):
        table.add_column(column, overflow="fold")
    for e in result.entries:
        caption = esc(_shorten(e.caption, 80)) if e.caption else "[red]none[/]"
        repeats = f"{e.repeat_folder.repeats}× {esc(e.repeat_folder.class_tokens)}" if e.repeat_folder else ""
        table.add_row(esc(e.rel), f"{e.info.width}×{e.info.height}", f"{e.aspect:.2f}", repeats, caption)
    out.print(table)
    captioned = sum(1 for e in result.entries if e.caption)
    out.print(f"captioned: {captioned}/{len(result.entries)}")
    if result.warnings:
        print_dropped(result.warnings)
    finish(result.dropped)


@app.command()
@guard
def bucket(
    folder: Annotated[Path, typer.Argument(help="Dataset folder.")],
    resolution: Annotated[str, typer.Option(help="Training resolution: 512, 1024 or WIDTHxHEIGHT.")] = "512",
    step: Annotated[int, typer.Option(help="Bucket side step in pixels (64; SDXL may use 32).")] = 64,
    min_size: Annotated[Optional[int], typer.Option("--min", help="Smallest bucket side (default 256).")] = None,
    max_size: Annotated[Optional[int], typer.Option("--max", help="Largest bucket side (default: 2× resolution).")] = None,
    no_upscale: Annotated[bool, typer.Option("--no-upscale", help="Never enlarge an image to fit its bucket.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print assignments as JSON.")] = False,
) -> None:
    """Assign every image an aspect-ratio bucket (the same list sd-scripts makes for these settings).

    Each image goes to the bucket with the closest aspect ratio, is scaled to cover it and centre-
    trimmed. The settings are remembered in FOLDER/buckets.json for `loraprep manifest`.
    """
    from rich.table import Table

    from prep.dataset import assign_buckets, bucket_plan

    width, height = parse_resolution(resolution)
    plan = bucket_plan((width, height), step, min_size, max_size, no_upscale)
    if as_json:
        report = assign_buckets(folder, plan)
        print_json({"buckets": [list(b) for b in plan.buckets],
                    "images": {k: list(v) for k, v in report.assignments.items()},
                    "mean_aspect_error": report.summary.mean_aspect_error,
                    "problems": [d.to_dict() for d in report.dropped]})
        raise typer.Exit(1 if report.dropped else 0)
    with rich_reporter() as reporter:
        report = assign_buckets(folder, plan, reporter=reporter)
    table = Table(title=f"{len(report.assignments)} images in {len(report.summary.histogram)} of "
                        f"{len(plan.buckets)} buckets ({width}×{height}, step {step})")
    table.add_column("bucket")
    table.add_column("aspect", justify="right")
    table.add_column("images", justify="right")
    table.add_column("")
    top = max(report.summary.histogram.values(), default=1)
    for (bw, bh), count in report.summary.histogram.items():
        table.add_row(f"{bw}×{bh}", f"{bw / bh:.2f}", str(count), "█" * max(1, round(30 * count / top)))
    out.print(table)
    out.print(f"mean aspect error {report.summary.mean_aspect_error:.4f} "
              f"(max {report.summary.max_aspect_error:.4f}); settings saved to {esc(report.settings_file)}")
    finish(report.dropped)


def parse_resolution(text: str) -> tuple[int, int]:
    """'512' → (512, 512); '768x512' → (768, 512)."""
    from prep.errors import UsageError

    try:
        parts = [int(p) for p in text.lower().replace("×", "x").split("x")]
    except ValueError:
        raise UsageError(f"cannot read resolution '{text}'", hint="use 512, 1024 or WIDTHxHEIGHT") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise UsageError(f"cannot read resolution '{text}'", hint="use 512, 1024 or WIDTHxHEIGHT")
    return parts[0], parts[1]


@app.command()
@guard
def manifest(
    folder: Annotated[Path, typer.Argument(help="Dataset folder (images + caption sidecars), or a manifest file with --check.")],
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Manifest path (default FOLDER/manifest.json).")] = None,
    trigger: Annotated[Optional[str], typer.Option(help="Trigger word; kept first in every caption ('' removes it).")] = None,
    keep_tokens: Annotated[Optional[int], typer.Option(help="Leading caption tokens never shuffled (default 1 with a trigger).")] = None,
    repeats: Annotated[Optional[int], typer.Option(help="Repeats per epoch, 1 or more (default: from N_name folders, else 1).")] = None,
    class_tokens: Annotated[Optional[str], typer.Option(help="Class tokens, e.g. 'woman' (DreamBooth style; '' removes them).")] = None,
    reg: Annotated[Optional[list[Path]], typer.Option(help="Regularisation image folder (repeatable); its own subset. N_word folders give repeats and class word.")] = None,
    reg_repeats: Annotated[Optional[int], typer.Option(help="Repeats of the regularisation images (default: from N_word reg folders, else 1).")] = None,
    allow_empty_captions: Annotated[bool, typer.Option("--allow-empty-captions", help="Train images without a caption instead of refusing.")] = False,
    reset: Annotated[bool, typer.Option("--reset", help="Ignore the settings of the manifest being replaced (trigger, repeats, …).")] = False,
    caption_extension: Annotated[Optional[str], typer.Option("--caption-extension", help="Caption sidecar extension (default: the previous manifest's, else .txt).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate an existing manifest against the JSON Schema and its files, then exit.")] = False,
    max_pixels: MaxPixels = 150_000_000,
) -> None:
    """Freeze the dataset into manifest.json: images, captions, hashes, buckets, subsets.

    The trainer reads only this file and refuses it if images or captions change afterwards. Images
    without a caption are an error listing them. Bucket settings come from `loraprep bucket`
    (buckets.json). Rebuilding keeps the previous manifest's settings (trigger, keep_tokens, repeats,
    class tokens, reg folders, buckets) unless a flag changes them, and says which it kept.
    """
    from prep.dataset import ManifestOptions, build_manifest, default_manifest_path, write_manifest
    from prep.verify import check_manifest_file

    if check:
        checked = out_file or (default_manifest_path(folder) if folder.is_dir() else folder)
        problems = check_manifest_file(checked)
        for problem in problems:
            err.print(f"[red]✗[/] {esc(problem)}", highlight=False)
        if problems:
            raise typer.Exit(1)
        out.print(f"[green]✓[/] {esc(checked)} is valid and matches its files")
        return
    target = out_file or default_manifest_path(folder)
    options = ManifestOptions(caption_extension=caption_extension, trigger=trigger, keep_tokens=keep_tokens,
                              repeats=repeats, class_tokens=class_tokens, reg_dirs=tuple(reg or ()),
                              reg_repeats=reg_repeats, allow_empty_captions=allow_empty_captions,
                              max_pixels=max_pixels, keep_previous=not reset)
    with rich_reporter() as reporter:
        build = build_manifest(folder, options, manifest_path=target, reporter=reporter)
    write_manifest(build, target)
    for note in build.notes:
        err.print(f"[cyan]•[/] {esc(note)}", highlight=False)
    m = build.manifest
    subsets = ", ".join(f"{s.name} ×{s.repeats}{' (reg)' if s.is_reg else ''}" for s in m.subsets)
    out.print(f"[green]✓[/] wrote {esc(target)}: {len(m.images)} images, subsets: {esc(subsets)}, "
              f"trigger: {esc(m.trigger or '—')}, keep_tokens: {m.keep_tokens}")
    finish(build.dropped)


@app.command()
@guard
def export(
    source: Annotated[Path, typer.Argument(help="Dataset folder or manifest.json.")],
    fmt: Annotated[str, typer.Option("--format", help="kohya (sd-scripts dataset config TOML), imagefolder (HF metadata.jsonl) or txt (caption sidecars).")] = "kohya",
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Output file (kohya/imagefolder).")] = None,
    caption_extension: Annotated[Optional[str], typer.Option(help="Sidecar extension for --format txt (default: the manifest's).")] = None,
    batch_size: Annotated[int, typer.Option(help="batch_size written into the kohya config.")] = 1,
    from_manifest: Annotated[bool, typer.Option("--from-manifest", help="--format txt: replace sidecars edited since the manifest was written with the frozen captions (journalled).")] = False,
    from_files: Annotated[bool, typer.Option("--from-files", help="--format txt: keep sidecars edited since the manifest was written; write the rest.")] = False,
) -> None:
    """Hand the frozen dataset to another trainer: sd-scripts, HF datasets, or plain sidecars.

    The manifest's images are verified first. `--format txt` never overwrites a caption edited by
    hand since the manifest was written unless told which side wins (--from-manifest or
    --from-files); every caption it writes is journalled (`loraprep captions undo DIR` reverts it).
    """
    from prep.errors import UsageError
    from prep.export import export_dataset

    if from_manifest and from_files:
        raise UsageError("--from-manifest and --from-files contradict each other", hint="choose one")
    prefer = "manifest" if from_manifest else "files" if from_files else None
    result = export_dataset(source, fmt, out=out_file, caption_extension=caption_extension, batch_size=batch_size,
                            prefer=prefer)
    for note in result.notes:
        err.print(f"[yellow]•[/] {esc(note)}", highlight=False)
    shown = esc(result.written[0]) if len(result.written) == 1 else f"{len(result.written)} files"
    out.print(f"[green]✓[/] {esc(result.format)}: wrote {shown}")


@app.command("prep")
@guard
def prep_command(
    src: Annotated[Path, typer.Argument(help="Folder of raw images (never modified).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset folder to create or update.")],
    trigger: Annotated[Optional[str], typer.Option(help="Trigger word, first in every caption (e.g. sks).")] = None,
    class_tokens: Annotated[Optional[str], typer.Option(help="Class tokens, e.g. '1girl' or 'woman'.")] = None,
    crop: Annotated[bool, typer.Option("--crop/--no-crop", help="Face-aware cropping (off: plain upright copy).")] = True,
    preset: Annotated[Optional[list[str]], typer.Option(help="Crop preset(s): face, upper-body, full (repeatable).")] = None,
    detector: Annotated[str, typer.Option(help="Face detector: auto, yunet, libfacedetection, haar, anime.")] = "auto",
    aspect: Annotated[str, typer.Option(help="Crop aspect: 1:1, 2:3, 3:2 or bucket.")] = "1:1",
    clean: Annotated[bool, typer.Option("--clean/--no-clean", help="Flatten transparency onto white.")] = True,
    background: Annotated[Optional[str], typer.Option(help="Also replace backgrounds: remove, white, colour, blur (opt-in).")] = None,
    tag: Annotated[bool, typer.Option("--tag/--no-tag", help="Auto-tag with WD14 when its model is present.")] = True,
    tagger: Annotated[str, typer.Option(help="Tagger model name from `loraprep models list`.")] = "wd-swinv2-tagger-v3",
    tagger_dir: Annotated[Optional[Path], typer.Option(help="Use the WD14 model in this folder (model.onnx + selected_tags.csv).")] = None,
    prune_character: Annotated[bool, typer.Option(help="Drop tags of the character's fixed traits (hair, eyes…).")] = False,
    resolution: Annotated[str, typer.Option(help="Training resolution for buckets: 512, 768, 1024 or WxH.")] = "512",
    repeats: Annotated[Optional[int], typer.Option(help="Repeats per epoch written into the manifest.")] = None,
    overwrite_captions: OverwriteCaptions = False,
) -> None:
    """Run the whole pipeline: crop → clean → tag → bucket → manifest, into a new dataset folder.

    Each step can be switched off. A step whose model is not downloaded is skipped with a note
    (e.g. no tagger: images are captioned with the trigger/class tokens) and the rest goes on.
    Originals are never touched; everything is written under --out. Exit 1 if files were skipped.
    """
    from rich.table import Table

    from prep.background import CleanOptions
    from prep.crop import CropOptions
    from prep.dataset import bucket_plan
    from prep.pipeline import PrepOptions, run_pipeline
    from prep.tag import TagOptions

    width, height = parse_resolution(resolution)
    options = PrepOptions(
        crop=CropOptions(presets=tuple(preset or ("face",)), detector=detector, aspect=aspect,
                         bucket_resolution=max(width, height), min_size=min(width, height),
                         overwrite_captions=overwrite_captions) if crop else None,
        clean=CleanOptions(background=background, in_place=True, backup=False) if clean else None,
        tag=TagOptions(model=tagger, model_dir=tagger_dir, trigger=trigger,
                       prune_character=prune_character) if tag else None,
        buckets=bucket_plan((width, height)),
        trigger=trigger, class_tokens=class_tokens, repeats=repeats, overwrite_captions=overwrite_captions,
    )
    with rich_reporter() as reporter:
        report = run_pipeline(src, out_dir, options, reporter)
    table = Table(title=f"loraprep prep → {esc(report.out)}")
    for column in ("step", "status", "result"):
        table.add_column(column, overflow="fold")
    colours = {"ran": "green", "skipped": "yellow", "off": "dim"}
    for step in report.steps:
        detail = esc(step.detail) + (f"\n[yellow]hint:[/] {esc(step.hint)}" if step.hint else "")
        table.add_row(esc(step.name), f"[{colours[step.status]}]{esc(step.status)}[/]", detail)
    out.print(table)
    for note in report.notes:
        err.print(f"[cyan]•[/] {esc(note)}", highlight=False)
    if report.manifest_path:
        out.print(f"[green]✓[/] dataset ready: {esc(report.manifest_path)}  "
                  f"(next: loraprep train {esc(report.manifest_path)} --base MODEL)")
    if report.doctor is not None:
        from prep.doctor import summary_line

        out.print(esc(summary_line(report.doctor)), highlight=False)
    finish(report.dropped)


# ---------------------------------------------------------------- crop, clean, sheet (issue 3)

Colour = Annotated[str, typer.Option("--colour", "--color", help="Fill colour: #rrggbb, r,g,b or a name.")]
Workers = Annotated[int, typer.Option("--workers", help="Images processed in parallel (threads).")]


@app.command()
@guard
def crop(
    src: Annotated[Path, typer.Argument(help="Folder (searched recursively) or one image. Never modified.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder the crops are written to (same sub-folders).")],
    preset: Annotated[list[str], typer.Option("--preset", "-p", help="face, upper-body or full; repeat (or comma-separate) for several crops per image.")] = ["face"],  # noqa: B006
    aspect: Annotated[str, typer.Option("--aspect", help="1:1, 2:3, 3:2 (any W:H), or bucket: the nearest bucket shape.")] = "1:1",
    fit: Annotated[str, typer.Option("--fit", help="When the aspect cannot hold face + margin inside the image: widen (loosen the aspect, stay inside) or pad (keep the aspect, pad with --colour).")] = "widen",
    min_size: Annotated[int, typer.Option("--min-size", help="Crops whose short side is below this are flagged for upscaling (or skipped with --skip-small).")] = 512,
    skip_small: Annotated[bool, typer.Option("--skip-small", help="Skip crops below --min-size instead of flagging them.")] = False,
    max_faces: Annotated[Optional[int], typer.Option("--max-faces", help="Skip images with more faces than this.")] = None,
    skip_multi: Annotated[bool, typer.Option("--skip-multi", help="Skip images with more than one face.")] = False,
    one_per_face: Annotated[bool, typer.Option("--one-per-face", help="Group shots: one crop per detected face.")] = False,
    detector: Annotated[str, typer.Option("--detector", help="auto (every detector available, merged), yunet, anime-cascade, libfacedetection, haar or anime.")] = "auto",
    detect_size: Annotated[int, typer.Option("--detect-size", help="Longest side of the reduced copy faces are detected on.")] = 640,
    bucket_resolution: Annotated[int, typer.Option("--resolution", help="Training resolution for --aspect bucket.")] = 512,
    colour: Colour = "white",
    force: Annotated[bool, typer.Option("--force", help="Re-crop images whose crops exist already with these settings.")] = False,
    overwrite_captions: OverwriteCaptions = False,
    lossless: Annotated[bool, typer.Option("--lossless/--no-lossless", help="Cut upright JPEGs losslessly (no re-encoding) when libjpeg-turbo is available.")] = True,
    workers: Workers = 4,
    caption_extension: CaptionExt = ".txt",
    max_pixels: MaxPixels = 150_000_000,
) -> None:
    """Face-aware crops: detect faces, cut face / upper-body / full crops around them, never through a face.

    Detection runs on a reduced copy; crops are cut from the full-resolution image and written to
    --out with the source's caption and a `.loraprep.json` sidecar (source path and hash, crop box
    in source pixels, faces in crop pixels). Images with no face get one focal-point crop (the
    centre of detail; the upper part of a full-body sprite) and `faces: []`, so you can filter them
    later. `--detector auto` needs no download: it merges the bundled YuNet (photos) and anime
    cascade (drawn faces), plus libfacedetection and the anime YOLO model when present, and says
    which ran; a named detector whose model is missing stops with a `loraprep models pull` hint.
    Re-running refreshes each crop's caption from its source's only while it still holds what crop
    wrote: a crop caption edited since is kept and named (--overwrite-captions replaces it, journalled).
    """
    from rich.table import Table

    from prep.background import parse_colour
    from prep.crop import CropOptions, crop_folder, summarise_crops

    presets = tuple(p.strip() for item in preset for p in item.split(",") if p.strip())
    options = CropOptions(presets=presets, detector=detector, aspect=aspect, fit=fit,  # type: ignore[arg-type]
                          min_size=min_size, small="skip" if skip_small else "flag", max_faces=max_faces,
                          skip_multi=skip_multi, one_per_face=one_per_face, colour=parse_colour(colour),
                          bucket_resolution=bucket_resolution, detect_size=detect_size,
                          caption_extension=caption_extension, max_pixels=max_pixels, workers=workers,
                          force=force, lossless_jpeg=lossless, overwrite_captions=overwrite_captions)
    sweep_leftovers(out_dir)
    with rich_reporter() as reporter:
        result = crop_folder(src, out_dir, options, reporter=reporter)
    summary = summarise_crops(result.done)
    written = summary.crops - len(result.reused)
    table = Table(title=f"{written} crops written to {esc(out_dir)}" + (
        f" ({len(result.reused)} already there with these settings: kept, --force re-cuts them)"
        if result.reused else ""))
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, count in sorted(summary.by_preset.items()):
        table.add_row(f"preset {esc(name)}", str(count))
    for name, count in sorted(summary.by_fit.items()):
        table.add_row(f"aspect {esc(name)}", str(count))
    table.add_row("no face found (focal crop, faces: \\[])", str(summary.focal))
    table.add_row(f"below --min-size {min_size} (upscale flag)", str(summary.upscale))
    out.print(table)
    finish(result.dropped)


@app.command()
@guard
def clean(
    folder: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write cleaned images here (default: <DIR>-clean beside DIR).")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Overwrite the images; originals are kept once in DIR/.loraprep/backup/.")] = False,
    background: Annotated[Optional[str], typer.Option("--background", help="Replace the background: remove (transparent PNG), white, colour (--colour) or blur.")] = None,
    segmenter: Annotated[str, typer.Option("--segmenter", help="auto, flat (one-colour backgrounds, flood fill), grabcut (offline, seeded from every face), anime-seg or human-seg (registry models).")] = "auto",
    colour: Colour = "white",
    masks: Annotated[bool, typer.Option("--masks", help="Also write each subject mask as a PNG (into <out>-masks/, or --mask-dir).")] = False,
    mask_dir: Annotated[Optional[Path], typer.Option("--mask-dir", help="Folder for --masks.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Change nothing; write a before/after contact sheet instead.")] = False,
    sheet_path: Annotated[Optional[Path], typer.Option("--sheet", help="Where --dry-run writes its sheet (default: <DIR>-clean-preview.png).")] = None,
    blur: Annotated[float, typer.Option("--blur", help="Blur radius for --background blur.")] = 24.0,
    overwrite_captions: Annotated[bool, typer.Option(
        "--overwrite-captions",
        help="Re-running into an existing --out: also replace captions edited there since clean wrote them with "
             "the input's caption (journalled: `loraprep captions undo OUT` restores them). Default: keep them "
             "and say which.")] = False,
    workers: Workers = 4,
    caption_extension: CaptionExt = ".txt",
    max_pixels: MaxPixels = 150_000_000,
) -> None:
    """Flatten transparency onto a solid colour (always) and optionally replace busy backgrounds.

    Trainers ignore alpha, so transparent pixels become --colour (default white). With --background
    the subject is masked: by the image's own alpha when it has one, a one-colour background by
    flood fill from the border, else by a registry model (`loraprep models pull anime-seg` /
    `human-seg`) or, offline, by OpenCV GrabCut seeded with every detected face and the body below
    it. A mask that fails or looks wrong (it would remove a face, or keeps under 5% or over 98% of
    the picture) leaves that image's background as it was and is listed with the reason (exit 1).
    --in-place keeps each original in DIR/.loraprep/backup/; re-running skips images already
    cleaned with the same settings, so an interrupted run is finished by running it again.
    Captions and `.loraprep.json` metadata travel with each image; re-running into the same --out
    refreshes a caption there from the input's only while it still holds what clean wrote: one
    edited since is kept and named (--overwrite-captions replaces it, journalled).
    """
    from prep.background import CleanOptions, clean_folder, parse_colour

    options = CleanOptions(colour=parse_colour(colour), background=background, segmenter=segmenter,  # type: ignore[arg-type]
                           in_place=in_place, masks=masks, mask_dir=mask_dir, dry_run=dry_run, sheet=sheet_path,
                           blur_radius=blur, caption_extension=caption_extension, max_pixels=max_pixels,
                           workers=workers, overwrite_captions=overwrite_captions)
    where = folder if in_place else (out_dir or folder.with_name(folder.name + "-clean"))
    if not dry_run:
        sweep_leftovers(where)
    with rich_reporter() as reporter:
        result = clean_folder(folder, options, reporter=reporter, out=out_dir)
    if dry_run:
        out.print(f"dry run: nothing changed; before/after sheet written to {esc(result.done[0])}")
    else:
        out.print(f"{len(result.done)} images written ({'in place' if in_place else 'to ' + esc(where)})")
    finish(result.dropped)


@app.command()
@guard
def sheet(
    folder: Annotated[Path, typer.Argument(help="Folder of images (searched recursively), e.g. crop output.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Sheet image to write (.png or .jpg).")] = Path("sheet.png"),
    columns: Annotated[int, typer.Option("--columns", help="Thumbnails per row.")] = 6,
    thumb: Annotated[int, typer.Option("--thumb", help="Thumbnail size in pixels.")] = 256,
    crops_only: Annotated[bool, typer.Option("--crops-only", help="Show each crop alone instead of its source with the crop box.")] = False,
    bucket_resolution: Annotated[int, typer.Option("--resolution", help="Training resolution used to show each image's bucket.")] = 512,
    caption_extension: CaptionExt = ".txt",
    max_pixels: MaxPixels = 150_000_000,
) -> None:
    """A contact sheet to judge crops by eye.

    Thumbnails with face boxes (green), crop boxes on the source (orange), each image's size and
    bucket, how it was cropped and its first caption tags."""
    from prep.sheet import SheetOptions, sheet_folder

    options = SheetOptions(columns=columns, thumb=thumb, show_source=not crops_only,
                           bucket_resolution=bucket_resolution, caption_extension=caption_extension,
                           max_pixels=max_pixels)
    with rich_reporter() as reporter:
        result = sheet_folder(folder, out_path, options, reporter=reporter)
    out.print(f"contact sheet written to {esc(result.done[0])}")
    finish(result.dropped)


# ---------------------------------------------------------------- tag, models (issue 4)


def _split_option(values: list[str] | None) -> tuple[str, ...]:
    """Repeatable options that also accept comma-separated lists: `--exclude a,b --exclude c`."""
    return tuple(piece.strip() for value in values or [] for piece in value.split(",") if piece.strip())


@app.command()
@guard
def tag(
    folder: Annotated[Path, typer.Argument(help="Dataset folder (searched recursively). Images are never modified.")],
    model: Annotated[str, typer.Option("--model", help="WD14 tagger from the registry (`loraprep models list`).")] = "wd-swinv2-tagger-v3",
    model_dir: Annotated[Optional[Path], typer.Option("--model-dir", help="Any folder holding model.onnx + selected_tags.csv (overrides --model).")] = None,
    captioner: Annotated[str, typer.Option("--captioner", help="wd14 (tags), blip (a sentence) or both (sentence first, then tags).")] = "wd14",
    combine: Annotated[Optional[str], typer.Option("--combine", help="Same choice named by result: tags (= wd14), caption (= blip) or both; overrides --captioner.")] = None,
    blip_model: Annotated[str, typer.Option("--blip-model", help="blip-large or blip-base.")] = "blip-large",
    blip_dir: Annotated[Optional[Path], typer.Option("--blip-dir", help="Any BLIP folder saved by transformers (overrides --blip-model).")] = None,
    beams: Annotated[int, typer.Option("--beams", help="BLIP beam search width.")] = 3,
    min_length: Annotated[int, typer.Option("--min-length", help="BLIP caption minimum length (tokens).")] = 5,
    max_length: Annotated[int, typer.Option("--max-length", help="BLIP caption maximum length (tokens).")] = 40,
    general: Annotated[float, typer.Option("--general", help="Score a general tag needs.")] = 0.35,
    character: Annotated[float, typer.Option("--character", help="Score a character tag needs (kept separate: false characters are costly).")] = 0.85,
    mcut: Annotated[bool, typer.Option("--mcut", help="Cut each image's scores at their widest gap instead of --general/--character.")] = False,
    rating: Annotated[str, typer.Option("--rating", help="Where the rating tag goes: first, last or none.")] = "none",
    max_tags: Annotated[Optional[int], typer.Option("--max-tags", help="Keep at most this many tagger tags (highest scores first).")] = None,
    trigger: Annotated[Optional[str], typer.Option("--trigger", help="Trigger word put first in every caption (keep_tokens protects it).")] = None,
    always_first: Annotated[Optional[list[str]], typer.Option("--always-first", help="Tags put first, in this order, before the trigger (repeat or comma-separate).")] = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Tags never written (repeat or comma-separate).")] = None,
    replace: Annotated[Optional[list[str]], typer.Option("--replace", help="OLD=NEW renames a tag; OLD= removes it (repeatable).")] = None,
    prune_character: Annotated[bool, typer.Option("--prune-character", help="Remove the character's fixed traits (hair, eyes, ears, tails…) so the trigger learns them.")] = False,
    prune_clothes: Annotated[bool, typer.Option("--prune-clothes/--keep-clothes", help="Also remove outfit tags (the outfit becomes part of the trigger) or keep them (default).")] = False,
    prune_list: Annotated[Optional[list[Path]], typer.Option("--prune-list", help="Extra prune list (.toml like prep/data/prune_character.toml, or one pattern a line); implies --prune-character.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="Existing captions: skip-existing (default), append, or overwrite. append/overwrite write every caption at the end as one journal entry (`loraprep captions undo` restores the previous ones); captions that are not UTF-8, or that change while tagging runs, are left as they are.")] = "skip-existing",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per inference call (default: 1 on CPU, 8 on GPU).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Threads decoding and preprocessing ahead of the model (0: in the main thread).")] = 2,
    download: Annotated[bool, typer.Option("--download", help="Download a missing registry model first (needs the hub).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write nothing; show per image which tags would be removed and why.")] = False,
    caption_extension: CaptionExt = ".txt",
    max_pixels: MaxPixels = 150_000_000,
) -> None:
    """Auto-caption a dataset: WD14 tags (onnxruntime) and/or BLIP sentences (transformers) into .txt sidecars.

    Tags use spaces (kaomoji like ^_^ keep their underscores); character tags come first, then
    general tags by score. Per-tag scores go to each image's `.loraprep.json` for the manifest.
    For a character LoRA add `--trigger NAME --prune-character`: the character's fixed traits are
    removed so the trigger word learns them. Offline, a model that is not in models_cache/ stops
    with a `loraprep models pull` hint before any file is touched.
    """
    from rich.table import Table

    from prep.tag import TagOptions, captioner_for, tag_folder
    from prep.tagging.blip import BlipSettings
    from prep.tagging.wd14 import Thresholds
    from prep.tags import parse_replacements, tag_frequency

    lists = tuple(prune_list or ())
    options = TagOptions(
        model=model, model_dir=model_dir, captioner=captioner_for(combine) if combine else captioner,  # type: ignore[arg-type]
        blip_model=blip_model, blip_dir=blip_dir,
        blip=BlipSettings(beams=beams, min_length=min_length, max_length=max_length),
        thresholds=Thresholds(general, character, mcut), rating=rating, max_tags=max_tags,  # type: ignore[arg-type]
        trigger=trigger, always_first=_split_option(always_first), exclude=_split_option(exclude),
        replace=tuple(parse_replacements(replace or []).items()), prune_character=prune_character or bool(lists),
        prune_clothes=prune_clothes, prune_lists=lists, mode=mode, batch_size=batch_size, workers=workers,  # type: ignore[arg-type]
        caption_extension=caption_extension, dry_run=dry_run, download=download, max_pixels=max_pixels)
    if not dry_run:
        sweep_leftovers(folder)
    with rich_reporter() as reporter:
        result = tag_folder(folder, options, reporter=reporter)

    def rel(path: Path) -> str:
        return path.relative_to(folder).as_posix()

    if result.removed:
        per_image = Table(title="Tags removed by pruning" + (" (dry run: nothing written)" if dry_run else ""))
        per_image.add_column("image", overflow="fold")
        per_image.add_column("removed (why)", overflow="fold")
        for path, removed in result.removed.items():
            per_image.add_row(esc(rel(path)), esc(", ".join(f"{t} ({why})" for t, why in removed)))
        out.print(per_image)
        totals = Table(title="Removed in total")
        for column in ("tag", "why", "images"):
            totals.add_column(column, justify="right" if column == "images" else "left")
        counted: dict[tuple[str, str], int] = {}
        for removed in result.removed.values():
            for pair in removed:
                counted[pair] = counted.get(pair, 0) + 1
        for (name, why), count in sorted(counted.items(), key=lambda kv: (-kv[1], kv[0])):
            totals.add_row(esc(name), esc(why), str(count))
        out.print(totals)
    if dry_run and result.captions:
        shown = list(result.captions.items())[:20]
        preview = Table(title=f"Captions that would be written ({len(shown)} of {len(result.captions)})")
        preview.add_column("image", overflow="fold")
        preview.add_column("caption", overflow="fold")
        for path, caption in shown:
            preview.add_row(esc(rel(path)), esc(caption))
        out.print(preview)
    common = tag_frequency(c.split(", ") for c in result.captions.values())[:12]
    summary = Table(title=f"{'Would caption' if dry_run else 'Captioned'} {len(result.done)} images in {esc(folder)}")
    summary.add_column("what")
    summary.add_column("value", overflow="fold")
    summary.add_row("skipped (caption exists; --mode append/overwrite to redo)", str(len(result.skipped)))
    if result.provider:
        summary.add_row("WD14 ran on", f"{esc(result.provider)}, batch {result.batch_size}")
    if trigger or options.always_first:
        summary.add_row("keep_tokens (for the manifest)", str(result.keep_tokens))
    summary.add_row("most common tags", esc(", ".join(f"{t} ({n})" for t, n in common)))
    out.print(summary)
    if result.journal is not None:
        out.print(f"captions replaced are journalled: undo with [bold]loraprep captions undo {esc(folder)}[/]",
                  highlight=False)
    finish(result.dropped)


models_app = typer.Typer(help="The models loraprep can use: list them, download them, find them.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
@guard
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every registered model: pinned revision, the files expected in its folder, and whether it is here
    (`bundled`: it ships with loraprep and works with nothing downloaded).

    Offline: copy those files into the folder `loraprep models path NAME` prints (upstream names in
    brackets are saved under the name before them).
    """
    from rich.table import Table

    from prep import models

    rows = [{"name": s.name, "kind": s.kind, "host": s.host, "repo": s.repo_id, "revision": s.revision, "licence": s.licence,
             "files": list(s.files), "upstream_files": [s.repo_file(f) for f in s.files],
             "available": models.is_available(s.name) or models.bundled_path(s.name) is not None,
             "bundled": models.bundled_path(s.name) is not None, "path": str(models.model_path(s.name)),
             "description": s.description} for s in models.REGISTRY.values()]
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"Models (cache: {esc(models.cache_dir())})", show_lines=True)
    for column in ("name", "here", "files", "source @ pinned revision"):
        table.add_column(column, overflow="fold")
    for row in rows:
        files = "\n".join(name if name == upstream else f"{name} (upstream {upstream})"
                          for name, upstream in zip(row["files"], row["upstream_files"], strict=True))
        here = "[green]bundled[/]" if row["bundled"] else "[green]yes[/]" if row["available"] else "[dim]no[/]"
        table.add_row(esc(row["name"]), here, esc(files),
                      esc(f"{'github.com/' if row['host'] == 'github' else ''}{row['repo']} @ {row['revision'][:12]}\n"
                          f"{row['description']}"))
    out.print(table)
    out.print("Download with `loraprep models pull NAME`; offline, copy the files into the folder "
              "`loraprep models path NAME` prints.")


@models_app.command("pull")
@guard
def models_pull(
    names: Annotated[list[str], typer.Argument(help="Model names (see `loraprep models list`).")],
) -> None:
    """Download models at their pinned revisions into the cache (skips files already there).

    Offline it fails at once, naming each file's download URL and where to save it. A failed pull
    leaves nothing behind.
    """
    from prep import models

    for name in names:
        models.spec(name)  # unknown names fail before any download starts
    for name in names:
        err.print(f"pulling {esc(name)} …")
        folder = models.pull(name)
        out.print(f"[green]✓[/] {esc(name)} → {esc(folder)}")


@models_app.command("path")
@guard
def models_path(
    name: Annotated[str, typer.Argument(help="Model name.")],
) -> None:
    """Print the folder a model lives in (whether or not it is downloaded yet), for scripts."""
    from prep import models

    models.spec(name)
    typer.echo(str(models.model_path(name)))



# ---------------------------------------------------------------- captions (issue 5)

captions_app = typer.Typer(
    help="Check and edit captions in the terminal: stats, lint, bulk edits with undo, and an editor.",
    no_args_is_help=True, rich_markup_mode="rich",
)
app.add_typer(captions_app, name="captions")

_CaptionDir = Annotated[Path, typer.Argument(help="Dataset folder (images with caption sidecars, searched recursively).")]
_CaptionExtension = Annotated[str, typer.Option("--caption-extension", help="Caption sidecar extension.")]
_AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
_Tokenizer = Annotated[Optional[Path], typer.Option(
    "--tokenizer", help="A CLIP `tokenizer/` folder (vocab.json + merges.txt) to count tokens with.")]
_Where = Annotated[Optional[list[str]], typer.Option("--where", help="Only captions with this tag (repeatable: all must match).")]
_WhereNot = Annotated[Optional[list[str]], typer.Option("--where-not", help="Only captions without this tag (repeatable).")]
_DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing.")]


def _token_counter(tokenizer: Path | None):
    from prep.captions.tokens import load_token_counter

    return load_token_counter(tokenizer)


@captions_app.command("stats")
@guard
def captions_stats(
    folder: _CaptionDir,
    tag: Annotated[Optional[str], typer.Option("--tag", help="Also list the images carrying this tag.")] = None,
    top: Annotated[int, typer.Option("--top", help="Tags shown in the frequency table (0: all).")] = 30,
    tokenizer: _Tokenizer = None,
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


@captions_app.command("lint")
@guard
def captions_lint(
    folder: _CaptionDir,
    trigger: Annotated[Optional[str], typer.Option("--trigger", help="Check this trigger word is in every caption, first.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Token limit per caption (75, 150 or 225).")] = 75,
    rare_max: Annotated[int, typer.Option("--rare-max", help="Tags in at most this many images are checked for any one-letter difference from a tag 3× as common.")] = 1,
    typo_ratio: Annotated[int, typer.Option("--typo-ratio", help="Any tag is a likely typo when a tag this many times as common is a swapped, dropped or doubled letter away (smlie → smile).")] = 10,
    limit: Annotated[int, typer.Option("--limit", help="Problems listed per kind (0: all).")] = 20,
    tokenizer: _Tokenizer = None,
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

    report = lint_dataset(load_dataset(folder, caption_extension), _token_counter(tokenizer),
                          LintOptions(trigger, max_tokens, rare_max, typo_ratio))
    if as_json:
        print_json(report.to_dict())
        raise typer.Exit(1 if report.problems else 0)
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


@captions_app.command("show")
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


@captions_app.command("add")
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


@captions_app.command("remove")
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


@captions_app.command("replace")
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


@captions_app.command("move-first")
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


@captions_app.command("sort")
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


@captions_app.command("dedupe")
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


@captions_app.command("join-lines")
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


@captions_app.command("undo")
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


@captions_app.command("redo")
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


@captions_app.command("edit")
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


# ---------------------------------------------------------------- doctor (issue 12)

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
    tokenizer: _Tokenizer = None,
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
    kinds = _split_option(quarantine_kind) or ("duplicates",)
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


# ---------------------------------------------------------------- train (issue 6)

@app.command()
@guard
def train(
    manifest: Annotated[Path, typer.Argument(help="manifest.json (or the folder holding it) written by `loraprep manifest`.")],
    base: Annotated[Optional[str], typer.Option("--base", help="Base model: diffusers folder, .safetensors file or hub id.", rich_help_panel="Model")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file of settings (rank = 8, lr = 2e-4, … or in sections); flags override it. An sd-scripts training or dataset TOML (network_dim = 4, [[datasets.subsets]], …) is translated with sd-scripts' meaning and defaults.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check manifest + config; print steps, batches, memory; load no weights.")] = False,
    base_config: Annotated[Optional[str], typer.Option(help="Diffusers config folder of the family, for single-file bases offline.", rich_help_panel="Model")] = None,
    allow_pickle: Annotated[Optional[bool], typer.Option("--allow-pickle", help="Accept .ckpt/pickle weights (loaded weights_only).", rich_help_panel="Model")] = None,
    prediction_type: Annotated[Optional[str], typer.Option(help="auto | epsilon | v_prediction.", rich_help_panel="Model")] = None,
    clip_skip: Annotated[Optional[int], typer.Option(help="1 = last text-encoder layer, 2 = penultimate.", rich_help_panel="Model")] = None,
    algo: Annotated[Optional[str], typer.Option(help="lora (default) | loha (Hadamard product: smaller files, learns less of the style) | lokr (Kronecker product: tiny files; --rank 100000 for full-matrix LoKr). LoHa/LoKr files load in the WebUI, ComfyUI and `loraprep generate`, not in diffusers.", rich_help_panel="Network")] = None,
    preset: Annotated[Optional[str], typer.Option(help="attn (default) | attn-mlp | full.", rich_help_panel="Network")] = None,
    rank: Annotated[Optional[int], typer.Option(help="Rank (dim) of each layer. Default 16.", rich_help_panel="Network")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Alpha; strength scale = alpha/rank. Default and 0: alpha = rank (scale 1), like sd-scripts' --network_alpha=0.", rich_help_panel="Network")] = None,
    conv_dim: Annotated[Optional[int], typer.Option(help="> 0: the algorithm on 3×3 convs too, at this rank (LoCon for lora).", rich_help_panel="Network")] = None,
    conv_alpha: Annotated[Optional[float], typer.Option(help="Alpha of the conv layers (default 1; 0: = --conv-dim).", rich_help_panel="Network")] = None,
    factor: Annotated[Optional[int], typer.Option(help="LoKr: split each dimension near this factor (4–16: larger = smaller, looser file); -1 (default) = as square as possible.", rich_help_panel="Network")] = None,
    dora: Annotated[Optional[bool], typer.Option("--dora/--no-dora", help="Weight-decomposed LoRA (DoRA, --algo lora), in the convention the WebUI and ComfyUI apply exactly.", rich_help_panel="Network")] = None,
    network_dropout: Annotated[Optional[float], typer.Option(help="Dropout inside the LoRA layers.", rich_help_panel="Network")] = None,
    rank_dropout: Annotated[Optional[float], typer.Option(help="Chance to drop each LoRA rank per sample while training (sd-scripts rank_dropout).", rich_help_panel="Network")] = None,
    module_dropout: Annotated[Optional[float], typer.Option(help="Chance to skip a whole LoRA layer for a step (sd-scripts module_dropout).", rich_help_panel="Network")] = None,
    scale_weight_norms: Annotated[Optional[float], typer.Option(help="Max-norm: cap each layer's LoRA update norm after every step (1 is a good start); reports keys scaled.", rich_help_panel="Network")] = None,
    train_text_encoder: Annotated[Optional[bool], typer.Option("--train-text-encoder/--no-train-text-encoder", help="Also train LoRA on the text encoder(s).", rich_help_panel="Network")] = None,
    train_text_encoder_only: Annotated[Optional[bool], typer.Option("--train-text-encoder-only", help="Train only the text-encoder LoRA, no UNet LoRA (sd-scripts network_train_text_encoder_only).", rich_help_panel="Network")] = None,
    text_encoder_lr: Annotated[Optional[float], typer.Option(help="Learning rate of the text-encoder LoRA (default: --lr).", rich_help_panel="Network")] = None,
    init_weights: Annotated[Optional[str], typer.Option(help="Start from an existing LoRA/LoHa/LoKr file (kohya, LyCORIS or diffusers): the network takes the file's layers, algorithm, ranks and alphas (sd-scripts' dim_from_weights); --rank, --alpha and --preset shape only parts the file lacks.", rich_help_panel="Network")] = None,
    down_lr_weight: Annotated[Optional[str], typer.Option(help="Per-block LR weights of the down blocks IN00–IN11 (SDXL IN00–IN08): '0,0,0.5,…' or cosine|sine|linear|reverse_linear|zeros[+BASE]; 0 = block not trained.", rich_help_panel="Block learning rates")] = None,
    mid_lr_weight: Annotated[Optional[str], typer.Option(help="LR weight of the middle block (SDXL: 3 values).", rich_help_panel="Block learning rates")] = None,
    up_lr_weight: Annotated[Optional[str], typer.Option(help="Per-block LR weights of the up blocks OUT00–OUT11 (SDXL OUT00–OUT08), like --down-lr-weight.", rich_help_panel="Block learning rates")] = None,
    block_lr_zero_threshold: Annotated[Optional[float], typer.Option(help="Block weights at or below this count as 0 (not trained).", rich_help_panel="Block learning rates")] = None,
    block_lr_weights: Annotated[Optional[str], typer.Option(help="One list in the lora-block-weight layout instead: 17/26 values (SD1/SD2) or 12/20 (SDXL), BASE = text encoder; or a preset (ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5).", rich_help_panel="Block learning rates")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per batch (one bucket per batch).", rich_help_panel="Data")] = None,
    shuffle_caption: Annotated[Optional[bool], typer.Option("--shuffle-caption/--no-shuffle-caption", help="Shuffle tags after the kept ones (default: per subset).", rich_help_panel="Data")] = None,
    keep_tokens: Annotated[Optional[int], typer.Option(help="Leading tags never shuffled or dropped (default: manifest's).", rich_help_panel="Data")] = None,
    caption_dropout: Annotated[Optional[float], typer.Option(help="Chance to train a sample with an empty caption.", rich_help_panel="Data")] = None,
    tag_dropout: Annotated[Optional[float], typer.Option(help="Chance to drop each non-kept tag.", rich_help_panel="Data")] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Random horizontal flips.", rich_help_panel="Data")] = None,
    color_aug: Annotated[Optional[bool], typer.Option("--color-aug/--no-color-aug", help="Small colour jitter (needs --cache-latents off).", rich_help_panel="Data")] = None,
    prior_loss_weight: Annotated[Optional[float], typer.Option(help="Loss weight of regularisation images.", rich_help_panel="Data")] = None,
    reg_balance: Annotated[Optional[bool], typer.Option("--reg-balance/--no-reg-balance", help="Repeat or leave out regularisation images so an epoch holds as many as training images, as sd-scripts does (default on).", rich_help_panel="Data")] = None,
    fixed_resolution: Annotated[Optional[str], typer.Option(help="Train every image at this one size (512 or WIDTHxHEIGHT: scaled to cover, centre-trimmed) instead of its bucket; sd-scripts enable_bucket = false.", rich_help_panel="Data")] = None,
    dataset_config: Annotated[Optional[str], typer.Option(help="An sd-scripts dataset TOML: its subsets' num_repeats, class_tokens, is_reg, keep_tokens… apply to the manifest's images in those folders.", rich_help_panel="Data")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw | adamw8bit | lion | adafactor | prodigy | sgdnesterov | dadaptadam | dadaptlion | dadaptsgd | dadaptadagrad | dadaptadan | dadaptation (sd-scripts' names).", rich_help_panel="Optimizer")] = None,
    optimizer_args: Annotated[Optional[list[str]], typer.Option(help="key=value passed to the optimizer, sd-scripts style (repeatable, or several in one quoted value): decouple=True betas=0.9,0.99 relative_step=False d_coef=2.", rich_help_panel="Optimizer")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-4; ~1.0 for prodigy and D-Adaptation).", rich_help_panel="Optimizer")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay.", rich_help_panel="Optimizer")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="constant | constant_with_warmup | cosine | cosine_with_restarts | linear | polynomial.", rich_help_panel="Optimizer")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="LR warmup steps.", rich_help_panel="Optimizer")] = None,
    warmup_ratio: Annotated[Optional[float], typer.Option(help="LR warmup as a fraction of all steps (sd-scripts' lr_warmup_steps = 0.1).", rich_help_panel="Optimizer")] = None,
    cycles: Annotated[Optional[int], typer.Option(help="Restarts for cosine_with_restarts.", rich_help_panel="Optimizer")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="Gradient clipping norm (0 = off).", rich_help_panel="Optimizer")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Gradient accumulation steps.", rich_help_panel="Optimizer")] = None,
    min_snr_gamma: Annotated[Optional[float], typer.Option(help="Min-SNR loss weighting (5 is typical).", rich_help_panel="Optimizer")] = None,
    noise_offset: Annotated[Optional[float], typer.Option(help="Noise offset (e.g. 0.05) for darker/brighter images.", rich_help_panel="Optimizer")] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output", "-o", help="Output folder (LoRA files, checkpoints, loss log).", rich_help_panel="Run and checkpoints")] = None,
    name: Annotated[Optional[str], typer.Option(help="LoRA file name (without extension).", rich_help_panel="Run and checkpoints")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default 10).", rich_help_panel="Run and checkpoints")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps; overrides --epochs.", rich_help_panel="Run and checkpoints")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for data order, captions, noise.", rich_help_panel="Run and checkpoints")] = None,
    mixed_precision: Annotated[Optional[str], typer.Option(help="no | fp16 | bf16 (VAE stays fp32).", rich_help_panel="Run and checkpoints")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory.", rich_help_panel="Run and checkpoints")] = None,
    cache_latents: Annotated[Optional[str], typer.Option(help="memory (default) | disk | off.", rich_help_panel="Run and checkpoints")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Disk latent cache folder (default OUTPUT/cache).", rich_help_panel="Run and checkpoints")] = None,
    cache_text_encoder: Annotated[Optional[bool], typer.Option("--cache-text-encoder/--no-cache-text-encoder", help="Reuse text-encoder outputs when it is frozen.", rich_help_panel="Run and checkpoints")] = None,
    vae_batch_size: Annotated[Optional[int], typer.Option(help="Images per VAE call while caching latents (default 1).", rich_help_panel="Run and checkpoints")] = None,
    vae_dtype: Annotated[Optional[str], typer.Option(help="auto (bf16 for SDXL on a bf16 GPU, else fp32) | fp32 | bf16 | fp16.", rich_help_panel="Run and checkpoints")] = None,
    vae_tiling: Annotated[Optional[bool], typer.Option("--vae-tiling/--no-vae-tiling", help="Encode large buckets in tiles: less memory, slightly different latents.", rich_help_panel="Run and checkpoints")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="NHWC memory layout for UNet and VAE convolutions (often faster on GPUs).", rich_help_panel="Run and checkpoints")] = None,
    torch_compile: Annotated[Optional[str], typer.Option(help="off (default) | default | reduce-overhead | max-autotune: torch.compile the UNet.", rich_help_panel="Run and checkpoints")] = None,
    save_every_steps: Annotated[Optional[int], typer.Option(help="Checkpoint every N steps.", rich_help_panel="Run and checkpoints")] = None,
    save_every_epochs: Annotated[Optional[int], typer.Option(help="Checkpoint every N epochs (default 1).", rich_help_panel="Run and checkpoints")] = None,
    save_last: Annotated[Optional[int], typer.Option(help="Keep only the newest K checkpoints.", rich_help_panel="Run and checkpoints")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Checkpoint folder, or 'latest'.", rich_help_panel="Run and checkpoints")] = None,
    sample_every: Annotated[Optional[int], typer.Option(help="Render sample grids every N steps.", rich_help_panel="Samples")] = None,
    sample_every_epochs: Annotated[Optional[int], typer.Option(help="Render sample grids every N epochs (wins over --sample-every, as in sd-scripts).", rich_help_panel="Samples")] = None,
    sample_at_first: Annotated[Optional[bool], typer.Option("--sample-at-first", help="Also render before the first step (the base model's look).", rich_help_panel="Samples")] = None,
    sample_prompts: Annotated[Optional[str], typer.Option(help="Prompt file: .txt lines with sd-scripts --n --w --h --s --l --d --ss, or sd-scripts .toml/.json. Alone: one grid at the end.", rich_help_panel="Samples")] = None,
    sample_sampler: Annotated[Optional[str], typer.Option(help="Sampler for prompts without --ss: default (the model's own), euler_a, euler, dpmsolver++, dpmsolver, dpmsingle, ddim, pndm, heun, dpm_2, dpm_2_a, lms, unipc, deis (k_ names too).", rich_help_panel="Samples")] = None,
    tensorboard: Annotated[Optional[bool], typer.Option("--tensorboard", help="Also log to OUTPUT/tensorboard.", rich_help_panel="Run and checkpoints")] = None,
    num_processes: Annotated[Optional[int], typer.Option(help="GPUs: relaunch through `accelerate launch` with N processes.", rich_help_panel="Run and checkpoints")] = None,
) -> None:
    """Train a LoRA on a manifest (the bundled trainer).

    Reads only manifest.json (frozen captions, hashes, buckets) and writes OUTPUT/NAME.safetensors
    (kohya/WebUI/ComfyUI) and NAME.diffusers.safetensors (diffusers), plus checkpoints, loss.csv and
    loss.png. Settings come from --config TOML and flags; every value is printed at start.
    Example: loraprep train DS/manifest.json --base ./sd15 --rank 8 --max-steps 1000
    """
    import os
    import sys

    from train.config import FIELD_SECTION, load_config

    overrides = {k: v for k, v in locals().items() if k in FIELD_SECTION}
    notes: list[str] = []
    settings = load_config(config, overrides, notes=notes)
    for note in notes:  # what an sd-scripts TOML's translation ignored, and why
        out.print(f"[cyan]•[/] {esc(note)}", highlight=False)
    if settings.run.num_processes > 1 and not os.environ.get("LORAPREP_LAUNCHED"):
        from train.launch import relaunch

        raise typer.Exit(relaunch(sys.argv[1:], settings.run.num_processes))
    from train.plan import inspect_base

    checked = inspect_base(settings)
    out.print(_config_table(settings))
    if dry_run:
        from train.plan import plan_training

        out.print(_plan_table(plan_training(manifest, settings, num_processes=settings.run.num_processes)))
        out.print(f"base model: {esc(str(checked.path))} ({esc(checked.label)}, {esc(checked.kind)}); checked, not loaded",
                  highlight=False)
        return
    from train.loop import train as run_training

    with rich_reporter(describe_metrics=_describe_training) as reporter:
        result = run_training(manifest, settings, reporter=reporter)
    out.print(f"[green]done:[/] {result.steps} steps, final loss {result.final_loss:.4f}" if result.final_loss is not None
              else f"[green]done:[/] {result.steps} steps")
    for path in [*result.lora_files, result.loss_csv, result.loss_plot]:
        if path is not None:
            out.print(f"  {esc(path)}")


def _config_table(settings: Any) -> Any:
    from rich.table import Table

    table = Table(title="training settings", show_lines=False, title_style="bold")
    for column in ("section", "setting", "value"):
        table.add_column(column)
    for section, key, value in settings.rows():
        table.add_row(esc(section), esc(key), "—" if value is None else esc(value))
    return table


def _plan_table(plan: Any) -> Any:
    from rich.console import Group
    from rich.table import Table

    table = Table(title=f"dry run: {plan.total_steps} steps, {plan.epochs} epochs, {plan.steps_per_epoch} steps/epoch",
                  title_style="bold")
    for column in ("bucket (w×h)", "images × repeats", "batches/epoch"):
        table.add_column(column, justify="right")
    for (width, height), (images, batches) in plan.bucket_batches.items():
        table.add_row(f"{width}×{height}", str(images), str(batches))
    memory = plan.memory
    gib = 1024 ** 3
    note = (f"estimated peak accelerator memory ≈ {memory.total / gib:.1f} GiB (weights {memory.weights / gib:.1f}, "
            f"LoRA+optimizer {memory.lora / gib:.2f}, activations {memory.activations / gib:.1f}; from {memory.source}). "
            "Manifest and files verified; no weights were loaded.")
    return Group(table, note)


def _describe_training(metrics: dict) -> str:
    text = f"epoch {metrics['epoch']}/{metrics['epochs']}  loss {metrics['loss_ema']:.4f}  lr {metrics['lr']:.2e}"
    if "keys_scaled" in metrics:  # --scale-weight-norms: sd-scripts' "Keys Scaled" / "Average key norm"
        text += f"  keys scaled {metrics['keys_scaled']}  avg norm {metrics['mean_norm']:.3f}"
    return text


# ---------------------------------------------------------------- generate, lora (issue 6)


@app.command()
@guard
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    base: Annotated[str, typer.Option("--base", help="Base model: diffusers folder, .safetensors file or hub id.")],
    lora: Annotated[Optional[Path], typer.Option("--lora", help="LoRA file: kohya/LyCORIS (LoRA, LoCon, DoRA, LoHa, LoKr) or diffusers format.")] = None,
    scale: Annotated[str, typer.Option("--scale", help="LoRA strength; 0 renders the base model alone. A list (0,0.5,1) renders one labelled grid across the values.")] = "1.0",
    unet_scale: Annotated[Optional[str], typer.Option("--unet-scale", help="UNet weight (default --scale); a list with --te-scale makes an X/Y grid, UNet across, text encoder down.")] = None,
    te_scale: Annotated[Optional[str], typer.Option("--te-scale", help="Text-encoder weight (default --scale); a list makes the grid's rows.")] = None,
    block_weights: Annotated[Optional[str], typer.Option("--block-weights", help="lora-block-weight values per block: 17/26 (SD1/SD2) or 12/20 (SDXL), e.g. 1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1, or a preset: ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="default (the model's own scheduler), euler_a, euler, dpmsolver++, ddim, … (sd-scripts' names).")] = "default",
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Output folder (image-000.png, …) or a .png path for one image.")] = Path("generated"),
    negative: Annotated[str, typer.Option("--negative", "-n", help="Negative prompt.")] = "",
    width: Annotated[Optional[int], typer.Option(help="Image width (default: the model's native size).")] = None,
    height: Annotated[Optional[int], typer.Option(help="Image height (default: the model's native size).")] = None,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 25,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.0,
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")] = 0,
    count: Annotated[int, typer.Option(help="How many images.")] = 1,
    clip_skip: Annotated[int, typer.Option(help="1 = last text-encoder layer, 2 = penultimate (WebUI numbering).")] = 1,
    base_config: Annotated[Optional[Path], typer.Option(help="Diffusers config folder of the family, for single-file bases offline.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Accept .ckpt/pickle base weights (loaded weights_only).")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps.")] = "auto",
) -> None:
    """Render images with a LoRA, to check what it learned.

    The same seed with [bold]--scale 0[/] (base model) and [bold]--scale 0.8[/] shows the LoRA's effect directly; [bold]--scale 0,0.5,1[/] puts them side by side in one grid, and [bold]--unet-scale 0,0.5,1 --te-scale 0,1[/] makes the X/Y plot of UNet × text-encoder weight. The LoRA is checked against the base model's family: an SDXL LoRA on an SD1.5 base is an error, not garbage images.
    """
    from train.model import load_base, pick_device
    from train.sample import GenerateOptions, generate as render_images, save_images, strengths

    options = GenerateOptions(negative=negative, width=width, height=height, steps=steps, cfg=cfg, seed=seed,
                              count=count, clip_skip=clip_skip, sampler=sampler)
    plan = strengths(scale, unet_scale, te_scale, block_weights)
    torch_device, dtype = pick_device(device)
    with rich_reporter() as reporter:
        reporter.note(f"loading {base} on {torch_device}")
        model = load_base(base, allow_pickle=allow_pickle, dtype=dtype, device=torch_device, config=base_config)
        images = render_images(model, lora, plan, prompt, options, reporter=reporter)
    for path in save_images(images, out_path, stem="image" if plan.single else "grid"):
        out.print(f"[green]✓[/] {esc(path)}")


lora_app = typer.Typer(help="Inspect LoRA files (kohya/WebUI or diffusers format).", no_args_is_help=True)
app.add_typer(lora_app, name="lora")


@lora_app.command("info")
@guard
def lora_info(
    file: Annotated[Path, typer.Argument(help="A LoRA .safetensors file.", exists=True, dir_okay=False)],
    keys: Annotated[bool, typer.Option("--keys", help="Also list every tensor with its shape.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Format, family, algorithm (LoRA/LoHa/LoKr), ranks, alpha, LoKr factor, DoRA convention, which
    clients apply the file exactly, size and training metadata of a LoRA."""
    from rich.table import Table

    from train.export import describe_lora, read_lora

    info = describe_lora(file)
    shapes = {k: list(v.shape) for k, v in read_lora(file).tensors.items()} if keys else {}
    if as_json:
        print_json(info.to_dict() | ({"keys": shapes} if keys else {}))
        return
    table = Table(title=esc(str(file)), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in _lora_info_rows(info):
        table.add_row(esc(key), esc(value))
    for key, value in sorted(info.metadata.items()):
        if key == "lora_adapter_metadata":
            value = "(peft LoraConfig per component)"
        table.add_row(esc(key), esc(value if len(value) < 400 else value[:400] + " …"))
    out.print(table)
    if keys:
        key_table = Table("tensor", "shape")
        for key, shape in sorted(shapes.items()):
            key_table.add_row(esc(key), "×".join(map(str, shape)) or "scalar")
        out.print(key_table)


def _lora_info_rows(info: Any) -> list[tuple[str, str]]:
    labels = {"lora": "LoRA", "loha": "LoHa (LyCORIS)", "lokr": "LoKr (LyCORIS)"}
    ranks = ", ".join(f"{r} ×{n}" for r, n in info.ranks.items())
    if info.full_matrix_modules:
        ranks = ", ".join(filter(None, [ranks, f"full matrix ×{info.full_matrix_modules}"]))
    dora = "no"
    if info.dora:
        dora = {"input": "yes, norm over input columns (dora_scale [1, in])",
                "output": "yes, norm over output rows (dora_scale [out, 1])"}.get(info.dora_axis, "yes, mixed")
    rows = [("format", info.format), ("family", info.family or "unknown"),
            ("algorithm", ", ".join(labels.get(a, a) for a in info.algorithm.split(", "))),
            ("size", f"{info.size_bytes / 1e6:.2f} MB, {info.num_tensors} tensors ({', '.join(info.dtypes)})"),
            ("modules", ", ".join(f"{c}: {n}" for c, n in info.modules.items())),
            ("rank", ranks), ("alpha", ", ".join(f"{a:g} ×{n}" for a, n in info.alphas.items())),
            ("conv layers", str(info.conv_modules)), ("DoRA", dora)]
    if info.factor is not None:
        rows.append(("LoKr factor", str(info.factor)))
    rows += [(f"applies in {client}", verdict) for client, verdict in info.clients.items()]
    return rows


def main() -> None:
    """The `loraprep` console script: tune the allocator for many large images, then run the app."""
    from prep.allocator import reuse_large_buffers

    reuse_large_buffers()
    app()


if __name__ == "__main__":
    main()
