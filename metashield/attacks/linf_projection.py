"""The per-step projection of an L∞ attack onto a threat model's feasible set, around a fixed original.

An attack projects every iterate, so this is on its hot path: everything that depends only on the original
sample is computed once, and each kind of column (plain, one-hot group, linear integer, log-scaled integer)
is read and written as one contiguous slice where the columns allow it (``Constraints.block_order`` orders
an attack's columns so), because a gather of scattered columns costs more than the arithmetic on them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from metashield.attacks.constraints import Constraints

Columns = slice | Tensor


def pick_category(indicator: Tensor, original: Tensor, one: Tensor, zero: Tensor, banned=None) -> Tensor:
    """z-values of the one-hot vector of the category with the largest indicator [..., m].

    The box caps every indicator at 1, so a category pushed all the way up ties with the original one; the
    tie goes to the category the attack moved towards. A sample whose original category was unseen in
    training (all zeros) keeps that state unless some indicator passes 1/2. ``banned`` [..., m] rules out
    categories the budget cannot reach.
    """
    preference = indicator - 1e-3 * original
    if banned is not None:
        preference = preference.masked_fill(banned, -math.inf)
    pick = preference.argmax(-1, keepdim=True)
    chosen = torch.where(torch.zeros_like(indicator, dtype=torch.bool).scatter(-1, pick, True), one, zero)
    none = (indicator.amax(-1, keepdim=True) < 0.5) & (original.abs().amax(-1, keepdim=True) == 0)
    return torch.where(none, zero.expand_as(chosen), chosen)


def as_columns(idx: Tensor) -> Columns:
    """``idx`` [k] as a slice when it is a run of consecutive columns, else itself."""
    start = int(idx[0]) if idx.numel() else 0
    run = torch.arange(start, start + idx.numel(), device=idx.device)
    return slice(start, start + idx.numel()) if idx.numel() and bool((idx == run).all()) else idx


def take(x: Tensor, columns: Columns) -> Tensor:
    return x[..., columns] if isinstance(columns, slice) else x.index_select(-1, columns)


def replace_columns(x: Tensor, updates: list[tuple[Columns, Tensor]]) -> Tensor:
    """``x`` [..., D] with each update's columns set to its values [..., k], out of place.

    Slices are spliced with one ``cat``, which torch.compile fuses into a single pass; writing them in place
    compiles to a pass per slice over a copy of ``x``, slower than the eager code.
    """
    spliced = sorted(((c.start, c.stop, v) for c, v in updates if isinstance(c, slice)), key=lambda u: u[0])
    pieces, at = [], 0
    for start, stop, value in spliced:
        pieces += [x[..., at:start], value]
        at = stop
    out = torch.cat([*pieces, x[..., at:]], -1) if spliced else x
    for columns, value in updates:
        if not isinstance(columns, slice):
            out = out.index_copy(-1, columns, value)
    return out


class LinfProjector:
    """Projection onto the constraints ∩ L∞ ball around a fixed x0 [..., D].

    Under L∞ the ball, the box and the immutable columns intersect into one per-coordinate interval, so a
    step is a single clamp; the integer columns take the nearest whole raw value inside that interval (the
    nearest when it fits, else the one towards the original, which always fits), and a one-hot group may
    only switch to categories whose indicator change fits the budget.
    """

    def __init__(self, c: Constraints, x0: Tensor, eps: float) -> None:
        self.lo, self.hi = c.linf_interval(x0, eps)
        # Integer columns in two sets, linear and log1p-scaled, so no step evaluates both maps.
        self.ints = []
        for log in (False, True):
            idx = c.int_idx[c.int_log == log]
            if not idx.numel():
                continue
            mean, std = c.int_mean[c.int_log == log], c.int_std[c.int_log == log]
            columns = as_columns(idx)
            lo_raw = _raw(take(self.lo, columns), log, mean, std)
            hi_raw = _raw(take(self.hi, columns), log, mean, std)
            # Slack for the float noise of a z-value that encodes a whole number exactly: float32 inputs
            # carry ~1e-7 relative error into the raw value, float64 ones ~1e-16.
            rel = 1e-6 if torch.finfo(x0.dtype).bits <= 32 else 1e-12
            k_lo = torch.ceil(lo_raw - rel * lo_raw.abs().clamp_min(1.0))
            k_hi = torch.floor(hi_raw + rel * hi_raw.abs().clamp_min(1.0))
            # A clipped original (raw value beyond the clip) may have no whole value in reach: it stays.
            stuck = k_lo > k_hi
            self.ints.append(
                (columns, log, mean, std, take(x0, columns), k_lo, torch.maximum(k_lo, k_hi), stuck)
            )
        self.groups = []
        tol = c.tolerance(x0.dtype)
        for group in c.groups:
            one, zero = c.one_z[group], c.zero_z[group]
            original = (x0[..., group] - zero) / (one - zero)
            gap = (one - zero).abs()
            # Switching from the original category moves its column and the new one by their gaps.
            leave = (original * gap).amax(-1, keepdim=True)
            banned = ((gap > eps + tol) | (leave > eps + tol)) & (original < 0.5)
            self.groups.append((as_columns(group), one, zero, original, banned))

    def __call__(self, x: Tensor) -> Tensor:
        x = torch.clamp(x, self.lo, self.hi)
        # Integer columns and one-hot groups are disjoint, so each reads the clamped x.
        updates = []
        for columns, log, mean, std, x0i, k_lo, k_hi, stuck in self.ints:
            xi = take(x, columns)
            k = torch.clamp(torch.round(_raw(xi, log, mean, std)), k_lo, k_hi)
            # log(k + 1) is log1p(k) to the ulp for a whole k (1 + k is exact), and twice as fast.
            rounded = (((torch.log(k + 1) if log else k) - mean) / std).to(x.dtype)
            updates.append((columns, torch.where(stuck | (xi == x0i), x0i, rounded)))
        for columns, one, zero, original, banned in self.groups:
            indicator = (take(x, columns) - zero) / (one - zero)
            updates.append((columns, pick_category(indicator, original, one, zero, banned)))
        return replace_columns(x, updates)


def _raw(z: Tensor, log: bool, mean: Tensor, std: Tensor) -> Tensor:
    """Raw values [..., k] of z-values of integer columns, in float64."""
    enc = z.double() * std + mean
    # exp(enc) - 1 has the absolute error of expm1 (~1e-16 of the value), which is what rounding to whole
    # numbers needs, and is several times faster: expm1's extra precision is relative, near 0.
    return torch.exp(enc) - 1 if log else enc
