"""Speed, memory and accuracy of the `lora` tools on full-size models (issue 21).

    python bench/lora_tools.py                       # SD1.5 (fp16 single files, ~2 GB each)
    python bench/lora_tools.py --family sdxl         # SDXL (~7 GB each): minutes and ~21 GB of disk
    python bench/lora_tools.py --small               # the same plumbing at tiny widths, in seconds
    python bench/lora_tools.py --peer SD_SCRIPTS     # also sd-scripts' own scripts on the same files

Models are written straight from the diffusers/transformers configs of SD1.5 and SDXL (shapes from
meta-device modules, seeded random values generated tensor by tensor), as fp16 original-layout
single files, the kind people download; nothing is downloaded. TUNED is BASE plus a rank-48 change
and small full-rank noise in every module a LoRA trains (UNet attention, text encoders), and a random
rank-128 kohya LoRA over the same modules is the input of resize and merge.

Each operation runs in its own subprocess; reported are its wall time, its peak RSS (VmHWM) against
the model's size, and its reconstruction error: extract, ‖ΔW − LoRA‖/‖ΔW‖ over all modules (SD1.5: beside
the exact rank-32 SVD's); resize,
‖LoRA128 − LoRA32‖/‖LoRA128‖ (the truncated SVD's floor is printed beside it); merge into base, the
largest difference from base + ΔW computed in fp32, in fp16 steps of the weight. `--peer DIR` runs
sd-scripts' networks/extract_lora_from_models.py, resize_lora.py and merge_lora.py (sdxl_merge_lora.py
for SDXL) from DIR on the same files, with `--peer-python` (sd-scripts' own environment: its pinned
transformers and torchvision; loraprep's environment cannot import its `library`); their code never enters this project.
With `--small` only the peer's resize runs (its extract and merge build the models at the real widths). Both sides
run with the same OMP_NUM_THREADS (1 unless set). A peer run is the kernel's first choice to kill when memory runs out
(exit -9, its peak RSS kept): sd-scripts holds whole models in fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

TUNED_RANK = 48
LORA_RANK = 128
RANK = 32


# ---------------------------------------------------------------- model shapes (meta devices, no weights)


def _text_config(hidden: int, layers: int, heads: int, inner: int, act: str):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inner, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=hidden)


def model_shapes(family: str, small: bool) -> dict[str, tuple[int, ...]]:
    """Original-layout key → shape of an SD1.5 or SDXL checkpoint (small: the same blocks, tiny widths)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from tinymodels import _ldm_unet_key, _ldm_vae_key

    sdxl = family == "sdxl"
    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(32,) * 4 if small else (128, 256, 512, 512), layers_per_block=2,
                            latent_channels=4, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4)
        if sdxl:
            unet = UNet2DConditionModel(
                layers_per_block=2, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                addition_embed_type="text_time", addition_time_embed_dim=256,
                **(dict(block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 1),
                        cross_attention_dim=128, projection_class_embeddings_input_dim=6 * 256 + 64) if small else
                   dict(block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                        cross_attention_dim=2048, projection_class_embeddings_input_dim=2816)))
            encoders = [CLIPTextModel(_text_config(*((64, 2, 4, 128) if small else (768, 12, 12, 3072)), "quick_gelu")),
                        CLIPTextModelWithProjection(_text_config(*((64, 2, 4, 128) if small else (1280, 32, 20, 5120)),
                                                                 "gelu"))]
        else:
            unet = UNet2DConditionModel(cross_attention_dim=64 if small else 768,
                                        **(dict(block_out_channels=(32, 64, 64, 64)) if small else {}))
            encoders = [CLIPTextModel(_text_config(*((64, 2, 4, 128) if small else (768, 12, 12, 3072)), "quick_gelu"))]
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in unet.state_dict().items():
        key = key.replace("add_embedding.linear_1", "label_emb.0.0").replace("add_embedding.linear_2", "label_emb.0.2")
        name = key if key.startswith("label_emb") else _ldm_unet_key(key, dict(unet.config))
        shapes["model.diffusion_model." + name] = tuple(value.shape)
    for key, value in vae.state_dict().items():
        shape = tuple(value.shape) + ((1, 1) if ".mid_block.attentions." in key and value.dim() == 2 else ())
        shapes["first_stage_model." + _ldm_vae_key(key, dict(vae.config))] = shape
    first = "conditioner.embedders.0.transformer." if sdxl else "cond_stage_model.transformer."
    for key, value in encoders[0].state_dict().items():
        if "position_ids" not in key:
            shapes[first + (key if key.startswith("text_model.") else "text_model." + key)] = tuple(value.shape)
    if sdxl:
        shapes.update(_openclip_shapes(encoders[1].state_dict(), "conditioner.embedders.1.model."))
    return shapes


