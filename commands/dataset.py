"""The foundation commands: scan, bucket, manifest, export and the whole-pipeline prep."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from commands.common import CaptionExt, MaxPixels, OverwriteCaptions, finish, guard, parse_resolution, print_json, shorten
from commands.common import CaptionColumn, ImageColumn, UnpackTo, dataset_input  # issue 24
from prep.console import err, esc, out, print_dropped, rich_reporter

app = typer.Typer()


@app.command()
@guard
def scan(
    folder: Annotated[Path, typer.Argument(help="Folder of images (searched recursively), or a Hugging Face dataset (unpacked first).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
    caption_extension: CaptionExt = ".txt",
    max_pixels: MaxPixels = 150_000_000,
    image_column: ImageColumn = "image",  # issue 24: Hugging Face datasets in
    caption_column: CaptionColumn = "text",
    unpack_to: UnpackTo = None,
) -> None:
    """Look before you prep: every image with its size, aspect ratio and caption, and every problem.

    Follows kohya's `N_name` repeat-folder convention (`10_sks woman/` = 10 repeats, class tokens
    "sks woman"). Sizes come from file headers; nothing is decoded. Exit code 1 if any file is unreadable.
    """
    from rich.table import Table

    from prep.dataset import scan_summary
    from prep.scan import require_images, scan_folder

    folder, rows_dropped = dataset_input(folder, unpack_to, image_column, caption_column)  # issue 24
    if as_json:
        result = require_images(scan_folder(folder, caption_extension=caption_extension, max_pixels=max_pixels))
        print_json(scan_summary(result))
        raise typer.Exit(1 if result.dropped or rows_dropped else 0)
    with rich_reporter() as reporter:
        result = scan_folder(folder, caption_extension=caption_extension, max_pixels=max_pixels, reporter=reporter)
    require_images(result)
    table = Table(title=f"{len(result.entries)} images in {esc(folder)}")
    for column in ("image", "size", "aspect", "repeats", "caption"):
        table.add_column(column, overflow="fold")
    for e in result.entries:
        caption = esc(shorten(e.caption, 80)) if e.caption else "[red]none[/]"
        repeats = f"{e.repeat_folder.repeats}× {esc(e.repeat_folder.class_tokens)}" if e.repeat_folder else ""
        table.add_row(esc(e.rel), f"{e.info.width}×{e.info.height}", f"{e.aspect:.2f}", repeats, caption)
    out.print(table)
    captioned = sum(1 for e in result.entries if e.caption)
    out.print(f"captioned: {captioned}/{len(result.entries)}")
    if result.warnings:
        print_dropped(result.warnings)
    finish(rows_dropped + result.dropped)


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


@app.command()
@guard
def manifest(
    folder: Annotated[Path, typer.Argument(help="Dataset folder (images + caption sidecars), a Hugging Face dataset (unpacked first), or a manifest file with --check.")],
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
    image_column: ImageColumn = "image",  # issue 24: Hugging Face datasets in
    caption_column: CaptionColumn = "text",
    unpack_to: UnpackTo = None,
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
    folder, rows_dropped = dataset_input(folder, unpack_to, image_column, caption_column)  # issue 24
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
    finish(rows_dropped + build.dropped)


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
    src: Annotated[Path, typer.Argument(help="Folder of raw images (never modified), or a Hugging Face dataset: save_to_disk, imagefolder or parquet folder, or Hub name.")],
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
    image_column: ImageColumn = "image",  # issue 24: Hugging Face datasets in
    caption_column: CaptionColumn = "text",
    unpack_to: UnpackTo = None,
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

    src, rows_dropped = dataset_input(src, unpack_to, image_column, caption_column)  # issue 24
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
    finish(rows_dropped + report.dropped)
