from __future__ import annotations

import pytest
from email_validator import validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwright.domain.addresses import dedupe, parse_address, parse_address_list
from mailwright.errors import ValidationError


def test_list_accepts_commas_and_semicolons() -> None:
    found = parse_address_list("a@example.org, b@example.org,c@example.org;d@example.org", field="to")
    assert [a.addr for a in found] == ["a@example.org", "b@example.org", "c@example.org", "d@example.org"]


def test_a_line_break_in_an_entry_is_refused() -> None:
    # One entry is one line: a line break would smuggle another recipient (tests/security).
    with pytest.raises(ValidationError, match="line break"):
        parse_address_list("a@example.org, b@example.org\nc@example.org", field="to")


def test_quoted_display_name_may_contain_a_comma() -> None:
    (found,) = parse_address_list('"Doe, Jane" <jane@example.org>', field="to")
    assert found.name == "Doe, Jane"
    assert found.addr == "jane@example.org"


def test_list_of_strings_each_may_hold_several() -> None:
    found = parse_address_list(["a@example.org", "b@example.org, c@example.org"], field="cc")
    assert len(found) == 3


def test_internal_domains_are_allowed() -> None:
    for text in ["ops@localhost", "ops@mail.internal", "ops@example.test", "ops@[127.0.0.1]"]:
        assert parse_address(text, field="to").addr == text


def test_idn_domain_has_an_ascii_envelope_form() -> None:
    a = parse_address("info@bücher.example", field="to")
    assert a.envelope() == "info@xn--bcher-kva.example"
    assert not a.needs_smtputf8


def test_unicode_local_part_needs_smtputf8() -> None:
    a = parse_address("dörte@example.org", field="to")
    assert a.needs_smtputf8
    assert a.envelope() == "dörte@example.org"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bob", "@-sign"),
        ("bob@", "after the @"),
        ("Bob <>", "no e-mail address"),
        ("a@b.org\r\nBcc: evil@x.org", ""),
    ],
)
def test_bad_addresses_name_the_field(text: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_address_list(text, field="to")
    assert info.value.field == "to"
    assert "to" in str(info.value)
    assert words in str(info.value)


def test_parse_address_wants_exactly_one() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        parse_address("a@example.org, b@example.org", field="from")


def test_dedupe_ignores_case() -> None:
    found = dedupe(parse_address_list("A@example.org, a@example.org, b@example.org", field="to"))
    assert [a.addr for a in found] == ["A@example.org", "b@example.org"]


@given(st.text(max_size=80))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        found = parse_address_list(text, field="to")
    except ValidationError:
        return
    for a in found:
        assert not any(c in a.addr + a.name for c in "\r\n\0")
        assert "@" in a.addr


_ATOM = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=8)
_LABELS = st.lists(
    st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,6}[A-Za-z0-9])?", fullmatch=True), min_size=1, max_size=3
)


@settings(max_examples=400, deadline=None)
@given(
    local=st.lists(_ATOM, min_size=1, max_size=3).map(".".join),
    labels=_LABELS,
    tld=st.sampled_from(["org", "COM", "test", "example", "io", "local", "invalid", "onion", "xn--p1ai"]),
)
def test_the_plain_ascii_fast_path_agrees_with_email_validator(
    local: str, labels: list[str], tld: str
) -> None:
    """Whatever the fast path accepts, email-validator accepts the same way (or it steps aside)."""
    from mailwright.domain.addresses import _plain

    addr = f"{local}@{'.'.join(labels)}.{tld}"
    fast = _plain(addr)
    if fast is None:
        return
    info = validate_email(
        addr,
        check_deliverability=False,
        globally_deliverable=False,
        allow_domain_literal=True,
        allow_smtputf8=True,
    )
    assert fast.addr == info.normalized
    assert fast.ascii_addr == f"{info.ascii_local_part}@{info.ascii_domain}"


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list('ab@.x ,;\r\n"<>\\\t é')), max_size=30))
def test_splitting_without_separators_takes_the_short_way_to_the_same_pieces(text: str) -> None:
    from mailwright.domain.addresses import _split, _split_scanning

    assert _split(text) == _split_scanning(text)
