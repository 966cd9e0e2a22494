"""The one record every check reports: ``Finding``.

verify (the image against its lock), doctor (a lock before anything is built) and smoke's
diagnoses (a failed container's log) all say "this is wrong, here, because of that, fix it so";
each fills the fields that apply and leaves the rest empty. Their ``--json`` outputs predate
the shared type and are kept key for key: each report renders its findings with its own key
map (``VERIFY_KEYS``, ``DOCTOR_KEYS``, ``DIAGNOSIS_KEYS``: JSON key -> field).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    rule: str  # which check: a doctor rule id, a verify check (digests, layer, config, ...), a diagnosis
    severity: str  # error | warning
    message: str  # what is wrong
    why: str = ""  # why it breaks at serve time (doctor)
    fix: str = ""  # the change that fixes it (doctor, diagnoses)
    path: str = ""  # where in the image (verify): /usr/lib/..., config.User, index.json
    expected: str = ""  # what the lock determines (verify)
    actual: str = ""  # what the image holds (verify)
    origin: str = ""  # where the expected value comes from: wheel, .deb, model file, generated

    def to_dict(self, keys: Mapping[str, str]) -> dict[str, str]:
        return {key: getattr(self, attr) for key, attr in keys.items()}


VERIFY_KEYS = {"check": "rule", "path": "path", "expected": "expected", "actual": "actual",
               "message": "message", "source": "origin"}
DOCTOR_KEYS = {"rule": "rule", "severity": "severity", "what": "message", "why": "why", "fix": "fix"}
DIAGNOSIS_KEYS = {"name": "rule", "why": "message", "fix": "fix"}
