"""Dataset schemas: columns, types, nullability, allowed values and ranges, unique keys.

A schema is a small YAML file (committed, e.g. ``conf/schema/wine.yaml``)::

    format: csv            # csv | parquet (default: from the file extension)
    columns:
      alcohol: {type: float, nullable: false, min: 0}
      target:  {type: int, allowed: [0, 1, 2]}
    unique: [id]           # columns whose combined values must be unique
    extra_columns: false   # refuse columns the schema does not name (default false)

A violation names the column, the rule and the first offending rows (1-based data rows).
CSV is read with the standard library; Parquet with pyarrow. Checking is one pass in Python:
a data set registry's files are small to medium, and this keeps the rules exact and the
messages precise (a dataframe library would add a heavy import for no better answer).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import DatasetError

__all__ = ["Schema", "ColumnRule", "load_schema", "validate", "Stats"]

_TYPES = ("int", "float", "str", "bool")
_RULE_KEYS = {"type", "nullable", "min", "max", "allowed"}
_MAX_ROWS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class ColumnRule:
    name: str
    type: str = "str"
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class Schema:
    path: str
    columns: tuple[ColumnRule, ...]
    unique: tuple[str, ...] = ()
    format: str | None = None
    extra_columns: bool = False


@dataclass(frozen=True, slots=True)
class Stats:
    rows: int
    columns: int
    files: int = 1
    column_names: tuple[str, ...] = field(default=())


def load_schema(path: str, text: str) -> Schema:
    from engine.spec import parse_yaml

    data = parse_yaml(text, path)
    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
        raise DatasetError(f"{path}: a schema needs a 'columns' mapping of name -> rules")
    unknown = set(data) - {"format", "columns", "unique", "extra_columns"}
    if unknown:
        raise DatasetError(f"{path}: unknown schema key(s) {sorted(unknown)}; expected format, columns, unique, "
                           "extra_columns")
    cols = []
    for name, rule in data["columns"].items():
        rule = rule or {}
        if isinstance(rule, str):
            rule = {"type": rule}
        bad = set(rule) - _RULE_KEYS
        if bad:
            raise DatasetError(f"{path}: column '{name}': unknown rule(s) {sorted(bad)}; expected {sorted(_RULE_KEYS)}")
        typ = rule.get("type", "str")
        if typ not in _TYPES:
            raise DatasetError(f"{path}: column '{name}': type '{typ}'; expected one of {', '.join(_TYPES)}")
        allowed = rule.get("allowed")
        cols.append(ColumnRule(name=str(name), type=typ, nullable=bool(rule.get("nullable", True)),
                               min=rule.get("min"), max=rule.get("max"),
                               allowed=tuple(allowed) if allowed is not None else None))
    unique = data.get("unique") or []
    if isinstance(unique, str):
        unique = [unique]
    names = {c.name for c in cols}
    for u in unique:
        if u not in names:
            raise DatasetError(f"{path}: unique key '{u}' is not a declared column")
    fmt = data.get("format")
    if fmt not in (None, "csv", "parquet"):
        raise DatasetError(f"{path}: format '{fmt}'; expected csv or parquet")
    return Schema(path=path, columns=tuple(cols), unique=tuple(unique), format=fmt,
                  extra_columns=bool(data.get("extra_columns", False)))


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        out = []
        for root, _, files in os.walk(path):
            out += [os.path.join(root, f) for f in files if f.endswith((".csv", ".parquet", ".pq"))]
        return sorted(out)
    return [path]


def _read(path: str, fmt: str | None) -> tuple[list[str], Iterator[Sequence[Any]]]:
    kind = fmt or ("parquet" if path.endswith((".parquet", ".pq")) else "csv")
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - pyarrow is a dependency
            raise DatasetError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow") from e
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types
            raise DatasetError(f"{path}: not a readable Parquet file ({e})") from e
        cols = table.column_names
        data = table.to_pydict()
        return cols, iter(zip(*(data[c] for c in cols)))
    f = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - closed by the generator
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        f.close()
        return [], iter(())

    def rows() -> Iterator[Sequence[Any]]:
        with f:
            yield from reader

    return header, rows()


def _coerce(value: Any, typ: str) -> tuple[bool, Any]:
    """(is_null, typed value) or raise ValueError."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return True, None
    if typ == "str":
        return False, str(value)
    if typ == "int":
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return False, value
        if isinstance(value, float):
            if value.is_integer():
                return False, int(value)
            raise ValueError
        return False, int(str(value).strip())
    if typ == "float":
        if isinstance(value, bool):
            raise ValueError
        return False, float(value)
    if typ == "bool":
        if isinstance(value, bool):
            return False, value
        s = str(value).strip().lower()
        if s in ("true", "1", "yes"):
            return False, True
        if s in ("false", "0", "no"):
            return False, False
        raise ValueError
    raise ValueError  # pragma: no cover


