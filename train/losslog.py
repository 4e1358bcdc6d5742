"""The loss log: per-step loss, EMA and learning rate, as loss.csv (and loss.png at the end).

Why its own file: the log is the one record of a run's progress a user keeps, and a resumed run
continues it exactly (rows up to the resumed step kept, later ones dropped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prep.errors import LoraprepError


@dataclass
class LossLog:
    """Per-step loss, kept in memory and written as CSV (and a PNG plot at the end)."""

    path: Path | None = None
    rows: list[tuple[int, int, float, float, float]] = field(default_factory=list)

    @classmethod
    def resume(cls, path: Path, step: int) -> LossLog:
        """Continue a log: rows up to the resumed step are kept, later ones (lost with the kill) dropped."""
        log = cls(path)
        if step and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines()[1:]:
                parts = line.split(",")
                if len(parts) == 5 and int(parts[0]) <= step:
                    loss, ema, lr = (float(p) for p in parts[2:])
                    log.rows.append((int(parts[0]), int(parts[1]), loss, ema, lr))
        return log

    def add(self, metrics: dict[str, Any], tracker: Any = None) -> None:
        m = metrics
        self.rows.append((m["step"], m["epoch"], m["loss"], m["loss_ema"], m["lr"]))
        if tracker is not None:
            tracker.add_scalars("train", {k: m[k] for k in ("loss", "loss_ema", "lr")}, m["step"])
            if "keys_scaled" in m:  # --scale-weight-norms, as sd-scripts logs it under max_norm/
                tracker.add_scalars("max_norm", {k: m[k] for k in ("keys_scaled", "mean_norm", "max_norm")}, m["step"])

    def write(self) -> Path | None:
        """Write loss.csv atomically; a full disk is a LoraprepError that says what is intact."""
        if self.path is None:
            return None
        lines = ["step,epoch,loss,loss_ema,lr"] + [f"{s},{e},{l:.6g},{m:.6g},{r:.6g}" for s, e, l, m, r in self.rows]
        self._write(self.path, ("\n".join(lines) + "\n").encode("utf-8"))
        return self.path

    def _write(self, path: Path, data: bytes) -> None:
        from prep.atomic import write_bytes_atomic

        from train.checkpoint import list_checkpoints, resume_hint

        try:
            write_bytes_atomic(path, data)
        except OSError as exc:
            step = self.rows[-1][0] if self.rows else 0
            saved = list_checkpoints(path.parent)
            kept = "and the checkpoints are intact" if saved else "is intact (no checkpoint was saved yet)"
            raise LoraprepError(f"could not write {path} at step {step}: {exc.strerror or exc}; "
                                f"the previous {path.name} {kept}", hint=resume_hint(bool(saved))) from exc

    def plot(self) -> Path | None:
        import io

        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        if self.path is None or not self.rows:
            return None
        figure = Figure(figsize=(7, 3.5), dpi=100)
        axes = figure.add_subplot()
        steps = [r[0] for r in self.rows]
        axes.plot(steps, [r[2] for r in self.rows], alpha=0.35, label="loss")
        axes.plot(steps, [r[3] for r in self.rows], label="loss (EMA)")
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.legend()
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        path = self.path.with_suffix(".png")
        self._write(path, buffer.getvalue())
        return path
