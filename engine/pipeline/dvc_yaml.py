"""DVC's files as DVC reads them: YAML 1.2 (``yes``/``on`` are strings, ``010`` is ten), params files.

DVC parses ``dvc.yaml``, ``dvc.lock`` and ``params.yaml`` with ruamel.yaml's YAML 1.2 safe loader.
PyYAML's resolver is YAML 1.1, so the same file would mean other values here (``on: true`` keys,
``010`` as eight): a stage name, a param value and therefore a stage key would differ. This
module swaps the implicit scalar resolvers of the strict loader (duplicate keys, bounded
aliases: :mod:`engine.pipeline.spec_yaml`) for YAML 1.2 core ones, with ruamel's extensions
(``_`` separators, ``0b``/``0o`` prefixes); ruamel itself is never imported on the status path.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from engine.errors import SpecError
from engine.pipeline.spec_yaml import decode_text, load_yaml, strict_loader

__all__ = ["load_yaml12", "read_params_file", "PARAMS_SUFFIXES"]

PARAMS_SUFFIXES = (".yaml", ".yml", ".json", ".toml")

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0o[0-7_]+|[-+]?[0-9][0-9_]*|[-+]?0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
                    r"|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_LOADER12: type | None = None


def _loader12() -> type:

    global _LOADER12
    if _LOADER12 is not None:
        return _LOADER12
    base = strict_loader()

    class Yaml12Loader(base):  # type: ignore[misc, valid-type]
        def construct_yaml_int(self, node: Any) -> int:
            text = str(self.construct_scalar(node)).replace("_", "")
            sign = -1 if text.startswith("-") else 1
            text = text.lstrip("+-")
            for prefix, radix in (("0b", 2), ("0o", 8), ("0x", 16)):
                if text.startswith(prefix):
                    return sign * int(text[2:], radix)
            return sign * int(text)

    # a fresh resolver table: keep null, merge, timestamp, value; YAML 1.2 bool/int/float
    table: dict[Any, list[Any]] = {}
    for first, entries in base.yaml_implicit_resolvers.items():
        kept = [(tag, rx) for tag, rx in entries
                if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        if kept:
            table[first] = kept
    Yaml12Loader.yaml_implicit_resolvers = table
    for tag, rx, first in (("tag:yaml.org,2002:bool", _BOOL, "tTfF"),
                           ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
                           ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789.")):
        Yaml12Loader.add_implicit_resolver(tag, rx, list(first))
    Yaml12Loader.add_constructor("tag:yaml.org,2002:int", Yaml12Loader.construct_yaml_int)
    _LOADER12 = Yaml12Loader
    return Yaml12Loader


def load_yaml12(text: str, path: str) -> Any:
    """YAML 1.2 -> Python, strictly (repeated keys name both lines), one line per problem."""
    return load_yaml(text, path, loader_class=_loader12())


def read_params_file(full: str, rel: str) -> dict[str, Any]:
    """A params file (YAML 1.2, JSON or TOML, by suffix, as DVC) as a mapping; one-line errors."""
    try:
        with open(full, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise SpecError(f"{rel}: params file does not exist; create it or fix the path") from None
    except IsADirectoryError:
        raise SpecError(f"{rel}: is a directory, not a params file") from None
    except OSError as e:
        raise SpecError(f"{rel}: cannot read: {e.strerror}") from None
    suffix = os.path.splitext(rel)[1].lower()
    if suffix not in PARAMS_SUFFIXES:
        raise SpecError(f"{rel}: params files must be {', '.join(PARAMS_SUFFIXES)} (Python params files are not "
                        "supported); convert it to YAML")
    text = decode_text(raw, rel)
    if suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as e:
            raise SpecError(f"{rel}: not valid JSON ({str(e)[:120]}); fix the file") from None
    elif suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{rel}: not valid TOML ({str(e)[:120]}); fix the file") from None
    else:
        data = load_yaml12(text, rel)
        data = {} if data is None else data
    if not isinstance(data, dict):
        raise SpecError(f"{rel}: expected a mapping of params, got a {type(data).__name__}")
    return data