def _openclip_shapes(state, prefix: str) -> dict[str, tuple[int, ...]]:
    import re

    parts = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "layer_norm1": "ln_1", "layer_norm2": "ln_2"}
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in state.items():
        key = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
        shape = tuple(value.shape)
        if key == "text_projection.weight":
            shapes[prefix + "text_projection"] = shape[::-1]
        elif key.endswith("token_embedding.weight"):
            shapes[prefix + "token_embedding.weight"] = shape
        elif key.endswith("position_embedding.weight"):
            shapes[prefix + "positional_embedding"] = shape
        elif key.startswith("text_model.final_layer_norm."):
            shapes[prefix + "ln_final." + key.rsplit(".", 1)[1]] = shape
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused = f"{prefix}transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}"
            shapes[fused] = (shapes.get(fused, (0,))[0] + shape[0], *shape[1:])
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            shapes[f"{prefix}transformer.resblocks.{m[1]}.{parts[m[2]]}.{m[3]}"] = shape
    return shapes


# ---------------------------------------------------------------- files (streamed, seeded per tensor)


def _generator(key: str, salt: int):
    import torch
    return torch.Generator().manual_seed(zlib.crc32(key.encode()) * 7 + salt)


def base_value(key: str, shape: tuple[int, ...]):
    import torch
    if len(shape) == 1 and key.endswith("weight"):  # the norms' scales
        return torch.ones(shape)
    return torch.randn(shape, generator=_generator(key, 0)) * 0.02


def change(key: str, shape: tuple[int, ...]):
    """TUNED − BASE of one module: a rank-48 change (entries ~4e-3) plus full-rank noise (1e-4)."""
    import torch
    g = _generator(key, 1)
    out, flat = shape[0], math.prod(shape[1:])
    scale = 0.02 / math.sqrt(TUNED_RANK)
    low = (torch.randn(out, TUNED_RANK, generator=g) * scale) @ torch.randn(TUNED_RANK, flat, generator=g)
    return (low + torch.randn(out, flat, generator=g) * 1e-4).reshape(shape)


def write_models(work: Path, family: str, small: bool) -> tuple[Path, Path, Path, int]:
    """BASE, TUNED (single files, fp16) and a rank-128 LoRA; returns them and BASE's size."""
    import torch

    from train.loratools.extract import is_extract_target
    from train.loratools.layout import open_base
    from train.loratools.tensorfile import OutTensor, tensor_bytes, write_streamed

    base, tuned, lora = work / "base.safetensors", work / "tuned.safetensors", work / f"lora{LORA_RANK}.safetensors"
    shapes = model_shapes(family, small)
    if not base.is_file():
        write_streamed(base, [OutTensor(k, torch.float16, s, lambda k=k, s=s: tensor_bytes(base_value(k, s).half()))
                              for k, s in shapes.items()], {"format": "pt"})
    model = open_base(base)
    targets = {slot.key: [] for slot in model.slots.values() if is_extract_target(slot, False)}
    for slot in model.slots.values():
        if slot.key in targets:
            targets[slot.key].append(slot)
    if not tuned.is_file():
        def tuned_value(key: str, shape: tuple[int, ...]) -> bytes:
            value = base_value(key, shape).half().float()
            for slot in targets.get(key, []):
                rows = slice(*slot.rows) if slot.rows else slice(None)
                value[rows] += change(slot.module, slot.shape)
            return tensor_bytes(value.half())
        write_streamed(tuned, [OutTensor(k, torch.float16, s, lambda k=k, s=s: tuned_value(k, s))
                               for k, s in shapes.items()], {"format": "pt"})
    if not lora.is_file():
        tensors = []
        for slot in (s for slots in targets.values() for s in slots):
            flat, g = math.prod(slot.shape[1:]), _generator(slot.module, 2)
            down = torch.randn(LORA_RANK, *slot.shape[1:], generator=g) / math.sqrt(flat)
            up = torch.randn(slot.shape[0], LORA_RANK, *[1] * (len(slot.shape) - 2), generator=g) * 0.01
            for suffix, value in (("lora_down.weight", down), ("lora_up.weight", up),
                                  ("alpha", torch.tensor(float(LORA_RANK / 2)))):
                tensors.append(OutTensor(f"{slot.module}.{suffix}", torch.float16, tuple(value.shape),
                                         lambda v=value: tensor_bytes(v.half())))
        write_streamed(lora, tensors, {"ss_network_module": "networks.lora", "ss_network_dim": str(LORA_RANK),
                                       "ss_network_alpha": str(LORA_RANK // 2),
                                       "ss_base_model_version": "sdxl_base_v1-0" if family == "sdxl" else "sd_v1"})
    return base, tuned, lora, base.stat().st_size


# ---------------------------------------------------------------- running and measuring


def measure(argv: list[str], log: Path, peer_dir: Path | None = None) -> dict:
    """Wall time and peak RSS of one subprocess: its VmHWM, polled (wait4's ru_maxrss would include
    this process's RSS at the fork)."""
    started = time.perf_counter()
    peak = 0
    with log.open("w") as handle:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=peer_dir or ROOT,
                                   env={**os.environ, "PYTHONPATH": str(peer_dir or ROOT)})
        while process.poll() is None:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                peak = max(peak, int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]))
            except (OSError, StopIteration, ValueError):
                pass
            time.sleep(0.05)
    seconds = time.perf_counter() - started
    code = process.returncode
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(peak * 1024 / 1e9, 2), "exit": code,
            **({"log_tail": log.read_text(errors="replace")[-600:]} if code else {})}


