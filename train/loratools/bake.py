"""Bake weighted LoRAs into a base model (`loraprep lora merge --base`), and the same arithmetic on a
loaded model (`train --base-weights`).

Each changed weight becomes W + w·ΔW (ΔW a LoRA's change at strength 1; a DoRA module's as the
clients apply it: the magnitude-normalised W + ΔW, mixed in by w; an (IA)³ module's W ⊙ v, v its
vector along the output rows or input columns, so W ⊙ (1 + w·v) exactly as loraprep, LyCORIS and the
WebUI apply it: the bias is left alone, and the layer is linear, so the baked weight gives the same
outputs as the adapted one). Every other tensor is copied byte
for byte. The output keeps the base's layout: a diffusers folder gives a diffusers folder, a single
original-layout checkpoint gives one file with exactly its key set (what the WebUI, ComfyUI and
diffusers' `from_single_file` load). The base is streamed tensor by tensor, so peak memory is one
tensor plus the LoRAs, whatever the model's size; the result appears atomically (a temporary file
or folder renamed into place), so a failure or interrupt leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from prep.atomic import TEMP_SUFFIX, temp_prefix
from prep.errors import ModelMismatch, UsageError
from prep.progress import SILENT, Reporter
from train.loratools.deltas import LoraDeltas, ModuleDelta, read_deltas
from train.loratools.layout import BaseWeights, Slot, open_base
from train.loratools.tensorfile import (USER_DTYPES, OutTensor, TensorFile, open_tensor_file, tensor_bytes,
                                        write_streamed)
from train.model import FAMILY_LABELS, check_base

Change = tuple[ModuleDelta, float]


def apply_changes(weight: torch.Tensor, changes: Iterable[Change]) -> torch.Tensor:
    """`weight` (float32) with each module change applied in turn at its strength. An (IA)³ change
    scales the weight as it was before any of these changes, as the WebUI adds every network's change
    computed from the original weight and loraprep adds several (IA)³ vectors of one layer."""
    original = weight
    for module, strength in changes:
        if module.algo == "ia3":
            weight = weight + strength * module.delta(original)
            continue
        delta = module.delta().reshape(weight.shape)
        if module.dora_axis is None:
            weight = weight + strength * delta
            continue
        combined = weight + delta
        if module.dora_axis == "output":
            norm = combined.reshape(combined.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))
            magnitude = module.dora_scale.float().reshape(-1, *[1] * (weight.dim() - 1))
        else:
            norm = combined.transpose(0, 1).reshape(combined.shape[1], -1).norm(dim=1)
            norm = norm.reshape(1, -1, *[1] * (weight.dim() - 2))
            magnitude = module.dora_scale.float().reshape(1, -1, *[1] * (weight.dim() - 2))
        weight = weight + strength * (combined * (magnitude / norm) - weight)
    return weight


def plan_changes(slots: Mapping[str, Slot], family: str, loras: Iterable[tuple[LoraDeltas, float]],
                 ) -> dict[str, list[Change]]:
    """Each slot's changes, checked: a LoRA of another family, or a module the base lacks or shapes
    otherwise, is refused naming the first offender."""
    plan: dict[str, list[Change]] = {}
    for lora, strength in loras:
        if lora.family is not None and lora.family != family:
            raise ModelMismatch(f"{lora.path.name} is a {_label(lora.family)} LoRA but the base is {_label(family)}",
                                hint="use a LoRA trained for this base's family")
        for name, module in lora.modules.items():
            slot = slots.get(name)
            if slot is None:
                raise ModelMismatch(f"{lora.path.name}: module {name} is not in the base model",
                                    hint="the LoRA was made for another architecture")
            if module.algo == "ia3":
                _check_ia3(lora.path.name, name, module, slot)
            elif module.shape != slot.shape and (module.shape[0], _numel(module.shape[1:])) != \
                    (slot.shape[0], _numel(slot.shape[1:])):
                raise ModelMismatch(f"{lora.path.name}: module {name} changes a {list(module.shape)} weight but the "
                                    f"base's is {list(slot.shape)}", hint="the LoRA was made for another architecture")
            plan.setdefault(name, []).append((module, strength))
    return plan


def _check_ia3(file: str, name: str, module: ModuleDelta, slot: Slot) -> None:
    """(IA)³ stores one side of the weight it scales: a vector as long as the linear layer's outputs
    (or inputs when `on_input`); convolutions are refused as `generate` and the WebUI refuse them."""
    if len(slot.shape) != 2:
        raise ModelMismatch(f"{file}: module {name} is an (IA)³ convolution, which loraprep (like the WebUI) "
                            "cannot apply", hint="LyCORIS's ia3 preset adapts linear layers only")
    if not module.weights.fits(slot.shape[0], slot.shape[1]):
        raise ModelMismatch(f"{file}: module {name} is an (IA)³ vector of {module.shape[0]} for the base's "
                            f"{slot.shape[0]}×{slot.shape[1]} weight", hint="the LoRA was made for another architecture")


def _label(family: str) -> str:
    return dict(FAMILY_LABELS).get(family, family)  # type: ignore[call-overload]


def _numel(shape: Iterable[int]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count


def _weighted_deltas(loras: Iterable[tuple[Path, float]], unet_config: Mapping[str, Any] | None,
                     ) -> list[tuple[LoraDeltas, float]]:
    return [(read_deltas(path, unet_config=unet_config), float(strength)) for path, strength in loras]


def merge_into_base(base: str | Path, loras: list[tuple[Path, float]], out: Path, *, dtype: str | None = None,
                    allow_pickle: bool = False, config: str | Path | None = None,
                    reporter: Reporter = SILENT) -> dict[str, Any]:
    """Write `base` with the weighted `loras` baked in to `out` (a folder: diffusers layout; a
    `.safetensors` file: the base single file's layout), replacing `out` if it exists (the CLI asks
    for --overwrite first). `dtype` (fp16/bf16/fp32) converts every floating tensor; by default the
    base's dtypes are kept. A single-file base written as a folder is converted by diffusers'
    `from_single_file` (held in memory; offline it needs `config`, a diffusers folder of the family).
    Returns a summary."""
    started = time.perf_counter()
    out = Path(out)
    if dtype is not None and dtype not in USER_DTYPES:
        raise UsageError(f"unknown --dtype '{dtype}'", hint="use fp16, bf16 or fp32")
    if not loras:
        raise UsageError("no LoRA to bake in", hint="pass --lora FILE[:WEIGHT]")
    check = check_base(str(base), allow_pickle=allow_pickle)
    model = open_base(check.path, allow_pickle=allow_pickle)
    single = out.suffix == ".safetensors"
    resolved = out.resolve()
    if resolved == check.path.resolve() or check.path.resolve() in resolved.parents:
        raise UsageError(f"--out {out} would overwrite the base model", hint="choose another --out")
    plan = plan_changes(model.slots, model.family, _weighted_deltas(loras, model.unet_config))
    target = USER_DTYPES[dtype] if dtype else None
    with reporter.task("merging", len(plan)) as advance:
        if single and model.kind == "file":
            _write_single_file(model, plan, out, target, advance, loras)
        elif single:
            _write_folder_as_single_file(model, plan, out, target, advance, loras, allow_pickle)
        elif model.kind == "folder":
            _write_folder(model, plan, out, target, advance)
        else:
            _convert_to_folder(model, loras, out, target, config, allow_pickle)
            advance(len(plan))
    return {"out": str(out), "format": "single-file" if single else "diffusers", "family": model.family,
            "base": str(check.path), "loras": [f"{Path(p).name}:{w:g}" for p, w in loras],
            "modules_merged": len(plan), "dtype": dtype or "base's",
            "size_bytes": _size(out), "seconds": round(time.perf_counter() - started, 2)}


def _convert_to_folder(model: BaseWeights, loras: list[tuple[Path, float]], out: Path, target: torch.dtype | None,
                       config: str | Path | None, allow_pickle: bool) -> None:
    """A single-file base as a diffusers folder: converted in memory, changed there, saved beside
    `out` and renamed into place."""
    from train.model import load_base

    source = model.files[model.source]
    floats = [e.dtype for e in source.entries.values() if e.dtype.is_floating_point]
    dtype = target or max(set(floats), key=floats.count)
    loaded = load_base(model.source, allow_pickle=allow_pickle, dtype=dtype, config=config)
    bake_into_model(loaded, loras)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=TEMP_SUFFIX, dir=out.parent))
    try:
        loaded.pipeline().save_pretrained(staging, safe_serialization=True)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _stream_file(source: TensorFile, slots_by_key: Mapping[str, list[Slot]], plan: Mapping[str, list[Change]],
                 target: torch.dtype | None, out: Path, advance: Callable[..., None],
                 metadata: Mapping[str, str] | None) -> None:
    """Write `source` to `out` with its planned slots changed, every other tensor's bytes copied."""

    def changed(key: str, dtype: torch.dtype) -> Callable[[], bytes]:
        def produce() -> bytes:
            tensor = source.read(key).to(torch.float32, copy=True)
            for slot in slots_by_key[key]:
                rows = slice(*slot.rows) if slot.rows else slice(None)
                tensor[rows] = apply_changes(tensor[rows].reshape(slot.shape), plan[slot.module]).reshape(
                    tensor[rows].shape)
                advance()
            return tensor_bytes(tensor.to(dtype))
        return produce

    def copied(key: str, dtype: torch.dtype) -> Callable[[], bytes]:
        if dtype == source.entries[key].dtype:
            return lambda: source.raw(key)
        return lambda: tensor_bytes(source.read(key).to(dtype))

    tensors = []
    for key, entry in source.entries.items():
        dtype = target if target is not None and entry.dtype.is_floating_point else entry.dtype
        touched = any(slot.module in plan for slot in slots_by_key.get(key, []))
        tensors.append(OutTensor(key, dtype, entry.shape, (changed if touched else copied)(key, dtype)))
    write_streamed(out, tensors, metadata)


