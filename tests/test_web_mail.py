"""The confirmation and welcome emails: the packaged templates compile cleanly, carry the right links, and a
user's templates folder overrides them like the digest's."""

from __future__ import annotations

import re
import warnings

import pytest

from newsletter.models import Subscriber
from newsletter.tokens import LinkSigner
from newsletter.web import mail
from tests.conftest import make_config


@pytest.mark.parametrize("kind", ["confirmation_email", "welcome_email"])
def test_packaged_templates_compile_without_warnings(config, kind, capfd):
    subscriber = Subscriber(email="ada@example.org", name="Ada <3", token="opaque")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rendered = getattr(mail, kind)(config, LinkSigner(config), subscriber)
    assert capfd.readouterr().err == ""
    assert rendered.html.lstrip().lower().startswith("<!doctype html>")
    assert not re.search(r"</?mj-", rendered.html)  # every MJML element was known and compiled
    if kind == "welcome_email":
        assert "Ada &lt;3" in rendered.html and "Ada <3" in rendered.text
    else:  # the name typed into the form is not shown before the address is confirmed
        assert "Ada" not in rendered.html and "Ada" not in rendered.text
    assert config.newsletter.postal_address in rendered.text and config.newsletter.postal_address in rendered.html
    links = ["/confirm/"] if kind == "confirmation_email" else ["/unsubscribe/", "/preferences/", "/archive"]
    for link in links:
        assert link in rendered.text and link in rendered.html


def test_a_user_template_overrides_the_confirmation_email(tmp_path, config):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "confirm.subject.txt.j2").write_text("Please confirm, {{ recipient.email }}{{ recipient.name }}!")
    own = make_config(tmp_path, templates=str(folder))
    rendered = mail.confirmation_email(own, LinkSigner(own), Subscriber(email="a@example.org", name="Ada", token="t"))
    assert rendered.subject == "Please confirm, a@example.org!"  # recipient.name is empty in the confirmation
    assert "Confirm my subscription" in rendered.html  # the rest falls back to the packaged templates


def test_confirmation_emails_use_the_digests_envelope_sender_so_bounces_are_matched(tmp_path, smtp_server):
    config = make_config(
        tmp_path,
        backend={"name": "smtp", "options": {"host": smtp_server.host, "port": smtp_server.port, "security": "none"}},
        bounces={"verp": True, "return_path": "bounces@example.org"},
    )
    person = Subscriber(email="ada@example.org", name="Ada", token="opaque-token")
    mail.send_confirmation(config, LinkSigner(config), person)
    [received] = smtp_server.handler.messages
    assert received.envelope_from == "bounces+opaque-token@example.org"
    assert received.recipients == ["ada@example.org"]


EVE = "=?utf-8?q?Eve=0D=0AContent-Type:_text/html=0D=0A=0D=0A<h1>Win_a_prize</h1>?="


@pytest.mark.parametrize("name", [EVE, "Visit https://spam.example/win for a prize", "Eve\r\nBcc: victim@evil.example"])
def test_the_confirmation_email_carries_nothing_of_the_name_typed_into_the_form(tmp_path, smtp_server, name):
    """Anyone can type any address and name into the form: the email our domain signs and sends to that
    address shows none of the name, and the name cannot change its headers or body."""
    import email
    import email.policy

    config = make_config(tmp_path, backend={"name": "smtp", "options": {
        "host": smtp_server.host, "port": smtp_server.port, "security": "none"}})
    mail.send_confirmation(config, LinkSigner(config), Subscriber(email="victim@example.org", name=name, token="t1"))
    [received] = smtp_server.handler.messages
    for policy in (email.policy.default, email.policy.strict):
        message = email.message_from_bytes(received.data, policy=policy)
        assert sorted(k.lower() for k in message.keys()) == [
            "content-type", "date", "from", "message-id", "mime-version", "subject", "to"]
        assert message["To"] == "victim@example.org"
        assert message.get_content_type() == "multipart/alternative"
        parts = [part.get_content() for part in message.iter_parts()]
        assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
        assert "/confirm/" in parts[0] and "/confirm/" in parts[1]
        assert all("Eve" not in part and "prize" not in part and "spam.example" not in part for part in parts)
    assert b"Eve" not in received.data and b"prize" not in received.data


def test_the_welcome_email_writes_a_hostile_name_as_literal_text(tmp_path, smtp_server):
    """After confirming, the subscriber's own name is used, but only ever as text."""
    import email
    import email.policy

    config = make_config(tmp_path, backend={"name": "smtp", "options": {
        "host": smtp_server.host, "port": smtp_server.port, "security": "none"}})
    mail.send_welcome(config, LinkSigner(config), Subscriber(email="eve@example.org", name=EVE, token="t2"))
    [received] = smtp_server.handler.messages
    message = email.message_from_bytes(received.data, policy=email.policy.strict)
    assert "Bcc" not in message and [a.addr_spec for a in message["To"].addresses] == ["eve@example.org"]
    shown = message["To"].addresses[0].display_name  # as literal text (this long word shortened to fit)
    assert shown.endswith("…") and EVE.startswith(shown[:-1]) and shown.startswith("=?utf-8?q?Eve=0D=0A")
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert "<h1>" not in message.get_body(("html",)).get_content()
