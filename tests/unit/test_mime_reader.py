"""The sandbox's parsed view of captured mail, and HTML made safe to display."""

from __future__ import annotations

import hashlib
import time
from email.message import EmailMessage
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwright.domain.mime_reader import extract_attachment, parse_message, parse_subject, safe_html

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def multipart_message() -> bytes:
    message = EmailMessage()
    message["From"] = "Jörg Müller <joerg@example.org>"
    message["To"] = "bob@example.net, Carol <carol@example.net>"
    message["Cc"] = "dave@example.net"
    message["Subject"] = "Quarterly report ✓"
    message["Date"] = "Tue, 24 Nov 2026 12:00:00 +0100"
    message["Message-ID"] = "<report-1@example.org>"
    message.set_content("Hello Bob,\nthe report is attached. Grüße\n")
    message.add_alternative("<p>Hello <b>Bob</b></p>", subtype="html")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="report ü.pdf")
    message.add_attachment(PNG, maintype="image", subtype="png", filename="../../etc/chart.png")
    return message.as_bytes()


# --------------------------------------------------------------------------------------
# parse_message
# --------------------------------------------------------------------------------------


def test_multipart_alternative_with_attachments() -> None:
    parsed = parse_message(multipart_message())

    assert parsed.sender == "Jörg Müller <joerg@example.org>"
    assert parsed.to == ("bob@example.net", "Carol <carol@example.net>")
    assert parsed.cc == ("dave@example.net",)
    assert parsed.subject == "Quarterly report ✓"
    assert parsed.date == "Tue, 24 Nov 2026 12:00:00 +0100"
    assert parsed.date_iso == "2026-11-24T12:00:00+01:00"
    assert parsed.message_id == "<report-1@example.org>"
    assert parsed.text == "Hello Bob,\nthe report is attached. Grüße\n"
    assert parsed.html == "<p>Hello <b>Bob</b></p>\n"
    assert ("Subject", "Quarterly report ✓") in parsed.headers
    assert [h for h, _ in parsed.headers][:3] == ["From", "To", "Cc"]

    pdf, png = parsed.attachments
    assert (pdf.index, pdf.filename, pdf.content_type) == (0, "report ü.pdf", "application/pdf")
    assert pdf.size == len(PDF)
    assert pdf.sha256 == hashlib.sha256(PDF).hexdigest()
    assert png.filename == "chart.png"  # no directories in a file name
    assert (png.content_type, png.size) == ("image/png", len(PNG))
    assert parsed.defects == ()


def test_as_dict_is_json_ready() -> None:
    data = parse_message(multipart_message()).as_dict()
    assert data["from"] == "Jörg Müller <joerg@example.org>"
    assert data["attachments"][0]["filename"] == "report ü.pdf"
    assert data["headers"][0] == ["From", "Jörg Müller <joerg@example.org>"]


def test_extract_attachment_returns_the_decoded_content() -> None:
    raw = multipart_message()
    found = extract_attachment(raw, 1)
    assert found is not None
    info, content = found
    assert (info.filename, info.content_type, content) == ("chart.png", "image/png", PNG)
    assert extract_attachment(raw, 2) is None
    assert extract_attachment(raw, -1) is None


def test_plain_message_without_mime() -> None:
    parsed = parse_message(b"Subject: hi\r\nFrom: a@example.org\r\n\r\njust text\r\n")
    assert parsed.subject == "hi"
    assert parsed.text == "just text\n"  # line ends as \n
    assert parsed.html is None
    assert parsed.attachments == ()


def test_html_only_message() -> None:
    message = EmailMessage()
    message["Subject"] = "html"
    message.set_content("<h1>Hi</h1>", subtype="html")
    parsed = parse_message(message.as_bytes())
    assert parsed.text is None
    assert parsed.html == "<h1>Hi</h1>\n"


