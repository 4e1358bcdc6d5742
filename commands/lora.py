"""`loraprep lora`: inspect LoRA files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from commands.common import guard, print_json
from prep.console import esc, out

app = typer.Typer(name="lora", help="Inspect LoRA files (kohya/WebUI or diffusers format).", no_args_is_help=True)


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
    if info.bundled_embeddings:  # pivotal tuning: the WebUI's bundle_emb keys
        from train.embedding import bundle_rows

        rows += bundle_rows(info.bundled_embeddings)
    return rows


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
