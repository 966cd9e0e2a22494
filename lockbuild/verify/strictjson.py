"""JSON documents of an untrusted image, read the way verify must: as bytes first, meanings second.

Go's encoding/json (Docker, containerd, containers/image, umoci) matches object keys
case-insensitively and keeps the last match; Python's json is exact-case and keeps the last
duplicate too. A document with ``"Config"`` twice, or ``"config"`` and ``"Config"``, means one
thing to verify and another to the runtime. verify therefore requires every document a runtime
reads to be byte-identical to what lockbuild writes (verify/documents.py); this module parses
them only to say *why* they are not: duplicate keys, keys that differ only in case, nesting deeper
than any lockbuild document, a document larger than any lockbuild document. ``parse`` never
raises anything but ``Malformed``.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DOCUMENT = 1 << 20  # bytes; lockbuild's config for the TF example is ~3 KB, a manifest ~2 KB
MAX_DEPTH = 16  # lockbuild's documents nest at most 5 deep


class Malformed(ValueError):
    """The document cannot be read as JSON at all (or is absurdly large or deep)."""


def _depth(data: bytes) -> int:
    """Nesting depth, counted on the bytes (outside strings) before the recursive parser sees them."""
    depth = top = 0
    in_str = esc = False
    for b in data:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > top:
                top = depth
                if top > MAX_DEPTH:
                    return top
        elif b in (0x5D, 0x7D):
            depth -= 1
    return top


def parse(data: bytes, what: str) -> tuple[Any, list[str]]:
    """(the document, ambiguities): each ambiguity names a duplicate or case-variant key and where."""
    if len(data) > MAX_DOCUMENT:
        raise Malformed(f"{what} is {len(data)} bytes (no lockbuild document is over {MAX_DOCUMENT})")
    if _depth(data) > MAX_DEPTH:
        raise Malformed(f"{what} nests deeper than {MAX_DEPTH} levels")
    problems: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, str] = {}
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                problems.append(f"duplicate key {k!r}")
            elif k.lower() in seen:
                problems.append(f"keys {seen[k.lower()]!r} and {k!r} differ only in case (Go's JSON decoder "
                                "reads them as one key, the last)")
            seen.setdefault(k.lower(), k)
            out[k] = v
        return out

    try:
        doc = json.loads(data, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as e:
        raise Malformed(f"{what} is not JSON: {e}") from None
    return doc, problems


def diff(found: Any, expected: Any, path: str = "", out: list[str] | None = None, limit: int = 20) -> list[str]:
    """Where two JSON values differ: unknown fields, missing fields, other values (capped)."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(found, dict) and isinstance(expected, dict):
        for k in sorted(set(found) | set(expected)):
            p = f"{path}.{k}" if path else k
            if k not in expected:
                out.append(f"unknown field {p}")
            elif k not in found:
                out.append(f"missing field {p}")
            else:
                diff(found[k], expected[k], p, out, limit)
            if len(out) >= limit:
                break
    elif isinstance(found, list) and isinstance(expected, list):
        if len(found) != len(expected):
            out.append(f"{path or 'document'}: {len(found)} items, lockbuild writes {len(expected)}")
        for i, (f, e) in enumerate(zip(found, expected, strict=False)):
            diff(f, e, f"{path}[{i}]", out, limit)
    elif found != expected or type(found) is not type(expected):
        out.append(f"{path or 'document'}: {_short(found)}, lockbuild writes {_short(expected)}")
    return out[:limit]


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 80 else s[:77] + "..."
