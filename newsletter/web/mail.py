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
from newsletter.message import MessageTemplate, recipient_values
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
class Rendered:
    subject: str
    html: str
    text: str


def _confirmation_recipient(subscriber: Subscriber) -> RecipientValues:
    """No name and no links: the name is not shown before the address is confirmed."""
    return RecipientValues(subscriber.email, "", "", "")


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
    return render_transactional(config, "confirm", {
        "recipient": _confirmation_recipient(subscriber),
        "confirm_url": signer.confirm_url(subscriber.token),
        "expiry_days": config.web.confirm_expiry_days,
    })


def welcome_email(config: Config, signer: LinkSigner, subscriber: Subscriber) -> Rendered:
    return render_transactional(config, "welcome", {
        "recipient": recipient_values(config, subscriber, signer), "archive_url": f"{config.newsletter.site_url}/archive",
    })


def build_transactional(config: Config, recipient: RecipientValues, rendered: Rendered, message_id: str) -> bytes:
    """A ``multipart/alternative`` message to ``recipient`` (its name in To: when not empty); list headers
    only when it has an unsubscribe URL. Raises InvalidAddress for an address no message can be built for."""
    issue = RenderedIssue(rendered.subject, rendered.subject, rendered.html, rendered.text, new_markers())
    template = MessageTemplate(config, issue, list_headers=bool(recipient.unsubscribe_url))
    return template.personalise(recipient, message_id=message_id)


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
    data = build_transactional(config, _confirmation_recipient(subscriber),
                               confirmation_email(config, signer, subscriber), message_id)
    send_one(config, subscriber, data, message_id)
    log.info("sent a confirmation email")


def send_welcome(config: Config, signer: LinkSigner, subscriber: Subscriber) -> None:
    """Send the welcome email to a subscriber who just confirmed. Raises DeliveryError."""
    message_id = f"<welcome.{secrets.token_hex(12)}@{config.newsletter.sender_domain}>"
    data = build_transactional(config, recipient_values(config, subscriber, signer),
                               welcome_email(config, signer, subscriber), message_id)
    send_one(config, subscriber, data, message_id)
    log.info("sent a welcome email")
