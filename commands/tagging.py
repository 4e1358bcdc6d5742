"""`loraprep tag`: auto-captioning with WD14 tags and/or BLIP sentences."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from commands.common import CaptionExt, MaxPixels, finish, guard, split_option, sweep_leftovers
from prep.console import esc, out, rich_reporter

app = typer.Typer()


@app.command()
@guard
def tag(
    folder: Annotated[Path, typer.Argument(help="Dataset folder (searched recursively). Images are never modified.")],
    model: Annotated[str, typer.Option("--model", help="WD14 tagger from the registry (`loraprep models list`), or deepdanbooru (local only: its ONNX + tags.txt in --model-dir).")] = "wd-swinv2-tagger-v3",
    model_dir: Annotated[Optional[Path], typer.Option("--model-dir", help="Any folder holding model.onnx + selected_tags.csv (overrides --model), or a DeepDanbooru folder (model.onnx + tags.txt).")] = None,
    captioner: Annotated[str, typer.Option("--captioner", help="wd14 (tags), blip (a sentence), both (BLIP sentence, then tags), or a natural-language captioner: florence2, joycaption or qwen-vl (`models pull florence-2-base`, `joycaption-beta-one`, `qwen2.5-vl-3b`).")] = "wd14",
    caption_model: Annotated[Optional[str], typer.Option("--caption-model", help="Registry model for florence2/joycaption/qwen-vl (default: florence-2-base, joycaption-beta-one, qwen2.5-vl-3b).")] = None,
    caption_dir: Annotated[Optional[Path], typer.Option("--caption-dir", help="Any transformers-format folder for florence2/joycaption/qwen-vl (overrides --caption-model).")] = None,
    task: Annotated[str, typer.Option("--task", help="florence2: caption, detailed or more-detailed.")] = "detailed",
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="joycaption: descriptive, descriptive-casual, straightforward, booru-like, \"training prompt\", or your own text; qwen-vl: your own text.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="florence2/joycaption/qwen-vl: longest answer, in the model's tokens.")] = 256,
    combine: Annotated[Optional[str], typer.Option("--combine", help="What the caption holds: tags, caption, both, or a template such as \"{trigger}, {tags}. {caption}\" ({tags}: WD14 tags; {caption}: the sentence of --captioner, BLIP by default).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="A caption holding a sentence that is longer than this many CLIP tokens is cut at a sentence end and reported (75: one CLIP window, what most trainers read; 225 for kohya's max_token_length=225; 0: never cut).")] = 75,
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
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda. auto: onnxruntime's GPU provider if it has one, else the WD v3 timm weights on torch's CUDA (when pulled: `models pull NAME-timm`), else the CPU. Sentence captioners (BLIP, Florence-2, chat VLMs) run on torch: auto = CUDA when torch sees one.")] = "auto",
    backend: Annotated[str, typer.Option("--backend", help="WD tagger engine: auto, onnx (model.onnx) or timm (v3 config.json + model.safetensors on torch).")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per inference call, tagger and captioner alike (default: 1 on CPU; on a GPU 8 for WD14, 4 for a captioner).")] = None,
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

    from prep.tag import TagOptions, resolve_combine, tag_folder
    from prep.tagging.blip import BlipSettings
    from prep.tagging.vlm import VlmSettings
    from prep.tagging.wd14 import Thresholds
    from prep.tags import parse_replacements, tag_frequency

    lists = tuple(prune_list or ())
    chosen, template = resolve_combine(captioner, combine)
    options = TagOptions(
        model=model, model_dir=model_dir, captioner=chosen, template=template, max_tokens=max_tokens,  # type: ignore[arg-type]
        blip_model=blip_model, blip_dir=blip_dir,
        blip=BlipSettings(beams=beams, min_length=min_length, max_length=max_length),
        caption_model=caption_model, caption_dir=caption_dir,
        vlm=VlmSettings(task=task, prompt=prompt, max_new_tokens=max_new_tokens),
        thresholds=Thresholds(general, character, mcut), rating=rating, max_tags=max_tags,  # type: ignore[arg-type]
        trigger=trigger, always_first=split_option(always_first), exclude=split_option(exclude),
        replace=tuple(parse_replacements(replace or []).items()), prune_character=prune_character or bool(lists),
        prune_clothes=prune_clothes, prune_lists=lists, mode=mode, batch_size=batch_size, workers=workers,  # type: ignore[arg-type]
        caption_extension=caption_extension, dry_run=dry_run, download=download, max_pixels=max_pixels,
        device=device, backend=backend)  # type: ignore[arg-type]
    if not dry_run:
        sweep_leftovers(folder)
    with rich_reporter(describe_metrics=lambda metrics: "", speed_unit="images/s") as reporter:
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
    if result.cut:
        cut = Table(title=f"Captions cut to {esc(max_tokens)} CLIP tokens at a sentence end"
                    + (" (dry run: nothing written)" if dry_run else ""))
        for column in ("image", "tokens", "dropped"):
            cut.add_column(column, overflow="fold")
        for path, info in result.cut.items():
            tokens = f"{info.before} → {info.after}" if info.dropped else f"{info.before} (nothing can go but the trigger)"
            cut.add_row(esc(rel(path)), tokens, esc(info.dropped))
        out.print(cut)
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
