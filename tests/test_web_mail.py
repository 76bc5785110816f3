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
    assert "Ada &lt;3" in rendered.html and "Ada <3" in rendered.text
    assert config.newsletter.postal_address in rendered.text and config.newsletter.postal_address in rendered.html
    links = ["/confirm/"] if kind == "confirmation_email" else ["/unsubscribe/", "/preferences/", "/archive"]
    for link in links:
        assert link in rendered.text and link in rendered.html


def test_a_user_template_overrides_the_confirmation_email(tmp_path, config):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "confirm.subject.txt.j2").write_text("Please confirm, {{ recipient.name }}!")
    own = make_config(tmp_path, templates=str(folder))
    rendered = mail.confirmation_email(own, LinkSigner(own), Subscriber(email="a@example.org", name="Ada", token="t"))
    assert rendered.subject == "Please confirm, Ada!"
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
