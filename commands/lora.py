"""`loraprep lora`: inspect LoRA files, and the tools users reach for after training (resize, merge, meta)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from commands.common import guard, print_json
from prep.console import err, esc, out
from prep.errors import UsageError

app = typer.Typer(name="lora", help="Inspect, resize, merge and re-tag LoRA files (kohya/WebUI or diffusers "
                  "format).", no_args_is_help=True)


@app.command("info")
@guard
def lora_info(
    file: Annotated[Path, typer.Argument(help="A LoRA .safetensors file.", exists=True, dir_okay=False)],
    keys: Annotated[bool, typer.Option("--keys", help="Also list every tensor with its shape.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Format, family, algorithm (LoRA/LoHa/LoKr), ranks, alpha, LoKr factor, DoRA convention, which
    clients apply the file exactly, size and training metadata of a LoRA."""
    from rich.table import Table

    from train.embedding import is_embedding_file
    from train.export import describe_lora, read_lora

    if is_embedding_file(file):  # textual inversion: an embedding file, not a LoRA
        _embedding_info(file, as_json)
        return
    info = describe_lora(file)
    shapes = {k: list(v.shape) for k, v in read_lora(file).tensors.items()} if keys else {}
    if as_json:
        from train.prediction import lora_prediction

        print_json(info.to_dict() | {"prediction": lora_prediction(info.metadata)} | ({"keys": shapes} if keys else {}))
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
    labels = {"lora": "LoRA", "loha": "LoHa (LyCORIS)", "lokr": "LoKr (LyCORIS)", "ia3": "(IA)³ (LyCORIS)",
              "dylora": "DyLoRA (sd-scripts networks.dylora; a LoRA file)",
              "lora-fa": "LoRA-FA (sd-scripts networks.lora_fa; a LoRA file)"}
    ranks = ", ".join(f"{r} ×{n}" for r, n in info.ranks.items())
    if info.full_matrix_modules:
        ranks = ", ".join(filter(None, [ranks, f"full matrix ×{info.full_matrix_modules}"]))
    dora = "no"
    if info.dora:
        dora = {"input": "yes, norm over input columns (dora_scale [1, in])",
                "output": "yes, norm over output rows (dora_scale [out, 1])"}.get(info.dora_axis, "yes, mixed")
    rows = [("format", info.format), ("family", info.family or "unknown"),
            ("algorithm", ", ".join(labels.get(a, a) for a in (info.method or info.algorithm).split(", "))),
            ("size", f"{info.size_bytes / 1e6:.2f} MB, {info.num_tensors} tensors ({', '.join(info.dtypes)})"),
            ("modules", ", ".join(f"{c}: {n}" for c, n in info.modules.items())),
            ("rank", ranks), ("alpha", ", ".join(f"{a:g} ×{n}" for a, n in info.alphas.items())),
            ("conv layers", str(info.conv_modules)), ("DoRA", dora)]
    if info.factor is not None:
        rows.append(("LoKr factor", str(info.factor)))
    from train.prediction import lora_prediction  # what the base predicted: epsilon, v (+ zero terminal SNR)

    rows.append(("prediction", lora_prediction(info.metadata) or "not recorded"))
    if info.method == "ia3":  # issue 22: a scale vector per layer, no rank or alpha
        rows = [row if row[0] not in ("rank", "alpha") else (row[0], "— ((IA)³ stores one scale vector per layer)")
                for row in rows]
    if info.dylora_unit:  # issue 22
        rows.append(("DyLoRA unit", f"{info.dylora_unit}; valid cuts (ranks): {', '.join(map(str, info.valid_cuts))}"))
    rows += [(f"applies in {client}", verdict) for client, verdict in info.clients.items()]
    if info.bundled_embeddings:  # pivotal tuning: the WebUI's bundle_emb keys
        from train.embedding import bundle_rows

        rows += bundle_rows(info.bundled_embeddings)
    return rows


