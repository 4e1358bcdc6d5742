"""Hugging Face datasets as input: a `save_to_disk` folder, an imagefolder or parquet folder, or a
Hub dataset name, unpacked into a plain folder of images and caption sidecars that the rest of
loraprep (scan, manifest, prep) reads like any other.

Why unpack instead of reading rows in place: every later step, and the manifest's hashes, work on
files; a folder of images with `.txt` sidecars is also what people edit by hand. Encoded image
bytes are written as they are (never decoded and re-encoded), and a file that already holds the
same bytes is left alone, so unpacking twice writes nothing. The `datasets` library is imported
only here, only when such a source is given (`pip install 'loraprep[datasets]'`).

Column names and defaults follow diffusers' train_text_to_image_lora.py: `--image-column image`,
`--caption-column text`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.atomic import write_bytes_atomic, write_text_atomic
from prep.errors import LoraprepError, UsageError
from prep.progress import SILENT, Reporter
from prep.records import Drop

IMAGE_COLUMN = "image"
CAPTION_COLUMN = "text"
STEP = "dataset"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# leading bytes → the extension the file is written with (what scan and PIL recognise)
_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
          (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


@dataclass(frozen=True)
class DatasetSource:
    """Where rows come from: kind is save_to_disk, imagefolder, parquet or hub."""

    kind: str
    location: str


@dataclass
class Unpacked:
    folder: Path
    written: int = 0
    unchanged: int = 0
    dropped: list[Drop] = field(default_factory=list)
    columns: tuple[str, ...] = ()


def dataset_source(src: str | os.PathLike[str]) -> DatasetSource | None:
    """The kind of Hugging Face dataset `src` is, or None for an ordinary folder of images.

    A folder saved with `save_to_disk` holds dataset_info.json + state.json (a DatasetDict:
    dataset_dict.json); an imagefolder holds metadata.jsonl/.csv beside its images; a parquet folder
    holds .parquet files; a `owner/name` that is not a local path is a Hub dataset. A folder with a
    manifest.json is a loraprep dataset, whatever else it holds.
    """
    text = str(src)
    path = Path(text)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file()
                                                       and (path / "dataset_info.json").is_file()):
            return DatasetSource("save_to_disk", text)
        if (path / "manifest.json").is_file():  # a loraprep dataset (`export --format imagefolder` wrote its metadata)
            return None
        if (path / "metadata.jsonl").is_file() or (path / "metadata.csv").is_file():
            return DatasetSource("imagefolder", text)
        if any(path.rglob("*.parquet")):
            return DatasetSource("parquet", text)
        return None
    if not path.exists() and _HUB_NAME.match(text):
        return DatasetSource("hub", text)
    return None


def default_unpack_folder(source: DatasetSource) -> Path:
    """Beside a local dataset (`NAME-images`), or `owner--name` in the working folder for a Hub name."""
    if source.kind == "hub":
        return Path(source.location.replace("/", "--"))
    folder = Path(source.location).resolve()
    return folder.with_name(folder.name + "-images")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UsageError("reading a Hugging Face dataset needs the datasets package",
                         hint="pip install 'loraprep[datasets]'") from None
    return datasets


def load_rows(source: DatasetSource) -> Any:
    """The dataset's rows (its `train` split, else its first), images left encoded."""
    datasets = _datasets()
    try:
        if source.kind == "save_to_disk":
            loaded = datasets.load_from_disk(source.location)
        elif source.kind == "imagefolder":
            loaded = datasets.load_dataset("imagefolder", data_dir=source.location)
        elif source.kind == "parquet":
            files = sorted(str(p) for p in Path(source.location).rglob("*.parquet"))
            loaded = datasets.load_dataset("parquet", data_files=files)
        else:
            loaded = datasets.load_dataset(source.location)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; each means "cannot read it"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoraprepError(f"cannot read the dataset {source.location}: {reason}",
                            hint="check the name or folder; a Hub name needs the network (unset HF_HUB_OFFLINE)") from None
    if isinstance(loaded, dict):  # a DatasetDict
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    return loaded


