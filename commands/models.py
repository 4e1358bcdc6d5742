"""`loraprep models`: the models loraprep can use, listed, downloaded and located."""

from __future__ import annotations

from typing import Annotated

import typer

from commands.common import guard, print_json
from prep.console import err, esc, out

app = typer.Typer(name="models", help="The models loraprep can use: list them, download them, find them.", no_args_is_help=True)


@app.command("list")
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

    rows = [{"name": s.name, "kind": s.kind, "host": s.host, "repo": s.repo_id, "revision": s.revision,
             "licence": s.licence, "files": list(s.files), "upstream_files": [s.repo_file(f) for f in s.files],
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
                          f"{row['description']}" if row["revision"] else f"local only\n{row['description']}"))
    out.print(table)
    out.print("Download with `loraprep models pull NAME`; offline, copy the files into the folder "
              "`loraprep models path NAME` prints.")


@app.command("pull")
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


@app.command("path")
@guard
def models_path(
    name: Annotated[str, typer.Argument(help="Model name.")],
) -> None:
    """Print the folder a model lives in (whether or not it is downloaded yet), for scripts."""
    from prep import models

    models.spec(name)
    typer.echo(str(models.model_path(name)))
