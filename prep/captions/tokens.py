"""Caption length in CLIP tokens, the unit the text encoder truncates at (75 per chunk).

Three counters, best first: the `instant-clip-tokenizer` package (the real CLIP BPE vocabulary
compiled into a small native wheel: exact, fast, no model download); CLIP's own tokenisation rules
run over the BPE merges of a local `tokenizer/` folder (a base model's, or `--tokenizer`); and,
when neither is available, an estimate that is always labelled as one ("≈").
"""

from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prep.errors import ModelMismatch

ESTIMATE_MARK = "≈"

# CLIP splits text into words, single digits and punctuation runs before BPE.
_CLIP_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                 r"""[^\s\p{L}\p{N}]+""")
_FALLBACK_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+"""


class TokenCounter(Protocol):
    name: str
    exact: bool

    def count(self, text: str) -> int: ...


def clean_text(text: str) -> str:
    """The normalisation of transformers' CLIP tokenizer (what SD trainers use): NFC, whitespace, lowercase."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().lower()


@functools.lru_cache(maxsize=1)
def _word_pattern() -> re.Pattern[str]:
    try:
        import regex  # the pattern needs \p{L}; transformers depends on `regex`, so it is present
    except ImportError:
        return re.compile(_FALLBACK_PATTERN, re.IGNORECASE)
    return regex.compile(_CLIP_PATTERN, regex.IGNORECASE)  # type: ignore[return-value]


@dataclass
class InstantClipCounter:
    """The real CLIP tokenizer from the `instant-clip-tokenizer` wheel (vocabulary built in)."""

    name: str = "CLIP BPE (instant-clip-tokenizer)"
    exact: bool = True
    _tokenizer: object = None

    def __post_init__(self) -> None:
        import instant_clip_tokenizer

        self._tokenizer = instant_clip_tokenizer.Tokenizer()

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(clean_text(text)))  # type: ignore[attr-defined]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def read_merges(folder: Path) -> list[tuple[str, str]]:
    """BPE merges in rank order from `merges.txt` (+ vocab.json) or a fast-tokenizer `tokenizer.json`."""
    if (folder / "merges.txt").is_file() and (folder / "vocab.json").is_file():
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        pairs = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    elif (folder / "tokenizer.json").is_file():
        model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("model", {})
        pairs = [tuple(m.split(" ") if isinstance(m, str) else m) for m in model.get("merges", [])]
    else:
        pairs = []
    if not pairs:
        raise ModelMismatch(f"{folder} has no CLIP BPE tokenizer (vocab.json + merges.txt, or tokenizer.json)",
                            hint="pass the `tokenizer/` folder of a Stable Diffusion base model")
    return [p for p in pairs if len(p) == 2]  # type: ignore[misc]


@dataclass
class ClipBpeCounter:
    """CLIP's tokenisation rules over the BPE merges of a local tokenizer folder."""

    folder: Path
    name: str = ""
    exact: bool = True
    _ranks: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    _cache: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._ranks = {pair: rank for rank, pair in enumerate(read_merges(self.folder))}
        self._bytes = _bytes_to_unicode()
        self.name = self.name or f"CLIP BPE ({self.folder})"

    def _bpe_length(self, word: str) -> int:
        """Number of BPE symbols `word` merges down to (CLIP marks a word's end with `</w>`)."""
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            ranked = [(self._ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
            rank, index = min(ranked)
            if rank == math.inf:
                break
            first, second = symbols[index], symbols[index + 1]
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return len(symbols)

    def count(self, text: str) -> int:
        total = 0
        for piece in _word_pattern().findall(clean_text(text)):
            if piece not in self._cache:
                word = "".join(self._bytes[b] for b in piece.encode("utf-8"))
                self._cache[piece] = self._bpe_length(word)
            total += self._cache[piece]
        return total


@dataclass(frozen=True)
class EstimateCounter:
    """No CLIP vocabulary available: words, digits and punctuation runs, long words split by length.

    It tends to undercount rare words (real BPE splits them finer); results are marked "≈".
    """

    name: str = "estimate (no CLIP vocabulary found)"
    exact: bool = False

    def count(self, text: str) -> int:
        return sum(1 + (len(piece) - 1) // 7 for piece in _word_pattern().findall(clean_text(text)))


class CaptionLengths:
    """Caption lengths counted tag by tag, each distinct tag tokenised once.

    CLIP's pre-tokenizer breaks text at every comma, so when each tag starts and ends with a letter
    or digit, a caption's tokens are its tags' tokens plus one per comma: exact, and 10× faster on
    a dataset where the same few thousand tags recur. Anything else is counted whole.
    """

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self._tags: dict[str, int] = {}

    def __call__(self, text: str, tags: Sequence[str]) -> int:
        if not tags or text.count(",") != len(tags) - 1:
            return self.counter.count(text) if text else 0
        total = len(tags) - 1
        cache = self._tags
        for tag in tags:
            n = cache.get(tag)
            if n is None:
                if not (tag[0].isalnum() and tag[-1].isalnum()):
                    return self.counter.count(text)
                n = cache[tag] = self.counter.count(tag)
            total += n
        return total


def _local_tokenizer_folders(models: Path) -> list[Path]:
    """`tokenizer/` folders of base models already in models_cache/ (two levels deep at most)."""
    if not models.is_dir():
        return []
    found = [p for pattern in ("*/tokenizer/", "*/*/tokenizer/") for p in sorted(models.glob(pattern))]
    return [p for p in found if (p / "merges.txt").is_file() or (p / "tokenizer.json").is_file()]


def load_token_counter(tokenizer: Path | None = None, *, models: Path | None = None,
                       use_package: bool = True) -> TokenCounter:
    """The best token counter available: `tokenizer` if given, the package, a cached model, else ≈."""
    if tokenizer is not None:
        return ClipBpeCounter(Path(tokenizer))
    if use_package:
        try:
            return InstantClipCounter()
        except ImportError:
            pass
    if models is None:
        from prep.models import cache_dir

        models = cache_dir()
    for folder in _local_tokenizer_folders(models):
        return ClipBpeCounter(folder)
    return EstimateCounter()