def validate(path: str, schema: Schema, *, label: str | None = None) -> Stats:
    """Check every row of a file (or a directory of files); raise one error listing all violations."""
    label = label or path
    problems: list[str] = []
    total_rows = 0
    header_seen: tuple[str, ...] = ()
    rules = {c.name: c for c in schema.columns}
    files = _files(path)
    if not files:
        raise DatasetError(f"{label}: no CSV or Parquet files to validate")
    seen_keys: dict[tuple[Any, ...], int] = {}
    dup_rows: list[int] = []
    for fpath in files:
        header, rows = _read(fpath, schema.format)
        where = label if len(files) == 1 else f"{label}/{os.path.relpath(fpath, path)}"
        header_seen = tuple(header)
        missing = [c for c in rules if c not in header]
        if missing:
            problems.append(f"{where}: missing column(s) {', '.join(missing)} required by {schema.path}")
            continue
        extra = [c for c in header if c not in rules]
        if extra and not schema.extra_columns:
            problems.append(f"{where}: column(s) {', '.join(extra)} not in {schema.path}; add them or set "
                            "extra_columns: true")
        idx = {c: header.index(c) for c in rules}
        uidx = [idx[u] for u in schema.unique]
        bad: dict[tuple[str, str], list[int]] = {}
        for n, row in enumerate(rows, start=1):
            total_rows += 1
            for name, rule in rules.items():
                raw = row[idx[name]] if idx[name] < len(row) else None
                try:
                    is_null, val = _coerce(raw, rule.type)
                except (ValueError, TypeError):
                    bad.setdefault((name, f"type {rule.type}"), []).append(n)
                    continue
                if is_null:
                    if not rule.nullable:
                        bad.setdefault((name, "nullable: false"), []).append(n)
                    continue
                if rule.min is not None and isinstance(val, (int, float)) and val < rule.min:
                    bad.setdefault((name, f"min {rule.min}"), []).append(n)
                if rule.max is not None and isinstance(val, (int, float)) and val > rule.max:
                    bad.setdefault((name, f"max {rule.max}"), []).append(n)
                if rule.allowed is not None and val not in rule.allowed:
                    bad.setdefault((name, f"allowed {list(rule.allowed)}"), []).append(n)
            if uidx:
                key = tuple(row[i] if i < len(row) else None for i in uidx)
                if key in seen_keys:
                    dup_rows.append(n)
                else:
                    seen_keys[key] = n
        for (col, rule_text), rows_bad in sorted(bad.items()):
            shown = ", ".join(str(r) for r in rows_bad[:_MAX_ROWS_SHOWN])
            more = f" (+{len(rows_bad) - _MAX_ROWS_SHOWN} more)" if len(rows_bad) > _MAX_ROWS_SHOWN else ""
            problems.append(f"{where}: column '{col}': rule {rule_text} violated in {len(rows_bad)} row(s): "
                            f"rows {shown}{more}")
    if dup_rows:
        shown = ", ".join(str(r) for r in dup_rows[:_MAX_ROWS_SHOWN])
        problems.append(f"{label}: unique key ({', '.join(schema.unique)}) duplicated in {len(dup_rows)} row(s): "
                        f"rows {shown}")
    if problems:
        raise DatasetError("schema violation: " + "\n".join(problems))
    return Stats(rows=total_rows, columns=len(header_seen), files=len(files), column_names=header_seen)


def schema_from(mapping: Mapping[str, Any], path: str) -> Schema:  # pragma: no cover - convenience
    import yaml

    return load_schema(path, yaml.safe_dump(dict(mapping)))
