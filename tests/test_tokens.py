"""Link tokens: opaque, tamper-evident, bound to a purpose, and rotatable."""

import pytest

from newsletter.errors import ExpiredToken, NewsletterError
from newsletter.tokens import (
    CONFIRM,
    KEY_FILE,
    PREFERENCES,
    UNSUBSCRIBE,
    InvalidToken,
    LinkSigner,
)


def test_unsubscribe_links_carry_a_signed_token_that_reveals_nothing(config):
    signer = LinkSigner(config)
    url = signer.unsubscribe_url("opaque-random-token")
    assert url.startswith("https://news.example.org/unsubscribe/")
    token = url.rsplit("/", 1)[1]
    assert signer.verify(UNSUBSCRIBE, token) == "opaque-random-token"
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(InvalidToken, match="this link is not valid"):
        signer.verify(UNSUBSCRIBE, tampered)
    with pytest.raises(InvalidToken):
        signer.verify("confirm", token)  # a token made for one purpose is useless for another


def test_preferences_links_use_their_own_purpose(config):
    signer = LinkSigner(config)
    url = signer.preferences_url("opaque-random-token")
    assert url.startswith("https://news.example.org/preferences/")
    token = url.rsplit("/", 1)[1]
    assert signer.verify(PREFERENCES, token) == "opaque-random-token"
    with pytest.raises(InvalidToken):
        signer.verify(UNSUBSCRIBE, token)


def test_keys_rotate_the_newest_signs_and_the_old_still_verifies(config, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "old-key")
    old_token = LinkSigner(config).sign(UNSUBSCRIBE, "t")
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "old-key, new-key")
    rotated = LinkSigner(config)
    assert rotated.verify(UNSUBSCRIBE, old_token) == "t"
    assert rotated.sign(UNSUBSCRIBE, "t") != old_token
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "someone-elses-key")
    with pytest.raises(InvalidToken):
        LinkSigner(config).verify(UNSUBSCRIBE, old_token)


def test_without_a_configured_key_one_is_generated_once_and_kept_private(config, monkeypatch):
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY")
    first = LinkSigner(config).sign(UNSUBSCRIBE, "t")
    key_file = config.resolve(KEY_FILE)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert LinkSigner(config).sign(UNSUBSCRIBE, "t") == first  # the same key on the next run
    key_file.write_text("")
    with pytest.raises(NewsletterError, match="is empty; delete it to generate a new key"):
        LinkSigner(config)


def test_confirmation_tokens_expire_and_other_tokens_do_not(config):
    now = [1_800_000_000.0]
    signer = LinkSigner(config, clock=lambda: now[0])  # config: web.confirm_expiry_days defaults to 7
    confirm = signer.confirm_url("t").rsplit("/", 1)[1]
    unsubscribe = signer.sign(UNSUBSCRIBE, "t")
    now[0] += 7 * 86400
    assert signer.verify(CONFIRM, confirm) == "t"
    now[0] += 1
    with pytest.raises(ExpiredToken, match="this link has expired"):
        signer.verify(CONFIRM, confirm)
    now[0] += 10 * 365 * 86400
    assert signer.verify(UNSUBSCRIBE, unsubscribe) == "t"


def test_confirmation_tokens_survive_key_rotation(config, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "old-key")
    token = LinkSigner(config).sign(CONFIRM, "t")
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "old-key,new-key")
    assert LinkSigner(config).verify(CONFIRM, token) == "t"


def test_links_are_those_itsdangerous_makes_and_its_compressed_ones_still_verify(config, monkeypatch):
    """Signing skips URLSafeSerializer's zlib attempt: the links must not change, and any link it ever
    made (a compressed one too) must keep working."""
    from itsdangerous import URLSafeSerializer

    from newsletter.models import new_token

    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "the-key")
    signer = LinkSigner(config)
    for purpose in (UNSUBSCRIBE, PREFERENCES):
        reference = URLSafeSerializer(["the-key"], salt=purpose)
        for token in [new_token() for _ in range(200)]:
            assert signer.sign(purpose, token) == reference.dumps(token)
            assert signer.verify(purpose, reference.dumps(token)) == token
        compressible = "a" * 40
        compressed = reference.dumps(compressible)
        assert compressed.startswith(".")  # itsdangerous compressed it
        assert signer.verify(purpose, compressed) == compressible
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "old-key, new-key")  # rotated: the newest key signs
    rotated = LinkSigner(config)
    for purpose in (UNSUBSCRIBE, PREFERENCES):
        reference = URLSafeSerializer(["old-key", "new-key"], salt=purpose)
        for token in [new_token() for _ in range(50)]:
            assert rotated.sign(purpose, token) == reference.dumps(token)
        assert rotated.verify(purpose, URLSafeSerializer(["old-key"], salt=purpose).dumps("t")) == "t"
