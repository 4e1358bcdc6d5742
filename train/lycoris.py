"""The LyCORIS file layout for one adapted module, and how peft's layers map to and from it.

A kohya/LyCORIS file stores each adapted module under its kohya name with per-algorithm suffixes:

- LoRA/LoCon: `lora_down.weight`, `lora_up.weight` — ΔW = (alpha/rank)·up·down
- LoHa: `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b` (+ `hada_t1`/`hada_t2` for Tucker convs)
  — ΔW = (alpha/rank)·(w1_a·w1_b) ⊙ (w2_a·w2_b), rank = w1_b's first dimension
- LoKr: `lokr_w1` or `lokr_w1_a`/`lokr_w1_b`, `lokr_w2` or `lokr_w2_a`/`lokr_w2_b` (+ `lokr_t2`)
  — ΔW = scale·w1 ⊗ w2, scale = alpha/rank when a half is a low-rank product (rank = its inner
  dimension, w2's first), else 1

plus `alpha` and, for weight-decomposed (DoRA) modules, `dora_scale`: [1, in, …] when the norm is
taken over input columns (what the WebUI and ComfyUI apply exactly), [out, 1, …] over output rows.
peft's LoHa/LoKr layers keep the same tensors under the same names, so reading and writing is a copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from prep.errors import ModelMismatch

SUFFIXES: dict[str, tuple[str, ...]] = {
    "lora": ("lora_down.weight", "lora_up.weight"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "ia3": ("weight", "on_input"),  # (IA)³: W ⊙ (1 + w) along outputs, or inputs when on_input (train.ia3)
}
COMMON = ("alpha", "dora_scale")
ALGO_LABELS = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "ia3": "(IA)³"}


def algo_of(keys: set[str], where: str) -> str:
    """The algorithm whose suffixes `keys` are; unknown suffixes (Tucker LoCon, IA³, norms…) are refused."""
    found = [algo for algo, suffixes in SUFFIXES.items() if keys & set(suffixes)]
    unknown = sorted(keys - set(COMMON) - {s for suffixes in SUFFIXES.values() for s in suffixes})
    if unknown or len(found) != 1:
        what = f"keys {', '.join(unknown)}" if unknown else "a mix of " + " and ".join(found) if found else "no weights"
        raise ModelMismatch(f"{where} has {what}, which loraprep cannot apply",
                            hint="loraprep reads LoRA/LoCon, LoHa and LoKr modules (kohya or LyCORIS files)")
    return found[0]


@dataclass(frozen=True)
class ModuleWeights:
    """One adapted module as stored: its algorithm, tensors by suffix (no `alpha`), and alpha."""

    algo: str
    tensors: Mapping[str, torch.Tensor]
    alpha: float | None

    @property
    def rank(self) -> int | None:
        """The inner dimension the clients divide alpha by; None for a full-matrix LoKr."""
        t = self.tensors
        if self.algo == "lora":
            return int(t["lora_down.weight"].shape[0])
        if self.algo == "loha":
            return int(t["hada_w1_b"].shape[0])
        for key in ("lokr_w2_b", "lokr_w1_b"):
            if key in t:
                return int(t[key].shape[0])
        return None

    @property
    def scale(self) -> float:
        """What ΔW is multiplied by, as the WebUI and ComfyUI compute it."""
        rank = self.rank
        return 1.0 if rank is None or self.alpha is None else self.alpha / rank

    @property
    def dora_axis(self) -> str | None:
        """"input" ([1, in, …]: column norm), "output" ([out, 1, …]: row norm) or None (no DoRA)."""
        scale = self.tensors.get("dora_scale")
        if scale is None:
            return None
        return "input" if scale.dim() >= 2 and scale.shape[0] == 1 and scale.shape[1] > 1 else "output"

    @property
    def shape(self) -> tuple[int, int]:
        """(outputs, inputs × kernel positions) of the weight this module changes."""
        t = self.tensors
        if self.algo == "lora":
            return int(t["lora_up.weight"].shape[0]), int(t["lora_down.weight"][0].numel())
        if self.algo == "loha":
            return _factor_shape(t, "hada_w1_a", "hada_w1_b", "hada_t1")
        out1, in1 = _lokr_half(t, "1")
        out2, in2 = (int(t["lokr_w2"].shape[0]), int(t["lokr_w2"][0].numel())) if "lokr_w2" in t else \
            _factor_shape(t, "lokr_w2_a", "lokr_w2_b", "lokr_t2")
        return out1 * out2, in1 * in2

    def fits(self, out: int, inputs: int) -> bool:
        """Whether this module changes an out × inputs weight ((IA)³ stores only the side it scales)."""
        if self.algo == "ia3":
            from train.ia3 import on_input
            return int(self.tensors["weight"].numel()) == (inputs if on_input(dict(self.tensors)) else out)
        return self.shape == (out, inputs)

    @property
    def is_conv(self) -> bool:
        t = self.tensors
        if self.algo == "lora":
            down = t["lora_down.weight"]
            return down.dim() == 4 and tuple(down.shape[2:]) != (1, 1)
        return any(v.dim() == 4 and tuple(v.shape[2:]) != (1, 1) for v in t.values()) or \
            ("dora_scale" in t and t["dora_scale"].dim() == 4)

    def delta(self, shape: torch.Size, weight: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW by the published formulas (what the clients add to the weight), shaped like the weight;
        (IA)³ scales the base `weight`, so it needs it."""
        t = {k: v.float() for k, v in self.tensors.items()}
        if self.algo == "ia3":
            from train.ia3 import on_input
            if weight is None:
                raise ValueError("an (IA)³ change depends on the base weight: pass it")
            w = t["weight"].flatten()
            return weight.float() * (w[None, :] if on_input(t) else w[:, None])
        if self.algo == "lora":
            up, down = t["lora_up.weight"], t["lora_down.weight"]
            product = up.flatten(1) @ down.flatten(1)
        elif self.algo == "loha":
            product = _hada_half(t, "1") * _hada_half(t, "2")
        else:
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            w2 = t["lokr_w2"] if "lokr_w2" in t else _tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"]) \
                if "lokr_t2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
            if w2.dim() == 4:
                w1 = w1[:, :, None, None]
            product = torch.kron(w1, w2.contiguous())
        return product.reshape(shape) * self.scale


