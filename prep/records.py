"""The contract between prep and train: image records and the manifest (schema `loraprep.manifest/1`).

Records are immutable; steps return new ones with `evolve`. Paths in a manifest are POSIX paths
relative to the manifest's own folder, so a dataset folder can be moved or copied as a whole.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.atomic import write_text_atomic
from prep.errors import ManifestError

SCHEMA = "loraprep.manifest/1"
SCHEMA_FAMILY = "loraprep.manifest/"
SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).parent / "schema" / "manifest-1.schema.json"
DEFAULT_CAPTION_EXTENSION = ".txt"

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


def _box(value: Any) -> Box:
    x0, y0, x1, y1 = (int(v) for v in value)
    return (x0, y0, x1, y1)


@dataclass(frozen=True)
class Face:
    box: Box
    score: float
    detector: str

    def to_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "score": round(float(self.score), 4), "detector": self.detector}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Face:
        return cls(_box(data["box"]), float(data["score"]), str(data["detector"]))


@dataclass(frozen=True)
class Source:
    """Where a derived image (e.g. a crop) came from: the original file, its hash, the box cut."""

    path: str
    sha256: str
    box: Box | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "sha256": self.sha256}
        if self.box is not None:
            data["box"] = list(self.box)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Source:
        box = data.get("box")
        return cls(str(data["path"]), str(data["sha256"]), _box(box) if box is not None else None)


@dataclass(frozen=True)
class MaskRef:
    """An image's subject mask sidecar (prep.subjectmask): where it is, its hash, how much it covers."""

    path: str  # relative to the manifest's folder, like the image's
    sha256: str
    coverage: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "sha256": self.sha256}
        if self.coverage is not None:
            data["coverage"] = round(float(self.coverage), 4)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskRef:
        share = data.get("coverage")
        return cls(str(data["path"]), str(data["sha256"]), float(share) if share is not None else None)


@dataclass(frozen=True)
class Tags:
    """Tagger output kept with its scores: general and character tags, and the rating label."""

    general: dict[str, float] = field(default_factory=dict)
    character: dict[str, float] = field(default_factory=dict)
    rating: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"general": {k: round(float(v), 4) for k, v in self.general.items()},
                "character": {k: round(float(v), 4) for k, v in self.character.items()},
                "rating": self.rating}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tags:
        # JSON already gives str keys and number values; copying is enough (100k records load in ~1 s)
        return cls(dict(data.get("general") or {}), dict(data.get("character") or {}), data.get("rating"))


@dataclass(frozen=True)
class ImageRecord:
    """One training image. `faces` is None when no detector ran, () when one ran and found none."""

    path: str
    sha256: str
    width: int
    height: int
    caption: str | None = None
    caption_sha256: str | None = None
    source: Source | None = None
    faces: tuple[Face, ...] | None = None
    tags: Tags | None = None
    bucket: tuple[int, int] | None = None
    subset: str = "main"
    extra: dict[str, Any] = field(default_factory=dict)
    mask: MaskRef | None = None  # subject mask sidecar (optional: manifests without it stay valid)

    def evolve(self, **changes: Any) -> ImageRecord:
        return dataclasses.replace(self, **changes)

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "sha256": self.sha256,
                                "width": self.width, "height": self.height}
        if self.source is not None:
            data["source"] = self.source.to_dict()
        if self.faces is not None:
            data["faces"] = [f.to_dict() for f in self.faces]
        data["caption"] = self.caption
        data["caption_sha256"] = self.caption_sha256
        if self.tags is not None:
            data["tags"] = self.tags.to_dict()
        data["bucket"] = list(self.bucket) if self.bucket is not None else None
        data["subset"] = self.subset
        if self.extra:
            data["extra"] = self.extra
        if self.mask is not None:
            data["mask"] = self.mask.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        faces = data.get("faces")
        bucket = data.get("bucket")
        return cls(
            path=str(data["path"]), sha256=str(data["sha256"]),
            width=int(data["width"]), height=int(data["height"]),
            caption=data.get("caption"), caption_sha256=data.get("caption_sha256"),
            source=Source.from_dict(data["source"]) if data.get("source") else None,
            faces=tuple(Face.from_dict(f) for f in faces) if faces is not None else None,
            tags=Tags.from_dict(data["tags"]) if data.get("tags") else None,
            bucket=(int(bucket[0]), int(bucket[1])) if bucket is not None else None,
            subset=str(data.get("subset", "main")),
            extra=dict(data.get("extra") or {}),
            mask=MaskRef.from_dict(data["mask"]) if data.get("mask") else None,
        )


@dataclass(frozen=True)
class Drop:
    """An image a step left out, and why. Nothing vanishes silently."""

    path: str
    step: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "step": self.step, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Drop:
        return cls(str(data["path"]), str(data["step"]), str(data["reason"]))