def check_columns(columns: Iterable[str], image_column: str, caption_column: str) -> None:
    """A column that does not exist is a usage error naming those that do (as diffusers' example says it)."""
    columns = list(columns)
    for option, name in (("--image-column", image_column), ("--caption-column", caption_column)):
        if name not in columns:
            raise UsageError(f"{option} '{name}' is not a column of this dataset",
                             hint=f"its columns: {', '.join(columns)}")


def image_bytes(value: Any, base: Path | None) -> bytes:
    """An image cell's encoded bytes: inline bytes, or the file its path names. Raises ValueError with the reason."""
    if value is None:
        raise ValueError("no image")
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, dict) and value.get("bytes"):
        data = bytes(value["bytes"])
    elif isinstance(value, (dict, str)):
        name = value.get("path") if isinstance(value, dict) else value
        if not name:
            raise ValueError("no image")
        path = Path(name) if Path(name).is_absolute() or base is None else base / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"image file {name} cannot be read ({exc.strerror or exc})") from None
    else:
        raise ValueError(f"the image column holds {type(value).__name__}, not an encoded image")
    if not data:
        raise ValueError("empty image bytes")
    return data


def image_extension(data: bytes) -> str:
    """The extension for encoded image bytes, from their signature; ValueError when they are no image."""
    for magic, extension in _MAGIC:
        if data.startswith(magic):
            return extension
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    raise ValueError("the bytes are not an image loraprep reads (PNG, JPEG, WebP, GIF, BMP, TIFF)")


def _rows(rows: Any, image_column: str, caption_column: str) -> Iterator[tuple[int, Any, Any]]:
    """(index, image cell, caption) straight from the Arrow table: images stay encoded ({bytes, path}
    or bytes), as datasets stores them, and no datasets transform (or its fingerprinting) runs."""
    table = rows.data.table.select([image_column, caption_column])
    index = 0
    for batch in table.to_batches(max_chunksize=64):
        images, captions = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        for image, caption in zip(images, captions, strict=True):
            yield index, image, caption
            index += 1


def unpack(source: DatasetSource, dest: str | os.PathLike[str], *, image_column: str = IMAGE_COLUMN,
           caption_column: str = CAPTION_COLUMN, reporter: Reporter = SILENT) -> Unpacked:
    """Write every row as DEST/NNNNNN.EXT (its encoded bytes as they are) with NNNNNN.txt holding its
    caption. Rows without a readable image or a caption are dropped with the reason."""
    rows = load_rows(source)
    check_columns(rows.column_names, image_column, caption_column)
    base = Path(source.location) if source.kind != "hub" else None
    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    result = Unpacked(folder, columns=tuple(rows.column_names))
    width = max(6, len(str(len(rows))))
    with reporter.task("unpacking", len(rows)) as advance:
        for index, image, caption in _rows(rows, image_column, caption_column):
            name = f"{index:0{width}d}"
            try:
                data = image_bytes(image, base)
                extension = image_extension(data)
                if caption is None or not isinstance(caption, str):
                    raise ValueError(f"no caption in column '{caption_column}'")
            except ValueError as exc:
                result.dropped.append(Drop(f"row {index}", STEP, str(exc)))
                advance(1)
                continue
            _write_row(folder, name + extension, data, name + ".txt", caption.strip() + "\n", result)
            advance(1)
    return result


def _write_row(folder: Path, image_name: str, data: bytes, caption_name: str, caption: str, result: Unpacked) -> None:
    image_path, caption_path = folder / image_name, folder / caption_name
    same = image_path.is_file() and image_path.read_bytes() == data
    if not same:
        write_bytes_atomic(image_path, data)
    if not (caption_path.is_file() and caption_path.read_text(encoding="utf-8") == caption):
        write_text_atomic(caption_path, caption)
        same = False
    if same:
        result.unchanged += 1
    else:
        result.written += 1
