"""Domain constraints in the model's standardised feature space, compiled from a raw-unit threat schema.

Attacks move samples in z-space (the pipeline's output: one-hot, log1p, standardised, clipped), but the
threat schema speaks raw units. Every map the pipeline applies per column is monotone, so a raw interval is
a z interval, an integer raw value is a point of a known grid in z, and a category is a known one-hot
vector. ``Constraints.project`` enforces, in this order: immutable columns, the epsilon-ball, the box
(documented bounds and the pipeline's clip), increase-only columns, integer grids, valid one-hot groups.
Each later step only moves a coordinate towards the original sample (or reverts it), so no step undoes an
earlier one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch import Tensor

from metashield.attacks.linf_projection import LinfProjector, pick_category
from metashield.data.preprocess import FeaturePipeline
from metashield.data.schema import ThreatSchema

NORMS = ("linf", "l2", "edits")
"""``edits``: a budget of whole edits in raw units (``Constraints.edit_steps``), for binary and count features
whose smallest change is already more than a z-unit budget allows."""


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def check_eps(eps: float, norm: str = "linf") -> None:
    """A budget: a finite number >= 0 (z-units), and a whole number of edits for the ``edits`` norm."""
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0 (z-units), got {eps!r}")
    if norm == "edits" and eps != int(eps):
        raise ValueError(f"an edits budget is a whole number of edits, got eps = {eps}")


def ball(delta: Tensor, eps: float, norm: str) -> Tensor:
    """Project perturbations [..., D] onto the ``norm`` ball of radius ``eps`` (per row)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    length = delta.norm(dim=-1, keepdim=True)
    return delta * (eps / length.clamp_min(eps if eps > 0 else 1.0)).clamp(max=1.0)


def _dist(delta: Tensor, norm: str) -> Tensor:
    """Per-row length of ``delta`` in ``linf`` or ``l2`` (``edits`` are counted by ``Constraints``)."""
    return delta.abs().amax(-1) if norm == "linf" else delta.norm(dim=-1)