def test_broken_mime_without_boundary_is_shown_as_text() -> None:
    raw = b"Subject: broken\r\nContent-Type: multipart/mixed\r\n\r\nthe body is still here\r\n"
    parsed = parse_message(raw)
    assert parsed.subject == "broken"
    assert parsed.text is not None and "the body is still here" in parsed.text
    assert "NoBoundaryInMultipartDefect" in parsed.defects


def test_broken_mime_missing_end_boundary_and_bad_base64() -> None:
    raw = (
        b"Subject: cut\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
        b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="x.bin"\r\n\r\n!!!not base64@@@\r\n'
    )
    parsed = parse_message(raw)
    assert parsed.text == "first part"  # the CRLF before a boundary belongs to it
    assert [a.filename for a in parsed.attachments] == ["x.bin"]
    assert parsed.defects  # reported, not raised


def test_unknown_charset_falls_back_to_utf8_with_replacement() -> None:
    raw = (
        b"Subject: =?x-unknown?q?caf=E9?=\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n"
        b"caf\xc3\xa9 and \xff\r\n"
    )
    parsed = parse_message(raw)
    assert parsed.text == "café and \ufffd\n"
    assert parsed.subject  # decoded somehow, not raised


@pytest.mark.parametrize("charset", ["rot13", "base64", "utf-7", "idna", "latin-1", ""])
def test_odd_charsets_never_raise(charset: str) -> None:
    raw = f"Content-Type: text/plain; charset={charset}\r\n\r\n".encode() + b"A\xe9+ZeVnLIqe-\r\n"
    parsed = parse_message(raw)
    assert parsed.text is not None


def test_utf8_headers_sent_raw_with_smtputf8() -> None:
    raw = "Subject: Grüße aus Köln\r\nFrom: Jörg <jörg@bücher.example>\r\n\r\nx\r\n".encode()
    parsed = parse_message(raw)
    assert parsed.subject == "Grüße aus Köln"
    assert parsed.sender == "Jörg <jörg@bücher.example>"
    assert parse_subject(raw) == "Grüße aus Köln"


def test_nested_message_rfc822_is_one_attachment() -> None:
    inner = EmailMessage()
    inner["Subject"] = "the original"
    inner["From"] = "eve@example.org"
    inner.set_content("inner body")
    inner.add_attachment(b"inner file", maintype="application", subtype="octet-stream", filename="in.bin")
    outer = EmailMessage()
    outer["Subject"] = "Fwd: the original"
    outer.set_content("see below")
    outer.add_attachment(inner)

    parsed = parse_message(outer.as_bytes())

    assert parsed.subject == "Fwd: the original"
    assert parsed.text == "see below\n"
    (attached,) = parsed.attachments
    assert attached.content_type == "message/rfc822"
    assert attached.filename == "attachment-1.eml"
    found = extract_attachment(outer.as_bytes(), 0)
    assert found is not None
    nested = parse_message(found[1])
    assert nested.subject == "the original"
    assert nested.text == "inner body\n"
    assert [a.filename for a in nested.attachments] == ["in.bin"]


def test_huge_headers_are_parsed_quickly_and_cut_for_display() -> None:
    raw = (
        b"Subject: " + b"word " * 200_000 + b"\r\n"
        b"To: " + b"someone@example.org, " * 20_000 + b"\r\n"
        b'Content-Type: text/plain; charset=utf-8; x="' + b"y " * 100_000 + b'"\r\n'
        b"\r\nbody\r\n"
    )
    started = time.monotonic()
    parsed = parse_message(raw)
    assert time.monotonic() - started < 5
    assert parsed.subject.startswith("word word")
    assert "more characters" in parsed.subject
    assert len(parsed.subject) < 70_000
    assert parsed.to and parsed.to[0] == "someone@example.org"
    assert parsed.text == "body\n"


def test_deep_nesting_and_garbage_never_raise() -> None:
    head = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(3000)
    )
    raw = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + head + b"--b3000\r\n\r\ndeep\r\n"
    assert parse_message(raw).text is not None
    assert parse_message(b"").text == ""
    assert parse_message(b"\xff\xfe\x00\r\n\r\n--").text is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_parse_message_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    parsed = parse_message(raw)
    parsed.as_dict()