def ours(op: str, base: Path, tuned: Path, lora: Path, out: Path) -> list[str]:
    py = sys.executable
    if op == "extract":
        return [py, "-c", "import sys, cli; sys.argv[0] = 'loraprep'; cli.main()", "lora", "extract", str(base),
                str(tuned), "--rank", str(RANK), "--out", str(out), "--overwrite"]
    if op == "resize":
        return [py, "-c", "import sys, cli; sys.argv[0] = 'loraprep'; cli.main()", "lora", "resize", str(lora),
                "--rank", str(RANK), "--out", str(out), "--overwrite"]
    return [py, "-c", "import sys; from pathlib import Path; from train.loratools.bake import merge_into_base; "
            "merge_into_base(sys.argv[1], [(Path(sys.argv[2]), 1.0)], Path(sys.argv[3]))", str(base), str(lora), str(out)]


def peer(op: str, directory: Path, family: str, base: Path, tuned: Path, lora: Path, out: Path,
         python: str) -> list[str]:
    py, scripts, sdxl = python, directory / "networks", ["--sdxl"] if family == "sdxl" else []
    if op == "extract":
        return [py, str(scripts / "extract_lora_from_models.py"), "--model_org", str(base), "--model_tuned", str(tuned),
                "--save_to", str(out), "--dim", str(RANK), "--device", "cpu", "--save_precision", "fp16", *sdxl]
    if op == "resize":
        return [py, str(scripts / "resize_lora.py"), "--model", str(lora), "--new_rank", str(RANK), "--save_to",
                str(out), "--device", "cpu", "--save_precision", "fp16"]
    script = "sdxl_merge_lora.py" if family == "sdxl" else "merge_lora.py"
    return [py, str(scripts / script), "--sd_model", str(base), "--models", str(lora), "--ratios", "1",
            "--save_to", str(out), "--save_precision", "fp16"]


def first_to_kill(argv: list[str]) -> list[str]:
    """`argv` made the kernel's first choice when memory runs out (sd-scripts loads whole models in fp32:
    SDXL's extract can exceed a small machine's RAM; then it, not a neighbour, is killed: exit -9)."""
    return ["sh", "-c", 'echo 1000 > /proc/self/oom_score_adj; exec "$@"', "peer", *argv]


# ---------------------------------------------------------------- accuracy


def _module_changes(base: Path, tuned: Path) -> Iterator[tuple[str, object]]:
    from train.loratools.extract import is_extract_target
    from train.loratools.layout import open_base

    old, new = open_base(base), open_base(tuned)
    for name, slot in old.slots.items():
        if is_extract_target(slot, False):
            yield name, new.weight(new.slots[name]).float() - old.weight(slot).float()


def extract_error(base: Path, tuned: Path, lora: Path, floor: bool) -> tuple[float, float | None]:
    """(‖ΔW − LoRA‖/‖ΔW‖ over all modules, and with `floor` the exact rank-32 SVD's, by svdvals)."""
    import torch

    from train.loratools.deltas import read_deltas

    modules = read_deltas(lora).modules
    err = total = best = 0.0
    for name, delta in _module_changes(base, tuned):
        approx = modules[name].delta().reshape(delta.shape) if name in modules else 0 * delta
        err += float((delta - approx).pow(2).sum())
        total += float(delta.pow(2).sum())
        if floor:
            best += float(torch.linalg.svdvals(delta.flatten(1).double())[RANK:].pow(2).sum())
    return math.sqrt(err / total), (math.sqrt(best / total) if floor else None)


