"""The SVD routes of the lora tools give ΔW's exact singular values, whichever route a module takes."""

from __future__ import annotations

import pytest
import torch

from loras import single_thread  # noqa: F401  (autouse)
from train.loratools.svd import chosen_rank, factor_svd, kron_svd, matrix_svd


def reference(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.double())


def test_factor_svd_is_the_svd_of_the_product() -> None:
    torch.manual_seed(0)
    up, down = torch.randn(40, 6), torch.randn(6, 90)
    dec = factor_svd(up, down)
    torch.testing.assert_close(dec.S.double(), reference(up @ down)[:6], rtol=1e-5, atol=1e-5)
    a, b = dec.truncated(6)
    torch.testing.assert_close(a @ b, up @ down, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("limit", [None, 3])
def test_kron_svd_is_the_svd_of_the_kronecker_product(limit: int | None) -> None:
    torch.manual_seed(1)
    a, b = torch.randn(4, 5), torch.randn(8, 18)
    dec, full = kron_svd(a, b, limit), torch.kron(a, b)
    torch.testing.assert_close(dec.S.double(), reference(full), rtol=1e-5, atol=1e-5)
    rank = limit or len(dec.S)
    up, down = dec.truncated(rank)
    error = float((up.double() @ down.double() - full.double()).norm())
    assert error == pytest.approx(float(reference(full)[rank:].pow(2).sum().sqrt()), abs=1e-4)


@pytest.mark.parametrize("bound", [12, 2, None])  # right; too small (the range check falls back); unknown
def test_randomized_svd_is_used_only_when_it_captures_the_whole_range(bound: int | None) -> None:
    torch.manual_seed(2)
    matrix = torch.randn(300, 12) @ torch.randn(12, 200)
    dec = matrix_svd(matrix, bound)
    assert len(dec.S) == 12  # the rest is rounding noise
    torch.testing.assert_close(dec.S.double(), reference(matrix)[:12], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(("rank", "method", "param", "expected"), [
    (3, None, None, 3), (9, None, None, 4), (None, "sv_ratio", 1.0, 1), (None, "sv_fro", 1.0, 4),
    (None, "sv_cumulative", 0.55, 2), (1, "sv_fro", 1.0, 1),
])
def test_chosen_rank(rank: int | None, method: str | None, param: float | None, expected: int) -> None:
    assert chosen_rank(torch.tensor([8.0, 4.0, 2.0, 1.0]), rank, method, param) == expected
