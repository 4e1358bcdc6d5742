"""`loraprep lora resize`: each module's weight change replaced by its best lower-rank approximation.

Why SVD of ΔW and not of the factors: the best rank-k approximation of ΔW (in Frobenius and spectral
norm) is its truncated SVD (Eckart–Young), whatever factors stored it, so a LoHa/LoKr file converts
to plain LoRA by the same step. The scale alpha/rank is kept (new alpha = scale × new rank), as
resize_lora.py does. DyLoRA files were trained so that every rank prefix that is a multiple of their
`unit` works on its own: cut at such a rank they are truncated, not decomposed, and alpha is kept as
sd-scripts' extract_lora_from_dylora.py keeps it. DoRA files are refused: their effect is the
magnitude times the direction of W + ΔW, which depends on the base weights, so truncating ΔW alone
has no best answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prep.errors import UsageError
from train.lycoris import ALGO_LABELS
from train.loratools.deltas import LoraDeltas, ModuleDelta, read_deltas
from train.loratools.report import ModuleResult, ToolReport
from train.loratools.svd import DYNAMIC_METHODS, Decomposition, chosen_rank, factor_svd, kron_svd, matrix_svd
from train.loratools.write import NewModule, refuse_existing, storage_dtype, write_lora


@dataclass(frozen=True)
class ResizeSettings:
    rank: int | None = None  # the rank, or the cap on a dynamic one
    conv_rank: int | None = None  # 3×3 convolutions' (LoCon) rank; default `rank`
    dynamic: str | None = None  # sv_ratio | sv_fro | sv_cumulative
    param: float | None = None
    dtype: str | None = None  # fp16 | bf16 | fp32; default the input's

    def check(self) -> None:
        if self.dynamic is None and self.rank is None:
            raise UsageError("resize needs --rank N (or --dynamic METHOD --param X)")
        for name, value in (("--rank", self.rank), ("--conv-rank", self.conv_rank)):
            if value is not None and value < 1:
                raise UsageError(f"{name} {value}: a rank is at least 1")
        if self.dynamic is None:
            if self.param is not None:
                raise UsageError("--param goes with --dynamic", hint=f"--dynamic {'|'.join(DYNAMIC_METHODS)}")
            return
        if self.dynamic not in DYNAMIC_METHODS:
            raise UsageError(f"--dynamic {self.dynamic}: choose one of {', '.join(DYNAMIC_METHODS)}")
        if self.param is None:
            raise UsageError(f"--dynamic {self.dynamic} needs --param X")
        if self.dynamic == "sv_ratio" and self.param < 1:
            raise UsageError(f"--param {self.param:g}: sv_ratio keeps singular values above the largest / X, X ≥ 1")
        if self.dynamic != "sv_ratio" and not 0 < self.param <= 1:
            raise UsageError(f"--param {self.param:g}: {self.dynamic} takes a share between 0 and 1")

    def target(self, module: ModuleDelta) -> int | None:
        return self.conv_rank if module.is_conv and self.conv_rank is not None else self.rank


def resize_lora(source: str | Path, out: str | Path, settings: ResizeSettings, *, overwrite: bool = False) -> ToolReport:
    """Write `out`: `source` at the settings' rank(s), its metadata carried and its size updated."""
    settings.check()
    source, out = Path(source), Path(out)
    refuse_existing(out, overwrite)
    deltas = read_deltas(source)
    _refuse_dora(deltas)
    notes: list[str] = []
    unit = deltas.dylora_unit
    cut = unit is not None and settings.dynamic is None and _multiple(settings, unit) and deltas.algos == {"lora"}
    if unit is not None and not cut:
        why = "--dynamic chooses ranks" if settings.dynamic else "the rank is not a multiple of the unit"
        notes.append(f"DyLoRA (unit {unit}): {why}, so it is decomposed (SVD)")
    modules: dict[str, NewModule] = {}
    results: list[ModuleResult] = []
    for name, module in deltas.modules.items():
        new, result = _cut(module, settings) if cut else _resized(module, settings)
        modules[name] = new
        results.append(result)
    converted = sorted({ALGO_LABELS[m.algo] for m in deltas.modules.values() if m.algo != "lora"})
    if converted:
        notes.append(f"{' and '.join(converted)} converted to plain LoRA (the best approximation at each rank)")
    if cut:
        notes.append(f"DyLoRA (unit {unit}): cut to the first ranks it was trained to work with, no SVD")
    metadata = _metadata(deltas, settings, results, converted=bool(converted))
    dtype = storage_dtype([m.dtype for m in deltas.modules.values()], settings.dtype)
    size = write_lora(out, modules, deltas.extras, metadata, dtype, dynamic=settings.dynamic is not None)
    if deltas.extras:
        notes.append(f"{len(deltas.extras)} other tensor(s) carried over unchanged (e.g. {next(iter(deltas.extras))})")
    return ToolReport(out, results, source.stat().st_size, size, notes, list(deltas.extras))


