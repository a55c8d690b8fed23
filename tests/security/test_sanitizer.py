"""The sandbox preview's HTML cleaner against the OWASP XSS filter-evasion cases.

Each vector is cleaned and the result read back the way a browser's parser would see
its tags and attributes: nothing that runs script, loads a remote resource or
navigates the frame may survive. The iframe sandbox and the CSP are the second line;
this is the first.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from mailwright.sandbox import safe_html

# A selection from the OWASP XSS Filter Evasion Cheat Sheet, plus the mail-specific ones.
OWASP_VECTORS: dict[str, str] = {
    "basic script": "<SCRIPT SRC=https://xss.rocks/xss.js></SCRIPT>",
    "polyglot": "javascript:/*--></title></style></textarea></script></xmp>"
    "<svg/onload='+/\"/+/onmouseover=1/+/[*/[]/+alert(1)//'>",
    "img javascript src": "<IMG SRC=\"javascript:alert('XSS');\">",
    "img no quotes mixed case": "<IMG SRC=JaVaScRiPt:alert('XSS')>",
    "img grave accents": "<IMG SRC=`javascript:alert(\"RSnake says, 'XSS'\")`>",
    "malformed a tag": '\\<a onmouseover="alert(document.cookie)"\\>xxs link\\</a\\>',
    "malformed img tag": '<IMG """><SCRIPT>alert("XSS")</SCRIPT>"\\>',
    "img onerror": '<IMG SRC=/ onerror="alert(String.fromCharCode(88,83,83))"></img>',
    "img onerror encoded": '<img src=x onerror="&#0000106&#0000097&#0000118&#0000097&#0000115'
    "&#0000099&#0000114&#0000105&#0000112&#0000116&#0000058&#0000097&#0000108&#0000101&#0000114&#0000116"
    '&#0000040&#0000039&#0000088&#0000083&#0000083&#0000039&#0000041">',
    "decimal entities": "<IMG SRC=&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;"
    "&#97;&#108;&#101;&#114;&#116;&#40;&#39;&#88;&#83;&#83;&#39;&#41;>",
    "hex entities no semicolons": "<IMG SRC=&#x6A&#x61&#x76&#x61&#x73&#x63&#x72&#x69&#x70&#x74&#x3A"
    "&#x61&#x6C&#x65&#x72&#x74&#x28&#x27&#x58&#x53&#x53&#x27&#x29>",
    "embedded tab": "<a href=\"jav\tascript:alert('XSS');\">t</a>",
    "encoded tab": "<a href=\"jav&#x09;ascript:alert('XSS');\">t</a>",
    "encoded newline": "<a href=\"jav&#x0A;ascript:alert('XSS');\">t</a>",
    "encoded carriage return": "<a href=\"jav&#x0D;ascript:alert('XSS');\">t</a>",
    "null byte": '<a href="java\0script:alert(1)">t</a>',
    "spaces and meta chars": "<a href=\" &#14;  javascript:alert('XSS');\">t</a>",
    "non-alpha non-digit": '<SCRIPT/XSS SRC="http://xss.rocks/xss.js"></SCRIPT>'
    '<BODY onload!#$%&()*~+-_.,:;?@[/|\\]^`=alert("XSS")>',
    "extraneous open brackets": '<<SCRIPT>alert("XSS");//\\<</SCRIPT>',
    "no closing script tag": "<SCRIPT SRC=http://xss.rocks/xss.js?< B >",
    "half open html": "<IMG SRC=\"`<javascript:alert>`('XSS')\"",
    "end title tag": '</TITLE><SCRIPT>alert("XSS");</SCRIPT>',
    "input image": '<INPUT TYPE="IMAGE" SRC="javascript:alert(\'XSS\');">',
    "body image": "<BODY BACKGROUND=\"javascript:alert('XSS')\">",
    "img dynsrc lowsrc": "<IMG DYNSRC=\"javascript:alert('XSS')\"><IMG LOWSRC=\"javascript:alert('XSS')\">",
    "svg onload": '<svg/onload=alert("XSS")>',
    "svg script": '<svg><script>alert(1)</script><a xlink:href="javascript:alert(2)">x</a></svg>',
    "math href": '<math><mi xlink:href="data:x,<script>alert(4)</script>">x</mi></math>',
    "body onload": '<BODY ONLOAD=alert("XSS")>',
    "details ontoggle": "<details open ontoggle=alert(1)><summary>s</summary></details>",
    "style expression": "<IMG STYLE=\"xss:expr/*XSS*/ession(alert('XSS'))\">",
    "style tag expression": "<STYLE>li {list-style-image: url(\"javascript:alert('XSS')\");}</STYLE>"
    "<UL><LI>XSS</br>",
    "style escaped javascript": "<div style=\"background-image: url(&#1;javascript:alert('XSS'))\">d</div>",
    "style import": "<STYLE>@import'http://xss.rocks/xss.css';</STYLE>",
    "style behavior": '<XSS STYLE="behavior: url(xss.htc);">',
    "style moz-binding": '<div style="-moz-binding: url(http://xss.rocks/xssmoz.xml#xss)">d</div>',
    "style anonymous element": "<XSS STYLE=\"xss:expression(alert('XSS'))\">",
    "style css escapes": '<div style="width: \\65 xpression(alert(1)); background: u\\72l(http://x.example/)">d</div>',
    "meta refresh": '<META HTTP-EQUIV="refresh" CONTENT="0;url=javascript:alert(\'XSS\');">',
    "meta refresh data url": '<META HTTP-EQUIV="refresh" CONTENT="0;url=data:text/html;base64,'
    'PHNjcmlwdD5hbGVydCgnWFNTJyk8L3NjcmlwdD4K">',
    "iframe": "<IFRAME SRC=\"javascript:alert('XSS');\"></IFRAME>",
    "iframe srcdoc": '<iframe srcdoc="&lt;script&gt;alert(1)&lt;/script&gt;"></iframe>',
    "frameset": "<FRAMESET><FRAME SRC=\"javascript:alert('XSS');\"></FRAMESET>",
    "table background": "<TABLE BACKGROUND=\"javascript:alert('XSS')\">"
    "<TD BACKGROUND=\"javascript:alert('XSS')\">c</TD></TABLE>",
    "object data": '<OBJECT TYPE="text/x-scriptlet" DATA="http://xss.rocks/scriptlet.html"></OBJECT>',
    "embed svg": '<EMBED SRC="data:image/svg+xml;base64,PHN2ZyB4bWxuczpzdmc9Imh0dH A6Ly93d3cudzMub3'
    "JnLzIwMDAvc3ZnIiB4"
    'bWxucz0iaHR0cDovL3d3dy53My5vcmcv" type="image/svg+xml" AllowScriptAccess="always"></EMBED>',
    "data url link": '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">d</a>',
    "data svg image": '<img src="data:image/svg+xml,<svg onload=alert(1)>">',
    "base href": '<BASE HREF="javascript:alert(\'XSS\');//"><a href="x">x</a>',
    "link stylesheet": '<LINK REL="stylesheet" HREF="javascript:alert(\'XSS\');">',
    "form action": '<form action="javascript:alert(1)">'
    '<button formaction="javascript:alert(2)">b</button></form>',
    "vbscript": '<IMG SRC=\'vbscript:msgbox("XSS")\'><a href="vbscript:x">v</a>',
    "livescript": '<a href="livescript:alert(1)">l</a>',
    "conditional comment": "<!--[if gte IE 4]><SCRIPT>alert('XSS');</SCRIPT><![endif]-->",
    "cdata": "<![CDATA[<script>alert(1)</script>]]>",
    "xml namespace": '<HTML xmlns:xss><?import namespace="xss" implementation="http://xss.rocks/xss.htc"><xss:xss>XSS</xss:xss></HTML>',
    "noscript breakout": '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    "textarea breakout": "<textarea><img src=x onerror=alert(1)></textarea>",
    "title breakout": "<title><img src=x onerror=alert(1)></title>",
    "unknown tag with handler": "<x-custom onclick=alert(1) tabindex=1>c</x-custom>",
    "marquee": "<marquee onstart=alert(1)>m</marquee>",
}

