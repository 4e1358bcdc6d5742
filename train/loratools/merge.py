"""`loraprep lora merge` without `--base`: several LoRAs (each with a weight, negative subtracts) as one.

Why concatenation is exact: Σ wᵢ·ΔWᵢ = Σ (wᵢ·scaleᵢ·upᵢ)·downᵢ = [w₁s₁up₁ | w₂s₂up₂ | …]·[down₁; down₂; …],
one LoRA whose rank is the sum of the inputs' (alpha = rank, scale 1). LoHa inputs join as the exact
factors of their Hadamard product (rank r²), LoKr as those of their ΔW's SVD (every non-zero singular
value, from the SVDs of its two halves), so nothing is approximated unless
`--rank` asks for it: then the summed ΔW's truncated SVD, the best approximation at that rank, and
the report says what share of it is kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from prep.errors import ModelMismatch, UsageError
from train.export import BASE_MODEL_VERSION
from train.lycoris import ALGO_LABELS
from train.loratools.deltas import LoraDeltas, ModuleDelta, read_deltas
from train.loratools.report import ModuleResult, ToolReport
from train.loratools.resize import decomposition, rank_bound
from train.loratools.svd import chosen_rank, factor_svd, matrix_svd
from train.loratools.write import NewModule, refuse_existing, storage_dtype, write_lora

FAMILY_LABELS = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
# what the merged file says about the model it is for, taken from the first input that says it
_MODEL_KEYS = ("ss_base_model_version", "ss_v2", "ss_v_parameterization", "ss_sd_model_name", "ss_resolution",
               "ss_clip_skip", "modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation",
               "modelspec.resolution", "modelspec.prediction_type", "modelspec.encoder_layer")


def merge_loras(loras: Sequence[tuple[Path, float]], out: str | Path, *, rank: int | None = None,
                conv_rank: int | None = None, dtype: str | None = None, overwrite: bool = False) -> ToolReport:
    """Write `out`: the weighted sum of `loras` as one plain LoRA (exact, or at `rank` by SVD)."""
    out = Path(out)
    if not loras:
        raise UsageError("nothing to merge", hint="pass --lora FILE[:WEIGHT] at least once")
    for name, value in (("--rank", rank), ("--conv-rank", conv_rank)):
        if value is not None and value < 1:
            raise UsageError(f"{name} {value}: a rank is at least 1")
    refuse_existing(out, overwrite)
    inputs = [(read_deltas(path), float(weight)) for path, weight in loras]
    for deltas, _ in inputs:
        if deltas.dora_modules:
            raise UsageError(f"{deltas.path.name} is a DoRA (weight-decomposed) LoRA: its effect depends on the base "
                             "weights, so it cannot be added to other LoRAs as a weight change",
                             hint="merge it into a model with --base instead")
    _check_compatible([d for d, _ in inputs])
    modules: dict[str, NewModule] = {}
    results: list[ModuleResult] = []
    for name in dict.fromkeys(n for deltas, _ in inputs for n in deltas.modules):
        parts = [(weight, deltas.modules[name]) for deltas, weight in inputs if name in deltas.modules]
        target = conv_rank if conv_rank is not None and parts[0][1].is_conv else rank
        modules[name], result = (_summed(name, parts) if target is None else _truncated(name, parts, target))
        results.append(result)
    extras = _extras([d for d, _ in inputs])
    notes = _notes(inputs, rank, extras)
    metadata = _metadata(inputs, out)
    dtype_ = storage_dtype([m.dtype for d, _ in inputs for m in d.modules.values()], dtype)
    size = write_lora(out, modules, extras, metadata, dtype_)
    return ToolReport(out, results, sum(d.path.stat().st_size for d, _ in inputs), size, notes, list(extras))


def _check_compatible(inputs: list[LoraDeltas]) -> None:
    """One family, and every module the same shape in every file; else name the first that is not."""
    first = next((d for d in inputs if d.family is not None), None)
    for deltas in inputs:
        if first is not None and deltas.family is not None and deltas.family != first.family:
            module = next(iter(deltas.modules), "?")
            this, that = _names(deltas.path, first.path)
            raise ModelMismatch(f"{this} is an {FAMILY_LABELS[deltas.family]} LoRA and {that} "
                                f"an {FAMILY_LABELS[first.family]} one (first module: {module})",
                                hint="merge LoRAs of one model family")
    shapes: dict[str, tuple[tuple[int, ...], Path]] = {}
    for deltas in inputs:
        for name, module in deltas.modules.items():
            seen = shapes.setdefault(name, (module.shape, deltas.path))
            if _flat(seen[0]) != _flat(module.shape):
                that, this = _names(seen[1], deltas.path)
                raise ModelMismatch(f"{name} changes a {_dims(seen[0])} weight in {that} and a "
                                    f"{_dims(module.shape)} one in {this}",
                                    hint="the LoRAs were trained on different models; merge LoRAs of one model")


def _names(a: Path, b: Path) -> tuple[str, str]:
    """Two inputs as a message names them: file names, whole paths when the names are the same."""
    return (a.name, b.name) if a.name != b.name else (str(a), str(b))


def _flat(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A 1×1 convolution's weight and a linear one of the same size compare equal."""
    return shape[:2] if len(shape) == 4 and tuple(shape[2:]) == (1, 1) else shape