def _refuse_dora(deltas: LoraDeltas) -> None:
    if deltas.dora_modules:
        raise UsageError(f"{deltas.path.name} is a DoRA (weight-decomposed) LoRA: its effect rescales the base "
                         "weight plus ΔW by a stored magnitude, so it depends on the base model and no lower-rank "
                         "ΔW is its best approximation",
                         hint="retrain at the rank you want, or use the file as it is")


def _multiple(settings: ResizeSettings, unit: int) -> bool:
    return all(r is None or r % unit == 0 for r in (settings.rank, settings.conv_rank))


def decomposition(module: ModuleDelta, limit: int | None = None) -> Decomposition:
    """ΔW's exact SVD: from low-rank factors (LoRA, LoHa), from a LoKr's halves, else of the formed
    matrix; at least the leading `limit` singular vectors (all when None)."""
    factors = module.exact_factors()
    if factors is not None:
        return factor_svd(*factors)
    halves = module.kron_halves()
    if halves is not None:
        return kron_svd(*halves, limit=limit)
    return matrix_svd(module.matrix(), rank_bound(module))


def rank_bound(module: ModuleDelta) -> int | None:
    """The most ranks ΔW can have (None: not known cheaply): r for LoRA, r₁·r₂ for LoHa's Hadamard
    product, the halves' ranks' product for LoKr's Kronecker product."""
    t = module.weights.tensors
    if module.algo == "lora":
        return module.rank
    if module.algo == "loha":
        return None if "hada_t1" in t else int(t["hada_w1_b"].shape[0]) * int(t["hada_w2_b"].shape[0])
    if "lokr_t2" in t:
        return None
    halves = []
    for half in ("1", "2"):
        full = t.get(f"lokr_w{half}")
        halves.append(min(full.shape[:2]) if full is not None else int(t[f"lokr_w{half}_b"].shape[0]))
    return int(halves[0] * halves[1])


def _resized(module: ModuleDelta, settings: ResizeSettings) -> tuple[NewModule, ModuleResult]:
    target = settings.target(module)
    plain = module.algo == "lora"
    if plain and settings.dynamic is None and target is not None and target >= (module.rank or 0):
        up, down = module.weights.tensors["lora_up.weight"], module.weights.tensors["lora_down.weight"]
        norm = float(module.matrix().norm())
        new = NewModule(up.float().flatten(1), down.float().flatten(1), module.alpha, module.shape)
        return new, ModuleResult(module.name, module.rank, module.rank or 0, norm, norm)
    dec = decomposition(module, target)
    rank = chosen_rank(dec.S, target, settings.dynamic, settings.param)
    up, down = dec.truncated(rank)
    scale = module.scale if module.scale > 0 else 1.0
    new = NewModule(up / scale, down, scale * rank, module.shape)
    norm = float(dec.S.pow(2).sum().sqrt())
    return new, ModuleResult(module.name, module.rank, rank, norm, norm * dec.kept_share(rank))


def _cut(module: ModuleDelta, settings: ResizeSettings) -> tuple[NewModule, ModuleResult]:
    """A DyLoRA module's first `rank` ranks, its alpha kept."""
    rank = min(settings.target(module) or module.rank or 1, module.rank or 1)
    up, down = module.factors()
    norm = float((up @ down).norm())
    kept = float((up[:, :rank] @ down[:rank]).norm())
    stored_up = module.weights.tensors["lora_up.weight"].float().flatten(1)[:, :rank]
    new = NewModule(stored_up, down[:rank], module.alpha, module.shape)
    return new, ModuleResult(module.name, module.rank, rank, norm, kept)


def _metadata(deltas: LoraDeltas, settings: ResizeSettings, results: list[ModuleResult], *,
              converted: bool) -> dict[str, str]:
    metadata = dict(deltas.metadata)
    if converted or deltas.network_module == "lycoris.kohya":
        metadata["ss_network_module"] = "networks.lora"
    before = sorted({r.rank_before for r in results if r.rank_before is not None})
    after = sorted({r.rank_after for r in results})
    span = (lambda ranks: "–".join(map(str, sorted({ranks[0], ranks[-1]}))) if ranks else "?")
    comment = metadata.get("ss_training_comment", "")
    note = f"rank resized from {span(before)} to {span(after)} by loraprep"
    metadata["ss_training_comment"] = f"{note}; {comment}" if comment else note
    metadata["loraprep.resize"] = json.dumps({k: v for k, v in vars(settings).items() if v is not None})
    return metadata