@dataclass(frozen=True)
class Subset:
    """A group of images trained with the same repeats and caption settings (kohya's "subset")."""

    name: str = "main"
    repeats: int = 1
    is_reg: bool = False
    class_tokens: str | None = None
    keep_tokens: int | None = None  # None: the manifest's keep_tokens
    shuffle_caption: bool = True

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "repeats": self.repeats, "is_reg": self.is_reg,
                                "class_tokens": self.class_tokens, "shuffle_caption": self.shuffle_caption}
        if self.keep_tokens is not None:
            data["keep_tokens"] = self.keep_tokens
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subset:
        keep = data.get("keep_tokens")
        return cls(str(data["name"]), int(data.get("repeats", 1)), bool(data.get("is_reg", False)),
                   data.get("class_tokens"), int(keep) if keep is not None else None,
                   bool(data.get("shuffle_caption", True)))


@dataclass(frozen=True)
class BucketSettings:
    resolution: tuple[int, int] = (512, 512)
    step: int = 64
    min: int = 256
    max: int = 1024
    no_upscale: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"resolution": list(self.resolution), "step": self.step, "min": self.min,
                "max": self.max, "no_upscale": self.no_upscale}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BucketSettings:
        res = data.get("resolution", [512, 512])
        res = (int(res), int(res)) if isinstance(res, int) else (int(res[0]), int(res[1]))
        return cls(res, int(data.get("step", 64)), int(data.get("min", 256)),
                   int(data.get("max", 1024)), bool(data.get("no_upscale", False)))


