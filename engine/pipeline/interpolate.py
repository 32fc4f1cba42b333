"""``${...}`` interpolation of spec strings against the composed configuration.

OmegaConf does the resolving, so the grammar is exactly Hydra's (nested keys, ``oc.env``
and other resolvers, escapes). Only strings that contain ``${`` are handed to it, and all
of them in one tree, because building an OmegaConf node per string is slow at 1,000 stages.
A string that is exactly one interpolation keeps the value's type (``${train.C}`` -> 0.5).

Strings that go to a shell (a stage's ``cmd``) are treated differently: each top-level
``${...}`` in them is resolved on its own and pasted **quoted** (:func:`shell_words`), so a
value such as ``x; touch /tmp/p`` stays one argument. A list expands to one quoted word per
element, a mapping to one quoted ``key=value`` word per entry, and a value made only of
safe characters (``42``, ``data/x.csv``) is pasted byte-identical, so stage keys of existing
pipelines do not change. ``${raw:${flags}}`` pastes the value unquoted, for the rare stage that
needs raw shell syntax from config (``raw`` is an identity resolver; OmegaConf parses it).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["InterpolationFailure", "resolve_strings", "shell_words", "RAW_RESOLVER"]

RAW_RESOLVER = "raw"

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


def _flat(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def shell_words(value: Any, *, quote: bool = True) -> str:
    """A resolved value as shell words: scalars one word, lists one word per element, mappings
    one ``key=value`` word per entry; each quoted with :func:`shlex.quote` unless ``quote`` is off."""
    q: Callable[[str], str] = shlex.quote if quote else str
    if isinstance(value, list):
        return " ".join(q(_flat(v)) for v in value)
    if isinstance(value, dict):
        return " ".join(q(f"{k}={_flat(v)}") for k, v in value.items())
    return q(str(value))


def _shell_plan(text: str) -> list[tuple[str, str]] | None:
    """Split a shell string into literal text and top-level interpolations, using OmegaConf's own
    grammar (so escapes and quoted ``}`` mean what they mean to OmegaConf). None if it does not parse:
    the whole string then goes to OmegaConf, which reports the error."""
    from omegaconf.grammar.gen.OmegaConfGrammarLexer import OmegaConfGrammarLexer as Lx
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser as Px
    from omegaconf.grammar_parser import parse

    try:
        tree = parse(text, parser_rule="configValue")
    except Exception:  # noqa: BLE001 - GrammarParseError and antlr errors alike
        return None
    ctx = tree.getChild(0)
    if not isinstance(ctx, Px.TextContext):
        return None
    children = list(ctx.getChildren())
    plan: list[tuple[str, str]] = []
    for i, node in enumerate(children):
        nxt = children[i + 1] if i + 1 < len(children) else None
        if isinstance(node, Px.InterpolationContext):
            inner = node.getChild(0)
            raw = (isinstance(inner, Px.InterpolationResolverContext)
                   and inner.resolverName().getText() == RAW_RESOLVER)
            plan.append(("raw" if raw else "quote", text[node.start.start : node.stop.stop + 1]))
            continue
        tok = node.symbol
        if tok.type == Lx.ESC_INTER:
            lit = tok.text[-(len(tok.text) // 2 + 1) :]
        elif tok.type == Lx.TOP_ESC and isinstance(nxt, Px.InterpolationContext):
            lit = tok.text[1::2]
        else:
            lit = tok.text
        plan.append(("lit", lit))
    return plan


def _ensure_raw_resolver() -> None:
    from omegaconf import OmegaConf

    def raw(*args: Any) -> Any:
        if len(args) != 1:
            raise ValueError("raw takes exactly one value, e.g. ${raw:${flags}}")
        return args[0]

    if not OmegaConf.has_resolver(RAW_RESOLVER):
        OmegaConf.register_new_resolver(RAW_RESOLVER, raw)


def resolve_strings(tree: Mapping[str, Any], context: Mapping[str, Any], *,
                    shell: Callable[[tuple[Any, ...]], bool] | None = None) -> dict[str, Any]:
    """Return ``tree`` with every ``${...}`` string resolved against ``context``; strings whose
    location ``shell`` accepts get their interpolated values shell-quoted (see the module doc)."""
    found: dict[tuple[Any, ...], str] = {}
    _collect(dict(tree), (), found)
    if not found:
        return dict(tree)
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _ensure_raw_resolver()
    elements: list[str] = []
    owner: list[tuple[Any, ...]] = []
    plans: dict[tuple[Any, ...], list[tuple[str, Any]]] = {}
    for path, text in found.items():
        plan = _shell_plan(text) if shell is not None and shell(path) else None
        if plan is None:
            plan = [("whole", text)]
        parts: list[tuple[str, Any]] = []
        for kind, piece in plan:
            if kind == "lit":
                parts.append((kind, piece))
            else:
                parts.append((kind, len(elements)))
                elements.append(piece)
                owner.append(path)
        plans[path] = parts

    root = OmegaConf.create({**context, _SLOT: elements})
    try:
        values = OmegaConf.to_container(root[_SLOT], resolve=True)
    except OmegaConfBaseException:
        values = None
    except Exception:  # noqa: BLE001 - resolvers can raise anything
        values = None
    if values is None:  # find the first culprit, in order, for the error message
        for i, k in enumerate(owner):
            try:
                _ = root[_SLOT][i]
            except OmegaConfBaseException as e:
                msg = str(e).splitlines()[0]
                raise InterpolationFailure(k, found[k], msg) from e
            except Exception as e:  # noqa: BLE001 - resolvers can raise anything
                raise InterpolationFailure(k, found[k], str(e).splitlines()[0] if str(e) else type(e).__name__) from e
        k = owner[0]
        raise InterpolationFailure(k, found[k], "could not be resolved")
    assert isinstance(values, list)
    out: dict[tuple[Any, ...], Any] = {}
    for path, parts in plans.items():
        if len(parts) == 1 and parts[0][0] == "whole":
            out[path] = values[parts[0][1]]
            continue
        words = []
        for kind, piece in parts:
            if kind == "lit":
                words.append(piece)
            else:
                words.append(shell_words(values[piece], quote=kind == "quote"))
        out[path] = "".join(words)
    return _replace(dict(tree), (), out)
