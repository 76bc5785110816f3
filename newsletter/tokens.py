"""Signed, opaque tokens for the links in emails.

A link carries the subscriber's random ``token`` (never the email or a row id), signed with itsdangerous
under a salt per purpose, so a token made for one purpose is useless for another and a tampered one is
rejected. Confirmation tokens also carry the time they were signed and expire (``web.confirm_expiry_days``);
unsubscribe and preferences tokens never expire, so a link in an old email keeps working.

Click tokens (``/c/<token>``, when ``tracking.clicks`` is on) name an issue, an item and a hash of the item's
URL, and the subscriber's token only with ``tracking.per_subscriber``; they never expire either. The URL
itself is not in them: the click handler looks the hash up among the issue's own URLs, so no token, signed
or not, can send anyone elsewhere (:mod:`newsletter.clicks`).

The signing secret is ``NEWSLETTER_SECRET_KEY``. It may hold several keys separated by commas for
rotation: the last one signs, all of them verify. Without it, a random key is generated once into
``subscribers/.secret-key`` beside the config file (fine for trying newsletter out; set the variable in
production so links survive a move to another machine).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from itsdangerous import (
    BadData,
    Serializer,
    SignatureExpired,
    TimestampSigner,
    Signer,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_encode, want_bytes

from newsletter.config import Config
from newsletter.errors import ExpiredToken, InvalidToken, NewsletterError

log = logging.getLogger(__name__)

UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"
CONFIRM = "confirm"
CLICK = "click"
TIMED_PURPOSES = frozenset({CONFIRM})  # tokens that carry their signing time and expire
KEY_FILE = "subscribers/.secret-key"


def secret_keys(config: Config) -> list[str]:
    """The signing keys, oldest first (the last one signs)."""
    configured = os.environ.get("NEWSLETTER_SECRET_KEY", "")
    keys = [key.strip() for key in configured.split(",") if key.strip()]
    if keys:
        return keys
    return [_generated_key(config.resolve(KEY_FILE))]


def key_file(config: Config) -> Path:
    """Where a generated signing key is kept when ``NEWSLETTER_SECRET_KEY`` is not set."""
    return config.resolve(KEY_FILE)


def write_key_file(path: Path) -> str:
    """A new random key written to ``path`` (readable by its owner only); raises NewsletterError if it cannot
    be written. Quiet: the demo uses it for its own folder; :func:`secret_keys` warns when it has to."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(key, encoding="utf-8")
    except OSError as exc:
        raise NewsletterError(
            f"cannot read or create the signing key {path} ({exc.strerror}); set NEWSLETTER_SECRET_KEY instead"
        ) from None
    return key


def _generated_key(path: Path) -> str:
    try:
        if path.is_file():
            key = path.read_text(encoding="utf-8").strip()
            if not key:
                raise NewsletterError(f"{path} is empty; delete it to generate a new key, or set NEWSLETTER_SECRET_KEY")
            return key
    except OSError as exc:
        raise NewsletterError(
            f"cannot read or create the signing key {path} ({exc.strerror}); set NEWSLETTER_SECRET_KEY instead"
        ) from None
    key = write_key_file(path)
    log.warning("generated a signing key in %s; set NEWSLETTER_SECRET_KEY in production", path)
    return key


def url_hash(url: str) -> str:
    """The hash a click token carries for ``url``: 96 bits of SHA-256, base64url (16 characters)."""
    return base64.urlsafe_b64encode(hashlib.sha256(url.encode("utf-8")).digest()[:12]).decode("ascii")


URL_HASH_LENGTH = 16
MAX_CLICK_TOKEN = 400  # characters; ours are under 150, a longer one is refused before any work
_MAX_ID = 2**31 - 1  # issue numbers and summary ids are INTEGER columns (PostgreSQL refuses more)


@dataclass(frozen=True)
class ClickToken:
    """What a click link names: the issue (its number), the item (its summary's id), the hash of the URL it
    was made for, and the subscriber's token when clicks are counted per subscriber."""

    issue: int
    item: int
    url_hash: str
    subscriber: str | None = None


