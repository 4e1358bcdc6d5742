"""Model weight files read and written one tensor at a time, so multi-GB checkpoints never sit in
memory whole (extract and bake hold one module's weights at a time, not two or three models).

Reading a `.safetensors` file parses its header and then reads each tensor's bytes with a plain
positioned read: nothing is memory-mapped, so a pass over a 7 GB checkpoint does not leave 7 GB of
mapped pages counted against the process. Pickle checkpoints (`.ckpt`/`.bin`) are read with
`torch.load(weights_only=True, mmap=True)`, and only when the caller allows pickles.

Writing builds the safetensors header first (every tensor's dtype and shape is known up front) and
then streams each tensor's bytes, inside one atomic write: a failure leaves no file behind.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from prep.atomic import atomic_open
from prep.errors import ModelMismatch, UsageError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
USER_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Entry:
    """One tensor of a file: its dtype and shape as stored."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]


class TensorFile:
    """The tensors of one weight file, read on demand."""

    def __init__(self, path: Path, entries: dict[str, Entry], metadata: dict[str, str] | None) -> None:
        self.path = path
        self.entries = entries
        self.metadata = metadata

    def read(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def raw(self, key: str) -> bytes:
        """The tensor's bytes exactly as stored (little-endian, row-major)."""
        return tensor_bytes(self.read(key))


class SafetensorsFile(TensorFile):
    def __init__(self, path: Path) -> None:
        try:
            with path.open("rb") as handle:
                size = struct.unpack("<Q", handle.read(8))[0]
                header = json.loads(handle.read(size))
        except (OSError, struct.error, ValueError) as exc:
            raise ModelMismatch(f"{path} is not a readable safetensors file ({exc})") from exc
        metadata = header.pop("__metadata__", None)
        self._offsets: dict[str, tuple[int, int]] = {}
        entries: dict[str, Entry] = {}
        try:
            for key, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
                entries[key] = Entry(key, DTYPES[info["dtype"]], tuple(info["shape"]))
                start, end = info["data_offsets"]
                self._offsets[key] = (8 + size + start, end - start)
        except (KeyError, TypeError) as exc:
            raise ModelMismatch(f"{path} has a malformed safetensors header ({exc})") from exc
        super().__init__(path, entries, metadata)

    def raw(self, key: str) -> bytes:
        start, length = self._offsets[key]
        with self.path.open("rb") as handle:
            handle.seek(start)
            data = handle.read(length)
        if len(data) != length:
            raise ModelMismatch(f"{self.path} is truncated (tensor {key} ends past the end of the file)")
        return data

    def read(self, key: str) -> torch.Tensor:
        entry = self.entries[key]
        data = bytearray(self.raw(key))
        if not data:
            return torch.empty(entry.shape, dtype=entry.dtype)
        return torch.frombuffer(data, dtype=entry.dtype).reshape(entry.shape)


class PickleFile(TensorFile):
    def __init__(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise ModelMismatch(f"{path} could not be loaded with weights_only=True: {exc}",
                                hint="it may contain code objects; convert it to safetensors in a sandbox") from exc
        while isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        self._state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
        entries = {k: Entry(k, v.dtype, tuple(v.shape)) for k, v in self._state.items()}
        super().__init__(path, entries, None)

    def read(self, key: str) -> torch.Tensor:
        return self._state[key]


def open_tensor_file(path: Path, *, allow_pickle: bool) -> TensorFile:
    """A `.safetensors` file, or a pickle checkpoint when `allow_pickle` (the project's rule: pickles
    can run code when loaded, so the user must say they trust the file)."""
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UsageError(f"{path.name} is a pickle checkpoint ({path.suffix}), which can run code when loaded",
                             hint="use a .safetensors version of the model, or pass --allow-pickle if you trust "
                                  "its source (it is then loaded with torch.load(weights_only=True))")
        return PickleFile(path)
    raise UsageError(f"{path.name}: unknown model file type '{path.suffix}'",
                     hint="pass a .safetensors checkpoint or a diffusers folder")


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


@dataclass(frozen=True)
class OutTensor:
    """One tensor to write: its header entry and how to get its bytes when its turn comes."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], bytes]

    @property
    def nbytes(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count * torch.empty((), dtype=self.dtype).element_size()


def write_streamed(path: Path, tensors: Iterable[OutTensor], metadata: Mapping[str, str] | None = None,
                   *, on_tensor: Callable[[str], None] | None = None) -> int:
    """Write a safetensors file tensor by tensor (in the given order), atomically; returns its size."""
    items = list(tensors)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for item in items:
        header[item.key] = {"dtype": DTYPE_NAMES[item.dtype], "shape": list(item.shape),
                            "data_offsets": [offset, offset + item.nbytes]}
        offset += item.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for item in items:
            data = item.produce()
            if len(data) != item.nbytes:
                raise ValueError(f"tensor {item.key}: {len(data)} bytes produced, {item.nbytes} expected")
            handle.write(data)
            if on_tensor is not None:
                on_tensor(item.key)
    return 8 + len(blob) + offset
