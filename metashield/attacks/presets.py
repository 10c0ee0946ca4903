"""Named attacks built on the one engine, and the default ensemble of ``robust_evaluate``."""

from __future__ import annotations

from dataclasses import replace

from metashield.attacks.engine import Attack

PRESETS: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack("fgsm", loss="ce", rule="pgd", steps=1, step_size=1.0, start="input"),
        Attack("pgd", loss="ce", rule="pgd", steps=20, step_size=0.25),
        Attack("pgd-margin", loss="margin", rule="pgd", steps=20, step_size=0.25),
        Attack("apgd-ce", loss="ce", rule="apgd", steps=50, start="input"),
        Attack("apgd-margin", loss="margin", rule="apgd", steps=50, start="input"),
        Attack("mimicry", loss="margin", rule="pgd", steps=20, step_size=0.25, start="benign"),
        Attack("square", loss="margin", rule="square", steps=300, start="input"),
        Attack("edits", loss="margin", rule="greedy", norm="edits", steps=1, start="input"),
    )
}
"""L∞ presets (``get_attack(name, norm="l2")`` gives the L2 version). PGD steps a quarter of eps from a
random start; APGD starts at the input and halves its step when progress stalls; ``mimicry`` is PGD with the
margin loss from the benign row the sample can come closest to (it needs benign ``guides``); Square uses
scores only.
``edits``: the greedy attack whose eps counts whole raw edits (norm ``edits``), for binary/count features."""

DEFAULT_ENSEMBLE: tuple[str, ...] = ("pgd", "apgd-ce", "apgd-margin", "mimicry", "square")
"""White-box attacks with both losses, one from benign rows, plus the gradient-free check; the worst case per
sample is kept."""


def get_attack(name: str, **changes) -> Attack:
    """The preset ``name`` with fields replaced by ``changes`` (e.g. ``norm="l2"``, ``steps=100``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown attack {name!r}; attacks are {sorted(PRESETS)}")
    if changes.get("norm") is not None and (changes["norm"] == "edits") != (PRESETS[name].norm == "edits"):
        raise ValueError(
            f"norm {changes['norm']!r} does not fit attack {name!r}: the edits budget goes with "
            "the 'edits' attack and only with it"
        )
    return replace(PRESETS[name], **changes) if changes else PRESETS[name]
