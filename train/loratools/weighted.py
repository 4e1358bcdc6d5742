"""`FILE[:WEIGHT]`, the one spelling of a weighted LoRA (`lora merge --lora`, `train --base-weights`).
Light on purpose: config validation imports it."""

from __future__ import annotations

from pathlib import Path

from prep.errors import UsageError


def parse_weighted(text: str) -> tuple[Path, float]:
    """`a.safetensors:0.7` → (a.safetensors, 0.7); no `:WEIGHT` (or a `:` that is part of the path,
    such as a Windows drive) → weight 1."""
    path, sep, tail = str(text).rpartition(":")
    if sep and path:
        try:
            return Path(path), float(tail)
        except ValueError:
            if "/" not in tail and "\\" not in tail:
                raise UsageError(f"'{text}': the weight after ':' is not a number",
                                 hint="write FILE or FILE:WEIGHT, e.g. style.safetensors:0.6") from None
    if not str(text).strip():
        raise UsageError("an empty LoRA file name", hint="write FILE or FILE:WEIGHT")
    return Path(text), 1.0
