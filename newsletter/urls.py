"""What is wrong with a URL, said so that the user knows what to fix.

Shared by the config (``ingest.feeds``), the summary fields (``url``, ``image_url``) and the feed fetcher,
so that one bad URL gets the same explanation wherever it is given: a bad port is named as a bad port, a
space as a space, and only characters are told to be percent-encoded.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

_MAX_PORT = 65_535


def http_url_problem(url: str, *, example: str, public: bool = False) -> str | None:
    """Why ``url`` is not a usable absolute http(s) URL, ending with what to do; None if it is fine.

    ``example`` is shown for a URL that is not absolute (``https://example.org/feed.xml``). ``public``
    also requires a host name with a dot, as links in an email must have (``localhost`` opens nothing on a
    reader's machine), and no user name or password before the host (``https://bank.example@evil.example/``
    looks like one site and opens another). The message starts with a verb so it reads after the URL: ``'…' has … ; …``.
    """
    if not url:
        return f"is empty; write an absolute http(s) URL such as {example}"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "contains spaces or control characters; percent-encode them (a space is %20)"
    if any(ch in '<>"' for ch in url):
        return 'contains quotes or angle brackets; percent-encode them (" is %22, < is %3C, > is %3E)'
    try:
        parts = urlsplit(url)
    except ValueError:  # "http://[::1/x": urlsplit refuses an unclosed IPv6 bracket
        return "has an unclosed '[' in its host; write an IPv6 address in brackets, such as http://[2001:db8::1]/"
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return f"must be an absolute http(s) URL such as {example}"
    host_and_port = parts.netloc.rpartition("@")[2]
    port = host_and_port.rpartition("]")[2].partition(":")[2]  # after an IPv6 address's brackets
    if port and not (port.isascii() and port.isdigit()):
        return f"has {port!r} as its port, which must be a number (https://example.org:8080/) or left out"
    if port and not 0 < int(port) <= _MAX_PORT:
        return f"has the port {int(port)}, which does not exist; ports go from 1 to {_MAX_PORT:,}"
    host = parts.hostname or ""
    if not host:
        return f"has no host name; write it in full, such as {example}"
    if public and "." not in host.strip("."):
        return f"has the host {host!r}, which readers cannot reach; use the page's public address"
    if public and "@" in parts.netloc:  # https://news.example.org@evil.example/ opens evil.example
        return (f"has {parts.netloc.rpartition('@')[0] + '@'!r} before its host, so it opens {host}, not what "
                "it seems to; write the link without a user name or password")
    try:
        httpx.URL(url)  # what the fetcher will use: it also checks the host's characters (IDNA)
    except httpx.InvalidURL as exc:
        return f"is not a valid URL ({exc}); check the host name"
    return None
