"""Is a manifest still true? Schema validity, safe paths, and files unchanged since freezing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prep.errors import ManifestError
from prep.images import sha256_file, sha256_text
from prep.records import Manifest, schema_errors
from prep.sidecars import BadCaption, caption_path, read_caption


def stale_files(manifest: Manifest, base: str | os.PathLike[str]) -> list[str]:
    """Images missing or changed, and caption sidecars edited, since the manifest was written."""
    base = Path(base)
    problems = []
    for record in manifest.images:
        image = base / record.path
        if not image.is_file():
            problems.append(f"{record.path}: image is missing")
            continue
        if sha256_file(image) != record.sha256:
            problems.append(f"{record.path}: image changed since the manifest was written")
        if record.caption_sha256 is None:
            continue
        sidecar = caption_path(image, manifest.caption_extension)
        try:
            caption = read_caption(sidecar)
        except BadCaption as exc:
            problems.append(exc.message)
            continue
        if caption is None:
            problems.append(f"{record.path}: caption {sidecar.name} was deleted since the manifest was written")
        elif sha256_text(caption) != record.caption_sha256:
            problems.append(f"{record.path}: caption {sidecar.name} changed since the manifest was written")
    return problems


def check_manifest_file(path: str | os.PathLike[str]) -> list[str]:
    """Every problem with a manifest file: schema, paths, and stale or missing files."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{path}: no manifest here"]
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"{path}: not valid JSON ({exc})"]
    try:
        manifest = Manifest.from_dict(data)
    except ManifestError as exc:
        return [exc.message, *schema_errors(data)]
    problems = schema_errors(data)
    return problems + stale_files(manifest, path.parent)
