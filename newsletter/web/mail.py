"""Transactional email: the double opt-in confirmation and the welcome message, sent one at a time through
the configured backend (the same plugins the digest uses).

Templates (``confirm.*.j2``, ``welcome.*.j2``) come from the same Jinja environment and MJML compiler as
the digest (:mod:`newsletter.render`), so a user's templates folder overrides them the same way, and the
bytes come from the digest's message builder (:class:`newsletter.message.MessageTemplate`).

The confirmation goes to an address anyone may have typed into the form, so it carries nothing else they
typed: no name in its To header or its text (``recipient.name`` is empty in its templates). Otherwise our
domain would sign whatever greeting a stranger wants delivered to someone else's inbox.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from newsletter.backends import OutgoingMessage, SendStatus, create_backend
from newsletter.bounces import return_path
from newsletter.config import Config
from newsletter.errors import DeliveryError
from newsletter.message import MessageTemplate
from newsletter.models import Subscriber
from newsletter.render import (
    NewsletterInfo,
    RecipientValues,
    RenderedIssue,
    render_mjml,
    render_template,
    new_markers,
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
    html = render_mjml(env, f"{kind}.mjml.j2", context)  # an MJML error names the partial at fault
    return Rendered(subject, html, tidy_text(render_template(env, f"{kind}.txt.j2", context)))


def confirmation_email(config: Config, signer: LinkSigner, subscriber: Subscriber) -> Rendered:
    recipient = Recipient(subscriber.email, "")  # the name is not shown before the address is confirmed
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
    config: Config, recipient: Recipient, rendered: Rendered, message_id: str, *, unsubscribe_url: str | None
) -> bytes:
    """A ``multipart/alternative`` message to ``recipient`` (its name in To: when not empty); list headers
    only with ``unsubscribe_url``. Raises InvalidAddress for an address no message can be built for."""
    issue = RenderedIssue(rendered.subject, rendered.subject, rendered.html, rendered.text, new_markers())
    values = RecipientValues(recipient.email, recipient.name, unsubscribe_url or "", "")
    template = MessageTemplate(config, issue, list_headers=unsubscribe_url is not None)
    return template.personalise(values, message_id=message_id)


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
    data = build_transactional(config, Recipient(subscriber.email, ""), confirmation_email(config, signer, subscriber),
                               message_id, unsubscribe_url=None)
    send_one(config, subscriber, data, message_id)
    log.info("sent a confirmation email")


def send_welcome(config: Config, signer: LinkSigner, subscriber: Subscriber) -> None:
    """Send the welcome email to a subscriber who just confirmed. Raises DeliveryError."""
    message_id = f"<welcome.{secrets.token_hex(12)}@{config.newsletter.sender_domain}>"
    unsubscribe_url = signer.unsubscribe_url(subscriber.token)
    data = build_transactional(config, Recipient(subscriber.email, subscriber.name or ""),
                               welcome_email(config, signer, subscriber), message_id, unsubscribe_url=unsubscribe_url)
    send_one(config, subscriber, data, message_id)
    log.info("sent a welcome email")
