"""Read captured messages for display: a parsed view and HTML made safe to show.

Both functions are pure and never raise on bad input: captured mail is whatever a
client sent, so broken MIME, unknown charsets and hostile HTML are expected.
"""

from __future__ import annotations

import codecs
import contextlib
import email
import hashlib
import html
import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.policy import EmailPolicy
from email.utils import formataddr, getaddresses, parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any

__all__ = [
    "AttachmentInfo",
    "ParsedMessage",
    "extract_attachment",
    "parse_message",
    "parse_subject",
    "safe_html",
]

_MAX_DEPTH = 30  # multipart nesting we follow; deeper parts are ignored
_MAX_FILENAME = 200
_FALLBACK_CHARSET = "utf-8"
_MAX_STRUCTURED_HEADER = 1024  # longer header values skip the (slow) header registry
_MAX_HEADER_SHOWN = 64 * 1024  # longer header values are cut for display


# --------------------------------------------------------------------------------------
# Parsed view
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttachmentInfo:
    """One attachment (or inline part) of a captured message; ``index`` counts from 0."""

    index: int
    filename: str
    content_type: str
    size: int
    sha256: str
    content_id: str | None = None
    inline: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
            "content_id": self.content_id,
            "inline": self.inline,
        }


@dataclass(frozen=True)
class ParsedMessage:
    """What a reader wants to see of a message; every text is decoded to ``str``.

    ``sender`` is the From header (``"from"`` in ``as_dict``); ``to``/``cc`` hold one
    formatted address each; ``text``/``html`` are the first plain-text and HTML body
    parts (``None`` when absent) with ``\n`` line ends; ``defects`` names what was
    wrong with the MIME.
    """

    headers: tuple[tuple[str, str], ...] = ()
    sender: str | None = None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    subject: str = ""
    date: str | None = None
    date_iso: str | None = None
    message_id: str | None = None
    text: str | None = None
    html: str | None = None
    attachments: tuple[AttachmentInfo, ...] = ()
    defects: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "headers": [[name, value] for name, value in self.headers],
            "from": self.sender,
            "to": list(self.to),
            "cc": list(self.cc),
            "subject": self.subject,
            "date": self.date,
            "date_iso": self.date_iso,
            "message_id": self.message_id,
            "text": self.text,
            "html": self.html,
            "attachments": [a.as_dict() for a in self.attachments],
            "defects": list(self.defects),
        }


@dataclass(frozen=True)
class _Leaf:
    part: Message
    attachment: bool


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse ``raw`` (RFC 5322 bytes) for display; never raises.

    Unknown charsets are read as UTF-8 with replacement characters; if the message
    cannot be parsed at all, ``text`` is the whole input decoded that way.
    """
    try:
        return _parse(raw)
    except Exception as exc:  # the parser and header registry have many failure modes
        return ParsedMessage(
            text=raw.decode(_FALLBACK_CHARSET, errors="replace").replace("\r\n", "\n"),
            defects=(f"unparseable message: {type(exc).__name__}",),
        )


def parse_subject(raw: bytes) -> str:
    """The decoded Subject header of ``raw`` (``""`` when missing); never raises."""
    try:
        message = BytesHeaderParser(policy=_policy()).parsebytes(raw)
        value = message.get("subject")
        return "" if value is None else _clean(str(value))
    except Exception:
        return ""


def extract_attachment(raw: bytes, index: int) -> tuple[AttachmentInfo, bytes] | None:
    """Attachment number ``index`` of ``raw`` with its decoded content, or ``None``."""
    try:
        leaves = [leaf for leaf in _leaves(_message_from(raw)) if leaf.attachment]
        if not 0 <= index < len(leaves):
            return None
        part = leaves[index].part
        content = _part_bytes(part)
        return _attachment_info(part, index, content), content
    except Exception:
        return None


class _BoundedHeaderRegistry(HeaderRegistry):
    """The default header registry, bounded: each distinct header is parsed once,
    and only its first ``_MAX_STRUCTURED_HEADER`` characters.

    The registry's parser is slow on long values (one 400 kB Content-Type takes a
    minute) and ``policy.default`` parses a header again on every access; the
    parser itself asks for each part's Content-Type several times.  One registry
    (and its cache) lives for one parse.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[tuple[str, str], BaseHeader] = {}

    def __call__(self, name: str, value: str) -> BaseHeader:
        key = (name.lower(), value)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = super().__call__(name, value[:_MAX_STRUCTURED_HEADER])
        return found


