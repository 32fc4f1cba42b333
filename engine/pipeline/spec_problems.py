"""Spec problems with their place: every error names file, line, stage and field, and all are
reported at once; the spec's YAML parsed strictly (:mod:`engine.pipeline.spec_yaml`)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import SpecError


class _Problems:
    """Collects every problem so one error can list them all, sorted by line."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.items: list[tuple[int, str]] = []
        self._lines: dict[tuple[Any, ...], int] | None = None

    def line_of(self, keypath: tuple[Any, ...]) -> int:
        if self._lines is None:
            self._lines = _line_index(self.text)
        while keypath:
            if keypath in self._lines:
                return self._lines[keypath]
            keypath = keypath[:-1]
        return 1

    def add(self, keypath: tuple[Any, ...], stage: str | None, fld: str | None, msg: str) -> None:
        where = f"{self.path}:{self.line_of(keypath)}"
        parts = [where]
        if stage is not None:
            parts.append(f"stage '{stage}'")
        if fld is not None:
            parts.append(f"field '{fld}'")
        parts.append(msg)
        self.items.append((self.line_of(keypath), ": ".join(parts)))

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError("\n".join(m for _, m in sorted(set(self.items))))


def _line_index(text: str) -> dict[tuple[Any, ...], int]:
    """Map key paths to 1-based line numbers; only computed when an error is reported."""
    import yaml

    index: dict[tuple[Any, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return index

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        index.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                kp = path + (k.value,)
                index[kp] = k.start_mark.line + 1
                walk(v, kp)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return index


def parse_yaml(text: str, path: str) -> Any:
    """YAML -> Python: strict (no repeated keys) and bounded (depth, aliases); see engine.pipeline.spec_yaml."""
    from engine.pipeline.spec_yaml import load_yaml

    return load_yaml(text, path)


def _short(value: Any, limit: int = 60) -> str:
    """A value for an error message, bounded however long it is."""
    s = repr(value)
    return s if len(s) <= limit else s[:limit] + "…"


def _nul_field(body: Mapping[str, Any]) -> str | None:
    """The first field holding a NUL anywhere (keys included): no path, command or variable can."""
    def has(obj: Any) -> bool:
        if isinstance(obj, str):
            return "\0" in obj
        if isinstance(obj, dict):
            return any(has(k) or has(v) for k, v in obj.items())
        if isinstance(obj, list):
            return any(has(v) for v in obj)
        return False

    return next((str(k) for k, v in body.items() if has(k) or has(v)), None)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; expected one of {', '.join(choices)}"


def _as_str_list(value: Any, probs: _Problems, kp: tuple[Any, ...], stage: str, fld: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    if isinstance(value, list):
        return value
    probs.add(kp, stage, fld, f"is a {type(value).__name__}; expected a list of paths")
    return []
