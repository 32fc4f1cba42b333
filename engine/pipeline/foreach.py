"""Stage families: ``foreach``/``do`` (and ``matrix``) expanded into ``name@item`` stages, with
``${item}``/``${key}`` substituted — shell-quoted inside ``cmd``."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

from engine.pipeline.interpolate import shell_words
from engine.pipeline.spec_problems import _Problems, _short, _suggest

#: the fields a stage may have (the spec validates them; a matrix stage may carry them beside its axes)
STAGE_KEYS = (
    "cmd",
    "deps",
    "outs",
    "params",
    "metrics",
    "env",
    "desc",
    "always_changed",
    "datasets",
    "register",
    "writable",
    "timeout",
    "requires_gate",
    "resources",
    "retries",
)
_GENERATOR_KEYS = ("foreach", "do", "matrix")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_ITEM_REF = re.compile(r"\$\{\s*(item|key)((?:\.[A-Za-z0-9_\-]+)*)\s*\}")
_RAW_ITEM_REF = re.compile(r"\$\{\s*raw\s*:\s*\$\{\s*(item|key)((?:\.[A-Za-z0-9_\-]+)*)\s*\}\s*\}")


def _item_name(value: Any, index: int) -> str:
    if isinstance(value, (str, int, float, bool)) and _NAME.match(str(value)):
        return str(value)
    return str(index)


def _substitute_item(obj: Any, ctx: Mapping[str, Any], shell: bool = False) -> Any:
    """Replace ``${item...}``/``${key}`` before config interpolation (they are local). In a ``cmd``
    (``shell``) values are pasted shell-quoted, ``${raw:${item}}`` unquoted (see engine.pipeline.interpolate)."""
    if isinstance(obj, str):
        whole = _ITEM_REF.fullmatch(obj.strip())

        def lookup(m: re.Match[str]) -> Any:
            val: Any = ctx[m.group(1)]
            for part in filter(None, m.group(2).split(".")):
                if isinstance(val, Mapping) and part in val:
                    val = val[part]
                else:
                    raise KeyError(m.group(0))
            return val

        if shell:
            obj = _RAW_ITEM_REF.sub(lambda m: shell_words(lookup(m), quote=False) if m.group(1) in ctx
                                    else m.group(0), obj)
            return _ITEM_REF.sub(lambda m: shell_words(lookup(m)) if m.group(1) in ctx else m.group(0), obj)
        if whole and whole.group(1) in ctx:
            return lookup(whole)
        return _ITEM_REF.sub(lambda m: str(lookup(m)) if m.group(1) in ctx else m.group(0), obj)
    if isinstance(obj, list):
        return [_substitute_item(v, ctx, shell) for v in obj]
    if isinstance(obj, dict):
        return {k: _substitute_item(v, ctx, shell) for k, v in obj.items()}
    return obj


def _substitute_body(body: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _substitute_item(v, ctx, shell=k == "cmd") for k, v in body.items()}


def _expand(raw_stages: Mapping[str, Any], probs: _Problems) -> list[tuple[str, dict[str, Any], tuple[Any, ...]]]:
    """foreach/matrix expansion -> (name, body, keypath of the definition)."""
    out: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = []
    for name, body in raw_stages.items():
        kp = ("stages", name)
        if not isinstance(name, str) or not _NAME.match(name):
            probs.add(kp, str(name), None, "invalid stage name; use letters, digits, '_', '-', '.'")
            continue
        if not isinstance(body, dict):
            probs.add(kp, name, None, f"is a {type(body).__name__}; expected a mapping with 'cmd'")
            continue
        if "foreach" in body or "matrix" in body:
            extra = sorted(set(body) - set(_GENERATOR_KEYS) - (set(STAGE_KEYS) if "matrix" in body else set()))
            for k in extra:
                probs.add(kp + (k,), name, k, f"unknown key{_suggest(k, _GENERATOR_KEYS)}")
            if "foreach" in body:
                items = body["foreach"]
                do = body.get("do")
                if not isinstance(do, dict):
                    probs.add(kp + ("do",), name, "do", "missing or not a mapping; foreach needs a 'do' body")
                    continue
                if isinstance(items, dict):
                    pairs = []
                    for k, v in items.items():  # a key becomes part of a stage name (and of paths)
                        if not _NAME.match(str(k)) or len(str(k)) > 200:
                            probs.add(kp + ("foreach", k), name, "foreach", f"key {_short(k)} cannot name a stage; "
                                      "use letters, digits, '_', '-', '.' (not starting with '.' or '-')")
                            continue
                        pairs.append((str(k), {"item": v, "key": k}))
                elif isinstance(items, list):
                    pairs = [(_item_name(v, i), {"item": v}) for i, v in enumerate(items)]
                else:
                    probs.add(kp + ("foreach",), name, "foreach", "expected a list or a mapping")
                    continue
                template = do
            else:
                matrix = body["matrix"]
                if not isinstance(matrix, dict) or not all(isinstance(v, list) for v in matrix.values()):
                    probs.add(kp + ("matrix",), name, "matrix", "expected a mapping of name -> list of values")
                    continue
                keys = list(matrix)
                pairs = []
                for combo in itertools.product(*(list(enumerate(matrix[k])) for k in keys)):
                    suffix = "-".join(_item_name(v, i) for i, v in combo)
                    pairs.append((suffix, {"item": {k: v for k, (_, v) in zip(keys, combo)}}))
                template = {k: v for k, v in body.items() if k != "matrix"}
            for suffix, ctx in pairs:
                try:
                    out.append((f"{name}@{suffix}", _substitute_body(template, ctx), kp))
                except KeyError as e:
                    probs.add(kp, f"{name}@{suffix}", None, f"interpolation {e.args[0]} does not resolve")
        else:
            if "do" in body:
                probs.add(kp + ("do",), name, "do", "'do' without 'foreach'; add foreach or remove do")
                continue
            out.append((name, body, kp))
    return out