def _policy() -> EmailPolicy[EmailMessage]:
    return policy.default.clone(header_factory=_BoundedHeaderRegistry())


def _message_from(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=_policy())
    assert isinstance(message, EmailMessage)
    return message


def _parse(raw: bytes) -> ParsedMessage:
    message = _message_from(raw)
    text: str | None = None
    body_html: str | None = None
    attachments: list[AttachmentInfo] = []
    for leaf in _leaves(message):
        if leaf.attachment:
            content = _part_bytes(leaf.part)
            attachments.append(_attachment_info(leaf.part, len(attachments), content))
        elif _body_kind(leaf.part) == "text/html":
            body_html = _part_text(leaf.part)
        else:
            text = _part_text(leaf.part)
    date = _header(message, "date")
    return ParsedMessage(
        headers=tuple(_headers(message)),
        sender=_header(message, "from"),
        to=_addresses(message, "to"),
        cc=_addresses(message, "cc"),
        subject=_header(message, "subject") or "",
        date=date,
        date_iso=_date_iso(date),
        message_id=_header(message, "message-id"),
        text=text,
        html=body_html,
        attachments=tuple(attachments),
        defects=tuple(_defects(message)),
    )


def _leaves(message: Message) -> Iterator[_Leaf]:
    """Body parts in order; the first text/plain and text/html inline parts are the body.

    A nested message (message/rfc822) is one attachment: its own parts are not walked.
    """
    seen: set[str] = set()
    for part in _walk(message, 0):
        kind = _body_kind(part)
        inline_text = kind in ("text/plain", "text/html") and not _is_attachment(part)
        if inline_text and kind not in seen:
            seen.add(kind)
            yield _Leaf(part, attachment=False)
        else:
            yield _Leaf(part, attachment=True)


def _walk(part: Message, depth: int) -> Iterator[Message]:
    if depth > _MAX_DEPTH:
        return
    payload = part.get_payload()
    if part.get_content_maintype() == "multipart" and isinstance(payload, list):
        for child in payload:
            if isinstance(child, Message):
                yield from _walk(child, depth + 1)
        return
    yield part


def _body_kind(part: Message) -> str:
    """The content type, with a multipart that could not be split (no boundary) read as text."""
    kind = part.get_content_type()
    return "text/plain" if kind.startswith("multipart/") else kind


def _is_attachment(part: Message) -> bool:
    try:
        disposition = part.get_content_disposition()
        return disposition == "attachment" or (disposition is None and part.get_filename() is not None)
    except Exception:
        return True


def _defects(message: Message) -> Iterator[str]:
    for part in _walk_all(message, 0):
        for defect in getattr(part, "defects", []):
            yield type(defect).__name__


def _walk_all(part: Message, depth: int) -> Iterator[Message]:
    yield part
    payload = part.get_payload()
    if depth < _MAX_DEPTH and isinstance(payload, list):
        for child in payload:
            if isinstance(child, Message):
                yield from _walk_all(child, depth + 1)


# ---- parts ----


def _part_bytes(part: Message) -> bytes:
    """The decoded content of a part; a nested message as RFC 5322 bytes."""
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822: one Message inside
        if payload and isinstance(payload[0], Message):
            try:
                return payload[0].as_bytes(policy=policy.compat32)
            except Exception:
                return str(payload[0]).encode("utf-8", errors="replace")
        return b""
    content = part.get_payload(decode=True)
    if isinstance(content, bytes):
        return content
    return str(payload or "").encode("utf-8", errors="surrogateescape")


def _part_text(part: Message) -> str:
    """The decoded text of a body part, with ``\n`` line ends."""
    content = _part_bytes(part)
    try:
        text = content.decode(_charset(part), errors="replace")
    except Exception:  # a codec that is not a text codec, or one that fails anyway
        text = content.decode(_FALLBACK_CHARSET, errors="replace")
    return _clean(text).replace("\r\n", "\n")