def _slots_by_key(model: BaseWeights, plan: Mapping[str, list[Change]]) -> dict[str, list[Slot]]:
    found: dict[str, list[Slot]] = {}
    for name in plan:
        slot = model.slots[name]
        found.setdefault(slot.key, []).append(slot)
    return found


def _write_single_file(model: BaseWeights, plan: Mapping[str, list[Change]], out: Path, target: torch.dtype | None,
                       advance: Callable[..., None], loras: list[tuple[Path, float]]) -> None:
    source = model.files[model.source]
    metadata = dict(source.metadata or {})
    metadata["loraprep.merged_loras"] = json.dumps([[Path(p).name, w] for p, w in loras])
    _stream_file(source, _slots_by_key(model, plan), plan, target, out, advance, metadata)


def _changed_tensor(source: TensorFile, key: str, slots: list[Slot], plan: Mapping[str, list[Change]],
                    advance: Callable[..., None]) -> torch.Tensor:
    tensor = source.read(key).to(torch.float32, copy=True)
    for slot in slots:
        rows = slice(*slot.rows) if slot.rows else slice(None)
        tensor[rows] = apply_changes(tensor[rows].reshape(slot.shape), plan[slot.module]).reshape(tensor[rows].shape)
        advance()
    return tensor


def _write_folder_as_single_file(model: BaseWeights, plan: Mapping[str, list[Change]], out: Path,
                                 target: torch.dtype | None, advance: Callable[..., None],
                                 loras: list[tuple[Path, float]], allow_pickle: bool) -> None:
    """A diffusers-folder base written as one original-layout file (train/loratools/original.py)."""
    from train.loratools import original
    from train.loratools.layout import component_weight_files

    vae_config = json.loads((model.source / "vae" / "config.json").read_text(encoding="utf-8"))
    files = dict(model.component_files)
    files["vae"] = component_weight_files(model.source / "vae", allow_pickle=allow_pickle)
    handles = {path: model.files.get(path) or open_tensor_file(path, allow_pickle=allow_pickle)
               for paths in files.values() for path in paths}
    slots_by_place: dict[tuple[Path, str], list[Slot]] = {}
    for name in plan:
        slot = model.slots[name]
        slots_by_place.setdefault((slot.file, slot.key), []).append(slot)
    tensors: list[OutTensor] = []
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        where = {key: path for path in files.get(component, []) for key in handles[path].entries}
        if component == "unet":
            sources = {original.unet_key(k, model.unet_config or {}): original.Source((k,)) for k in where}
        elif component == "vae":
            sources = {original.vae_key(k, vae_config): original.Source(
                (k,), as_conv=".mid_block.attentions." in k and len(handles[where[k]].entries[k].shape) == 2)
                for k in where}
        else:
            sources = original.text_sources(list(where), model.family, component) if where else {}
        for name, source in sources.items():
            entries = [handles[where[k]].entries[k] for k in source.keys]
            shape = (sum(e.shape[0] for e in entries), *entries[0].shape[1:]) if len(entries) > 1 else entries[0].shape
            shape = tuple(reversed(shape)) if source.transpose else shape + ((1, 1) if source.as_conv else ())
            dtype = target if target is not None and entries[0].dtype.is_floating_point else entries[0].dtype

            def produce(source: original.Source = source, dtype: torch.dtype = dtype,
                        shape: tuple[int, ...] = shape, where: dict[str, Path] = where) -> bytes:
                parts = []
                for key in source.keys:
                    touched = slots_by_place.get((where[key], key))
                    handle = handles[where[key]]
                    parts.append(_changed_tensor(handle, key, touched, plan, advance) if touched else handle.read(key))
                tensor = torch.cat(parts) if len(parts) > 1 else parts[0]
                tensor = tensor.T if source.transpose else tensor
                return tensor_bytes(tensor.reshape(shape).to(dtype))

            tensors.append(OutTensor(name, dtype, tuple(shape), produce))
    metadata = {"format": "pt", "loraprep.merged_loras": json.dumps([[Path(p).name, w] for p, w in loras])}
    write_streamed(out, tensors, metadata)


