"""Dataset schemas: columns, types, nullability, allowed values and ranges, unique keys.

A schema is a small YAML file (committed, e.g. ``conf/schema/penguins.yaml``)::

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

__all__ = ["Schema", "ColumnRule", "load_schema", "load_schema_file", "validate", "Stats"]

_TYPES = ("int", "float", "str", "bool")
_RULE_KEYS = {"type", "nullable", "min", "max", "allowed"}
_MAX_ROWS_SHOWN = 5
_MAX_ITEMS_SHOWN = 10


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


def _clip(value: Any, limit: int = 80) -> str:
    """A name or value for a message, bounded however long it is."""
    s = str(value)
    return s if len(s) <= limit else s[:limit] + "…"


def _listing(items: Sequence[Any], limit: int = _MAX_ITEMS_SHOWN) -> str:
    """``a, b, c … and 999,990 more``: every message stays short, whatever the file holds."""
    shown = ", ".join(_clip(i) for i in items[:limit])
    return shown + (f" … and {len(items) - limit:,} more" if len(items) > limit else "")


def load_schema_file(full_path: str, rel: str) -> Schema:
    """Read and parse a schema file; unreadable or non-UTF-8 bytes are one line naming it."""
    from engine.pipeline.spec_yaml import decode_text

    try:
        with open(full_path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"{rel}: cannot read the schema: {e.strerror}") from None
    return load_schema(rel, decode_text(raw, rel))


def load_schema(path: str, text: str) -> Schema:
    from engine.pipeline.spec_problems import _line_index, parse_yaml

    data = parse_yaml(text, path)

    def fail(keypath: tuple[Any, ...], msg: str) -> DatasetError:
        index = _line_index(text)
        kp = keypath
        while kp and kp not in index:
            kp = kp[:-1]
        return DatasetError(f"{path}:{index.get(kp, 1)}: {msg}")

    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
        raise DatasetError(f"{path}: a schema needs a 'columns' mapping of name -> rules")
    unknown = [str(k) for k in data if k not in ("format", "columns", "unique", "extra_columns")]
    if unknown:
        raise fail((unknown[0],), f"unknown schema key(s) {_listing(sorted(unknown))}; expected format, columns, "
                                  "unique, extra_columns")
    cols = []
    for name, rule in data["columns"].items():
        kp = ("columns", name)
        if not isinstance(name, (str, int, float)) or isinstance(name, bool):
            raise fail(kp, f"column name {_clip(name)!r} is not a string; quote it")
        rule = {} if rule is None else rule
        if isinstance(rule, str):
            rule = {"type": rule}
        if not isinstance(rule, dict):
            raise fail(kp, f"column '{_clip(name)}': rules are a {type(rule).__name__}; expected a mapping such as "
                           "{type: int, nullable: false}")
        bad = sorted(str(k) for k in rule if k not in _RULE_KEYS)
        if bad:
            raise fail(kp + (bad[0],), f"column '{_clip(name)}': unknown rule(s) {_listing(bad)}; expected "
                                       f"{', '.join(sorted(_RULE_KEYS))}")
        typ = rule.get("type", "str")
        if typ not in _TYPES:
            raise fail(kp + ("type",), f"column '{_clip(name)}': field 'type' is {_clip(typ)!r}; expected one of "
                                       f"{', '.join(_TYPES)}")
        nullable = rule.get("nullable", True)
        if not isinstance(nullable, bool):
            raise fail(kp + ("nullable",), f"column '{_clip(name)}': field 'nullable' is {_clip(nullable)!r}; "
                                           "expected true or false")
        for bound in ("min", "max"):
            v = rule.get(bound)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise fail(kp + (bound,), f"column '{_clip(name)}': field '{bound}' is {_clip(v)!r}; expected a "
                                          "number")
        allowed = rule.get("allowed")
        if allowed is not None and (not isinstance(allowed, list)
                                    or not all(a is None or isinstance(a, (str, int, float, bool)) for a in allowed)):
            raise fail(kp + ("allowed",), f"column '{_clip(name)}': field 'allowed' must be a list of values")
        cols.append(ColumnRule(name=str(name), type=typ, nullable=nullable,
                               min=rule.get("min"), max=rule.get("max"),
                               allowed=tuple(allowed) if allowed is not None else None))
    unique = data.get("unique") or []
    if isinstance(unique, str):
        unique = [unique]
    if not isinstance(unique, list) or not all(isinstance(u, str) for u in unique):
        raise fail(("unique",), "field 'unique' must be a column name or a list of column names")
    names = {c.name for c in cols}
    for u in unique:
        if u not in names:
            raise fail(("unique",), f"unique key '{_clip(u)}' is not a declared column")
    fmt = data.get("format")
    if fmt not in (None, "csv", "parquet"):
        raise fail(("format",), f"field 'format' is {_clip(fmt)!r}; expected csv or parquet")
    extra = data.get("extra_columns", False)
    if not isinstance(extra, bool):
        raise fail(("extra_columns",), f"field 'extra_columns' is {_clip(extra)!r}; expected true or false")
    return Schema(path=path, columns=tuple(cols), unique=tuple(unique), format=fmt, extra_columns=extra)


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        out = []
        for root, _, files in os.walk(path):
            out += [os.path.join(root, f) for f in files if f.endswith((".csv", ".parquet", ".pq"))]
        return sorted(out)
    return [path]


def _read(path: str, fmt: str | None, label: str = "") -> tuple[list[str], Iterator[Sequence[Any]]]:
    kind = fmt or ("parquet" if path.endswith((".parquet", ".pq")) else "csv")
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - pyarrow is a dependency
            raise DatasetError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow") from e
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types
            raise DatasetError(f"{label or path}: not a readable Parquet file ({_clip(e, 200)})") from e
        cols = table.column_names
        data = table.to_pydict()
        return cols, iter(zip(*(data[c] for c in cols)))
    # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name
    f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by the generator
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        f.close()
        return [], iter(())
    except (UnicodeDecodeError, csv.Error) as e:
        f.close()
        raise _csv_problem(label or path, e, 0, path) from None

    def rows() -> Iterator[Sequence[Any]]:
        with f:
            n = 0
            try:
                for n, row in enumerate(reader, start=1):  # noqa: B007 - n names the row in errors
                    yield row
            except (UnicodeDecodeError, csv.Error) as e:
                raise _csv_problem(label or path, e, n + 1, path) from None

    return header, rows()


def _first_bad_utf8(fpath: str) -> str:
    """``line N: byte 0xNN `` of the first byte that is not UTF-8 (the decoder reads ahead in chunks,
    so the row being parsed when it fails is not where the byte is)."""
    try:
        with open(fpath, "rb") as f:
            for n, line in enumerate(f, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    return f"line {n}: byte 0x{line[e.start]:02x} "
    except OSError:
        pass
    return ""


def _csv_problem(path: str, e: Exception, row: int, fpath: str = "") -> DatasetError:
    """A CSV the csv module cannot read, as one line: which file, which row, what to do."""
    where = "header" if row == 0 else f"data row {row}"
    if isinstance(e, UnicodeDecodeError):
        return DatasetError(f"{path}: {_first_bad_utf8(fpath)}is not UTF-8; convert the file to UTF-8 "
                            "(e.g. iconv -f latin1 -t utf-8)")
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "field larger than field limit" in msg:
        return DatasetError(f"{path}: {where}: a field is longer than {csv.field_size_limit():,} characters (the "
                            "csv module's limit); an unbalanced quote often causes this, else split the field")
    return DatasetError(f"{path}: {where}: not readable as CSV ({_clip(msg, 120)})")


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
        where = label if len(files) == 1 else f"{label}/{os.path.relpath(fpath, path)}"
        header, rows = _read(fpath, schema.format, where)
        header_seen = tuple(header)
        positions: dict[str, int] = {}
        for i, c in enumerate(header):
            positions.setdefault(c, i)
        missing = [c for c in rules if c not in positions]
        if missing:
            problems.append(f"{where}: missing column(s) {_listing(missing)} required by {schema.path}")
            continue
        extra = [c for c in header if c not in rules]
        if extra and not schema.extra_columns:
            problems.append(f"{where}: column(s) {_listing(extra)} not in {schema.path}; add them or set "
                            "extra_columns: true")
        idx = {c: positions[c] for c in rules}
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
            problems.append(f"{where}: column '{_clip(col)}': rule {_clip(rule_text, 200)} violated in "
                            f"{len(rows_bad)} row(s): rows {shown}{more}")
    if dup_rows:
        shown = ", ".join(str(r) for r in dup_rows[:_MAX_ROWS_SHOWN])
        problems.append(f"{label}: unique key ({_listing(schema.unique)}) duplicated in {len(dup_rows)} row(s): "
                        f"rows {shown}")
    if problems:
        n_more = len(problems) - _MAX_ITEMS_SHOWN
        more = f"\n… and {n_more:,} more problem(s)" if n_more > 0 else ""
        raise DatasetError("schema violation: " + "\n".join(problems[:_MAX_ITEMS_SHOWN]) + more)
    return Stats(rows=total_rows, columns=len(header_seen), files=len(files), column_names=header_seen)


def schema_from(mapping: Mapping[str, Any], path: str) -> Schema:  # pragma: no cover - convenience
    import yaml

    return load_schema(path, yaml.safe_dump(dict(mapping)))