class _ClockSigner(TimestampSigner):
    """A TimestampSigner that reads the time from ``clock`` (seconds since the epoch), so tests control it."""

    def __init__(self, *args: Any, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


class _KeyedSigner(Signer):
    """itsdangerous's Signer (HMAC-SHA1 under the key it derives from the newest secret and the salt) with
    the HMAC keyed once: per link only the payload is hashed. Building the HMAC for every link (with a
    digest function, which takes the standard library's pure-Python path) was most of a link's cost."""

    def get_signature(self, value: str | bytes) -> bytes:
        try:
            keyed = self._keyed
        except AttributeError:
            keyed = self._keyed = hmac.new(self.derive_key(), digestmod="sha1")
        mac = keyed.copy()
        mac.update(want_bytes(value))
        return base64_encode(mac.digest())


class _LinkSerializer(URLSafeSerializer):
    """URLSafeSerializer that signs with one :class:`_KeyedSigner` per purpose, without its zlib attempt.

    URLSafeSerializer keeps the compressed form only when it is shorter, which a random subscriber token
    never is, so the links are byte for byte the same; loading is unchanged, so a compressed token still
    verifies. The attempt cost a sending worker about 40 µs per link (zlib sets up its 256 KB state on
    every call and releases the GIL to the connection threads), a large part of composing a message.
    """

    def dump_payload(self, obj: Any) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        if salt is not None:
            return super().make_signer(salt)
        try:
            return self._signer
        except AttributeError:
            self._signer: Signer = _KeyedSigner(self.secret_keys, salt=self.salt, **self.signer_kwargs)
            return self._signer


class LinkSigner:
    """Signs and verifies link tokens; build one per run, not one per message.

    ``clock`` (seconds since the epoch) dates confirmation tokens and checks their age.
    """

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.site_url = config.newsletter.site_url
        self.confirm_max_age = timedelta(days=config.web.confirm_expiry_days)
        self._keys = secret_keys(config)
        self._clock = clock
        self._serializers: dict[str, URLSafeSerializer | URLSafeTimedSerializer] = {}

    def _serializer(self, purpose: str) -> URLSafeSerializer | URLSafeTimedSerializer:
        if purpose not in self._serializers:
            if purpose in TIMED_PURPOSES:
                self._serializers[purpose] = URLSafeTimedSerializer(
                    self._keys, salt=purpose, signer=_ClockSigner, signer_kwargs={"clock": self._clock}
                )
            else:
                self._serializers[purpose] = _LinkSerializer(self._keys, salt=purpose)
        return self._serializers[purpose]

    def sign(self, purpose: str, value: str) -> str:
        return self._serializer(purpose).dumps(value)

    def verify(self, purpose: str, token: str) -> str:
        """The value signed into ``token``.

        Raises InvalidToken if it was altered or made for another purpose, and ExpiredToken (a kind of
        InvalidToken) for a confirmation token older than ``web.confirm_expiry_days``.
        """
        serializer = self._serializer(purpose)
        try:
            if isinstance(serializer, URLSafeTimedSerializer):
                return serializer.loads(token, max_age=int(self.confirm_max_age.total_seconds()))
            return serializer.loads(token)
        except SignatureExpired:
            raise ExpiredToken("this link has expired; subscribe again to get a new one") from None
        except BadData:  # a wrong signature, or a payload that does not decode
            raise InvalidToken("this link is not valid; it may have been cut short when copied") from None

    def confirm_url(self, subscriber_token: str) -> str:
        """The double opt-in link sent to a new address; it expires after ``web.confirm_expiry_days``."""
        return f"{self.site_url}/confirm/{self.sign(CONFIRM, subscriber_token)}"

    def unsubscribe_url(self, subscriber_token: str) -> str:
        """The one-click unsubscribe URL for a subscriber (also used in the List-Unsubscribe header)."""
        return f"{self.site_url}/unsubscribe/{self.sign(UNSUBSCRIBE, subscriber_token)}"

    def preferences_url(self, subscriber_token: str) -> str:
        """The subscriber's preferences page (topics, name, unsubscribe), linked from every email."""
        return f"{self.site_url}/preferences/{self.sign(PREFERENCES, subscriber_token)}"

    def click_url(self, issue_number: int, item_id: int, url: str, subscriber_token: str | None = None) -> str:
        """``<site_url>/c/<token>`` for the link to ``url`` of item ``item_id`` in issue ``issue_number``."""
        payload: list[object] = [issue_number, item_id, url_hash(url)]
        if subscriber_token is not None:
            payload.append(subscriber_token)
        return f"{self.site_url}/c/{self._serializer(CLICK).dumps(payload)}"

    def read_click(self, token: str) -> ClickToken:
        """The click link ``token`` names. Raises InvalidToken for a token that is too long, altered, made for
        another purpose or not of the shape :meth:`click_url` makes."""
        if len(token) > MAX_CLICK_TOKEN:
            raise InvalidToken("this link is not one of ours: it is far longer than our links")
        payload: object = self.verify(CLICK, token)
        if (
            isinstance(payload, list) and len(payload) in (3, 4)
            and all(type(part) is int and 0 < part <= _MAX_ID for part in payload[:2])
            and isinstance(payload[2], str) and len(payload[2]) == URL_HASH_LENGTH
            and (len(payload) == 3 or (isinstance(payload[3], str) and 0 < len(payload[3]) <= 64))
        ):
            return ClickToken(payload[0], payload[1], payload[2], payload[3] if len(payload) == 4 else None)
        raise InvalidToken("this link is not valid; it may have been cut short when copied")
