"""Host names as users type them: names, IDN, IPv4 and IPv6 literals."""

from __future__ import annotations

import ipaddress
import re

import idna

from mailwright.errors import ValidationError

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def ascii_host(host: str, *, field: str = "server") -> str:
    """The host in the form sockets and certificates use: A-labels, or a bare IP."""
    text = host.strip().rstrip(".")
    if not text:
        raise ValidationError("the server name is empty", field=field)
    literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(literal))
    except ValueError:
        pass
    if any(c in text for c in " /:@\\\r\n\t"):
        raise ValidationError(
            f"{text!r} is not a host name: give only the name or IP address, without "
            "scheme, port or path (for example smtp.gmail.com)",
            field=field,
        )
    try:
        encoded = idna.encode(text, uts46=True).decode() if not text.isascii() else text.lower()
    except idna.IDNAError as exc:
        raise ValidationError(f"{text!r} is not a valid host name: {exc}", field=field) from exc
    if len(encoded) > 253 or not all(_LABEL.match(label) for label in encoded.split(".")):
        raise ValidationError(f"{text!r} is not a valid host name", field=field)
    return encoded


# --- the outbound policy: which addresses a target may reach ------------------------

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Link-local networks and the cloud metadata services (AWS, GCP, Azure, Oracle and
# DigitalOcean at 169.254.169.254, AWS's IPv6 fd00:ec2::254, Alibaba 100.100.100.200):
# a target pointed there could read the machine's cloud credentials.
DEFAULT_TARGET_DENY: tuple[str, ...] = (
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
)


def parse_networks(text: str | None, *, setting: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (or bare addresses); a bad one raises ValueError naming it."""
    networks: list[IPNetwork] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"{setting}: {item!r} is not a network ({exc}); write CIDRs such as "
                "169.254.0.0/16 or fe80::/10, comma-separated"
            ) from None
    return tuple(networks)


def _comparable(address: IPAddress) -> IPAddress:
    # ::ffff:169.254.169.254 reaches 169.254.169.254: judge the IPv4 address it carries.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class OutboundPolicy:
    """Which addresses targets may connect to: a deny list and an allow list that overrides it.

    Loopback and private networks are allowed unless denied: local relays and tests use them.
    """

    __slots__ = ("allow", "deny", "deny_is_default")

    def __init__(
        self, *, deny: tuple[IPNetwork, ...], allow: tuple[IPNetwork, ...] = (), deny_is_default: bool = False
    ) -> None:
        self.deny = deny
        self.allow = allow
        self.deny_is_default = deny_is_default

    @classmethod
    def from_settings(cls, deny: str | None, allow: str | None) -> OutboundPolicy:
        """From MAILWRIGHT_TARGET_DENY (None: the default list) and MAILWRIGHT_TARGET_ALLOW."""
        if deny is None:
            networks = parse_networks(",".join(DEFAULT_TARGET_DENY), setting="MAILWRIGHT_TARGET_DENY")
        else:
            networks = parse_networks(deny, setting="MAILWRIGHT_TARGET_DENY")
        return cls(
            deny=networks,
            allow=parse_networks(allow, setting="MAILWRIGHT_TARGET_ALLOW"),
            deny_is_default=deny is None,
        )

    def refusing_rule(self, address: str | IPAddress) -> IPNetwork | None:
        """The deny rule that refuses `address`, or None when it may be reached."""
        ip = _comparable(ipaddress.ip_address(address) if isinstance(address, str) else address)
        if any(ip in network for network in self.allow if network.version == ip.version):
            return None
        return next((n for n in self.deny if n.version == ip.version and ip in n), None)

    def explain(self, host: str, address: str, rule: IPNetwork) -> tuple[str, str]:
        """The message and the hint for an address the policy refuses."""
        via = "" if host == address else f" ({host} resolves to {address})"
        source = "the default MAILWRIGHT_TARGET_DENY" if self.deny_is_default else "MAILWRIGHT_TARGET_DENY"
        message = (
            f"the outbound policy refuses {address}{via}: it is in {rule}, denied by {source} "
            "(link-local and cloud metadata addresses are denied so that a target cannot read "
            "the machine's credentials)"
        )
        hint = (
            f"point the target at another server, or, if this server is meant to be reached, add "
            f"{address} to MAILWRIGHT_TARGET_ALLOW (CIDRs, comma-separated) or take {rule} out of "
            "MAILWRIGHT_TARGET_DENY, and restart Mailwright"
        )
        return message, hint

    def check_literal(self, host: str, *, field: str = "server") -> None:
        """Refuse a host written as an IP address that the policy denies (names: at connect time)."""
        literal = host.strip().rstrip(".")
        literal = literal[1:-1] if literal.startswith("[") and literal.endswith("]") else literal
        try:
            ip = ipaddress.ip_address(literal)
        except ValueError:
            return
        rule = self.refusing_rule(ip)
        if rule is not None:
            message, hint = self.explain(str(ip), str(ip), rule)
            raise ValidationError(message, field=field, hint=hint)


DEFAULT_POLICY = OutboundPolicy.from_settings(None, None)