MIME_PIECES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"Content-Type: text/plain; charset=x-unknown\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Content-Disposition: attachment; filename*=utf-8''%E9%ZZ\r\n",
        b"Subject: =?utf-8?b?w6k=?= =?bogus?q?x?=\r\n",
        b'To: <<@>>, "unclosed\r\n',
        b"--b\r\n",
        b"--b--\r\n",
        b"\r\n",
        b"=E9=\r\n",
        b"\xc3\xa9\xff\r\n",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(MIME_PIECES, max_size=30))
def test_parse_message_never_raises_on_mime_like_garbage(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    parse_message(raw).as_dict()
    for index in range(3):
        extract_attachment(raw, index)


# --------------------------------------------------------------------------------------
# safe_html
# --------------------------------------------------------------------------------------


class _Elements(HTMLParser):
    """What a browser-like reading of the cleaned HTML contains."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.css: list[str] = []  # <style> content and style attributes

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)
        self.css.extend(value or "" for name, value in attrs if name == "style")

    def handle_data(self, data: str) -> None:
        (self.css if self.lasttag == "style" and self.cdata_elem else self.text).append(data)


def elements(html_text: str) -> _Elements:
    parser = _Elements()
    parser.feed(html_text)
    parser.close()
    return parser


def test_scripts_and_active_elements_are_removed_text_is_kept() -> None:
    cleaned = safe_html(
        "<p>Hello <b>world</b></p><script>alert(1)</script>"
        "<iframe src='https://evil.example/'>in frame</iframe><object data='x.swf'>obj</object>"
        "<embed src='x.swf'><form action='https://evil.example/'><input name='q'></form>"
        "<svg><script>alert(2)</script></svg>after"
    )
    found = elements(cleaned)
    assert found.tags == ["p", "b"]  # form controls are not on the allow-list
    assert "".join(found.text) == "Hello worldafter"
    assert "alert" not in cleaned
    assert "evil" not in cleaned


def test_event_handlers_and_script_urls_are_removed() -> None:
    cleaned = safe_html(
        '<body onload="steal()"><a href="javascript:alert(1)" onclick="x()">one</a>'
        '<a href=" JaVa&#x09;ScRiPt:alert(2)">two</a><a href="vbscript:x">three</a>'
        '<a href="https://ok.example/" title="t">ok</a><div ONMOUSEOVER="y()" class="c">d</div></body>'
    )
    found = elements(cleaned)
    names = [name for name, _ in found.attrs]
    assert not [n for n in names if n.startswith("on")]
    assert ("href", "https://ok.example/") in found.attrs
    assert names.count("href") == 1
    assert ("class", "c") in found.attrs
    assert "script" not in cleaned.lower()
    assert "".join(found.text) == "onetwothreeokd"


def test_remote_images_are_blocked_embedded_ones_kept() -> None:
    data_png = "data:image/png;base64,iVBORw0KGgo="
    cleaned = safe_html(
        f'<img src="https://tracker.example/p.gif" alt="pixel"><img src="{data_png}" alt="inline">'
        '<img src="cid:logo@example.org"><img src="//cdn.example/x.png">'
        '<img src="x.png" srcset="https://a.example/1x.png 1x, https://a.example/2x.png 2x">'
        '<table background="http://bg.example/t.png"><tr><td>cell</td></tr></table>'
    )
    found = elements(cleaned)
    srcs = [value for name, value in found.attrs if name == "src"]
    assert srcs == [data_png, "cid:logo@example.org"]  # remote (and relative) sources are removed
    assert found.tags.count("img") == 5
    assert ("alt", "pixel") in found.attrs
    assert not [n for n, _ in found.attrs if n in ("srcset", "background")]
    assert "tracker.example" not in cleaned and "bg.example" not in cleaned
    assert "cell" in found.text


def test_link_meta_and_base_tags_are_removed() -> None:
    cleaned = safe_html(
        '<head><link rel="stylesheet" href="https://evil.example/a.css">'
        '<meta http-equiv="refresh" content="0;url=https://evil.example/">'
        '<base href="https://evil.example/"><title>T</title></head><body>x</body>'
    )
    assert elements(cleaned).tags == []  # a fragment: head, title and body are not kept
    assert cleaned == "x"


def test_remote_css_is_blocked_data_urls_kept() -> None:
    cleaned = safe_html(
        "<style>@import url(https://evil.example/a.css); @import 'https://evil.example/b.css';"
        "body { background: url('https://evil.example/bg.png') } "
        ".logo { background-image: url(data:image/png;base64,AAAA) } p { color: red }</style>"
        '<div style="background: u\\72l(http://evil.example/x.png); color: blue">t</div>'
        "<p style=\"width: expression(alert(1)); background: image-set('https://evil.example/i.png' 1x)\">"
        "q</p>"
    )
    assert "evil.example" not in cleaned
    assert "expression(" not in cleaned
    assert "url(data:image/png;base64,AAAA)" in cleaned
    assert "color: red" in cleaned
    assert "color: blue" in cleaned


def test_style_content_cannot_break_out_of_the_style_element() -> None:
    cleaned = safe_html("<style>p{}</style x><script>alert(1)</script></style><p>after</p>")
    found = elements(cleaned)
    assert "script" not in found.tags
    assert found.tags == ["style", "p"]


def test_text_and_attributes_are_escaped() -> None:
    cleaned = safe_html('<p title="&quot;><script>alert(1)</script>">1 &lt; 2 &amp; <i>3</i></p><img src=x')
    assert cleaned.startswith('<p title="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;">1 &lt; 2 &amp; ')
    assert elements(cleaned).tags == ["p", "i"]


def test_comments_and_conditional_comments_are_dropped() -> None:
    cleaned = safe_html(
        "a<!--[if mso]><img src=x onerror=alert(1)><![endif]-->b<!--><img src=y onerror=z>-->c"
    )
    assert "onerror" not in cleaned
    # "<!-->" closes a comment in HTML5, so browsers (and ammonia) see the second <img>.
    assert elements(cleaned).attrs == []
    assert "".join(elements(cleaned).text) == "ab-->c"


def test_ordinary_newsletter_markup_survives() -> None:
    source = (
        "<!DOCTYPE html><html><head><style>td { padding: 4px; }</style></head>"
        '<body style="margin:0"><table width="600" cellpadding="0"><tr>'
        '<td align="center"><h1>News</h1><p>Read <a href="https://example.org/post">more</a>.</p>'
        '<img src="cid:hero" width="600" alt="hero"><br></td></tr></table></body></html>'
    )
    cleaned = safe_html(source)
    assert cleaned.startswith("<!DOCTYPE html>")
    # The body's content survives (html, head and body are not kept in a fragment; tables get a tbody).
    body_tags = [tag for tag in elements(source).tags if tag not in ("html", "head", "body")]
    assert [tag for tag in elements(cleaned).tags if tag != "tbody"] == body_tags
    assert 'href="https://example.org/post"' in cleaned
    assert "td { padding: 4px; }" in cleaned


HTML_PIECES = st.sampled_from(
    [
        "<script>", "</script>", "<img src=http://x/a onerror=alert(1)>", "<a href='javascript:x'>",
        "<style>", "</style>", "<svg>", "</svg>", "<!--", "-->", "<iframe>", "</iframe>", "<p ",
        "onclick=x ", ">", "<", "&lt;", '"', "'", "text", "url(http://x)", "</style x>",
    ]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(HTML_PIECES, max_size=40))
def test_safe_html_output_never_contains_active_content(pieces: list[str]) -> None:
    cleaned = safe_html("".join(pieces))
    found = elements(cleaned)
    assert not {"script", "iframe", "svg"} & set(found.tags)
    assert not [name for name, _ in found.attrs if name.startswith("on")]
    assert not [value for name, value in found.attrs if name == "src"]  # only remote ones were offered
    assert not [css for css in found.css if "url(http" in css]
