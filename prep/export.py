"""Manifest → other tools' dataset formats: sd-scripts dataset config TOML, HF imagefolder, .txt sidecars."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import tomli_w

from prep.atomic import sweep_leftovers, write_text_atomic
from prep.captions.dataset import decode_caption, read_current
from prep.captions.training import manifest_training_caption
from prep.captions.journal import FileState, write_guarded
from prep.captions.journal import record as record_journal
from prep.errors import LoraprepError, ManifestError, UsageError
from prep.images import sha256_text
from prep.records import Manifest, load_manifest, resolve_inside
from prep.sidecars import caption_path, check_caption_extension
from prep.verify import image_problems

ExportFormat = Literal["kohya", "imagefolder", "txt"]
FORMATS: tuple[str, ...] = ("kohya", "imagefolder", "txt")
Prefer = Literal["manifest", "files"]  # which side wins where a sidecar was edited after freezing


class CaptionsEdited(LoraprepError):
    """Captions were edited by hand after the manifest froze them; overwriting needs a choice."""


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
    plan = plan_txt(manifest, base, manifest.caption_extension)
    if plan.edited:
        notes.append(f"{len(plan.edited)} caption sidecar(s) were edited after the manifest was written "
                     f"({_listed(plan.edited)}): sd-scripts would train the edits. Keep them: rebuild the "
                     f"manifest (`loraprep manifest {base}`); or restore the frozen captions: "
                     f"`loraprep export {base} --format txt --from-manifest` (journalled, "
                     f"`loraprep captions undo {base}` reverts)")
    if plan.writes:
        notes.append(f"{len(plan.writes)} frozen caption(s) differ from their sidecars (e.g. the trigger was "
                     f"put first): run `loraprep export {base} --format txt` so sd-scripts trains the same "
                     "captions (journalled, so `loraprep captions undo` reverts it)")
    return ExportResult("kohya", [out], notes)


def _listed(paths: list[str], limit: int = 5) -> str:
    return ", ".join(paths[:limit]) + (f" … and {len(paths) - limit} more" if len(paths) > limit else "")


def export_imagefolder(manifest: Manifest, base: Path, out: Path) -> ExportResult:
    """HF `datasets` imagefolder: metadata.jsonl beside the images, `file_name` relative to it.

    `text` is the caption each image trains on in `loraprep train` (class tokens for an image
    without a caption, no trigger for regularisation images), so diffusers' example trains the same
    captions. What imagefolder cannot say (repeats, regularisation) is named in the notes.
    """
    lines = []
    for record in manifest.images:
        rel = os.path.relpath(base / record.path, out.parent)
        lines.append(json.dumps({"file_name": Path(rel).as_posix(),
                                 "text": manifest_training_caption(manifest, record)}, ensure_ascii=False))
    write_text_atomic(out, "\n".join(lines) + ("\n" if lines else ""))
    return ExportResult("imagefolder", [out], _imagefolder_notes(manifest))


def _imagefolder_notes(manifest: Manifest) -> list[str]:
    used = {record.subset for record in manifest.images}
    subsets = [manifest.subset(name) for name in sorted(used)]
    notes = []
    repeated = [s.name for s in subsets if s.repeats > 1 and not s.is_reg]
    if repeated:
        notes.append(f"imagefolder has no repeats: subset(s) {_listed(repeated)} train once per epoch in "
                     "diffusers' example (raise its --num_train_epochs to match)")
    reg = sum(1 for record in manifest.images if manifest.subset(record.subset).is_reg)
    if reg:
        notes.append(f"{reg} regularisation image(s) are listed with their class caption; diffusers' "
                     "text-to-image example trains them as ordinary images")
    return notes


@dataclass(frozen=True)
class TxtWrite:
    caption: str           # sidecar path relative to the dataset folder (POSIX)
    before: bytes | None   # the sidecar's bytes now (None: no file yet)
    after: bytes           # the frozen caption as written


@dataclass(frozen=True)
class TxtPlan:
    """What `export --format txt` would do. `edited`: sidecars whose text is not what the manifest
    froze (a hand edit since), which are never replaced unless the user says the manifest wins."""

    writes: list[TxtWrite]
    edited: list[str]
    edited_writes: list[TxtWrite]


def _frozen_bytes(caption: str | None) -> bytes:
    return ((caption or "").strip() + "\n").encode("utf-8")


def plan_txt(manifest: Manifest, base: Path, extension: str) -> TxtPlan:
    """Compare every record's sidecar with its frozen caption; nothing is written."""
    writes, edited, edited_writes = [], [], []
    for record in manifest.images:
        rel = caption_path(record.path, extension).as_posix()
        resolve_inside(base, rel)  # refuses a sidecar that links outside the dataset
        before = read_current(base, rel)  # None when there is no file (or a dangling link)
        after = _frozen_bytes(record.caption)
        if before == after:
            continue
        write = TxtWrite(rel, before, after)
        if before is None or _frozen_hash_matches(before, record.caption_sha256):
            writes.append(write)
        else:
            edited.append(rel)
            edited_writes.append(write)
    return TxtPlan(writes, edited, edited_writes)


