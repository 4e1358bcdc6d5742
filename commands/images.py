"""Image commands: face-aware crop, clean (transparency and backgrounds), contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from commands.common import CaptionExt, MaxPixels, OverwriteCaptions, finish, guard, sweep_leftovers
from prep.console import esc, out, rich_reporter

app = typer.Typer()

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
    The mask used (or the alpha flattened) is kept beside the image as NAME.mask.png, for
    `train --masked-loss`. --in-place keeps each original in DIR/.loraprep/backup/; re-running skips images already
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