def _charset(part: Message) -> str:
    try:
        name = part.get_content_charset() or "us-ascii"
        codec = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return _FALLBACK_CHARSET
    if codec.name in ("ascii", "us-ascii"):
        return _FALLBACK_CHARSET  # 8-bit text mislabelled as ASCII is common; UTF-8 is a superset
    if not getattr(codec, "_is_text_encoding", True):
        return _FALLBACK_CHARSET
    return codec.name


def _attachment_info(part: Message, index: int, content: bytes) -> AttachmentInfo:
    kind = part.get_content_type()
    return AttachmentInfo(
        index=index,
        filename=_filename(part, index, kind),
        content_type=kind,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content_id=_content_id(part),
        inline=part.get_content_disposition() == "inline",
    )


def _filename(part: Message, index: int, kind: str) -> str:
    try:
        name = part.get_filename()
    except Exception:
        name = None
    cleaned = _safe_filename(_clean(name)) if name else ""
    if cleaned:
        return cleaned
    extension = ".eml" if kind == "message/rfc822" else (mimetypes.guess_extension(kind) or ".bin")
    return f"attachment-{index + 1}{extension}"


def _safe_filename(name: str) -> str:
    """A bare file name: no directories, no control characters, not too long."""
    base = re.split(r"[/\\]", name)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip().strip(".")
    return base[:_MAX_FILENAME]


def _content_id(part: Message) -> str | None:
    value = part.get("content-id")
    if value is None:
        return None
    text = _clean(str(value)).strip()
    return text.removeprefix("<").removesuffix(">") or None


# ---- headers ----


def _headers(message: Message) -> Iterator[tuple[str, str]]:
    for name, raw_value in message.raw_items():
        yield _clean(name), _header_text(message, name, raw_value)


def _header_text(message: Message, name: str, raw_value: str) -> str:
    """The decoded value: the header registry's reading, or a plain RFC 2047 decoding.

    The registry is slow (worse than linear) on long values, so long values get the
    plain decoding only, and very long ones are cut for display.
    """
    value, cut = _shorten(raw_value)
    if len(value) <= _MAX_STRUCTURED_HEADER:
        with contextlib.suppress(Exception):
            return _clean(str(message.policy.header_fetch_parse(name, value))) + cut
    return _plain_header_text(value) + cut


def _plain_header_text(raw_value: str) -> str:
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", raw_value)
    try:
        return _clean(str(make_header(decode_header(unfolded))))
    except Exception:
        return _clean(unfolded)


def _shorten(raw_value: str) -> tuple[str, str]:
    if len(raw_value) <= _MAX_HEADER_SHOWN:
        return raw_value, ""
    return raw_value[:_MAX_HEADER_SHOWN], f" … ({len(raw_value) - _MAX_HEADER_SHOWN} more characters)"


def _header(message: Message, name: str) -> str | None:
    for key, raw_value in message.raw_items():
        if key.lower() == name:
            return _header_text(message, key, raw_value)
    return None


def _addresses(message: Message, name: str) -> tuple[str, ...]:
    found: list[str] = []
    for key, raw_value in message.raw_items():
        if key.lower() != name:
            continue
        value, _cut = _shorten(raw_value)
        try:
            if len(value) <= _MAX_STRUCTURED_HEADER:
                header: Any = message.policy.header_fetch_parse(key, value)
                found.extend(_clean(str(address)) for address in header.addresses)
            else:
                pairs = getaddresses([_plain_header_text(value)])
                found.extend(formataddr(pair) for pair in pairs if pair[1])
        except Exception:
            found.append(_header_text(message, key, raw_value))
    return tuple(found)


def _date_iso(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).isoformat()
    except Exception:
        return None


def _clean(text: str) -> str:
    """Text with smuggled raw bytes (surrogate escapes) read as UTF-8."""
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        text = text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    return text.encode("utf-8", errors="replace").decode("utf-8")


# --------------------------------------------------------------------------------------
# Safe HTML
# --------------------------------------------------------------------------------------