@dataclass(frozen=True)
class Constraints:
    """Feasible set of a threat model for D standardised features (all tensors on one device/dtype).

    lower/upper [D]: box in z-units (documented bounds and the pipeline's clip). mutable [D] bool.
    increase_only [D] bool: columns that may only rise above the original sample's value (the pipeline's
    maps are increasing, so a raw rise is a z rise).
    int_idx [k]: columns whose raw value is an integer; int_mean/int_std [k] and int_log [k] invert the
    pipeline (raw = expm1(z·std + mean) when log-scaled, else z·std + mean), float64 always.
    groups: column indices of each MUTABLE one-hot group; one_z/zero_z [D]: the z-values of indicator 1
    and 0 for one-hot columns.
    names: the output feature names, for messages.
    """

    lower: Tensor
    upper: Tensor
    mutable: Tensor
    increase_only: Tensor
    int_idx: Tensor
    int_mean: Tensor
    int_std: Tensor
    int_log: Tensor
    groups: tuple[Tensor, ...]
    one_z: Tensor
    zero_z: Tensor
    clip: float | None
    names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return int(self.lower.shape[0])

    def to(self, like: Tensor) -> Constraints:
        """The same constraints on ``like``'s device, float tensors in its dtype."""
        moved = {}
        for name in ("lower", "upper", "one_z", "zero_z"):
            moved[name] = getattr(self, name).to(device=like.device, dtype=like.dtype)
        # The integer grid is computed in float64 whatever the model's dtype: see ``_raw``.
        for name in ("mutable", "increase_only", "int_idx", "int_log", "int_mean", "int_std"):
            moved[name] = getattr(self, name).to(device=like.device)
        moved["groups"] = tuple(g.to(device=like.device) for g in self.groups)
        return replace(self, **moved)

    def select(self, columns: Tensor) -> Constraints:
        """The constraints of the selected columns, for inputs [..., k] that hold only those columns.

        columns: a bool mask [D], or int64 indices [k] giving the order of the inputs' columns. A one-hot
        group must be selected whole or not at all.
        """
        if columns.dtype == torch.bool:
            if columns.shape != self.mutable.shape:
                raise ValueError(f"columns must be a bool mask of shape [{self.n_features}], got {columns}")
            columns = columns.nonzero().squeeze(-1)
        position = torch.full_like(self.mutable, -1, dtype=torch.int64)
        position[columns] = torch.arange(columns.numel(), device=columns.device)
        kept_ints = position[self.int_idx] >= 0
        groups = []
        for group in self.groups:
            inside = position[group] >= 0
            if bool(inside.any()) != bool(inside.all()):
                names = [self.names[j] for j in group.tolist()]
                raise ValueError(f"one-hot group {names} is only partly selected")
            if bool(inside.all()):
                groups.append(position[group])
        return replace(
            self,
            lower=self.lower[columns],
            upper=self.upper[columns],
            mutable=self.mutable[columns],
            increase_only=self.increase_only[columns],
            int_idx=position[self.int_idx[kept_ints]],
            int_mean=self.int_mean[kept_ints],
            int_std=self.int_std[kept_ints],
            int_log=self.int_log[kept_ints],
            groups=tuple(groups),
            one_z=self.one_z[columns],
            zero_z=self.zero_z[columns],
            names=tuple(self.names[j] for j in columns.tolist()),
        )

    def block_order(self, columns: Tensor) -> Tensor:
        """int64 [k]: the columns of bool mask ``columns`` [D] ordered in blocks, each kind of column the L∞
        projection treats alike contiguous: plain columns, each one-hot group, linear integer columns, then
        log-scaled integer columns (see ``linf_projection``)."""
        kind = torch.zeros_like(self.mutable, dtype=torch.int64)
        for i, group in enumerate(self.groups):
            kind[group] = 1 + i
        kind[self.int_idx[~self.int_log]] = len(self.groups) + 1
        kind[self.int_idx[self.int_log]] = len(self.groups) + 2
        index = columns.nonzero().squeeze(-1)
        return index[torch.sort(kind[index], stable=True).indices]

    def tolerance(self, dtype: torch.dtype) -> float:
        """Slack for checks: a few ulps at the largest |z| the pipeline produces."""
        scale = max(1.0, self.clip or 1.0)
        return 16 * torch.finfo(dtype).eps * scale

    def _raw(self, z: Tensor) -> Tensor:
        enc = z.double() * self.int_std + self.int_mean
        return torch.where(self.int_log, torch.expm1(enc), enc)

    def _z(self, raw: Tensor) -> Tensor:
        enc = torch.where(self.int_log, torch.log1p(raw.clamp_min(-1 + 1e-12)), raw)
        return (enc - self.int_mean) / self.int_std

    def project(self, x: Tensor, x0: Tensor, eps: float, norm: str = "linf") -> Tensor:
        """The feasible point for candidate ``x`` [..., D] around original ``x0`` [..., D].

        Integer columns round to the nearest whole raw value when that stays in the L∞ ball, otherwise (and
        always under L2) towards the original value, which never lengthens the perturbation.
        """
        return self.projector(x0, eps, norm)(x)

    def projector(self, x0: Tensor, eps: float, norm: str = "linf") -> Callable[[Tensor], Tensor]:
        """``project`` with ``x0`` and ``eps`` fixed: an attack projects every iterate around the same
        original, so whatever depends only on it (the L∞ box, the integer range, allowed categories) is
        computed once here rather than at every step."""
        check_norm(norm)
        if norm == "edits":
            # Edits are feasible by construction (``edit_steps``); ``violations`` checks the count.
            return lambda x: x
        return LinfProjector(self, x0, eps) if norm == "linf" else partial(self._project_l2, x0=x0, eps=eps)

    def _frozen_under_edits(self) -> Tensor:
        """bool [D]: immutable columns and every one-hot column (a category switch is not a unit edit)."""
        frozen = ~self.mutable.clone()
        for group in self.groups:
            frozen[group] = True
        return frozen

    def edit_steps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(up, down) [..., D]: ``x`` after one edit of each feature alone, in z-units.

        An edit moves an integer column by one whole raw unit (one more or one fewer word, flag, packet;
        log scaling inverted exactly) and any other mutable column to its bound. An edit that would leave
        the bounds, and any immutable or one-hot column, leaves the value where it is.
        """
        up = torch.where(self.mutable, self.upper, x).expand_as(x).clone()
        down = torch.where(self.mutable & ~self.increase_only, self.lower, x).expand_as(x).clone()
        if self.int_idx.numel():
            raw = torch.round(self._raw(x[..., self.int_idx]))
            lo, hi = self.lower[self.int_idx].double(), self.upper[self.int_idx].double()
            tol = self.tolerance(torch.float64)
            for out, step in ((up, 1.0), (down, -1.0)):
                z = self._z(raw + step)
                fits = (z >= lo - tol) & (z <= hi + tol)
                if step < 0:
                    fits &= ~self.increase_only[self.int_idx]
                out[..., self.int_idx] = torch.where(fits, z, x[..., self.int_idx].double()).to(x.dtype)
        frozen = self._frozen_under_edits()
        return torch.where(frozen, x, up), torch.where(frozen, x, down)

    def edit_count(self, x: Tensor, x0: Tensor) -> Tensor:
        """Edits between ``x0`` and ``x`` [..., D] per row: whole raw units moved on integer columns plus
        one per other changed column."""
        changed = (x - x0).abs() > self.tolerance(x.dtype)
        count = changed.sum(-1).to(torch.float64)
        if self.int_idx.numel():
            units = torch.round(self._raw(x[..., self.int_idx])) - torch.round(
                self._raw(x0[..., self.int_idx])
            )
            count = count - changed[..., self.int_idx].sum(-1) + units.abs().sum(-1)
        return count

    def linf_interval(self, x0: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """(lo, hi) [..., D]: the L∞ ball around x0 [..., D] intersected with the box, the immutable columns
        (held at x0) and the increase-only ones (never below x0); integers and one-hot groups aside."""
        lo = torch.where(self.mutable, torch.maximum(x0 - eps, self.lower), x0)
        lo = torch.where(self.increase_only, torch.maximum(lo, x0), lo)
        hi = torch.where(self.mutable, torch.minimum(x0 + eps, self.upper), x0)
        # Keep x0 itself inside even where float rounding put it an ulp outside the documented box.
        return torch.minimum(lo, x0), torch.maximum(hi, x0)

    def _project_l2(self, x: Tensor, *, x0: Tensor, eps: float) -> Tensor:
        delta = torch.where(self.mutable, x - x0, torch.zeros_like(x))
        delta = torch.where(self.increase_only, delta.clamp_min(0), delta)
        x = torch.maximum(torch.minimum(x0 + ball(delta, eps, "l2"), self.upper), self.lower)
        x = torch.where(self.increase_only, torch.maximum(x, x0), x)
        if self.int_idx.numel():
            xi, x0i = x[..., self.int_idx], x0[..., self.int_idx]
            raw = self._raw(xi)
            slack = 1e-6 * raw.abs().clamp_min(1.0)
            toward = self._z(torch.where(x0i >= xi, torch.ceil(raw - slack), torch.floor(raw + slack)))
            lower, upper = self.lower[self.int_idx].double(), self.upper[self.int_idx].double()
            rounded = torch.maximum(torch.minimum(toward, upper), lower).to(x.dtype)
            # An untouched coordinate keeps its exact original value rather than a float round trip of it.
            x[..., self.int_idx] = torch.where(xi == x0i, x0i, rounded)
        for group in self.groups:
            x = self._one_hot_l2(x, x0, group, eps)
        return x

    def _one_hot_l2(self, x: Tensor, x0: Tensor, group: Tensor, eps: float) -> Tensor:
        one, zero = self.one_z[group], self.zero_z[group]
        orig = x0[..., group]
        chosen = pick_category((x[..., group] - zero) / (one - zero), (orig - zero) / (one - zero), one, zero)
        candidate = x.clone()
        candidate[..., group] = chosen
        fits = _dist(candidate - x0, "l2") <= eps + self.tolerance(x.dtype)
        candidate[..., group] = torch.where(fits.unsqueeze(-1), chosen, orig)
        return candidate

    def violations(self, x: Tensor, x0: Tensor, eps: float, norm: str = "linf") -> dict[str, int]:
        """Rows of [..., D] breaking each constraint, by constraint; all 0 for a valid attack."""
        tol = self.tolerance(x.dtype)
        delta = x - x0
        length = self.edit_count(x, x0) if norm == "edits" else _dist(delta, norm)
        counts = {
            "ball": length > eps + (0.5 if norm == "edits" else tol),
            "immutable": (delta.abs() > tol)[..., ~self.mutable].any(-1),
            "bounds": ((x < self.lower - tol) | (x > self.upper + tol)).any(-1),
            "direction": (delta < -tol)[..., self.increase_only].any(-1),
        }
        if self.int_idx.numel():
            xi = x[..., self.int_idx]
            back = self._z(torch.round(self._raw(xi))).to(x.dtype)
            clipped = xi.abs() >= (self.clip if self.clip is not None else math.inf) - tol
            counts["integer"] = (((back - xi).abs() > tol) & ~clipped).any(-1)
        else:
            counts["integer"] = torch.zeros_like(counts["ball"])
        bad_group = torch.zeros_like(counts["ball"])
        for group in self.groups:
            one, zero = self.one_z[group], self.zero_z[group]
            is_one, is_zero = (x[..., group] - one).abs() <= tol, (x[..., group] - zero).abs() <= tol
            valid = (is_one | is_zero).all(-1) & (is_one.sum(-1) <= 1)
            unchanged = (x[..., group] - x0[..., group]).abs().amax(-1) <= tol
            bad_group |= ~(valid & ((is_one.sum(-1) == 1) | unchanged))
        counts["one_hot"] = bad_group
        return {name: int(mask.sum()) for name, mask in counts.items()}


def sum_violations(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Per-constraint totals of several ``Constraints.violations`` results (attacks, batches, folds)."""
    total: dict[str, int] = {}
    for c in counts:
        for name, n in c.items():
            total[name] = total.get(name, 0) + n
    return total