def _write_folder(model: BaseWeights, plan: Mapping[str, list[Change]], out: Path, target: torch.dtype | None,
                  advance: Callable[..., None]) -> None:
    """Copy the base folder beside `out` with the changed (or converted) weight files rewritten, then
    rename it into place."""
    slots_by_key = _slots_by_key(model, plan)
    touched_files = {model.slots[name].file for name in plan}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=TEMP_SUFFIX, dir=out.parent))
    try:
        for path in sorted(model.source.rglob("*")):
            relative = path.relative_to(model.source)
            if path.is_dir() or any(part.startswith(".") for part in relative.parts):
                continue
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = model.files.get(path)
            if source is None and path.suffix == ".safetensors" and target is not None:
                source = open_tensor_file(path, allow_pickle=False)
            if source is not None and (path in touched_files or target is not None):
                metadata = dict(source.metadata or {}) or None
                _stream_file(source, {k: v for k, v in slots_by_key.items() if v[0].file == path}, plan, target,
                             destination, advance, metadata)
            elif not _stale_weights(model, path):
                shutil.copy2(path, destination)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _stale_weights(model: BaseWeights, path: Path) -> bool:
    """Another weight file of a component whose weights are rewritten (a `.fp16` variant, a `.bin`
    twin): copied unchanged it would hold the unmerged weights, so it is left out."""
    for files in model.component_files.values():
        if path.parent == files[0].parent and path not in files and path.suffix in (".safetensors", ".bin"):
            return True
    return False