def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def _factors(weight: float, module: ModuleDelta) -> tuple[torch.Tensor, torch.Tensor]:
    """weight·ΔW as exact factors (up [out, r], down [r, in·k·k])."""
    factors = module.exact_factors()
    if factors is None:
        dec = decomposition(module)
        factors = dec.truncated(len(dec.S))
    up, down = factors
    return up * weight, down


def _summed(name: str, parts: list[tuple[float, ModuleDelta]]) -> tuple[NewModule, ModuleResult]:
    pairs = [_factors(weight, module) for weight, module in parts]
    up = torch.cat([u for u, _ in pairs], dim=1)
    down = torch.cat([d for _, d in pairs], dim=0)
    norm = float((up.double() @ down.double()).norm())
    rank = int(down.shape[0])
    return NewModule(up, down, float(rank), _shape(parts)), ModuleResult(name, rank, rank, norm, norm)


def _shape(parts: list[tuple[float, ModuleDelta]]) -> tuple[int, ...]:
    """The weight's shape; a 1×1 convolution's 4-D one when any input says so (the clients build a
    convolution from a 4-D down weight)."""
    return next((m.shape for _, m in parts if len(m.shape) == 4), parts[0][1].shape)


def _truncated(name: str, parts: list[tuple[float, ModuleDelta]], target: int) -> tuple[NewModule, ModuleResult]:
    if all(module.exact_factors() is not None for _, module in parts):
        pairs = [_factors(weight, module) for weight, module in parts]
        dec = factor_svd(torch.cat([u for u, _ in pairs], dim=1), torch.cat([d for _, d in pairs], dim=0))
    else:
        bounds = [rank_bound(module) for _, module in parts]
        bound = None if None in bounds else sum(bounds)
        dec = matrix_svd(sum(weight * module.matrix().double() for weight, module in parts), bound)
    rank = chosen_rank(dec.S, target)
    up, down = dec.truncated(rank)
    norm = float(dec.S.double().pow(2).sum().sqrt())
    before = sum(module.rank or 0 for _, module in parts)
    return (NewModule(up, down, float(rank), _shape(parts)),
            ModuleResult(name, before, rank, norm, norm * dec.kept_share(rank)))


def _extras(inputs: list[LoraDeltas]) -> dict[str, torch.Tensor]:
    """Every input's other tensors (bundled embeddings), carried over; one key with two values is refused."""
    extras: dict[str, tuple[torch.Tensor, Path]] = {}
    for deltas in inputs:
        for key, tensor in deltas.extras.items():
            seen = extras.setdefault(key, (tensor, deltas.path))
            if seen[0].shape != tensor.shape or not torch.equal(seen[0], tensor):
                that, this = _names(seen[1], deltas.path)
                raise UsageError(f"{that} and {this} both hold {key}, with different values",
                                 hint="rename the bundled embedding in one of them (loraprep lora meta shows keys)")
    return {key: tensor for key, (tensor, _) in extras.items()}


def _notes(inputs: list[tuple[LoraDeltas, float]], rank: int | None, extras: dict[str, torch.Tensor]) -> list[str]:
    notes = []
    converted = sorted({ALGO_LABELS[m.algo] for d, _ in inputs for m in d.modules.values() if m.algo != "lora"})
    if converted:
        notes.append(f"{' and '.join(converted)} modules joined as plain LoRA "
                     f"({'their exact factors' if rank is None else 'within the SVD of the sum'})")
    if rank is None:
        notes.append("exact weighted sum: the inputs' ranks are concatenated")
    if extras:
        notes.append(f"{len(extras)} other tensor(s) carried over unchanged (e.g. {next(iter(extras))})")
    return notes


def _metadata(inputs: list[tuple[LoraDeltas, float]], out: Path) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for deltas, _ in inputs:
        for key in _MODEL_KEYS:
            if key in deltas.metadata:
                metadata.setdefault(key, deltas.metadata[key])
    family = next((d.family for d, _ in inputs if d.family is not None), None)
    if family is not None:
        metadata.setdefault("ss_base_model_version", BASE_MODEL_VERSION[family])
    triggers = [d.metadata.get("modelspec.trigger_phrase", "") for d, _ in inputs]
    sources = [{"file": d.path.name, "weight": w, "sshs_model_hash": d.metadata.get("sshs_model_hash", "")}
               for d, w in inputs]
    metadata.update({
        "ss_network_module": "networks.lora",
        "ss_output_name": out.stem,
        "ss_training_comment": "merged by loraprep: " + ", ".join(f"{d.path.name} ×{w:g}" for d, w in inputs),
        "modelspec.title": out.stem,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "loraprep.merged_from": json.dumps(sources),
        "modelspec.merged_from": ", ".join(d.path.stem for d, _ in inputs),
        "loraprep.format": "kohya",
    })
    joined = ", ".join(dict.fromkeys(t for t in triggers if t))
    if joined:
        metadata["modelspec.trigger_phrase"] = joined
    return metadata
