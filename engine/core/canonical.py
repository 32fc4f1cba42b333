"""The one canonical byte encoding for everything Certus hashes or signs.

RFC 8785 (JSON Canonicalization Scheme): object keys sorted, no insignificant whitespace,
UTF-8, strings escaped minimally, and numbers written the way ECMAScript's
``Number.prototype.toString`` writes them (``1.0`` is ``1``, ``1e-07`` is ``1e-7``). Keys
outside the Basic Multilingual Plane would sort differently under JCS's UTF-16 rule than
under Python's code-point order, so they are rejected rather than mis-sorted.

Human-facing files (YAML specs, pretty JSON) use other serializers and are never hashed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

__all__ = ["CanonicalError", "canonical_bytes", "canonical_digest", "from_canonical", "es6_number"]

_TOKEN = "\x00f{}\x00"  # NUL never survives json.dumps unescaped, so a token cannot collide


class CanonicalError(ValueError):
    """A value cannot be encoded canonically."""


def es6_number(x: float) -> str:
    """Serialise a float as ECMAScript (and so RFC 8785) does."""
    if math.isnan(x) or math.isinf(x):
        raise CanonicalError(f"{x!r} is not representable in JSON")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    r = repr(abs(x))  # shortest round-tripping digits, as ES requires
    mant, _, exp_s = r.partition("e")
    exp = int(exp_s) if exp_s else 0
    ip, _, fp = mant.partition(".")
    digits = (ip + fp).lstrip("0")
    stripped = digits.rstrip("0")
    k = len(stripped)
    n = exp - len(fp) + (len(digits) - k) + k  # value = 0.stripped * 10^n
    if k <= n <= 21:
        out = stripped + "0" * (n - k)
    elif 0 < n <= 21:
        out = stripped[:n] + "." + stripped[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + stripped
    else:
        e = n - 1
        e_s = f"e+{e}" if e >= 0 else f"e-{-e}"
        out = (stripped if k == 1 else stripped[0] + "." + stripped[1:]) + e_s
    return sign + out


class _Unencodable(Exception):
    """Raised deep in a value; each level adds its step, so the path costs nothing until it fails."""

    def __init__(self, what: str) -> None:
        self.what, self.steps = what, []  # steps innermost first


def _key_ok(k: object) -> str:
    if type(k) is not str and not isinstance(k, str):
        raise _Unencodable(f"key {k!r} is not a string")
    if not k.isascii() and max(k) > "\uffff":
        raise _Unencodable(f"key {k!r} would sort differently under RFC 8785")
    return k


def _has_floats(obj: Any) -> bool:
    """Validate ``obj`` as JSON for RFC 8785 without copying it; True if it holds any float."""
    t = type(obj)
    if t is str or t is int or t is bool or obj is None:
        return False
    if t is float:
        return True
    if t is dict or isinstance(obj, dict):
        for k in obj:
            _key_ok(k)
        children: Iterable[tuple[Any, Any]] = obj.items()
        step = ".{}"
    elif t is list or t is tuple or isinstance(obj, (list, tuple)):
        children, step = enumerate(obj), "[{}]"
    elif isinstance(obj, (bool, str, int)):
        return False
    elif isinstance(obj, float):
        return True
    else:
        raise _Unencodable(f"{type(obj).__name__} is not JSON")
    found = False
    for k, v in children:
        try:
            found = _has_floats(v) or found
        except _Unencodable as e:
            e.steps.append(step.format(k))
            raise
    return found


def _with_tokens(obj: Any, floats: list[str]) -> Any:
    """A copy of an already validated value with each float replaced by a placeholder token."""
    if isinstance(obj, float):
        floats.append(es6_number(obj))
        return _TOKEN.format(len(floats) - 1)
    if isinstance(obj, dict):
        return {k: _with_tokens(v, floats) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_with_tokens(v, floats) for v in obj]
    return obj


def canonical_bytes(obj: Any) -> bytes:
    """Encode ``obj`` as RFC 8785 canonical JSON bytes."""
    try:
        has_floats = _has_floats(obj)
    except _Unencodable as e:
        raise CanonicalError(f"${''.join(reversed(e.steps))}: {e.what}") from None
    if not has_floats:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    floats: list[str] = []
    text = json.dumps(_with_tokens(obj, floats), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for i, num in enumerate(floats):
        text = text.replace(json.dumps(_TOKEN.format(i)), num, 1)
    return text.encode("utf-8")


def canonical_digest(obj: Any) -> str:
    """SHA-256 hex of :func:`canonical_bytes`."""
    return hashlib.sha256(canonical_bytes(obj)).hexdigest()


def from_canonical(data: bytes) -> Any:
    """Parse canonical bytes and insist they round-trip exactly (the validate mode)."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CanonicalError(f"not JSON: {e}") from e
    if canonical_bytes(obj) != data:
        raise CanonicalError("valid JSON but not in canonical form")
    return obj
