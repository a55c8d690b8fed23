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
from typing import Any, Final

import nh3

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

# The sanitizer is ammonia (through nh3) with allow-lists: a tag, attribute or URL scheme
# that is not named here does not reach the preview. What ammonia does not do is done
# here on its output: CSS (style attributes and <style> content) loses remote URLs,
# imports and scripts, and only embedded images (cid:, data:image/...) may load.
_ALLOWED_TAGS: Final = frozenset(
    {
        *("a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo", "big"),
        *("blockquote", "br", "caption", "center", "cite", "code", "col", "colgroup", "dd"),
        *("del", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "font", "footer"),
        *("h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "i", "img", "ins", "kbd", "li"),
        *("main", "mark", "nav", "ol", "p", "pre", "q", "s", "samp", "section", "small", "span"),
        *("strike", "strong", "style", "sub", "sup", "table", "tbody", "td", "tfoot", "th"),
        *("thead", "time", "tr", "tt", "u", "ul", "var", "wbr"),
    }
)
# Removed together with everything inside them (other refused tags keep their text).
_CLEAN_CONTENT_TAGS: Final = frozenset(
    {"script", "iframe", "frame", "frameset", "object", "applet", "noembed", "noframes", "noscript"}
    | {"svg", "math", "template", "textarea", "select", "title", "xmp", "plaintext"}
)
_GENERIC_ATTRIBUTES: Final = frozenset(
    {"align", "bgcolor", "class", "dir", "height", "id", "lang", "style", "title", "valign", "width"}
)
_TAG_ATTRIBUTES: Final[dict[str, frozenset[str]]] = {
    "a": frozenset({"href", "name"}),
    "img": frozenset({"src", "alt", "border", "hspace", "vspace"}),
    "table": frozenset({"background", "border", "cellpadding", "cellspacing", "frame", "rules", "summary"}),
    "td": frozenset({"abbr", "axis", "background", "colspan", "headers", "nowrap", "rowspan", "scope"}),
    "th": frozenset({"abbr", "axis", "background", "colspan", "headers", "nowrap", "rowspan", "scope"}),
    "col": frozenset({"span"}),
    "colgroup": frozenset({"span"}),
    "font": frozenset({"color", "face", "size"}),
    "ol": frozenset({"reversed", "start", "type"}),
    "ul": frozenset({"type"}),
    "li": frozenset({"type", "value"}),
    "hr": frozenset({"noshade", "size"}),
    "blockquote": frozenset({"cite"}),
    "q": frozenset({"cite"}),
    "del": frozenset({"cite", "datetime"}),
    "ins": frozenset({"cite", "datetime"}),
    "time": frozenset({"datetime"}),
}
# ammonia checks these schemes on every URL attribute; _filter_attribute narrows them per
# attribute (data: only for images, never for links).
_URL_SCHEMES: Final = frozenset({"http", "https", "mailto", "tel", "cid", "data"})
_SAFE_LINK_SCHEMES: Final = frozenset({"http", "https", "mailto", "tel", "cid"})
_EMBEDDED_IMAGE: Final = ("cid:", "data:image/png", "data:image/gif", "data:image/jpeg", "data:image/webp")
_LINK_ATTRS: Final = frozenset({"href", "cite"})
_RESOURCE_ATTRS: Final = frozenset({"src", "background"})
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):")
_DOCTYPE = re.compile(r"\s*<!doctype\s+html\b", re.IGNORECASE)
# In ammonia's output every '<' in text and attribute values is escaped, and a <style>
# element's raw text cannot hold "</style>": this finds exactly the style elements.
_STYLE_ELEMENT = re.compile(r"(<style(?:\s[^<>]*)?>)(.*?)(</style>)", re.DOTALL)


def safe_html(html_text: str) -> str:
    """``html_text`` without scripts, event handlers, active content or remote resources.

    Meant for a sandboxed iframe (with a strict CSP as the second line of defence).
    ammonia (through nh3) parses the HTML as a browser would and keeps only the tags,
    attributes and URL schemes of the allow-lists above; ``<script>``, ``<svg>``,
    ``<iframe>`` and the like go with their content, other refused tags (``<form>``,
    ``<meta>``, ``<base>``, ``<link>``, unknown ones) leave their text. Links keep http(s),
    mailto, tel and cid URLs; images and backgrounds load only from ``cid:`` and
    ``data:image/`` (remote ones are removed); CSS keeps only ``data:``/``cid:`` URLs.
    The result is re-serialised from the parsed tree, so all text is escaped.
    """
    try:
        cleaned = _CLEANER.clean(html_text)
    except Exception:  # e.g. lone surrogates nh3 cannot take: shown as text
        text = html_text.encode("utf-8", errors="replace").decode("utf-8")
        return f"<pre>{html.escape(text, quote=False)}</pre>"
    cleaned = _STYLE_ELEMENT.sub(_clean_style_element, cleaned)
    return "<!DOCTYPE html>" + cleaned if _DOCTYPE.match(html_text) else cleaned


def _filter_attribute(tag: str, name: str, value: str) -> str | None:
    """Called by ammonia for each allowed attribute: the value to keep, or None to drop it."""
    if name == "style":
        return _safe_css(value)
    if name in _RESOURCE_ATTRS:
        return value if _is_embedded_image(value) else None
    if name in _LINK_ATTRS:
        return value if _is_safe_link(value) else None
    return value


def _clean_style_element(match: re.Match[str]) -> str:
    return match.group(1) + _style_text(match.group(2)) + match.group(3)


_CLEANER: Final = nh3.Cleaner(
    tags=set(_ALLOWED_TAGS),
    clean_content_tags=set(_CLEAN_CONTENT_TAGS),
    attributes={"*": set(_GENERIC_ATTRIBUTES), **{tag: set(names) for tag, names in _TAG_ATTRIBUTES.items()}},
    attribute_filter=_filter_attribute,
    url_schemes=set(_URL_SCHEMES),
    strip_comments=True,
    link_rel="noopener noreferrer",
)


def _url_key(value: str) -> str:
    """How a browser reads a URL's start: without controls, spaces, tabs or newlines."""
    return "".join(ch for ch in value if ord(ch) > 0x20 and ch != "\x7f").lower()


def _is_embedded_image(value: str) -> bool:
    return _url_key(value).startswith(_EMBEDDED_IMAGE)


def _is_safe_link(value: str) -> bool:
    scheme = _SCHEME.match(_url_key(value))
    if scheme is None:
        return True  # relative or fragment
    return scheme.group(1) in _SAFE_LINK_SCHEMES


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
