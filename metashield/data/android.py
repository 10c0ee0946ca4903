"""Threat model shared by the binary Android feature sets (Drebin families, TUANDROMD).

Each feature says whether an app's manifest or code contains a permission, an intent or an API call (0/1).
A real attacker edits an app, so the true constraint is per sample and one-sided:

- ADDING a feature is always possible: an extra manifest permission or intent filter, or an API call in
  dead code, leaves the app working.
- REMOVING a feature is possible for API calls and intents (reflection, encrypted or native code, or a
  different trigger hide them), but NOT for a permission the payload uses: Android enforces permissions
  at run time, so a premium-SMS trojan without ``SEND_SMS`` no longer sends SMS.

A ``ThreatSchema`` holds global per-column bounds, so it cannot say "add-only for this sample". The
simplification used here: every feature is an integer in [0, 1] and mutable in both directions (which
over-approximates the attacker for the removal of needed permissions), except a small, named set of
columns per dataset whose removal breaks the malware and whose addition gains an evader little; those
are frozen (which under-approximates the attacker only for the rare rows that could still add them).
Each dataset module lists its frozen columns with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from metashield.data.schema import FeatureSpec, ThreatSchema

BINARY_WHY = "present (1) or absent (0) in the app's manifest or code"


def binary_feature_schema(features: Sequence[str], frozen: Mapping[str, str], source: str) -> ThreatSchema:
    """Every feature an integer in [0, 1], mutable except the ``frozen`` ones present (name -> why)."""
    specs = {
        name: FeatureSpec(
            lower=0,
            upper=1,
            integer=True,
            mutable=name not in frozen,
            why=frozen.get(name, BINARY_WHY),
        )
        for name in features
    }
    return ThreatSchema(features=specs, source=source)