def _frozen_hash_matches(data: bytes, caption_sha256: str | None) -> bool:
    """The sidecar still holds what the manifest froze (read as `read_caption` reads it)."""
    if caption_sha256 is None:
        return False
    text = decode_caption(data)
    return text is not None and sha256_text(text) == caption_sha256


def export_txt(manifest: Manifest, base: Path, extension: str, *, prefer: Prefer | None = None) -> ExportResult:
    """Write each frozen caption to its image's sidecar (what kohya-style trainers read).

    A sidecar edited since the manifest froze it is never replaced silently: without `prefer` the
    export refuses (nothing written, the files named); `prefer="files"` keeps those edits and
    writes the rest; `prefer="manifest"` replaces them too. Every write is journalled first, so
    `loraprep captions undo DIR` puts the previous bytes back.
    """
    plan = plan_txt(manifest, base, extension)
    if plan.edited and prefer is None:
        raise CaptionsEdited(
            f"{len(plan.edited)} caption sidecar(s) were edited after the manifest was written and would be "
            f"overwritten: {_listed(plan.edited, 10)}",
            hint=f"nothing was written. Keep the edits: `--from-files` (and rebuild the manifest, `loraprep "
                 f"manifest {base}`, to train them); or replace them with the frozen captions: `--from-manifest` "
                 f"(journalled; `loraprep captions undo {base}` reverts)",
        )
    writes = plan.writes + (plan.edited_writes if prefer == "manifest" else [])
    notes = []
    if plan.edited and prefer == "files":
        notes.append(f"kept {len(plan.edited)} hand-edited caption(s) as they are (--from-files): "
                     f"{_listed(plan.edited)}; rebuild the manifest to train them")
    written, changed = [], []
    if writes:
        entry = record_journal(base, f"export --format txt ({len(writes)} caption(s) from the manifest)",
                               [FileState(w.caption, w.before, w.after) for w in writes])
        for w in writes:
            if write_guarded(base, w.caption, w.before, w.after):
                written.append(base / w.caption)
            else:
                changed.append(w.caption)
        notes.append(f"journalled in {entry.relative_to(base)}: `loraprep captions undo {base}` reverts this export")
    if changed:
        notes.append(f"{len(changed)} sidecar(s) changed on disk during the export and were left as they are: "
                     f"{_listed(changed)}")
    unchanged = len(manifest.images) - len(writes) - (len(plan.edited) if prefer == "files" else 0)
    if unchanged:
        notes.append(f"{unchanged} sidecar(s) already held their frozen caption")
    return ExportResult("txt", written, notes)


def export_dataset(source: str | os.PathLike[str], fmt: str, *, out: str | os.PathLike[str] | None = None,
                   caption_extension: str | None = None, batch_size: int = 1,
                   prefer: Prefer | None = None) -> ExportResult:
    """Export a dataset folder's manifest (or a manifest file) to `fmt`.

    The manifest's images are verified first (present, unchanged, inside the dataset): exporting a
    manifest that no longer describes its files would hand another trainer the wrong data.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}'", hint=f"choose one of: {', '.join(FORMATS)}")
    if prefer not in (None, "manifest", "files"):
        raise UsageError(f"unknown caption preference '{prefer}'", hint="manifest or files")
    source = Path(source)
    manifest_file = source / "manifest.json" if source.is_dir() else source
    manifest = load_manifest(manifest_file)
    base = manifest_file.parent
    swept = sweep_leftovers(base)
    problems = image_problems(manifest, base)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  … and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ManifestError(f"the manifest is out of date with its images ({len(problems)} problem(s)); "
                            f"nothing was exported:\n  {shown}{more}",
                            hint=f"rebuild it with `loraprep manifest {base}`")
    if fmt == "kohya":
        result = export_kohya(manifest, base, Path(out) if out else base / "dataset_config.toml", batch_size=batch_size)
    elif fmt == "imagefolder":
        result = export_imagefolder(manifest, base, Path(out) if out else base / "metadata.jsonl")
    else:
        extension = check_caption_extension(caption_extension or manifest.caption_extension)
        result = export_txt(manifest, base, extension, prefer=prefer)
    if swept:
        result.notes.insert(0, swept)
    return result
