"""Is a manifest still true? Schema validity, safe paths, and files unchanged since freezing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prep.errors import ManifestError
from prep.images import sha256_file, sha256_text
from prep.records import Manifest, check_inside, resolve_inside, schema_errors
from prep.sidecars import BadCaption, caption_path, read_caption


def image_problems(manifest: Manifest, base: str | os.PathLike[str]) -> list[str]:
    """Images missing, changed, or resolving outside `base`, since the manifest was written."""
    base = Path(base)
    problems = []
    for record in manifest.images:
        try:
            image = resolve_inside(base, record.path)
        except ManifestError as exc:
            problems.append(exc.message)
            continue
        if not image.is_file():
            problems.append(f"{record.path}: image is missing")
        elif sha256_file(image) != record.sha256:
            problems.append(f"{record.path}: image changed since the manifest was written")
    return problems


def caption_problems(manifest: Manifest, base: str | os.PathLike[str]) -> list[str]:
    """Caption sidecars edited, deleted, unreadable, or linking outside `base` since freezing."""
    base = Path(base)
    problems = []
    for record in manifest.images:
        if record.caption_sha256 is None:
            continue
        rel = caption_path(record.path, manifest.caption_extension).as_posix()
        try:
            sidecar = resolve_inside(base, rel)
            caption = read_caption(sidecar)
        except (ManifestError, BadCaption) as exc:
            problems.append(exc.message)
            continue
        if caption is None:
            problems.append(f"{record.path}: caption {Path(rel).name} was deleted since the manifest was written")
        elif sha256_text(caption) != record.caption_sha256:
            problems.append(f"{record.path}: caption {Path(rel).name} changed since the manifest was written")
    return problems


def mask_problems(manifest: Manifest, base: str | os.PathLike[str]) -> list[str]:
    """Subject mask sidecars deleted, edited, or linking outside `base` since freezing."""
    problems = []
    for record in manifest.images:
        if record.mask is None:
            continue
        try:
            mask = resolve_inside(base, record.mask.path)
        except ManifestError as exc:
            problems.append(exc.message)
            continue
        if not mask.is_file():
            problems.append(f"{record.path}: mask {Path(record.mask.path).name} was deleted since the manifest was written")
        elif sha256_file(mask) != record.mask.sha256:
            problems.append(f"{record.path}: mask {Path(record.mask.path).name} changed since the manifest was written")
    return problems


def stale_files(manifest: Manifest, base: str | os.PathLike[str]) -> list[str]:
    """Images missing or changed, and caption and mask sidecars edited, since the manifest was written."""
    return image_problems(manifest, base) + caption_problems(manifest, base) + mask_problems(manifest, base)


def check_manifest_file(path: str | os.PathLike[str]) -> list[str]:
    """Every problem with a manifest file: schema, paths (also through symlinks), and stale or
    missing files. Problems name `path` as given (a folder means its manifest.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{path}: no manifest here"]
    except IsADirectoryError:
        return [f"{path} is a folder, not a manifest file"]
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"{path}: not valid JSON ({exc})"]
    try:
        manifest = Manifest.from_dict(data)
        check_inside(manifest, path.parent)
    except ManifestError as exc:
        return [f"{path}: {exc.message}", *schema_errors(data)]
    problems = schema_errors(data)
    return problems + stale_files(manifest, path.parent)
