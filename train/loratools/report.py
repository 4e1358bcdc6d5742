"""What resize and merge say they did: per module, per block and overall, the rank chosen and the
share of the weight change's Frobenius norm kept (what a user weighs a smaller file against)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from train.loratools.deltas import block_label


@dataclass(frozen=True)
class ModuleResult:
    name: str
    rank_before: int | None  # None: not a low-rank module (LoKr full matrix) or a merge of several
    rank_after: int
    norm: float  # ‖ΔW‖_F before
    kept_norm: float  # ‖ΔW written‖_F, the best approximation's

    @property
    def block(self) -> str:
        return block_label(self.name)

    @property
    def kept(self) -> float:
        return 1.0 if self.norm == 0 else self.kept_norm / self.norm


@dataclass(frozen=True)
class BlockRow:
    block: str
    modules: int
    ranks: tuple[int, int]  # (smallest, largest) rank written
    mean_rank: float
    kept: float


def summarize(label: str, results: Iterable[ModuleResult]) -> BlockRow:
    results = list(results)
    total = sum(r.norm ** 2 for r in results)
    kept = 1.0 if total == 0 else (sum(r.kept_norm ** 2 for r in results) / total) ** 0.5
    ranks = [r.rank_after for r in results]
    return BlockRow(label, len(results), (min(ranks), max(ranks)), sum(ranks) / len(ranks), kept)


@dataclass(frozen=True)
class ToolReport:
    """One written LoRA: its modules, notes worth saying, and the file sizes."""

    out: Path
    modules: list[ModuleResult]
    size_before: int  # the input's size (a merge: all inputs together)
    size_after: int
    notes: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)  # tensors written back unchanged (bundled embeddings)

    def blocks(self) -> list[BlockRow]:
        order: dict[str, list[ModuleResult]] = {}
        for result in self.modules:
            order.setdefault(result.block, []).append(result)
        return [summarize(label, results) for label, results in order.items()]

    def overall(self) -> BlockRow:
        return summarize("all", self.modules)

    def to_dict(self) -> dict:
        overall = self.overall()
        return {"out": str(self.out), "size_before": self.size_before, "size_after": self.size_after,
                "modules": len(self.modules), "kept": overall.kept, "ranks": list(overall.ranks),
                "blocks": [vars(row) | {"ranks": list(row.ranks)} for row in self.blocks()],
                "notes": self.notes, "carried": self.carried,
                "per_module": [{"name": r.name, "rank_before": r.rank_before, "rank_after": r.rank_after,
                                "kept": r.kept} for r in self.modules]}