@dataclass(frozen=True)
class Manifest:
    images: tuple[ImageRecord, ...]
    subsets: tuple[Subset, ...] = (Subset(),)
    buckets: BucketSettings | None = None
    caption_extension: str = DEFAULT_CAPTION_EXTENSION
    trigger: str | None = None
    keep_tokens: int = 0
    dropped: tuple[Drop, ...] = ()
    tool: str = ""
    schema: str = SCHEMA

    def evolve(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def subset(self, name: str) -> Subset:
        for subset in self.subsets:
            if subset.name == name:
                return subset
        raise ManifestError(f"manifest has no subset named '{name}'")

    def to_dict(self) -> dict[str, Any]:
        from prep import __version__

        return {
            "schema": SCHEMA,
            "tool": self.tool or f"loraprep {__version__}",
            "caption_extension": self.caption_extension,
            "trigger": self.trigger,
            "keep_tokens": self.keep_tokens,
            "buckets": self.buckets.to_dict() if self.buckets else None,
            "subsets": [s.to_dict() for s in self.subsets],
            "images": [r.to_dict() for r in self.images],
            "dropped": [d.to_dict() for d in self.dropped],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        check_schema_version(data)
        try:
            manifest = cls(
                images=tuple(ImageRecord.from_dict(r) for r in data["images"]),
                subsets=tuple(Subset.from_dict(s) for s in data.get("subsets") or [{"name": "main"}]),
                buckets=BucketSettings.from_dict(data["buckets"]) if data.get("buckets") else None,
                caption_extension=str(data.get("caption_extension", DEFAULT_CAPTION_EXTENSION)),
                trigger=data.get("trigger"),
                keep_tokens=int(data.get("keep_tokens") or 0),
                dropped=tuple(Drop.from_dict(d) for d in data.get("dropped", [])),
                tool=str(data.get("tool", "")),
                schema=str(data["schema"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ManifestError(f"manifest is malformed: {type(exc).__name__}: {exc}",
                                hint="run `loraprep manifest --check FILE` for a full schema report") from exc
        check_paths(manifest)
        names = {s.name for s in manifest.subsets}
        for record in manifest.images:
            if record.subset not in names:
                raise ManifestError(f"image '{record.path}' names subset '{record.subset}', which is not declared")
        return manifest


def check_schema_version(data: Any) -> None:
    if not isinstance(data, dict) or not isinstance(data.get("schema"), str):
        raise ManifestError("not a loraprep manifest (no 'schema' field)")
    schema = data["schema"]
    if not schema.startswith(SCHEMA_FAMILY):
        raise ManifestError(f"not a loraprep manifest (schema '{schema}')")
    try:
        version = int(schema[len(SCHEMA_FAMILY):])
    except ValueError:
        raise ManifestError(f"unrecognised manifest schema '{schema}'") from None
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"manifest schema '{schema}' is newer than this loraprep understands ({SCHEMA})",
            hint="upgrade loraprep (pip install -U loraprep), or rebuild the manifest with this version",
        )


def is_safe_relative(path: str) -> bool:
    """True for a relative POSIX path that stays inside its base folder (by its text; symlinks are
    checked against the disk by `paths_outside`). A NUL byte can name no file, so it is refused too."""
    if not path or "\\" in path or "\0" in path or path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return False
    return ".." not in path.split("/")


_OUTSIDE_HINT = ("loraprep never reads or writes outside a dataset: copy those files into it, "
                 "or remove the link, and rebuild with `loraprep manifest`")


def is_within(real: str, real_base: str) -> bool:
    """Whether the resolved path `real` is `real_base` or lies under it (both already realpath'd)."""
    return real == real_base or real.startswith(real_base.rstrip(os.sep) + os.sep)


def resolve_inside(base: str | os.PathLike[str], rel: str) -> Path:
    """`base/rel` once every symlink on the way is resolved; ManifestError when that lands outside
    `base` (itself resolved, so a dataset folder that is a symlink is fine)."""
    real_base = os.path.realpath(base)
    real = os.path.realpath(os.path.join(real_base, rel))
    if not is_within(real, real_base):
        raise ManifestError(
            f"'{rel}' resolves to {real}, outside the dataset folder {real_base} (through a symlink)",
            hint=_OUTSIDE_HINT,
        )
    return Path(real)


def paths_outside(manifest: Manifest, base: str | os.PathLike[str]) -> list[str]:
    """Image paths that a symlink (a folder or the file itself) carries outside `base`.

    Each folder is resolved and listed once (a listing says which entries are symlinks without a
    stat per file), so 100,000 records check in a few hundredths of a second.
    """
    real_base = os.path.realpath(base)
    folders: dict[str, tuple[str, frozenset[str]] | None] = {}
    outside = []
    for record in manifest.images:
        parent, _, name = record.path.rpartition("/")
        if parent not in folders:
            real_parent = os.path.realpath(os.path.join(real_base, parent))
            folders[parent] = (real_parent, _symlinks_in(real_parent)) if is_within(real_parent, real_base) else None
        folder = folders[parent]
        if folder is None:
            outside.append(record.path)
        elif name in folder[1] and not is_within(os.path.realpath(os.path.join(folder[0], name)), real_base):
            outside.append(record.path)
    return outside


def _symlinks_in(folder: str) -> frozenset[str]:
    try:
        with os.scandir(folder) as entries:
            return frozenset(entry.name for entry in entries if entry.is_symlink())
    except OSError:
        return frozenset()


def check_inside(manifest: Manifest, base: str | os.PathLike[str]) -> None:
    """Refuse a manifest any of whose images resolves outside its folder (issue: a symlinked
    folder inside the dataset must not let training or exports read or write elsewhere)."""
    outside = paths_outside(manifest, base)
    if outside:
        shown = ", ".join(outside[:5]) + (f" … and {len(outside) - 5} more" if len(outside) > 5 else "")
        raise ManifestError(
            f"{len(outside)} image path(s) resolve outside the dataset folder {os.path.realpath(base)} "
            f"through a symlink: {shown}",
            hint=_OUTSIDE_HINT,
        )


def check_paths(manifest: Manifest) -> None:
    """Refuse manifests whose image paths escape their folder: a manifest must never read elsewhere."""
    for record in manifest.images:
        if not is_safe_relative(record.path):
            raise ManifestError(
                f"manifest image path {record.path!r} escapes the manifest's folder",
                hint="image paths must be relative and inside the dataset folder; rebuild with `loraprep manifest`",
            )
        if record.mask is not None and not is_safe_relative(record.mask.path):
            raise ManifestError(f"mask path {record.mask.path!r} of {record.path!r} escapes the manifest's folder",
                                hint="rebuild the manifest with `loraprep manifest`")
        if record.source is not None and posixpath.isabs(record.source.path):
            raise ManifestError(f"source path '{record.source.path}' is absolute; manifests hold relative paths only")


def relative_to_base(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> str:
    """`path` as a POSIX path relative to `base` (may climb with '..'; used for provenance only)."""
    return Path(os.path.relpath(Path(path).absolute(), Path(base).absolute())).as_posix()


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read, validate and check a manifest: its paths must stay inside its folder, also once
    symlinks on disk are resolved."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    # A 100k-image manifest is millions of small objects; pausing the cyclic GC (nothing here forms
    # cycles) halves the load time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_manifest(path)
    finally:
        if gc_was_enabled:
            gc.enable()


def _load_manifest(path: Path) -> Manifest:
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest here", hint="create one with `loraprep manifest DIR`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    except IsADirectoryError:
        raise ManifestError(f"{path} is a folder, not a manifest file") from None
    manifest = Manifest.from_dict(data)
    check_inside(manifest, path.parent)
    return manifest


def save_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> None:
    write_text_atomic(path, json.dumps(manifest.to_dict(), indent=1, ensure_ascii=False) + "\n")


def schema_errors(data: Any) -> list[str]:
    """Validate a manifest document against the published JSON Schema; returns readable errors."""
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        errors.append(f"{where}: {error.message}")
    return errors
