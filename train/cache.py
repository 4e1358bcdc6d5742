"""Latent and text-encoder output caches, keyed by everything that shaped the cached tensor.

Why content keys instead of invalidation logic: a latent depends on the image bytes (sha256), how
it was cut from its source (crop box), how it was placed in its bucket (resize + trim), the flip, and
the VAE. Put all of that in the key and a stale entry can never be found: editing one crop or one
caption changes exactly that entry's key, and nothing else is recomputed.

Where cached tensors live (one rule, for latents and text-encoder outputs alike): an entry is a
host (CPU) copy, in memory or in a safetensors file, never a tensor on the training device. Everything
the cache hands out is that host copy, whether it was just computed (a miss) or found (a hit), so a
batch assembled from hits and misses is on one device; the Batcher then moves the whole batch to the
training device once. Encoders run wherever their weights are and their outputs come straight here.

Disk entries are safetensors files written atomically, so a killed run leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.atomic import write_bytes_atomic
from prep.records import ImageRecord

KEY_VERSION = 1


def _digest(parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def latent_key(record: ImageRecord, *, resized: tuple[int, int], trim: tuple[int, int, int, int],
               bucket: tuple[int, int], flip: bool, vae_id: str, mask: str | None = None) -> str:
    """Identity of one cached latent: image hash + crop box + placement + bucket + flip + VAE, and
    the loss mask stored with it (its sidecar's hash, or `alpha`) when the run masks the loss."""
    crop = list(record.source.box) if record.source is not None and record.source.box is not None else None
    parts = {"v": KEY_VERSION, "kind": "latent", "sha256": record.sha256, "crop": crop, "resized": list(resized),
             "trim": list(trim), "bucket": list(bucket), "flip": bool(flip), "vae": vae_id}
    return _digest(parts if mask is None else {**parts, "mask": mask})


def text_key(caption: str, *, encoder_id: str) -> str:
    """Identity of one cached text-encoder output: the exact caption text + the encoder (incl. clip skip)."""
    return _digest({"v": KEY_VERSION, "kind": "text", "caption": caption, "encoder": encoder_id})


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


@dataclass
class TensorCache:
    """A dict of tensors per key, held in memory, optionally backed by a folder of safetensors files.

    On a miss `get_or_compute(key, fn)` runs `fn()` once and keeps its result. Entries are host (CPU)
    copies in their own dtype, and every lookup, hit or miss, returns the host copy (module docstring).
    """

    directory: Path | None = None
    keep_in_memory: bool = True
    stats: CacheStats = field(default_factory=CacheStats)
    _memory: dict[str, dict[str, Any]] = field(default_factory=dict)

    def path_for(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._memory:
            return self._memory[key]
        if self.directory is not None:
            path = self.path_for(key)
            if path.is_file():
                from safetensors.torch import load_file

                try:
                    tensors = load_file(path)
                except Exception:  # a damaged entry is recomputed, never trusted
                    return None
                if self.keep_in_memory:
                    self._memory[key] = tensors
                return tensors
        return None

    def contains(self, key: str) -> bool:
        """Whether an entry exists, without reading it (a damaged file still counts; `get` then misses)."""
        return key in self._memory or (self.directory is not None and self.path_for(key).is_file())

    def put(self, key: str, tensors: dict[str, Any]) -> dict[str, Any]:
        """Keep a host copy of `tensors` (wherever they were computed) and return that copy."""
        stored = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        if self.keep_in_memory:
            self._memory[key] = stored
        if self.directory is not None:
            from safetensors.torch import save

            write_bytes_atomic(self.path_for(key), save(stored))
        return stored

    def get_or_compute(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        found = self.get(key)
        if found is not None:
            self.stats.hits += 1
            return found
        self.stats.misses += 1
        return self.put(key, compute())

    def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        """Look several keys up at once (callers then compute the misses together), counting hits/misses."""
        found = [self.get(key) for key in keys]
        hits = sum(item is not None for item in found)
        self.stats.hits += hits
        self.stats.misses += len(keys) - hits
        return found

    def __len__(self) -> int:
        return len(self._memory)


def latent_cache(mode: str, directory: Path | None) -> TensorCache | None:
    """`off` → None; `memory` → in memory; `disk` → files under `directory` (kept across runs)."""
    if mode == "off":
        return None
    if mode == "disk":
        if directory is None:
            raise ValueError("a disk latent cache needs a folder")
        return TensorCache(directory=Path(directory) / "latents", keep_in_memory=False)
    return TensorCache()
