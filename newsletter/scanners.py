"""Telling likely people from machines among the clicks on a link (docs/engagement.md, "Honest numbers").

Mail security gateways (Microsoft Safe Links, Mimecast, Proofpoint, ...), mail providers' proxies and link
previewers fetch links that nobody clicked. Two signs give them away, and a click showing either is counted
as a click but not as a likely human one:

- **its user agent** is one of :data:`SCANNER_AGENTS` (or of ``tracking.scanner_agents``), or there is none;
- **a burst right after delivery**: it came within :data:`AFTER_DELIVERY` seconds after a delivery of the
  issue (with ``tracking.per_subscriber``: after the delivery to that subscriber), and another such click on
  the same issue came from the same network (:func:`network`) within :data:`BURST` seconds of it. A gateway
  opens every link of a message the moment it arrives, from its own address range; a person reads first.

The network is only ever held in memory, for those few seconds (:mod:`newsletter.clicks`); it is never
stored, nor is the address or the user agent.
"""

from __future__ import annotations

import functools
import re
import socket
from collections.abc import Iterable

AFTER_DELIVERY = 30.0  # seconds after a delivery in which a click may be a gateway's scan of the new message
BURST = 10.0  # seconds within which two early clicks from one network make both a scan
EARLY_TOLERANCE = 10.0  # a delivery's sent_at is recorded after the message left: a click may precede it a bit

# Regular expressions, matched anywhere in the User-Agent, ignoring case. Extend with tracking.scanner_agents.
SCANNER_AGENTS: tuple[str, ...] = (
    # mail providers' proxies and checks
    r"GoogleImageProxy", r"Google-Safety", r"YahooMailProxy", r"CFNetwork", r"^Mozilla/5\.0$",
    # Microsoft (Safe Links, Office apps checking links, Bing's previews)
    r"Microsoft Office", r"MSOffice", r"ms-office", r"Microsoft Outlook", r"Microsoft-URLAnalyzer", r"BingPreview",
    # security gateways and scanners
    r"Barracuda", r"Mimecast", r"Proofpoint", r"Forcepoint", r"IronPort", r"FireEye", r"Forti(?:Guard|Mail)",
    r"Sophos", r"Symantec", r"Trend ?Micro", r"Kaspersky", r"McAfee", r"SonicWALL", r"Check ?Point",
    # link previews in chat and social apps
    r"facebookexternalhit", r"Slackbot", r"Twitterbot", r"LinkedInBot", r"Discordbot", r"TelegramBot",
    r"WhatsApp", r"SkypeUriPreview", r"Iframely", r"Embedly",
    # crawlers, headless browsers and HTTP libraries
    r"bot/\d", r"crawler", r"spider", r"HeadlessChrome", r"PhantomJS", r"python-requests", r"python-urllib",
    r"aiohttp", r"python-httpx", r"^curl/", r"^Wget", r"Go-http-client", r"^Java/", r"libwww-perl", r"okhttp",
)


class AgentFilter:
    """Matches user agents against :data:`SCANNER_AGENTS` plus ``extra`` patterns (one compiled regex).

    The answers for the :data:`REMEMBERED` agents seen most recently are kept: a click mostly comes from a
    browser many others use, and the search costs tens of microseconds, a good part of a click's answer."""

    REMEMBERED = 4096

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self._pattern = re.compile("|".join(f"(?:{p})" for p in (*SCANNER_AGENTS, *extra)), re.IGNORECASE)
        self.is_scanner = functools.lru_cache(maxsize=self.REMEMBERED)(self._is_scanner)

    def _is_scanner(self, user_agent: str | None) -> bool:
        """True for a known scanner's user agent, or none at all (every browser sends one)."""
        agent = (user_agent or "").strip()
        return not agent or self._pattern.search(agent) is not None


_IPV4_MAPPED = bytes(10) + b"\xff\xff"


def network(ip: str | None) -> str:
    """The network a client is in, for the burst rule: an IPv4 address's /24, an IPv6 address's /48 (a
    gateway's scans of one message come from neighbouring addresses); anything else as it is."""
    if not ip:
        return "unknown"
    try:
        if ":" not in ip:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, ip)[:3] + b"\0") + "/24"
        packed = socket.inet_pton(socket.AF_INET6, ip)
    except OSError:
        return ip
    if packed[:12] == _IPV4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:15] + b"\0") + "/24"
    return socket.inet_ntop(socket.AF_INET6, packed[:6] + bytes(10)) + "/48"