def _tucker(core: torch.Tensor, out_factor: torch.Tensor, in_factor: torch.Tensor) -> torch.Tensor:
    """Rebuild a [out, in, k, k] kernel from a Tucker core [r, r, k, k] and factors [r, out], [r, in]."""
    return torch.einsum("i j k l, i p, j r -> p r k l", core, out_factor, in_factor)


def _factor_shape(t: Mapping[str, torch.Tensor], a: str, b: str, core: str) -> tuple[int, int]:
    """Shape of a·b, or of the Tucker rebuild (a [r, out], b [r, in], core [r, r, k, k])."""
    if core in t:
        return int(t[a].shape[1]), int(t[b].shape[1]) * int(t[core][0, 0].numel())
    return int(t[a].shape[0]), int(t[b][0].numel())


def _lokr_half(t: Mapping[str, torch.Tensor], half: str) -> tuple[int, int]:
    """(rows, columns) of LoKr's w1 or w2 (a full matrix, or the product of its _a and _b factors);
    a convolution's kernel positions are not counted."""
    if f"lokr_w{half}" in t:
        rows, columns = t[f"lokr_w{half}"].shape[:2]
        return int(rows), int(columns)
    return int(t[f"lokr_w{half}_a"].shape[0]), int(t[f"lokr_w{half}_b"].shape[1])


