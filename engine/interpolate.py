"""``${...}`` interpolation of spec strings against the composed configuration.

OmegaConf does the resolving, so the grammar is exactly Hydra's (nested keys, ``oc.env``
and other resolvers, escapes). Only strings that contain ``${`` are handed to it, and all
of them in one tree, because building an OmegaConf node per string is slow at 1,000 stages.
A string that is exactly one interpolation keeps the value's type (``${train.C}`` -> 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["InterpolationFailure", "resolve_strings"]

_SLOT = "_certus_interpolate_"


class InterpolationFailure(Exception):
    """Which string (location path) failed and why; the spec loader formats it."""

    def __init__(self, location: tuple[Any, ...], expr: str, reason: str) -> None:
        super().__init__(f"{location}: {expr}: {reason}")
        self.location = location
        self.expr = expr
        self.reason = reason


def _collect(obj: Any, path: tuple[Any, ...], found: dict[tuple[Any, ...], str]) -> None:
    if isinstance(obj, str):
        if "${" in obj:
            found[path] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _collect(v, path + (k,), found)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _collect(v, path + (i,), found)


def _replace(obj: Any, path: tuple[Any, ...], values: Mapping[tuple[Any, ...], Any]) -> Any:
    if path in values:
        return values[path]
    if isinstance(obj, dict):
        return {k: _replace(v, path + (k,), values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace(v, path + (i,), values) for i, v in enumerate(obj)]
    return obj


def resolve_strings(tree: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``tree`` with every ``${...}`` string resolved against ``context``."""
    found: dict[tuple[Any, ...], str] = {}
    _collect(dict(tree), (), found)
    if not found:
        return dict(tree)
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    keys = list(found)
    root = OmegaConf.create({**context, _SLOT: [found[k] for k in keys]})
    try:
        values = OmegaConf.to_container(root[_SLOT], resolve=True)
    except OmegaConfBaseException:
        values = None
    if values is None:  # find the first culprit, in order, for the error message
        for i, k in enumerate(keys):
            try:
                _ = root[_SLOT][i]
            except OmegaConfBaseException as e:
                msg = str(e).splitlines()[0]
                raise InterpolationFailure(k, found[k], msg) from e
            except Exception as e:  # noqa: BLE001 - resolvers can raise anything
                raise InterpolationFailure(k, found[k], str(e).splitlines()[0]) from e
        raise InterpolationFailure(keys[0], found[keys[0]], "could not be resolved")
    return _replace(dict(tree), (), dict(zip(keys, values)))