# Dropped together with everything inside them.
_DROP_WITH_CONTENT = frozenset(
    {"script", "iframe", "frame", "frameset", "object", "applet", "noembed", "svg", "math", "template"}
)
# Dropped, but their content is kept.
_DROP_TAG = frozenset({"embed", "link", "meta", "base", "form", "param", "portal"})
_VOID = frozenset(
    {"area", "br", "col", "hr", "img", "input", "source", "track", "wbr", "keygen", "basefont", "bgsound"}
)
# Attributes that load a resource as soon as the page renders.
_RESOURCE_ATTRS = frozenset({"src", "background", "poster", "lowsrc", "dynsrc", "data", "codebase"})
# Attributes that hold a link (followed only on a click, in the sandboxed frame).
_LINK_ATTRS = frozenset({"href", "xlink:href", "action", "cite", "longdesc", "usemap", "profile"})
# Attributes never kept.
_DROP_ATTRS = frozenset({"srcdoc", "formaction", "ping", "manifest", "http-equiv", "is"})
_SAFE_LINK_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid"})
_TAG_NAME = re.compile(r"[a-z][a-z0-9-]*(?::[a-z][a-z0-9-]*)?")
_ATTR_NAME = re.compile(r"[a-z_][a-z0-9_.:-]*")
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):")


def safe_html(html_text: str) -> str:
    """``html_text`` without scripts, event handlers, active content or remote resources.

    Meant for a sandboxed iframe (with a strict CSP as the second line of defence):
    ``<script>``, ``<iframe>``, ``<object>``, ``<embed>``, ``<form>``, ``<link>``,
    ``<meta>`` and ``<base>`` go, so do ``on*`` attributes and ``javascript:`` links.
    Remote images and backgrounds are blocked: the URL moves to ``data-blocked-src``
    (``data-blocked-srcset``, ``data-blocked-background``...); ``cid:`` and
    ``data:image/`` sources stay.  Inline CSS keeps only ``data:``/``cid:`` URLs.
    The result is re-serialised from parsed tokens, so all text is escaped.
    """
    try:
        cleaner = _Cleaner()
        cleaner.feed(html_text)
        cleaner.close()
        if cleaner.in_style:
            cleaner.out.append("</style>")
        return "".join(cleaner.out)
    except Exception:  # html.parser is lenient; this is only a safety net
        return f"<pre>{html.escape(html_text, quote=False)}</pre>"