# ---------------------------------------------------------------- after training: resize, merge, meta

Out = Annotated[Path, typer.Option("--out", help="The file to write (.safetensors).", dir_okay=False)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
DTYPE_HELP = "Storage precision: fp16, bf16 or fp32 (default: the input's)."


@app.command("resize")
@guard
def lora_resize(
    file: Annotated[Path, typer.Argument(help="A LoRA .safetensors file (LoRA, LoCon, LoHa, LoKr, DyLoRA).",
                                         exists=True, dir_okay=False)],
    target: Out,
    rank: Annotated[Optional[int], typer.Option("--rank", help="The new rank (with --dynamic: its cap).")] = None,
    conv_rank: Annotated[Optional[int], typer.Option(
        "--conv-rank", help="Rank of 3×3 convolutions (LoCon); default --rank.")] = None,
    dynamic: Annotated[Optional[str], typer.Option(
        "--dynamic", help="Choose each module's rank: sv_ratio, sv_fro or sv_cumulative (resize_lora.py's).")] = None,
    param: Annotated[Optional[float], typer.Option(
        "--param", help="The --dynamic target: sv_ratio X ≥ 1, sv_fro / sv_cumulative a share 0–1.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help=DTYPE_HELP)] = None,
    overwrite: Overwrite = False,
    as_json: Json = False,
) -> None:
    """A LoRA at a lower rank: each module's best approximation (truncated SVD).

    Prints, per block and overall, the rank chosen and the share of the weight change's Frobenius
    norm kept, and the file sizes. LoHa/LoKr become plain LoRA; DoRA is refused (its effect depends
    on the base weights); DyLoRA is cut at a multiple of its unit. Metadata is carried over.
    """
    from train.loratools.resize import ResizeSettings, resize_lora

    report = resize_lora(file, target, ResizeSettings(rank, conv_rank, dynamic, param, dtype), overwrite=overwrite)
    _print_report(report, as_json)


@app.command("merge")
@guard
def lora_merge(
    lora: Annotated[list[str], typer.Option(
        "--lora", help="A LoRA file, optionally :WEIGHT (default 1, negative subtracts); repeat it.")],
    target: Annotated[Path, typer.Option("--out", help="The LoRA (.safetensors) or, with --base, the model: "
                                                       "a folder (diffusers) or FILE.safetensors (one file).")],
    base: Annotated[Optional[str], typer.Option(
        "--base", help="Bake the LoRAs into this model (diffusers folder or single file).")] = None,
    rank: Annotated[Optional[int], typer.Option(
        "--rank", help="Without --base: the merged LoRA's rank, by SVD (default: exact, ranks added).")] = None,
    conv_rank: Annotated[Optional[int], typer.Option(
        "--conv-rank", help="With --rank: the 3×3 convolutions' rank (default --rank).")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="fp16, bf16 or fp32 (default: the input's, "
                                                                 "with --base the base's).")] = None,
    overwrite: Overwrite = False,
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle", help="Read a pickle (.ckpt) base model; pickles can run code.")] = False,
    base_config: Annotated[Optional[Path], typer.Option(
        "--base-config", help="Diffusers config folder of the family, for a single-file base written as a "
                              "folder offline.")] = None,
    as_json: Json = False,
) -> None:
    """Weighted LoRAs as one LoRA (exact, or at --rank), or baked into a base model.

    Without --base the result is the exact weighted sum (ranks concatenated) unless --rank asks for
    the SVD of the sum; LoRAs of another family or shape are refused, naming the module; (IA)³ and
    DoRA files only bake into a --base (their change depends on the base weights).
    """
    loras = [_weighted(text) for text in lora]
    if base is None:
        from train.loratools.merge import merge_loras

        if base_config is not None:
            raise UsageError("--base-config goes with --base")
        report = merge_loras(loras, target, rank=rank, conv_rank=conv_rank, dtype=dtype, overwrite=overwrite)
        _print_report(report, as_json)
        return
    if rank is not None or conv_rank is not None:
        raise UsageError("--rank applies to a merged LoRA; baking into --base adds the full changes",
                         hint="leave out --rank, or --base to get a LoRA")
    if target.exists() and not overwrite:
        raise UsageError(f"{target} already exists", hint="pass --overwrite to replace it, or choose another --out")
    from prep.console import rich_reporter
    from train.loratools.bake import merge_into_base

    extra = {"config": base_config} if base_config is not None else {}
    with rich_reporter() as reporter:
        summary = merge_into_base(base, loras, target, dtype=dtype, allow_pickle=allow_pickle, reporter=reporter,
                                  **extra)
    if as_json:
        print_json(summary)
        return
    for key, value in summary.items():
        out.print(f"[bold]{esc(str(key))}[/]: {esc(str(value))}", highlight=False)


@app.command("extract")
@guard
def lora_extract(
    base: Annotated[str, typer.Argument(help="The model TUNED started from: diffusers folder or single file.")],
    tuned: Annotated[str, typer.Argument(help="The fine-tuned model (full fine-tune, DreamBooth checkpoint).")],
    target: Out,
    rank: Annotated[int, typer.Option("--rank", help="The LoRA's rank.")],
    conv_rank: Annotated[Optional[int], typer.Option(
        "--conv-rank", help="Also extract the convolutions (3×3 at this rank).")] = None,
    min_change: Annotated[float, typer.Option(
        "--min-change", help="Skip modules whose change is below this share of the weight's norm.")] = 1e-3,
    dtype: Annotated[str, typer.Option("--dtype", help="Storage precision: fp16, bf16 or fp32.")] = "fp16",
    allow_pickle: Annotated[bool, typer.Option(
        "--allow-pickle", help="Read pickle (.ckpt) models; pickles can run code.")] = False,
    overwrite: Overwrite = False,
    as_json: Json = False,
) -> None:
    """A LoRA from a model difference: per-module truncated SVD of TUNED − BASE."""
    from prep.console import rich_reporter
    from train.loratools.extract import extract_lora

    with rich_reporter() as reporter:
        summary = extract_lora(base, tuned, target, rank=rank, conv_rank=conv_rank, min_change=min_change, dtype=dtype,
                               allow_pickle=allow_pickle, overwrite=overwrite, reporter=reporter)
    if as_json:
        print_json(summary.to_dict())
        return
    for component in dict.fromkeys([*summary.modules, *summary.skipped]):
        line = f"{component}: {summary.modules.get(component, 0):d} modules extracted"
        if summary.skipped.get(component):
            line += f", {summary.skipped[component]:d} skipped (change below --min-change)"
        out.print(esc(line), highlight=False)
    out.print(esc(f"kept {100 * summary.kept:.2f}% of the change's Frobenius norm; {_size(summary.size_bytes)}, "
                  f"{summary.seconds:.1f} s"), highlight=False)


@app.command("meta")
@guard
def lora_meta(
    file: Annotated[Path, typer.Argument(help="A LoRA .safetensors file.", exists=True, dir_okay=False)],
    pairs: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Set KEY=VALUE (KEY= removes KEY); repeatable.")] = None,
    trigger: Annotated[Optional[str], typer.Option("--trigger", help="modelspec.trigger_phrase.")] = None,
    title: Annotated[Optional[str], typer.Option("--title", help="modelspec.title (and ss_output_name).")] = None,
    cover: Annotated[Optional[Path], typer.Option(
        "--cover", help="An image for modelspec.thumbnail (256×256 JPEG data: URI).", exists=True,
        dir_okay=False)] = None,
    to: Annotated[Optional[Path], typer.Option(
        "--out", help="Write the edited file here instead of over FILE.", dir_okay=False)] = None,
    overwrite: Overwrite = False,
    as_json: Json = False,
) -> None:
    """Show or edit a LoRA's modelspec.* / ss_* metadata.

    Edits rewrite only the header: the tensor data stays byte-identical, and the file is replaced
    atomically.
    """
    from rich.table import Table

    from train.loratools.meta import edited, ordered, read_metadata, shown_value, write_metadata

    metadata = read_metadata(file)
    if pairs or trigger is not None or title is not None or cover is not None:
        if to is not None and to.exists() and not overwrite:
            raise UsageError(f"{to} already exists", hint="pass --overwrite to replace it")
        metadata = edited(metadata, pairs=pairs or [], trigger=trigger, title=title, cover=cover)
        written = write_metadata(file, metadata, to)
        err.print(f"[cyan]•[/] wrote {esc(str(written))}", highlight=False)
    if as_json:
        print_json(metadata)
        return
    table = Table(title=esc(str(to or file)), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in ordered(metadata):
        table.add_row(esc(key), esc(shown_value(key, value)))
    if metadata:
        out.print(table)
    else:
        out.print("(no metadata)")


def _weighted(text: str) -> tuple[Path, float]:
    """`F` or `F:W` (a path may hold colons itself: only a number after the last one is a weight)."""
    path, sep, weight = text.rpartition(":")
    if sep:
        try:
            return Path(path), float(weight)
        except ValueError:
            if Path(path).is_file() and not Path(text).exists():
                raise UsageError(f"--lora {text}: the weight '{weight}' is not a number",
                                 hint="write FILE:0.7 or FILE:-0.5") from None
    return Path(text), 1.0


def _print_report(report: Any, as_json: bool) -> None:
    """Per block and overall: modules, rank written, share of ‖ΔW‖ kept; sizes; notes."""
    from rich.table import Table

    if as_json:
        print_json(report.to_dict())
        return
    table = Table("block", "modules", "ΔW rank before", "rank written", "kept ‖ΔW‖", title=esc(str(report.out)))
    rows = report.blocks() + [report.overall()]
    for i, row in enumerate(rows):
        low, high = row.ranks
        ranks = f"{low:d}" if low == high else f"{low:d}–{high:d} (mean {row.mean_rank:.1f})"
        before = "–".join(map(str, sorted(set(row.before)))) if row.before else "?"
        table.add_row(esc(row.block), f"{row.modules:d}", esc(before), esc(ranks), f"{100 * row.kept:.2f} %",
                      end_section=i == len(rows) - 2)
    out.print(table)
    out.print(esc(f"size: {_size(report.size_before)} → {_size(report.size_after)}"), highlight=False)
    for note in report.notes:
        out.print(f"[cyan]•[/] {esc(note)}", highlight=False)


def _size(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


# issue 24: `lora push`, the retry of a failed --push-to-hub (or an upload of any finished run)
@app.command("push")
@guard
def lora_push(
    output: Annotated[Path, typer.Argument(help="A training output folder (LoRA files, README.md, samples/).")],
    repo: Annotated[str, typer.Argument(help="Hub model repository: user/name (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="File holding the Hub token (default: HF_TOKEN or `hf auth login`).")] = None,
) -> None:
    """Upload a run's LoRA files, model card and sample grids to a Hugging Face model repository
    (never checkpoints or caches). HF_ENDPOINT points it at another Hub server."""
    from train.hub import push_folder

    target, url = push_folder(output, repo, private=private, token_file=str(token_file) if token_file else None)
    out.print(f"[green]✓[/] uploaded {esc(output)} to {esc(target.url)}", highlight=False)
    out.print(f"  {esc(url)}", highlight=False)


def _embedding_info(file: Path, as_json: bool) -> None:
    """`lora info` of a textual-inversion embedding: family, vectors, and how each app applies it."""
    from rich.table import Table

    from train.embedding import embedding_rows, read_embedding

    rows = embedding_rows(read_embedding(file))
    if as_json:
        print_json({key: value for key, value in rows})
        return
    table = Table(title=esc(str(file)), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(esc(key), esc(value))
    out.print(table)