def _replace(staging: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an existing `out` is moved aside first and removed after."""
    if not out.exists():
        os.replace(staging, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=TEMP_SUFFIX, dir=out.parent))
    os.replace(out, aside / "old")
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(aside / "old", out)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


# ---------------------------------------------------------------- a loaded model (train --base-weights)


def model_slots(base: Any) -> dict[str, tuple[Slot, torch.nn.Parameter]]:
    """Every adaptable weight of a loaded BaseModel by kohya name, with its parameter."""
    from train.export import base_components, canonical_path, kohya_name

    found: dict[str, tuple[Slot, torch.nn.Parameter]] = {}
    unet_config = dict(base.unet.config)
    for component, model in base_components(base).items():
        for key, param in model.named_parameters():
            if not key.endswith(".weight") or param.dim() not in (2, 4):
                continue
            path = canonical_path(component, key[:-len(".weight")])
            if component != "unet" and ".encoder.layers." not in path:
                continue
            try:
                name = kohya_name(component, path, base.family, unet_config)
            except UsageError:
                continue
            found[name] = (Slot(name, component, path, Path(), key, tuple(param.shape)), param)
    return found


def bake_into_model(base: Any, loras: list[tuple[Path, float]]) -> int:
    """sd-scripts' base_weights: the weighted LoRAs merged into a loaded model's weights in place
    (before a network is added). The changed components' ids change too, so no cache made from the
    original text encoders is reused. Returns the number of modules changed."""
    import hashlib

    for path, _ in loras:
        if not Path(path).is_file():
            raise UsageError(f"--base-weights {path} does not exist", hint="pass a LoRA .safetensors file")
    found = model_slots(base)
    plan = plan_changes({name: slot for name, (slot, _) in found.items()}, base.family,
                        _weighted_deltas(loras, dict(base.unet.config)))
    with torch.no_grad():
        for name, changes in plan.items():
            param = found[name][1]
            param.copy_(apply_changes(param.detach().float(), changes).to(param.dtype))
    digest = hashlib.sha256(json.dumps([[Path(p).name, hashlib.sha256(Path(p).read_bytes()).hexdigest(), w]
                                        for p, w in loras]).encode()).hexdigest()[:12]
    for component in {found[name][0].component for name in plan}:
        base.component_ids[component] = f"{base.component_ids.get(component, base.model_id)}+bw-{digest}"
    base.model_id = f"{base.model_id}+bw-{digest}"
    return len(plan)
