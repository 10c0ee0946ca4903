"""Evasion, attacks through adaptation, and poisoning: one engine, constraints from the dataset's schema.

Nothing here knows a dataset: inputs are standardised feature tensors, models are callables or learners
with ``adapt``/``predict``, and the feasible set comes from ``compile_constraints(pipeline, schema)``.
"""

from metashield.attacks.constraints import Constraints, box_constraints, compile_constraints
from metashield.attacks.engine import Attack, classifier_objective, margin, perturb
from metashield.attacks.poisoning import apply_trigger, backdoor, flip_labels, make_trigger, poison_batch
from metashield.attacks.presets import DEFAULT_ENSEMBLE, PRESETS, get_attack
from metashield.attacks.support import adaptive_query_attack, controlled_rows, poison_support

__all__ = [
    "DEFAULT_ENSEMBLE",
    "PRESETS",
    "Attack",
    "Constraints",
    "adaptive_query_attack",
    "apply_trigger",
    "backdoor",
    "box_constraints",
    "classifier_objective",
    "compile_constraints",
    "controlled_rows",
    "flip_labels",
    "get_attack",
    "make_trigger",
    "margin",
    "perturb",
    "poison_batch",
    "poison_support",
]
