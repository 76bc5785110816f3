"""Transactional email: the double opt-in confirmation and the welcome message, sent one at a time through
the configured backend (the same plugins the digest uses).

Templates (``confirm.*.j2``, ``welcome.*.j2``) come from the same Jinja environment and MJML compiler as
the digest (:mod:`newsletter.render`), so a user's templates folder overrides them the same way.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime, formataddr
from typing import Any

from newsletter.backends import OutgoingMessage, SendStatus, create_backend
from newsletter.bounces import return_path
from newsletter.config import Config
from newsletter.errors import DeliveryError
from newsletter.message import POLICY, single_line
from newsletter.models import Subscriber, utcnow
from newsletter.render import (
    NewsletterInfo,
    compile_mjml,
    describe_template,
    render_template,
    template_environment,
    tidy_text,
)
from newsletter.tokens import LinkSigner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str
    unsubscribe_url: str = ""
    preferences_url: str = ""


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def render_transactional(config: Config, kind: str, context: dict[str, Any]) -> Rendered:
    """``<kind>.subject.txt.j2``, ``<kind>.mjml.j2`` (compiled) and ``<kind>.txt.j2`` with ``context`` plus
    ``newsletter``. Raises TemplateError naming the file and line."""
    env = template_environment(config)
    letter = config.newsletter
    context = {"newsletter": NewsletterInfo(letter.name, letter.postal_address, letter.site_url), **context}
    subject = " ".join(render_template(env, f"{kind}.subject.txt.j2", context).split())
    context |= {"subject": subject, "preheader": subject}
    html = compile_mjml(render_template(env, f"{kind}.mjml.j2", context), describe_template(env, f"{kind}.mjml.j2"))
    return Rendered(subject, html, tidy_text(render_template(env, f"{kind}.txt.j2", context)))


def confirmation_email(config: Config, signer: LinkSigner, subscriber: Subscriber) -> Rendered:
    recipient = Recipient(subscriber.email, subscriber.name or "")
    return render_transactional(config, "confirm", {
        "recipient": recipient,
        "confirm_url": signer.confirm_url(subscriber.token),
        "expiry_days": config.web.confirm_expiry_days,
    })


def welcome_email(config: Config, signer: LinkSigner, subscriber: Subscriber) -> Rendered:
    recipient = Recipient(
        subscriber.email,
        subscriber.name or "",
        signer.unsubscribe_url(subscriber.token),
        signer.preferences_url(subscriber.token),
    )
    return render_transactional(config, "welcome", {
        "recipient": recipient, "archive_url": f"{config.newsletter.site_url}/archive",
    })


def build_transactional(
    config: Config, subscriber: Subscriber, rendered: Rendered, message_id: str, *, unsubscribe_url: str | None
) -> bytes:
    """A ``multipart/alternative`` message to one subscriber; list headers only with ``unsubscribe_url``."""
    letter = config.newsletter
    message = EmailMessage(policy=POLICY)
    message["From"] = letter.sender
    message["To"] = Address(display_name=single_line(subscriber.name), addr_spec=subscriber.email)
    if letter.reply_to:
        message["Reply-To"] = letter.reply_to
    message["Subject"] = single_line(rendered.subject)
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = message_id
    if unsubscribe_url:
        message["List-Id"] = formataddr((letter.name, letter.list_id))
        message["List-Unsubscribe"] = f"<{unsubscribe_url}>, <mailto:{letter.unsubscribe_address}?subject=unsubscribe>"
        if unsubscribe_url.startswith("https://"):
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.make_alternative()
    html_part = MIMEPart(policy=POLICY)
    html_part.set_content(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    message.attach(html_part)  # type: ignore[arg-type]
    return message.as_bytes()


def send_one(config: Config, subscriber: Subscriber, data: bytes, message_id: str) -> None:
    """Send one message through the configured backend; raises DeliveryError unless it was accepted."""
    # the digest's envelope sender (VERP included), so bounces of these emails reach the bounce mailbox too
    outgoing = OutgoingMessage(0, return_path(config, subscriber.token), subscriber.email, message_id, data)
    with create_backend(config) as backend:
        result = backend.send([outgoing])[0]
    if result.status is not SendStatus.SENT:
        raise DeliveryError(f"the {backend.describe()} backend did not accept the message: {result.detail}")


def send_confirmation(config: Config, signer: LinkSigner, subscriber: Subscriber) -> None:
    """Send the double opt-in email. Raises DeliveryError (or TemplateError) when it cannot be sent."""
    message_id = f"<confirm.{secrets.token_hex(12)}@{config.newsletter.sender_domain}>"
    data = build_transactional(config, subscriber, confirmation_email(config, signer, subscriber), message_id,
                               unsubscribe_url=None)
    send_one(config, subscriber, data, message_id)
    log.info("sent a confirmation email")


def send_welcome(config: Config, signer: LinkSigner, subscriber: Subscriber) -> None:
    """Send the welcome email to a subscriber who just confirmed. Raises DeliveryError."""
    message_id = f"<welcome.{secrets.token_hex(12)}@{config.newsletter.sender_domain}>"
    unsubscribe_url = signer.unsubscribe_url(subscriber.token)
    data = build_transactional(config, subscriber, welcome_email(config, signer, subscriber), message_id,
                               unsubscribe_url=unsubscribe_url)
    send_one(config, subscriber, data, message_id)
    log.info("sent a welcome email")
