"""Reading YAML that Certus is given (specs, schemas): strict, bounded, one line per problem.

PyYAML's safe loader lets a repeated key silently win (a second ``cmd:`` replaces the first),
expands anchors/aliases without limit when the result is walked (a "billion laughs" spec
takes minutes), follows recursive aliases into endless walks, and reports non-UTF-8 bytes
or control characters as exceptions of several kinds. Here, on top of libyaml's parser:

* a key repeated in one mapping is an error naming both lines (merge keys ``<<`` may still be
  overridden, as YAML intends);
* the composed node graph is walked once before anything is constructed: nesting deeper
  than :data:`MAX_DEPTH`, a recursive alias, or aliases that expand the document past
  :data:`MAX_EXPANDED` nodes (and 10x its written size) fail fast with one line;
* bytes that are not UTF-8 name the line they are on.
"""

from __future__ import annotations

from typing import Any

from engine.errors import SpecError

__all__ = ["decode_text", "load_yaml", "strict_loader", "MAX_DEPTH", "MAX_EXPANDED"]

MAX_DEPTH = 64
MAX_EXPANDED = 100_000


class _Problem(Exception):
    def __init__(self, line: int, msg: str) -> None:
        super().__init__(msg)
        self.line = line
        self.msg = msg


def decode_text(raw: bytes, path: str) -> str:
    """UTF-8 text of a file Certus reads, or one line naming where it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecError(f"{path}:{line}: byte 0x{raw[e.start]:02x} at column {col} is not UTF-8; "
                        "save the file as UTF-8") from None


def _loader_class() -> type:
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):  # type: ignore[misc, valid-type]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue
                    key = self.construct_object(key_node)
                    try:
                        first = seen.setdefault(key, key_node.start_mark.line + 1)
                    except TypeError:
                        continue
                    if first != key_node.start_mark.line + 1:
                        raise _Problem(key_node.start_mark.line + 1,
                                       f"duplicate key '{_clip(key)}' (first at line {first}); a key may appear "
                                       "once in a mapping: remove or rename one")
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


_LOADER: type | None = None


def strict_loader() -> type:
    """The strict loader class (no repeated keys), for variants with another scalar schema."""
    global _LOADER
    if _LOADER is None:
        _LOADER = _loader_class()
    return _LOADER


def _clip(value: Any, limit: int = 60) -> str:
    s = str(value)
    return s if len(s) <= limit else s[:limit] + "…"


def _check_graph(root: Any) -> None:
    """Depth, recursion and alias expansion of the composed node graph, before construction."""
    import yaml

    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    distinct = 0

    def walk(node: Any, depth: int) -> int:
        nonlocal distinct
        if depth > MAX_DEPTH:
            raise _Problem(node.start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels; flatten the YAML")
        nid = id(node)
        if nid in sizes:
            return sizes[nid]
        if nid in on_path:
            raise _Problem(node.start_mark.line + 1, "an alias refers to a node that contains it (recursive "
                                                     "alias); use plain values")
        distinct += 1
        if isinstance(node, yaml.ScalarNode):
            sizes[nid] = 1
            return 1
        on_path.add(nid)
        total = 1
        children = (c for pair in node.value for c in pair) if isinstance(node, yaml.MappingNode) else node.value
        for child in children:
            total += walk(child, depth + 1)
        on_path.discard(nid)
        sizes[nid] = total
        if total > MAX_EXPANDED and total > 10 * distinct:
            raise _Problem(node.start_mark.line + 1, f"anchors and aliases expand to more than {MAX_EXPANDED:,} "
                                                     "values; write the values out or use fewer aliases")
        return total

    walk(root, 0)


def load_yaml(text: str, path: str, *, loader_class: type | None = None) -> Any:
    """YAML -> Python, every problem as one line ``path:line: what; what to do``.

    ``loader_class`` (a subclass of :func:`strict_loader`'s) changes the scalar schema, e.g.
    YAML 1.2 for DVC files (engine.pipeline.dvc_yaml)."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _loader_class()
    loader = None
    try:
        loader = (loader_class or _LOADER)(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node)
        return loader.construct_document(node)
    except _Problem as e:
        raise SpecError(f"{path}:{e.line}: {e.msg}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        what = str(e.problem or e.context or "invalid YAML").splitlines()[0]
        raise SpecError(f"{path}:{line}: YAML syntax error: {what}; fix the YAML") from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, max(0, e.position)) + 1
        code = e.character if isinstance(e.character, int) else ord(str(e.character)[:1] or "\0")
        raise SpecError(f"{path}:{line}: character U+{code:04X} is not allowed in YAML (a control "
                        "character or NUL); remove it") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: YAML error: {_clip(str(e).splitlines()[0] if str(e) else type(e).__name__, 200)}"
                        ) from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to read; flatten the YAML") from None
    finally:
        if loader is not None:
            loader.dispose()
