"""Validate a kvmfpu JSON document against its published schema: ``assert_valid(doc)`` picks
kvmfpu/schemas/kvmfpu-NAME-N.json from ``doc["schema"]`` (``kvmfpu-NAME/N``) and fails with
every violation's path. Skips the calling test when jsonschema is not installed (it is in
the [test] extra)."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from kvmfpu.cli.document import load_schema


@functools.cache
def validator(schema_name: str) -> Any:
    """A draft 2020-12 validator for the document named ``schema_name``."""
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed (pip install '.[test]')"
    )
    schema = load_schema(schema_name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(doc: Any) -> list[str]:
    """Each violation of ``doc``'s schema, as 'path: message'."""
    assert isinstance(doc, dict) and isinstance(doc.get("schema"), str), (
        f"not a kvmfpu document (no schema name): {str(doc)[:200]}"
    )
    return [
        f"/{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
        for e in validator(doc["schema"]).iter_errors(doc)
    ]


def assert_valid(doc: Any) -> None:
    """``doc`` is valid under the schema its ``schema`` field names."""
    problems = errors(doc)
    assert not problems, f"{doc['schema']}: " + "; ".join(problems[:10])
