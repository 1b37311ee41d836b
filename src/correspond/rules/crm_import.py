"""Bulk import rows, pure: CSV or JSON bytes in, one field dict (or an error) per row out.

The store matches each row to a record (external id, else address or domain) and reports
its own per-row errors; here only the shape is checked. Columns / keys:

- contacts: ``name``, ``emails`` (or ``email``; several split on ``;``, ``,`` or spaces),
  ``external_id``, ``company_external_id`` (or ``company_id``);
- companies: ``name``, ``domains`` (or ``domain``), ``external_id``;
- deals: ``name``, ``status``, ``external_id``, ``company_external_id`` (or ``company_id``),
  ``contact_emails`` (the deal's contacts, by address).
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

__all__ = ["IMPORT_KINDS", "MAX_IMPORT_ROWS", "parse_rows"]

IMPORT_KINDS = ("contacts", "companies", "deals")
MAX_IMPORT_ROWS = 100_000
_SPLIT = re.compile(r"[;,\s]+")
_LISTS = {"emails": "emails", "email": "emails", "domains": "domains", "domain": "domains"}
_FIELDS = {
    "contacts": {"name", "emails", "external_id", "company_external_id", "company_id"},
    "companies": {"name", "domains", "external_id"},
    "deals": {"name", "status", "external_id", "company_external_id", "company_id"},
}


def _split(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [v for v in _SPLIT.split(str(value or "")) if v]


def _row(kind: str, raw: Any) -> dict[str, Any] | str:
    if not isinstance(raw, dict):
        return "a row must be an object"
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key).strip().lower()
        if value is None or value == "":
            continue
        if key in _LISTS and _LISTS[key] in _FIELDS[kind]:
            out[_LISTS[key]] = _split(value)
        elif key == "contact_emails" and kind == "deals":
            out["contact_emails"] = _split(value)
        elif key == "company_id" and key in _FIELDS[kind]:
            try:
                out["company_id"] = int(value)
            except (TypeError, ValueError):
                return f"company_id is not a number: {str(value)[:40]!r}"
        elif key in _FIELDS[kind]:
            if not isinstance(value, str | int):
                return f"{key} must be text"
            out[key] = str(value)
        else:
            return f"unknown column {key[:40]!r}"
    return out


def parse_rows(kind: str, data: bytes, fmt: str) -> list[dict[str, Any] | str]:
    """The rows of ``data`` (``fmt`` ``csv`` with a header line, or ``json``: a list of
    objects), each a field dict or a sentence saying what is wrong with it. ValueError when
    the whole input cannot be read."""
    if kind not in IMPORT_KINDS:
        raise ValueError(f"cannot import {kind!r}: one of {', '.join(IMPORT_KINDS)}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError("the file is not UTF-8") from exc
    rows: list[Any]
    if fmt == "json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno}") from exc
        if isinstance(loaded, dict) and isinstance(loaded.get(kind), list):
            loaded = loaded[kind]
        if not isinstance(loaded, list):
            raise ValueError("JSON input must be a list of objects")
        rows = loaded
    elif fmt == "csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise ValueError(f"not CSV: {exc}") from exc
        if any(None in row for row in rows):
            rows = [r if None not in r else {"": "x"} for r in rows]  # more cells than columns
    else:
        raise ValueError(f"unknown format {fmt!r}: csv or json")
    if len(rows) > MAX_IMPORT_ROWS:
        raise ValueError(f"more than {MAX_IMPORT_ROWS} rows: split the file")
    return [_row(kind, r) if r != {"": "x"} else "more cells than columns" for r in rows]
