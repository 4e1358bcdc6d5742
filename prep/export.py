"""Manifest → other tools' dataset formats: sd-scripts dataset config TOML, HF imagefolder, .txt sidecars."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import tomli_w

from prep.atomic import write_text_atomic
from prep.errors import UsageError
from prep.records import Manifest, load_manifest
from prep.sidecars import caption_path, check_caption_extension, write_caption

ExportFormat = Literal["kohya", "imagefolder", "txt"]
FORMATS: tuple[str, ...] = ("kohya", "imagefolder", "txt")


@dataclass(frozen=True)
class ExportResult:
    format: str
    written: list[Path]
    notes: list[str]


def kohya_config(manifest: Manifest, base: Path, *, batch_size: int = 1) -> dict:
    """The sd-scripts `--dataset_config` document for this manifest (DreamBooth-style subsets).

    sd-scripts reads every image of an `image_dir`, so there is one subset per (manifest subset,
    folder). Folders are written as absolute paths because sd-scripts resolves them against its
    own working directory.
    """
    groups: dict[tuple[str, str], int] = defaultdict(int)
    for record in manifest.images:
        groups[(record.subset, str(PurePosixPath(record.path).parent))] += 1
    subsets = []
    for (subset_name, folder), _count in sorted(groups.items()):
        subset = manifest.subset(subset_name)
        entry: dict = {
            "image_dir": str((base / folder).resolve()),
            "num_repeats": subset.repeats,
            "is_reg": subset.is_reg,
            "keep_tokens": subset.keep_tokens if subset.keep_tokens is not None else manifest.keep_tokens,
            "shuffle_caption": subset.shuffle_caption,
            "caption_extension": manifest.caption_extension,
        }
        if subset.class_tokens:
            entry["class_tokens"] = subset.class_tokens
        subsets.append(entry)

    dataset: dict = {"batch_size": batch_size}
    if manifest.buckets is not None:
        b = manifest.buckets
        dataset.update({
            "resolution": list(b.resolution) if b.resolution[0] != b.resolution[1] else b.resolution[0],
            "enable_bucket": True, "min_bucket_reso": b.min, "max_bucket_reso": b.max,
            "bucket_reso_steps": b.step, "bucket_no_upscale": b.no_upscale,
        })
    dataset["subsets"] = subsets
    general = {"caption_extension": manifest.caption_extension, "keep_tokens": manifest.keep_tokens,
               "shuffle_caption": any(s.shuffle_caption for s in manifest.subsets)}
    return {"general": general, "datasets": [dataset]}


def export_kohya(manifest: Manifest, base: Path, out: Path, *, batch_size: int = 1) -> ExportResult:
    document = kohya_config(manifest, base, batch_size=batch_size)
    header = ("# sd-scripts dataset config written by loraprep from manifest.json.\n"
              "# Use: accelerate launch train_network.py --dataset_config THIS_FILE ...\n"
              "# sd-scripts reads the caption sidecars in each image_dir.\n")
    write_text_atomic(out, header + tomli_w.dumps(document))
    notes = []
    if manifest.dropped:
        notes.append(f"{len(manifest.dropped)} dropped file(s) may still sit in these folders; sd-scripts "
                     "will read them unless you move them out")
    if any(r.caption != _sidecar_text(base, r.path, manifest.caption_extension) for r in manifest.images):
        notes.append("some frozen captions differ from their sidecars (e.g. trigger added): "
                     "run `loraprep export --format txt` first so sd-scripts trains the same captions")
    return ExportResult("kohya", [out], notes)


def _sidecar_text(base: Path, rel: str, extension: str) -> str | None:
    try:
        return caption_path(base / rel, extension).read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError):
        return None


def export_imagefolder(manifest: Manifest, base: Path, out: Path) -> ExportResult:
    """HF `datasets` imagefolder: metadata.jsonl beside the images, `file_name` relative to it."""
    lines = []
    for record in manifest.images:
        rel = os.path.relpath(base / record.path, out.parent)
        lines.append(json.dumps({"file_name": Path(rel).as_posix(), "text": record.caption or ""},
                                ensure_ascii=False))
    write_text_atomic(out, "\n".join(lines) + ("\n" if lines else ""))
    return ExportResult("imagefolder", [out], [])


def export_txt(manifest: Manifest, base: Path, extension: str) -> ExportResult:
    """Write each frozen caption to its image's sidecar (what kohya-style trainers read)."""
    written = []
    for record in manifest.images:
        target = caption_path(base / record.path, extension)
        write_caption(target, record.caption or "")
        written.append(target)
    return ExportResult("txt", written, [])


def export_dataset(source: str | os.PathLike[str], fmt: str, *, out: str | os.PathLike[str] | None = None,
                   caption_extension: str | None = None, batch_size: int = 1) -> ExportResult:
    """Export a dataset folder's manifest (or a manifest file) to `fmt`."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}'", hint=f"choose one of: {', '.join(FORMATS)}")
    source = Path(source)
    manifest_file = source / "manifest.json" if source.is_dir() else source
    manifest = load_manifest(manifest_file)
    base = manifest_file.parent
    if fmt == "kohya":
        return export_kohya(manifest, base, Path(out) if out else base / "dataset_config.toml", batch_size=batch_size)
    if fmt == "imagefolder":
        return export_imagefolder(manifest, base, Path(out) if out else base / "metadata.jsonl")
    extension = check_caption_extension(caption_extension or manifest.caption_extension)
    return export_txt(manifest, base, extension)