def compile_constraints(
    pipeline: FeaturePipeline, schema: ThreatSchema, *, dtype: torch.dtype = torch.float32
) -> Constraints:
    """The z-space form of ``schema`` for the columns ``pipeline`` outputs."""
    sources = pipeline.feature_sources()
    schema.check_columns(pipeline.input_columns, "threat schema")
    clip = pipeline.clip
    big = clip if clip is not None else math.inf
    d = len(sources)
    lower, upper = np.full(d, -big), np.full(d, big)
    mutable = np.ones(d, dtype=bool)
    increase_only = np.zeros(d, dtype=bool)
    one_z, zero_z = np.zeros(d), np.zeros(d)
    ints: list[int] = []
    groups: dict[str, list[int]] = {}
    for j, (column, value, log, mean, std) in enumerate(sources):
        spec = schema.spec(column)
        mutable[j], increase_only[j] = spec.mutable, spec.increase_only

        def z(raw: float, log: bool = log, mean: float = mean, std: float = std) -> float:
            # The pipeline clips, so a rare category's indicator 1 may sit at the clip value, not at (1-m)/s.
            value = ((math.log1p(raw) if log else raw) - mean) / std
            return min(max(value, -big), big)

        if value is not None:
            if spec.increase_only:
                raise ValueError(f"threat schema: {column!r} is categorical, so it cannot be increase_only")
            one_z[j], zero_z[j] = z(1.0), z(0.0)
            lower[j], upper[j] = min(one_z[j], zero_z[j]), max(one_z[j], zero_z[j])
            groups.setdefault(column, []).append(j)
            continue
        if spec.lower is not None:
            lower[j] = max(lower[j], z(spec.lower))
        if spec.upper is not None:
            upper[j] = min(upper[j], z(spec.upper))
        if spec.integer:
            ints.append(j)
    names = tuple(pipeline.feature_names)
    int_idx = np.asarray(ints, dtype=np.int64)
    return Constraints(
        lower=torch.tensor(lower, dtype=dtype),
        upper=torch.tensor(upper, dtype=dtype),
        mutable=torch.tensor(mutable),
        increase_only=torch.tensor(increase_only),
        int_idx=torch.tensor(int_idx),
        int_mean=torch.tensor([sources[j][3] for j in ints], dtype=torch.float64),
        int_std=torch.tensor([sources[j][4] for j in ints], dtype=torch.float64),
        int_log=torch.tensor([sources[j][2] for j in ints], dtype=torch.bool),
        groups=tuple(torch.tensor(cols) for column, cols in groups.items() if schema.spec(column).mutable),
        one_z=torch.tensor(one_z, dtype=dtype),
        zero_z=torch.tensor(zero_z, dtype=dtype),
        clip=clip,
        names=names,
    )


def box_constraints(
    n_features: int, lower: float = -math.inf, upper: float = math.inf, *, dtype: torch.dtype = torch.float32
) -> Constraints:
    """Only a box (e.g. [0, 1] for image-style inputs, or nothing): every feature mutable and continuous."""
    return Constraints(
        lower=torch.full((n_features,), float(lower), dtype=dtype),
        upper=torch.full((n_features,), float(upper), dtype=dtype),
        mutable=torch.ones(n_features, dtype=torch.bool),
        increase_only=torch.zeros(n_features, dtype=torch.bool),
        int_idx=torch.zeros(0, dtype=torch.int64),
        int_mean=torch.zeros(0, dtype=torch.float64),
        int_std=torch.ones(0, dtype=torch.float64),
        int_log=torch.zeros(0, dtype=torch.bool),
        groups=(),
        one_z=torch.zeros(n_features, dtype=dtype),
        zero_z=torch.zeros(n_features, dtype=dtype),
        clip=None,
        names=tuple(f"x{j}" for j in range(n_features)),
    )
