"""Best low-rank approximations of weight changes, and how many ranks to keep.

Why three routes: a plain LoRA's ΔW = up·down is already low-rank, and its exact SVD comes from the
factors alone (two thin QRs and an r×r SVD), never forming the out×in matrix; a LoHa's too (its
Hadamard product has exact factors of rank r², see ModuleDelta.exact_factors). A LoKr's ΔW is a
Kronecker product, whose singular vectors and values are the Kronecker products of its halves',
so two small SVDs give it exactly. Anything else (Tucker LoHa, sums with such modules) is formed
and decomposed, with `torch.svd_lowrank` only where the matrix's rank is known to be small enough for
the random range finder to capture all of it (then it is exact up to rounding, and checked), else
the full `torch.linalg.svd`.

Rank choice (`--dynamic`) has resize_lora.py's meanings, the rank capped by `--rank`:
- `sv_ratio X`: keep the singular values larger than the largest divided by X;
- `sv_fro X`: the fewest ranks whose Frobenius norm is at least X of the whole's (0–1);
- `sv_cumulative X`: the fewest ranks whose singular values sum to at least X of the total (0–1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
_LOWRANK_OVERSAMPLE = 8
NOISE = 1e-6  # relative size below which a singular value or a residual is float32 rounding


@dataclass(frozen=True)
class Decomposition:
    """ΔW (flattened to out × in·k·k) = U·diag(S)·Vh, singular values largest first, zeros dropped.
    S is complete; U and Vh may hold only the leading vectors (`limit`), as many as can be asked for."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor

    def truncated(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) of the best rank-`rank` approximation, √S on each side (balanced, so fp16 storage
        loses nothing to range)."""
        assert rank <= self.U.shape[1], "asked for more singular vectors than were computed"
        root = self.S[:rank].sqrt()
        return self.U[:, :rank] * root, root[:, None] * self.Vh[:rank]

    def kept_share(self, rank: int) -> float:
        """‖best rank-`rank` approximation‖_F / ‖ΔW‖_F (1.0 for a zero ΔW)."""
        total = float(self.S.pow(2).sum())
        return 1.0 if total == 0 else (float(self.S[:rank].pow(2).sum()) / total) ** 0.5


def factor_svd(up: torch.Tensor, down: torch.Tensor) -> Decomposition:
    """The exact SVD of up @ down ([out, r] @ [r, in]) from the factors (r small)."""
    up, down = up.double(), down.double()
    q_up, r_up = torch.linalg.qr(up)
    q_down, r_down = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T)
    return _nonzero(q_up @ u, s, vh @ q_down.T)


def matrix_svd(matrix: torch.Tensor, rank_bound: int | None = None) -> Decomposition:
    """The SVD of a formed ΔW; `rank_bound` (what the algorithm allows, e.g. r² for LoHa) lets a
    matrix far from full rank take the randomized route, checked to have captured the whole range."""
    matrix = matrix.double()
    smallest = min(matrix.shape)
    if rank_bound is not None and rank_bound + _LOWRANK_OVERSAMPLE < smallest // 2:
        u, s, v = torch.svd_lowrank(matrix, q=rank_bound + _LOWRANK_OVERSAMPLE, niter=2)
        residual = matrix - (u * s) @ v.T
        if float(residual.norm()) <= NOISE * max(float(matrix.norm()), 1e-30):
            return _nonzero(u, s, v.T)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return _nonzero(u, s, vh)


def kron_svd(a: torch.Tensor, b: torch.Tensor, limit: int | None = None) -> Decomposition:
    """The exact SVD of kron(a, b): singular values σᵢ(a)·σⱼ(b), vectors kron(uᵢ, uⱼ) and kron(vᵢ, vⱼ);
    only the leading `limit` vectors are formed (all when None)."""
    ua, sa, vha = torch.linalg.svd(a.double(), full_matrices=False)
    ub, sb, vhb = torch.linalg.svd(b.double(), full_matrices=False)
    s = torch.outer(sa, sb).flatten()
    order = torch.argsort(s, descending=True)
    chosen = order[:limit] if limit is not None else order
    i, j = chosen // sb.numel(), chosen % sb.numel()
    u = (ua[:, i][:, None, :] * ub[:, j][None, :, :]).reshape(-1, chosen.numel())
    vh = (vha[i][:, :, None] * vhb[j][:, None, :]).reshape(chosen.numel(), -1)
    return _nonzero(u, s[order], vh)


def _nonzero(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> Decomposition:
    """Drop singular values that are float32 rounding noise (≤ NOISE × the largest; together they are
    below 1e-10 of ΔW's squared norm); keep at least one."""
    keep = max(1, int((s > s[0] * NOISE).sum())) if s.numel() and float(s[0]) > 0 else 1
    return Decomposition(u[:, :keep].float(), s[:keep].float(), vh[:keep].float())


def chosen_rank(s: torch.Tensor, rank: int | None, dynamic: str | None = None, param: float | None = None) -> int:
    """How many singular values to keep: `rank` (capped by what there is), or the `dynamic` rule with
    `param`, capped by `rank` when given; at least 1."""
    available = int(s.numel())
    if dynamic is None:
        assert rank is not None
        return max(1, min(rank, available))
    assert param is not None
    values = s.double()
    if float(values[0]) <= 0:
        return 1
    if dynamic == "sv_ratio":
        keep = int((values > values[0] / param).sum())
    elif dynamic == "sv_fro":
        shares = values.pow(2).cumsum(0) / values.pow(2).sum()
        keep = int(torch.searchsorted(shares, torch.tensor(param, dtype=torch.float64) ** 2 - 1e-12)) + 1
    elif dynamic == "sv_cumulative":
        shares = values.cumsum(0) / values.sum()
        keep = int(torch.searchsorted(shares, torch.tensor(param, dtype=torch.float64) - 1e-12)) + 1
    else:
        raise ValueError(dynamic)
    return max(1, min(keep, available, rank if rank is not None else available))
