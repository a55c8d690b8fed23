"""The database's JSON codec: orjson's speed, the standard library's reach."""

from __future__ import annotations

import json
import math

import pytest

from mailwright.storage import jsontext


@pytest.mark.parametrize(
    "value",
    [
        {"to": ["a@example.org"], "subject": "Grüße ☃", "body": "x" * 5000},
        {"nested": {"list": [1, 2.5, None, True, "é"]}},
        [],
        "text",
    ],
)
def test_what_orjson_writes_reads_back_the_same(value: object) -> None:
    assert jsontext.loads(jsontext.dumps(value)) == value
    assert jsontext.loads(jsontext.dumps(value)) == json.loads(json.dumps(value))


def test_integers_beyond_64_bits_fall_back_to_the_standard_library() -> None:
    value = {"n": 2**70}
    assert jsontext.loads(jsontext.dumps(value)) == value


def test_non_string_keys_become_strings_as_with_json() -> None:
    assert jsontext.loads(jsontext.dumps({1: "a", None: "b"})) == json.loads(json.dumps({1: "a", None: "b"}))


def test_lone_surrogates_are_kept_through_the_fallback() -> None:
    value = {"subject": "broken \ud800 half"}
    assert jsontext.loads(jsontext.dumps(value)) == value


def test_nan_written_by_older_versions_still_reads() -> None:
    assert math.isnan(jsontext.loads('{"x": NaN}')["x"])
    assert jsontext.loads(b'{"x": 1}') == {"x": 1}


def test_text_that_is_not_json_still_fails_with_the_standard_message() -> None:
    with pytest.raises(json.JSONDecodeError, match="Expecting value"):
        jsontext.loads("[not json")