def _hada_half(t: Mapping[str, torch.Tensor], half: str) -> torch.Tensor:
    a, b = t[f"hada_w{half}_a"], t[f"hada_w{half}_b"]
    if f"hada_t{half}" in t:
        return _tucker(t[f"hada_t{half}"], a, b)
    return a @ b


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS's split of a dimension into (small, large) with small ≤ large: the divisor pair nearest
    `factor` (-1: nearest the square root). peft's copy does not sort an exact `factor` split."""
    if factor > 0 and dimension % factor == 0:
        return min(factor, dimension // factor), max(factor, dimension // factor)
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        candidate = m + 1
        while dimension % candidate:
            candidate += 1
        other = dimension // candidate
        if candidate + other > m + n or candidate > limit:
            break
        m, n = candidate, other
    return min(m, n), max(m, n)


def lokr_factor(linear: list[ModuleWeights]) -> int | None:
    """The `factor` LoKr modules were split with, read back as LyCORIS does (-1 when every split is
    the near-square one); None without LoKr modules. Pass linear modules only: a convolution's
    kernel hides inside its second half's width."""
    splits = []
    for module in linear:
        t = module.tensors
        if module.algo != "lokr":
            continue
        (out1, in1), (out2, in2) = _lokr_half(t, "1"), _lokr_half(t, "2")
        splits.append((out1, in1, out1 * out2, in1 * in2))
    if not splits:
        return None
    if all(factorization(out)[0] == a and factorization(inp)[0] == c for a, c, out, inp in splits):
        return -1
    sizes = [max(a, c) for a, c, _, _ in splits]
    return max(set(sizes), key=sizes.count)


# ---------------------------------------------------------------- peft layers ↔ LyCORIS tensors


def layer_algo(module: Any) -> str:
    """The algorithm of a peft adapter layer: "loha", "lokr", else "lora"."""
    from peft.tuners.loha.layer import LoHaLayer
    from peft.tuners.lokr.layer import LoKrLayer

    from train.ia3 import is_ia3

    if is_ia3(module):
        return "ia3"
    return "loha" if isinstance(module, LoHaLayer) else "lokr" if isinstance(module, LoKrLayer) else "lora"


def peft_tensors(module: Any, adapter: str) -> dict[str, torch.Tensor]:
    """The LyCORIS tensors of a peft LoHa/LoKr layer's adapter (same names, detached)."""
    return {name: getattr(module, name)[adapter].detach() for name in module.adapter_layer_names
            if adapter in getattr(module, name)}


def set_peft_tensors(module: Any, adapter: str, weights: ModuleWeights) -> None:
    """Give a peft LoHa/LoKr layer exactly the file's tensors and scale, whatever shapes peft's own
    config would have chosen (a LyCORIS file may split or decompose each module differently)."""
    device = next(iter(peft_tensors(module, adapter).values())).device
    for name in module.adapter_layer_names:
        if adapter in getattr(module, name):
            del getattr(module, name)[adapter]
        if name in weights.tensors:
            getattr(module, name)[adapter] = torch.nn.Parameter(
                weights.tensors[name].to(device=device, dtype=torch.float32), requires_grad=False)
    rank = weights.rank or module.r[adapter]
    module.r[adapter] = rank
    module.scaling[adapter] = weights.scale
    module.alpha[adapter] = weights.scale * rank  # so peft's set_scale(adapter, s) gives s × the file's scale


def file_weights(module: Any, adapter: str) -> ModuleWeights:
    """What a peft LoHa/LoKr layer writes: its tensors, with alpha = scale × rank for the clients.

    A full-matrix LoKr has no rank to divide by (the clients scale it by 1), so any other scale is
    folded into w1 and alpha is written as the configured rank, as LyCORIS writes it.
    """
    tensors = peft_tensors(module, adapter)
    scale, rank = float(module.scaling[adapter]), int(module.r[adapter])
    algo = layer_algo(module)
    inner = ModuleWeights(algo, tensors, None).rank
    if inner is None:
        if scale != 1.0:
            tensors["lokr_w1"] = tensors["lokr_w1"] * scale
        return ModuleWeights(algo, tensors, float(rank))
    return ModuleWeights(algo, tensors, scale * inner)