_ACTIVE_TAGS = {
    "script", "iframe", "frame", "frameset", "object", "embed", "applet", "svg", "math", "base", "meta",
    "link", "form", "input", "button", "textarea", "select", "noscript", "template", "details", "marquee",
    "portal", "xss", "x-custom", "body", "html", "title",
}  # fmt: skip
_SCRIPT_SCHEMES = ("javascript:", "vbscript:", "livescript:", "data:")
_CSS_DANGEROUS = re.compile(
    r"expression\s*\(|behavior\s*:|-moz-binding|javascript:|url\(\s*['\"]?(?!data:|cid:)"
)
_LIVE_MARKUP = re.compile(r"<[^>]*(?:javascript:|\son[a-z!#$%&()*~+\-_.,:;?@\[/|\]^`]+\s*=)", re.IGNORECASE)


class _Reading(HTMLParser):
    """Tags, attributes and CSS of the cleaned HTML, as a parser reads them back."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.css: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend((name, value or "") for name, value in attrs)
        self.css.extend(value or "" for name, value in attrs if name == "style")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        if self.lasttag == "style" and self.cdata_elem:
            self.css.append(data)


def _url_key(value: str) -> str:
    return "".join(ch for ch in value if ord(ch) > 0x20 and ch != "\x7f").lower()


def _read(html_text: str) -> _Reading:
    reading = _Reading()
    reading.feed(html_text)
    reading.close()
    return reading


@pytest.mark.parametrize("vector", list(OWASP_VECTORS.values()), ids=list(OWASP_VECTORS))
def test_owasp_filter_evasion_vector_is_neutralised(vector: str) -> None:
    cleaned = safe_html(vector)
    found = _read(cleaned)
    assert not _ACTIVE_TAGS & set(found.tags), cleaned
    assert not [name for name, _ in found.attrs if name.startswith("on")], cleaned
    for name, value in found.attrs:
        if name in ("href", "src", "background", "cite", "action", "formaction", "dynsrc", "lowsrc"):
            key = _url_key(value)
            assert not key.startswith(_SCRIPT_SCHEMES) or key.startswith(("data:image/png", "data:image/gif"))
            assert name in ("href", "cite") or key.startswith(("cid:", "data:image/")), cleaned
    assert not [css for css in found.css if _CSS_DANGEROUS.search(css)], cleaned
    assert "xss.rocks" not in cleaned
    # Whatever survived is inert text: no script URL or handler is left anywhere in markup.
    assert not _LIVE_MARKUP.search(cleaned), cleaned


def test_only_allow_listed_tags_and_attributes_reach_the_preview() -> None:
    """An allow-list, not a deny-list: unknown and interactive elements and attributes go, text stays."""
    cleaned = safe_html(
        '<marquee behavior="alternate">m</marquee><details open><summary>s</summary>d</details>'
        '<x-widget data-x="1">w</x-widget><button type="submit">b</button><dialog open>g</dialog>'
        '<p tabindex="1" contenteditable="true" draggable="true" accesskey="x" class="k">p</p>'
    )
    found = _read(cleaned)
    assert found.tags == ["p"]
    assert found.attrs == [("class", "k")]
    assert cleaned.endswith(">p</p>")
    assert "msdwbg" in re.sub(r"<[^>]*>", "", cleaned)


def test_safe_links_and_embedded_images_are_kept() -> None:
    cleaned = safe_html(
        '<a href="https://example.org/a?b=1&amp;c=2">web</a><a href="mailto:a@example.org">mail</a>'
        '<a href="#top">top</a><img src="cid:logo@example.org" alt="logo">'
        '<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline">'
    )
    found = _read(cleaned)
    assert ("href", "https://example.org/a?b=1&c=2") in found.attrs
    assert ("href", "mailto:a@example.org") in found.attrs
    assert ("href", "#top") in found.attrs
    assert ("src", "cid:logo@example.org") in found.attrs
    assert ("src", "data:image/png;base64,iVBORw0KGgo=") in found.attrs
    assert ("rel", "noopener noreferrer") in found.attrs
