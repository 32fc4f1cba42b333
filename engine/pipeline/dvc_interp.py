"""``${...}`` in ``dvc.yaml`` with DVC's meaning, not Hydra's.

DVC's grammar is small and differs from OmegaConf's: keys are ``a.b``, ``a[0]`` or ``a.0``;
``\\${`` escapes; a string that is exactly one ``${x}`` keeps the value's type; anywhere
else values are pasted as text (booleans as ``true``/``false``) and **not** shell-quoted;
a mapping in ``cmd`` expands to ``--key value`` words (``--flag`` for true, lists as
``--key a b``, string values shell-quoted), per ``.dvc/config``'s ``parsing`` section.
Mappings and lists anywhere else are an error. Keys of mappings are resolved too.

The context is a plain mapping built by the front end (engine.pipeline.dvc_spec): the
``params.yaml`` next to the ``dvc.yaml``, then ``vars`` (files, ``file:k1,k2``, literal
mappings), merged without silently redefining a key.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

__all__ = ["DvcInterpError", "resolve", "merge_vars", "to_str", "select"]

KEYCRE = re.compile(r"(?<!\\)\$\{(?P<inner>.*?)\}")
_EXPR = re.compile(r"^\s*[^.\[\]]+(?:\.[^.\[\]]+|\[[^.\[\]]+\])*\s*$")
_PRIMITIVES = (int, float, str, bytes, bool)


class DvcInterpError(Exception):
    """One interpolation problem, without its place (the caller names file, stage and field)."""


def select(ctx: Mapping[str, Any], expr: str) -> Any:
    """``a.b[0].c`` in ``ctx``, as DVC's context does."""
    if not _EXPR.match(expr):
        raise DvcInterpError(f"'${{{expr}}}' is not a valid key (use a.b, a[0] or a.0)")
    cur: Any = ctx
    for part in expr.replace("[", ".").replace("]", "").split("."):
        part = part.strip()
        if isinstance(cur, Mapping):
            if part not in cur:
                raise DvcInterpError(f"could not find '{expr}' (no '{part}'); define it in params.yaml or vars")
            cur = cur[part]
        elif isinstance(cur, list):
            if not part.lstrip("-").isdigit() or not -len(cur) <= int(part) < len(cur):
                raise DvcInterpError(f"could not find '{expr}' ('{part}' is not an index of a list of {len(cur)})")
            cur = cur[int(part)]
        else:
            raise DvcInterpError(f"could not find '{expr}' ('{part}' asked of a plain value)")
    return cur


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def to_str(value: Any, config: Mapping[str, Any] | None = None) -> str:
    """A value pasted into a string: DVC's ``to_str`` (a mapping: ``--key value`` words)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, dict):
        return str(value)
    config = config or {}
    words = ""
    for k, v in _flatten(value).items():
        if isinstance(v, bool):
            if v:
                words += f"--{k} "
            elif config.get("bool", "store_true") == "boolean_optional":
                words += f"--no-{k} "
        elif isinstance(v, str):
            words += f"--{k} {shlex.quote(v)} "
        elif isinstance(v, (list, tuple)):
            for n, i in enumerate(v):
                if isinstance(i, str):
                    i = shlex.quote(i)
                elif isinstance(i, (list, tuple, dict)):
                    raise DvcInterpError(f"cannot interpolate nested iterable in '{k}'")
                if config.get("list", "nargs") == "append":
                    words += f"--{k} {i} "
                else:
                    words += f"{i} " if n > 0 else f"--{k} {i} "
        else:
            words += f"--{k} {v} "
    return words.rstrip()


def _check(value: Any, field: str | None) -> None:
    if value is None or isinstance(value, _PRIMITIVES):
        return
    if field is None or "foreach" in field:
        return
    if isinstance(value, dict) and field == "cmd":
        return
    raise DvcInterpError(f"cannot interpolate data of type '{type(value).__name__}'")


def resolve_str(src: str, ctx: Mapping[str, Any], field: str | None, config: Mapping[str, Any] | None) -> Any:
    matches = list(KEYCRE.finditer(src))
    if len(matches) == 1 and matches[0].group(0) == src:
        value = select(ctx, matches[0]["inner"])
        _check(value, field)
        return value
    buf, index = "", 0
    for m in matches:
        value = select(ctx, m["inner"])
        _check(value, field)
        buf += src[index : m.start()] + to_str(value, config)
        index = m.end()
    return (buf + src[index:]).replace("\\${", "${")


def resolve(value: Any, ctx: Mapping[str, Any], field: str | None = None,
            config: Mapping[str, Any] | None = None) -> Any:
    """``value`` with every ``${}`` resolved (mapping keys too); ``field`` is the stage field it is in."""
    if isinstance(value, str):
        return resolve_str(value, ctx, field, config)
    if isinstance(value, dict):
        return {resolve(k, ctx, field, config): resolve(v, ctx, field, config) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, ctx, field, config) for v in value]
    return value


def has_interpolation(value: Any) -> bool:
    if isinstance(value, str):
        return KEYCRE.search(value) is not None
    if isinstance(value, dict):
        return any(has_interpolation(k) or has_interpolation(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_interpolation(v) for v in value)
    return False


def merge_vars(into: dict[str, Any], update: Mapping[str, Any], source: str, path: str = "") -> None:
    """Merge ``update`` into ``into``; a value defined twice is an error (DVC refuses to redefine)."""
    for k, v in update.items():
        here = f"{path}{k}"
        if isinstance(into.get(k), dict) and isinstance(v, Mapping):
            merge_vars(into[k], v, source, here + ".")
        elif k in into:
            raise DvcInterpError(f"cannot redefine '{here}' from '{source}': it is already defined")
        else:
            into[k] = _copy(v)


def _copy(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v
