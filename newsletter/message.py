"""One subscriber's digest as RFC 5322 bytes: a rendered issue, personalised, with list headers.

The message is ``multipart/alternative`` (text/plain first, text/html last, both UTF-8 quoted-printable,
so no line exceeds 998 octets) with CRLF line endings. It carries RFC 2369/2919/8058 list headers so mail
clients show an unsubscribe button that works with one click. No CR or LF from data (a subscriber's
name, a subject) ever reaches a header: names are flattened to one line, addresses and URLs are checked.
"""

from __future__ import annotations

import email.policy
import hashlib
import logging
import re
import unicodedata
from dataclasses import replace
from datetime import UTC, datetime
from email.errors import MessageError
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage, MIMEPart
from email.policy import EmailPolicy, Policy
from email.utils import format_datetime, formataddr
from typing import cast

from newsletter.config import Config
from newsletter.errors import InvalidAddress
from newsletter.render import RecipientValues, RenderedIssue, as_utc

log = logging.getLogger(__name__)

_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
_URI = re.compile(r"^(https?|mailto):[^\s<>\"\x00-\x1f\x7f]+$", re.IGNORECASE)


class _UriListHeader(UnstructuredHeader):
    """``List-Unsubscribe``: ``<uri>, <uri>`` folded only between URIs.

    The standard folding would turn a long URI into RFC 2047 encoded words, which RFC 2369 forbids and
    which breaks one-click unsubscribe in Gmail and Outlook.
    """

    name: str  # provided by BaseHeader, which HeaderRegistry mixes in

    def fold(self, *, policy: Policy) -> str:
        uris = re.findall(r"<[^<>]*>", str(self))
        return f"{self.name}: " + f",{policy.linesep} ".join(uris) + policy.linesep


def _policy() -> EmailPolicy:
    registry = HeaderRegistry()
    registry.map_to_type("list-unsubscribe", cast(type[BaseHeader], _UriListHeader))
    return email.policy.SMTP.clone(header_factory=registry)  # type: ignore[return-value]


POLICY = _policy()


def build_message(
    config: Config,
    rendered: RenderedIssue,
    values: RecipientValues,
    *,
    message_id: str,
    date: datetime | None = None,
) -> bytes:
    """The complete message for one subscriber, with CRLF line endings.

    ``values.unsubscribe_url`` goes into the body and ``List-Unsubscribe``; ``date`` defaults to now and is
    written in UTC (a naive value is taken as UTC). Raises InvalidAddress for an unusable recipient address
    and ValueError for a malformed ``message_id`` or unsubscribe URL (both are the caller's bug, not the
    subscriber's).
    """
    name = single_line(values.name)
    recipient = _address(name, values.email)
    if not _MESSAGE_ID.match(message_id):
        raise ValueError(f"message_id {message_id!r} must look like <local@domain>")
    if not _URI.match(values.unsubscribe_url) or not values.unsubscribe_url.lower().startswith("http"):
        raise ValueError(f"unsubscribe URL {values.unsubscribe_url!r} must be an http(s) URL without spaces")
    html, text = rendered.personalise(replace(values, name=name))
    letter = config.newsletter

    message = EmailMessage(policy=POLICY)
    message["From"] = letter.sender
    message["To"] = recipient
    if letter.reply_to:
        message["Reply-To"] = letter.reply_to
    message["Subject"] = single_line(rendered.subject)
    message["Date"] = format_datetime(as_utc(date or datetime.now(UTC)))
    message["Message-ID"] = message_id
    message["List-Id"] = formataddr((letter.name, letter.list_id))
    message["List-Unsubscribe"] = (
        f"<{values.unsubscribe_url}>, <mailto:{letter.unsubscribe_address}?subject=unsubscribe>"
    )
    if values.unsubscribe_url.lower().startswith("https://"):
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058 needs an https URI
    else:
        log.warning("unsubscribe URL is not https, so mail clients cannot offer one-click unsubscribe")

    message.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.make_alternative()
    html_part = MIMEPart(policy=POLICY)
    html_part.set_content(html, subtype="html", charset="utf-8", cte="quoted-printable")
    message.attach(html_part)  # type: ignore[arg-type]  # typeshed wants EmailMessage; any MIMEPart works
    return message.as_bytes()


def make_message_id(config: Config, issue_number: int, subscriber_token: str) -> str:
    """``<issue-N.HASH@sender-domain>``: the same for every retry, revealing no address or row id."""
    digest = hashlib.sha256(f"newsletter-message-id\0{subscriber_token}".encode()).hexdigest()[:20]
    return f"<issue-{issue_number}.{digest}@{config.newsletter.sender_domain}>"


def single_line(value: str | None) -> str:
    """``value`` with each run of whitespace (CR, LF, tab, Unicode line breaks) as one space, controls dropped."""
    flattened = " ".join((value or "").split())
    return "".join(ch for ch in flattened if unicodedata.category(ch) != "Cc")


def _address(name: str, address: str) -> Address:
    try:
        if not all(ch.isprintable() for ch in address):
            raise ValueError("it contains a line break or a control character")
        return Address(display_name=name, addr_spec=address)
    except (ValueError, IndexError, MessageError) as exc:
        raise InvalidAddress(
            f"cannot send to {address!r}: not a single plain (ASCII) email address ({exc or 'empty'}); "
            "correct or remove this subscriber"
        ) from None