class _Cleaner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip: list[str] = []  # open elements whose content is dropped
        self.in_style = 0

    # ---- tags ----

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, self_closing=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, self_closing=True)

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], *, self_closing: bool) -> None:
        if self._skip:
            if tag == self._skip[-1] and not self_closing:
                self._skip.append(tag)
            return
        if tag in _DROP_WITH_CONTENT:
            if not self_closing:
                self._skip.append(tag)
            return
        if tag in _DROP_TAG or not _TAG_NAME.fullmatch(tag):
            return
        self.out.append(f"<{tag}{_attributes(tag, attrs)}>")
        if tag == "style" and not self_closing:
            self.in_style += 1
        elif self_closing and tag not in _VOID:
            self.out.append(f"</{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if tag in _DROP_WITH_CONTENT or tag in _DROP_TAG or tag in _VOID or not _TAG_NAME.fullmatch(tag):
            return
        if tag == "style" and self.in_style:
            self.in_style -= 1
        self.out.append(f"</{tag}>")

    # ---- content ----

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self.in_style:
            self.out.append(_style_text(data))
        else:
            self.out.append(html.escape(data, quote=False))

    def handle_decl(self, decl: str) -> None:
        if not self._skip and re.fullmatch(r"doctype\s+html[^<>]*", decl, flags=re.IGNORECASE):
            self.out.append(f"<!{decl}>")

    def handle_comment(self, data: str) -> None:
        """Comments (and conditional comments) are dropped."""

    def handle_pi(self, data: str) -> None:
        """Processing instructions are dropped."""

    def unknown_decl(self, data: str) -> None:
        """CDATA sections and other declarations are dropped."""


def _attributes(tag: str, attrs: list[tuple[str, str | None]]) -> str:
    out: list[str] = []
    for raw_name, value in attrs:
        name = raw_name.lower()
        if not _ATTR_NAME.fullmatch(name) or name.startswith("on") or name in _DROP_ATTRS:
            continue
        if name.startswith("data-blocked-"):
            continue  # only this function writes those
        if value is None:
            out.append(f" {name}")
            continue
        kept = _attribute_value(tag, name, value)
        if kept is None:
            continue
        new_name, new_value = kept
        out.append(f' {new_name}="{html.escape(new_value, quote=True)}"')
    return "".join(out)


def _attribute_value(tag: str, name: str, value: str) -> tuple[str, str] | None:
    """The attribute to write for ``name=value``, renamed when blocked, or ``None`` to drop it."""
    if name == "style":
        return name, _safe_css(value)
    if name == "srcset" or name == "imagesrcset":
        return f"data-blocked-{name}", value
    if name in _RESOURCE_ATTRS:
        if _is_embedded_image(value):
            return name, value
        return f"data-blocked-{name}", value
    if name in _LINK_ATTRS:
        return (name, value) if _is_safe_link(value) else None
    if _looks_like_script_url(value):
        return None
    return name, value


def _url_key(value: str) -> str:
    """How a browser reads a URL's start: without controls, spaces, tabs or newlines."""
    return "".join(ch for ch in value if ord(ch) > 0x20 and ch != "\x7f").lower()


def _is_embedded_image(value: str) -> bool:
    key = _url_key(value)
    return key.startswith(("cid:", "data:image/"))


def _is_safe_link(value: str) -> bool:
    key = _url_key(value)
    scheme = _SCHEME.match(key)
    if scheme is None:
        return True  # relative or fragment
    return scheme.group(1) in _SAFE_LINK_SCHEMES


def _looks_like_script_url(value: str) -> bool:
    return _url_key(value).startswith(("javascript:", "vbscript:", "livescript:"))


# ---- CSS ----

_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.DOTALL)
_CSS_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\r\n\f]?|(\r\n|[\n\r\f])|(.))", re.DOTALL)
_CSS_URL = re.compile(r"url\(", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import\b[^;]*;?", re.IGNORECASE)
_CSS_STRING = re.compile(r"\"([^\"\n]*)\"|'([^'\n]*)'")
_CSS_DANGEROUS = re.compile(r"expression\s*\(|behavior\s*:|-moz-binding|javascript:|vbscript:", re.IGNORECASE)
_REMOTE_STRING = re.compile(r"\s*(?://|(?:https?|ftp|file|javascript|vbscript):)", re.IGNORECASE)


def _safe_css(css: str) -> str:
    """CSS without remote URLs, imports, scripts or bindings (escapes decoded first)."""
    css = _CSS_ESCAPE.sub(_css_unescape, _CSS_COMMENT.sub("", css))
    css = _CSS_IMPORT.sub("", _css_urls(css))
    css = _CSS_STRING.sub(_css_string, css)
    return _CSS_DANGEROUS.sub("blocked", css).replace("\x00", "\ufffd")


def _css_unescape(match: re.Match[str]) -> str:
    hex_digits, newline, char = match.groups()
    if newline is not None:
        return ""
    if char is not None:
        return char
    code = int(hex_digits, 16)
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return "\ufffd"
    return chr(code)


def _css_urls(css: str) -> str:
    """Replace every ``url(...)`` whose target is not ``data:``/``cid:`` with ``none``."""
    out: list[str] = []
    position = 0
    for match in _CSS_URL.finditer(css):
        if match.start() < position:
            continue
        end = css.find(")", match.end())
        end = len(css) if end < 0 else end + 1
        argument = css[match.end() : end].rstrip(")").strip().strip("\"'")
        out.append(css[position : match.start()])
        out.append(css[match.start() : end] if _is_embedded_image(argument) else "none")
        position = end
    out.append(css[position:])
    return "".join(out)


def _css_string(match: re.Match[str]) -> str:
    content = match.group(1) if match.group(1) is not None else match.group(2)
    return '""' if _REMOTE_STRING.match(content) else match.group(0)


def _style_text(css: str) -> str:
    """The content of a <style> element: safe CSS that cannot close or open any tag."""
    return _safe_css(css).replace("<", "\\3c ")
