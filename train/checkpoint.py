"""Training checkpoints: save atomically, keep the newest K, resume exactly.

A checkpoint is a folder `OUTPUT/checkpoints/step-00000120/` holding the trainable LoRA tensors,
the optimizer and scheduler states, the RNG states and the loop position (global step, epoch,
batches consumed in the epoch). It is written into a hidden temporary folder beside it and renamed
into place only when complete, so a full disk or a kill mid-save leaves the previous checkpoint
intact and `--resume latest` never picks up half a checkpoint. A checkpoint is the last thing a save
writes (after the step's LoRA files and loss.csv), and it lists those LoRA files, so a resume can
tell whether they are all there and rewrite any that are not.

Checkpoint files are read with `torch.load(weights_only=True)`: a pickle that would run code (or
any object other than tensors and plain containers) is refused with a clear error, never loaded.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prep.atomic import temp_prefix, write_bytes_atomic, write_text_atomic
from prep.errors import LoraprepError, UsageError

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
FORMAT = "loraprep.checkpoint/1"


@dataclass
class LoopState:
    """Where the loop is: what a resumed run needs to continue with the very next batch."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    loss_ema: float | None = None

    def advance(self, loss: float, micro_batches: int, *, end_of_epoch: bool, decay: float = 0.95) -> None:
        """Count one optimizer step over `micro_batches` batches; roll over to the next epoch at its end."""
        self.global_step += 1
        self.batch_in_epoch += micro_batches
        self.loss_ema = loss if self.loss_ema is None else decay * self.loss_ema + (1 - decay) * loss
        if end_of_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    state: LoopState
    lora: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    config: dict[str, Any]
    exports: tuple[str, ...] = ()  # the step's LoRA files (names in the output folder)


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are hidden and never listed)."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch generator states (JSON-able parts separate from tensors)."""
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, state: LoopState, *, lora: dict[str, Any], optimizer: dict[str, Any],
                    scheduler: dict[str, Any], config: dict[str, Any], exports: tuple[str, ...] = ()) -> Path:
    """Write a complete checkpoint folder or nothing; `exports` names the step's LoRA files already written.

    Raises LoraprepError naming the previous checkpoint when the save fails (disk full, permissions).
    """
    from safetensors.torch import save as save_tensors

    folder = checkpoint_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{state.global_step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=".tmp", dir=folder))
    rng = capture_rng()
    try:
        write_bytes_atomic(tmp / "lora.safetensors", save_tensors({k: v.contiguous() for k, v in lora.items()}))
        write_bytes_atomic(tmp / "optimizer.pt", _torch_bytes(optimizer))
        write_bytes_atomic(tmp / "scheduler.pt", _torch_bytes(scheduler))
        write_bytes_atomic(tmp / "rng.pt", _torch_bytes({k: v for k, v in rng.items() if k in ("torch", "cuda")}))
        write_text_atomic(tmp / "rng.json", json.dumps({k: rng[k] for k in ("python", "numpy")}))
        write_text_atomic(tmp / "state.json", json.dumps(
            {"format": FORMAT, "state": asdict(state), "config": config, "exports": list(exports)},
            indent=1, default=str) + "\n")
        os.chmod(tmp, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [p for p in list_checkpoints(output_dir) if p != final]
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise LoraprepError(f"could not save the checkpoint for step {state.global_step}: "
                            f"{exc.strerror or exc}; {kept}", hint=resume_hint(bool(previous))) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def resume_hint(resumable: bool) -> str:
    """What to do after a full disk stopped a run: `--resume latest` only where a checkpoint exists
    (without one it is a usage error, exit 2)."""
    if resumable:
        return "free disk space, then continue with `--resume latest`"
    return "free disk space, then run the same command again (no checkpoint was saved yet, so it starts over)"


def prune_checkpoints(output_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (keep 0 = keep all); returns what was removed."""
    if keep <= 0:
        return []
    old = list_checkpoints(output_dir)[:-keep]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def resolve_resume(output_dir: Path, resume: str) -> Path:
    """`latest` → the newest complete checkpoint under OUTPUT/checkpoints; otherwise the folder given."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise UsageError(f"--resume latest: no checkpoint under {checkpoint_dir(output_dir)}",
                             hint="start without --resume, or pass a checkpoint folder")
        return found[-1]
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise UsageError(f"--resume {resume}: not a checkpoint folder (no state.json)")
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable checkpoint state ({exc})",
                         hint="resume from another checkpoint folder") from exc
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path}: checkpoint format '{meta.get('format')}' is not {FORMAT}")
    rng = json.loads((path / "rng.json").read_text(encoding="utf-8"))
    rng.update(_load_torch(path / "rng.pt"))
    try:
        lora = load_file(path / "lora.safetensors")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise UsageError(f"{path / 'lora.safetensors'} is damaged ({exc})",
                         hint="resume from another checkpoint folder") from exc
    return Checkpoint(
        path=path, state=LoopState(**meta["state"]), lora=lora, optimizer=_load_torch(path / "optimizer.pt"),
        scheduler=_load_torch(path / "scheduler.pt"), rng=rng, config=meta.get("config", {}),
        exports=tuple(meta.get("exports", ())),
    )


def _load_torch(path: Path) -> Any:
    """A checkpoint's torch file, tensors and plain containers only: a pickle that would run code is
    refused (weights_only) and reported as the checkpoint's problem, not as a traceback."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path} is missing: the checkpoint is incomplete",
                         hint="resume from another checkpoint folder") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path} holds something other than tensors and plain settings (a pickle that could "
                         f"run code, or a damaged file); refusing to load it: {str(exc).splitlines()[0]}",
                         hint="resume only from checkpoints this tool wrote; start without --resume, or pass "
                              "another checkpoint folder") from exc
