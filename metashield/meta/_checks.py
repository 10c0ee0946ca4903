"""Shape checks on episode tensors: a wrong layout fails with a clear message instead of deep inside vmap."""

from __future__ import annotations

from torch import Tensor


def check_x(name: str, x: Tensor, tasks: int | None = None, dim: int | None = None) -> None:
    """x must be [T, N, D], with T == tasks and D == dim where those are given."""
    if x.dim() != 3:
        raise ValueError(f"{name} must be [T, N, D] (3 dims), got shape {tuple(x.shape)}")
    if tasks is not None and x.shape[0] != tasks:
        raise ValueError(f"{name} must be [T={tasks}, N, D], got shape {tuple(x.shape)}")
    if dim is not None and x.shape[2] != dim:
        raise ValueError(f"{name} must be [T, N, D={dim}], got shape {tuple(x.shape)}")


def check_y(name: str, y: Tensor, x_name: str, x: Tensor) -> None:
    """y must be [T, N, ...] with T and N taken from its inputs x."""
    expected = tuple(x.shape[:2])
    if y.dim() < 2 or tuple(y.shape[:2]) != expected:
        raise ValueError(
            f"{name} must be [T={expected[0]}, N={expected[1]}, ...] to match {x_name}, "
            f"got shape {tuple(y.shape)}"
        )


def check_episode(
    support_x: Tensor, support_y: Tensor, query_x: Tensor | None, query_y: Tensor | None
) -> None:
    """Support [T, S, D], [T, S, ...]; query (when given) [T, Q, D], [T, Q, ...] with the same T and D."""
    check_x("support_x", support_x)
    check_y("support_y", support_y, "support_x", support_x)
    if query_x is None or query_y is None:
        return
    check_x("query_x", query_x, tasks=support_x.shape[0], dim=support_x.shape[2])
    check_y("query_y", query_y, "query_x", query_x)