def resize_error(original: Path, resized: Path) -> tuple[float, float]:
    """(relative error of the resized LoRA, the rank-32 truncated SVD's floor)."""
    import torch

    from train.loratools.deltas import read_deltas

    before, after = read_deltas(original).modules, read_deltas(resized).modules
    err = total = floor = 0.0
    for name, module in before.items():
        delta = module.matrix()
        err += float((delta - after[name].matrix()).pow(2).sum())
        total += float(delta.pow(2).sum())
        floor += float(torch.linalg.svdvals(delta)[RANK:].pow(2).sum())
    return math.sqrt(err / total), math.sqrt(floor / total)


def merge_error(base: Path, lora: Path, merged: Path) -> float:
    """Largest |merged − (base + ΔW)| in units of the fp16 spacing at that weight (≤ 0.5: exact rounding)."""
    import torch

    from train.loratools.deltas import read_deltas
    from train.loratools.layout import open_base

    old, new = open_base(base), open_base(merged)
    worst = 0.0
    for name, module in read_deltas(lora).modules.items():
        exact = old.weight(old.slots[name]).float() + module.delta().reshape(old.slots[name].shape)
        got = new.weight(new.slots[name]).float()
        spacing = torch.finfo(torch.float16).eps * exact.abs().clamp_min(2 ** -14)
        worst = max(worst, float(((got - exact).abs() / spacing).max()))
    return worst


# ---------------------------------------------------------------- main


def run(family: str, work: Path, small: bool, peer_dir: Path | None, peer_python: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base, tuned, lora, size = write_models(work, family, small)
    result: dict = {"family": family, "small": small, "model_gb": round(size / 1e9, 2),
                    "models_written_s": round(time.perf_counter() - started, 1)}
    for op in ("extract", "resize", "merge"):
        suffix = ".safetensors"
        for who in ("ours", "peer") if peer_dir else ("ours",):
            if who == "peer" and small and op != "resize":
                # sd-scripts builds its UNet/VAE/text encoders at the real widths: tiny models cannot load
                result[f"{op}_peer"] = {"skipped": "sd-scripts loads only full-width models"}
                print(json.dumps({op: who, **result[f"{op}_peer"]}), flush=True)
                continue
            out = work / f"{op}-{who}{suffix}"
            out.unlink(missing_ok=True)
            argv = ours(op, base, tuned, lora, out) if who == "ours" else first_to_kill(
                peer(op, peer_dir, family, base, tuned, lora, out, peer_python))
            row = measure(argv, work / f"{op}-{who}.log", peer_dir if who == "peer" else None)
            row["rss_vs_model"] = round(row["peak_rss_gb"] * 1e9 / size, 2)
            if row["exit"] == 0 and out.is_file():
                if op == "extract":
                    error, floor = extract_error(base, tuned, out, floor=family != "sdxl")
                    row["rel_error"] = round(error, 5)
                    if floor is not None:
                        row["svd_floor"] = round(floor, 5)
                elif op == "resize":
                    row["rel_error"], row["svd_floor"] = (round(v, 5) for v in resize_error(lora, out))
                else:
                    row["max_error_fp16_steps"] = round(merge_error(base, lora, out), 3)
            result[f"{op}_{who}"] = row
            print(json.dumps({op: who, **row}), flush=True)
        if peer_dir and result[f"{op}_ours"]["exit"] == 0 and result[f"{op}_peer"].get("exit") == 0:
            result[f"{op}_time_ratio"] = round(result[f"{op}_ours"]["seconds"] / result[f"{op}_peer"]["seconds"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("sd15", "sdxl", "both"), default="sd15")
    parser.add_argument("--small", action="store_true", help="tiny widths, same blocks: the plumbing in seconds")
    parser.add_argument("--work", type=Path, default=Path("/tmp/loraprep-bench-lora-tools"))
    parser.add_argument("--peer", type=Path, default=None, help="an sd-scripts checkout")
    parser.add_argument("--peer-python", default=sys.executable,
                        help="the Python of sd-scripts' own environment (its pinned transformers, torchvision)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # steadier on a shared CPU; set it to use more cores
    families = ("sd15", "sdxl") if args.family == "both" else (args.family,)
    results = [run(f, args.work / (f + ("-small" if args.small else "")), args.small, args.peer, args.peer_python)
               for f in families]
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
