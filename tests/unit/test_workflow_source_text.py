"""A document's source text: its format, and its rewriting into the other one in the written key order."""

from __future__ import annotations

import json

import yaml

from mailwright.domain.workflows import convert_source, source_format

YAML = """\
# kept
steps: [{activity: send_email, id: a}]   # steps first
name: Ordered
"""
JSON = '{"steps": [{"activity": "send_email", "id": "a"}], "name": "Ordered"}'


def test_the_format_is_read_from_the_text() -> None:
    assert source_format(YAML) == "yaml"
    assert source_format(JSON) == "json"
    assert source_format("{name: Flow, steps: [{id: a, activity: x}]}") == "yaml"  # YAML flow style


def test_the_same_format_is_the_text_itself_and_the_other_keeps_the_key_order() -> None:
    assert convert_source(YAML, "yaml") == YAML and convert_source(JSON, "json") == JSON
    as_json = convert_source(YAML, "json")
    assert list(json.loads(as_json)) == ["steps", "name"] and "kept" not in as_json
    as_yaml = convert_source(JSON, "yaml")
    assert as_yaml.startswith("steps:\n") and yaml.safe_load(as_yaml) == json.loads(JSON)
