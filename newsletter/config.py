"""Typed configuration: ``config.yaml`` parsed and validated once, at start, plus ``NEWSLETTER_*`` overrides.

``load_config(path)`` is the only way in. It returns a frozen :class:`Config` or raises
:class:`~newsletter.errors.ConfigError` with one line naming the file, the key and what is allowed.
Relative paths in the file are resolved against the folder the file is in, so a command gives the same
result from any working directory.

Environment variables (secrets never go in the file):

- ``NEWSLETTER_CONFIG``: the config file when ``--config`` is not given.
- ``NEWSLETTER_DATABASE_URL``: replaces ``database.url``.
- ``NEWSLETTER_SECRET_KEY``: signs the tokens in unsubscribe links (see :mod:`newsletter.tokens`).
- ``NEWSLETTER_SMTP_PASSWORD``: the SMTP backend's login password.
- ``NEWSLETTER_API_TOKEN``: the bearer token ``POST /api/summaries`` accepts (unset: the API refuses all).
- ``NEWSLETTER_PREVIEW_TOKEN``: the preview's token (instead of ``preview.token``).
- ``NEWSLETTER_IMAP_PASSWORD``: the bounce mailbox's IMAP password.

A token, from the file or the environment, shorter than :data:`MIN_SECRET_LENGTH` stops the start.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from email.headerregistry import Address
from email.utils import parseaddr
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from newsletter.cron import parse_cron
from newsletter.dates import DEFAULT_LOCALE, locale_problem
from newsletter.errors import ConfigError
from newsletter.urls import http_url_problem

DEFAULT_CONFIG_FILE = "config.yaml"
DEFAULT_DATABASE_URL = "sqlite:///subscribers/newsletter.db"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_line_breaks(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("must be a single line (it goes into mail headers)")
    return value.strip()


class NewsletterSection(_Section):
    """Who sends the newsletter and what every email must carry."""

    name: str = Field(min_length=1, max_length=100)
    sender: str
    reply_to: str | None = None
    postal_address: str = Field(min_length=5)
    site_url: str
    unsubscribe_mailto: str | None = None
    locale: str = DEFAULT_LOCALE  # the language dates are written in (Babel), e.g. en, en_GB, de

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str) -> str:
        problem = locale_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("name")
    @classmethod
    def _name_single_line(cls, value: str) -> str:
        return _no_line_breaks(value)

    @field_validator("sender", "reply_to", "unsubscribe_mailto")
    @classmethod
    def _valid_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = _no_line_breaks(value)
        display, address = parseaddr(value)
        try:
            ascii_address = validate_email(address, check_deliverability=False, allow_smtputf8=False).ascii_email
        except EmailNotValidError as exc:
            raise ValueError(f"{value!r} is not a valid address ({exc}); use 'Name <you@example.org>'") from None
        return str(Address(display_name=display, addr_spec=ascii_address))

    @field_validator("site_url")
    @classmethod
    def _absolute_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.query
            or parts.fragment
            or any(ch.isspace() or ch in '<>"' for ch in value)
            or not value.isascii()
        ):
            raise ValueError(
                f"{value!r} must be an absolute http(s) URL without spaces, query or fragment, "
                f"such as https://example.org (an international domain in its xn-- form)"
            )
        problem = http_url_problem(value, example="https://example.org")  # a bad port, an invalid host
        if problem:
            raise ValueError(f"{value!r} {problem}")
        return value.rstrip("/")

    @cached_property  # read for every message sent: parsed once
    def sender_address(self) -> str:
        """The bare address of ``sender``, for the SMTP envelope."""
        return parseaddr(self.sender)[1]

    @cached_property
    def sender_domain(self) -> str:
        return self.sender_address.rpartition("@")[2].lower()

    @property
    def unsubscribe_address(self) -> str:
        """Where ``mailto:`` unsubscribe requests go: ``unsubscribe_mailto`` or unsubscribe@<sender domain>."""
        if self.unsubscribe_mailto:
            return parseaddr(self.unsubscribe_mailto)[1]
        return f"unsubscribe@{self.sender_domain}"

    @property
    def list_id(self) -> str:
        """RFC 2919 list identifier, e.g. ``research-weekly.example.org``."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "newsletter"
        return f"{slug}.{self.sender_domain}"


class DatabaseSection(_Section):
    url: str = DEFAULT_DATABASE_URL
    # How long `digest send` and `worker --until-done` wait for a database that went away (a restart, a
    # lock held by another program) before they stop with an error; `run` and a worker daemon wait for ever.
    outage_limit: str = "10m"

    @field_validator("outage_limit")
    @classmethod
    def _outage_limit(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def outage_limit_time(self) -> timedelta:
        return parse_duration(self.outage_limit)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql(\+\w+)?)://", value):
            raise ValueError(f"{value!r} must start with sqlite:/// or postgresql+psycopg://")
        if value in ("sqlite://", "sqlite:///", "sqlite:///:memory:") or "mode=memory" in value:
            raise ValueError(f"{value!r} is an in-memory database that forgets everything; name a file")
        return value


class IntervalsSection(_Section):
    """How often, in minutes, ``newsletter run`` fires its repeating jobs."""

    send_due: int = Field(default=5, ge=1, le=1440)  # retries and interrupted sends
    feeds: int = Field(default=60, ge=1, le=10080)  # feed polling (when feeds are configured)
    inbox: int = Field(default=2, ge=1, le=1440)  # inbox pickup (when an inbox is configured)
    bounces: int = Field(default=30, ge=1, le=1440)  # bounce mailbox (when one is configured)


class ScheduleSection(_Section):
    """When the digest goes out (each time ``cron`` names is a firing) and how ``newsletter run`` behaves."""

    cadence: Literal["weekly", "daily", "monthly"] = "weekly"
    cron: str = "0 8 * * mon"
    timezone: str = "UTC"
    grace_hours: float = Field(default=24, ge=0, le=24 * 31)
    quiet_note: str | None = None
    intervals: IntervalsSection = IntervalsSection()
    lease_seconds: int = Field(default=60, ge=4, le=3600)
    log_format: Literal["plain", "json"] = "plain"

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "Europe" names a folder of zones: OSError
            raise ValueError(f"{value!r} is not an IANA timezone name such as Europe/London") from None
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        parse_cron(value)  # CronError is a ValueError: pydantic reports it under the key
        return value

    @field_validator("quiet_note")
    @classmethod
    def _note_text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be the note's text, or left out to send nothing when nothing is waiting")
        return value.strip() if value else None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def grace(self) -> timedelta:
        return timedelta(hours=self.grace_hours)


class WebSection(_Section):
    """The public pages served by ``newsletter serve``: subscribe, confirm, preferences, archive."""

    confirm_expiry_days: int = Field(default=7, ge=1, le=90)
    subscribe_limit_per_ip: int = Field(default=10, ge=1, le=10_000)
    welcome_email: bool = True


class BackendSection(_Section):
    """Which backend sends, by its registered name, and its options as the file gives them: the backend
    registry (``newsletter.backends.check_backend``) validates them against the backend's own model."""

    name: str = "file"
    options: dict[str, Any] = Field(default_factory=dict)


class PreviewSection(_Section):
    """``newsletter preview``: where the editors' preview listens. Any address but loopback requires a token
    (``token`` here or ``$NEWSLETTER_PREVIEW_TOKEN``), given once as ``?token=...``."""

    host: str = "127.0.0.1"
    port: int = Field(default=8025, ge=1, le=65535)
    token: str | None = None

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: str | None) -> str | None:
        problem = _short_secret("the preview's token", value)
        if problem:
            raise ValueError(problem)
        return value

    @property
    def access_token(self) -> str | None:
        """The token the preview requires, the environment first (secrets do not belong in the file)."""
        return os.environ.get("NEWSLETTER_PREVIEW_TOKEN") or self.token


MIN_SECRET_LENGTH = 16  # every token we check, wherever it comes from (file or environment)


def _short_secret(what: str, value: str | None) -> str | None:
    """Why ``value`` is too short to be a secret someone must not guess, or None when it is long enough."""
    if value is None or len(value) >= MIN_SECRET_LENGTH:
        return None
    return (f"{what} must be at least {MIN_SECRET_LENGTH} characters (it has {len(value)}); make one with: "
            f"python3 -c 'import secrets; print(secrets.token_urlsafe(24))'")


class IngestSection(_Section):
    """Where summaries come from besides the command line, and the limits every reader applies."""

    feeds: tuple[str, ...] = ()
    inbox: str | None = None
    inbox_settle_seconds: int = Field(default=10, ge=0, le=3_600)
    fetch_timeout_seconds: float = Field(default=20, gt=0, le=300)
    max_bytes: int = Field(default=2_000_000, ge=1_000, le=100_000_000)
    summary_length: int = Field(default=400, ge=80, le=5_000)
    api_token: str | None = Field(default=None, exclude=True, repr=False)  # NEWSLETTER_API_TOKEN only

    @field_validator("feeds")
    @classmethod
    def _http_feeds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Checked here, once, so that one bad entry stops the start with its name instead of failing every poll.
        for url in value:
            problem = http_url_problem(url, example="https://example.org/feed.xml")
            if problem:
                raise ValueError(f"{url!r} {problem}")
        return value

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = timedelta(days=365)  # beyond this a lease or a retry delay is a typo, and dates would overflow


def parse_duration(value: str) -> timedelta:
    """``"90s"``, ``"5m"``, ``"2h"`` or ``"3d"`` (at most a year) as a timedelta; ValueError otherwise."""
    match = _DURATION.match(str(value))
    digits = match[1].lstrip("0") if match else ""
    if not digits:
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m, 2h or 1d")
    # the length first: int() of thousands of digits is itself an error
    if len(digits) > 9 or int(digits) * _UNITS[match[2]] > MAX_DURATION.total_seconds():  # type: ignore[index]
        raise ValueError(f"{value!r} is longer than a year (365d), the longest duration allowed")
    return timedelta(seconds=int(digits) * _UNITS[match[2]])  # type: ignore[index]


class DeliverySection(_Section):
    """How the send loop claims, retries and protects itself (see docs/delivery.md)."""

    batch_size: int = Field(default=100, ge=1, le=10_000)
    lease: str = "10m"
    retry_schedule: tuple[str, ...] = ("5m", "15m", "1h", "4h", "12h", "1d", "2d")
    pause_error_rate: float = Field(default=0.5, gt=0, le=1)
    pause_window: int = Field(default=50, ge=1)
    # Messages sent before their results are recorded: the backend's max_in_flight (SMTP: connections)
    # times this. Larger is faster (fewer ledger transactions, lanes waiting less for each other) but a
    # crash may resend that many. 1 -> 4 took the 10k benchmark from 0.44 to 0.57 of smtp-source's rate.
    in_flight_factor: int = Field(default=4, ge=1, le=256)

    @field_validator("lease")
    @classmethod
    def _lease(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _schedule(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("needs at least one delay, such as [5m, 1h, 1d]")
        for item in value:
            parse_duration(item)
        return value

    @property
    def lease_time(self) -> timedelta:
        return parse_duration(self.lease)

    @property
    def retry_delays(self) -> tuple[timedelta, ...]:
        return tuple(parse_duration(item) for item in self.retry_schedule)


class MailboxSection(_Section):
    """Where bounce reports and mailto: unsubscribe requests arrive."""

    type: Literal["maildir", "mbox", "imap"] = "maildir"
    path: str | None = None  # maildir / mbox, relative to the config file's folder
    host: str | None = None  # imap
    port: int = Field(default=993, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str | None = None  # password: $NEWSLETTER_IMAP_PASSWORD
    folder: str = "INBOX"

    @model_validator(mode="after")
    def _complete(self) -> MailboxSection:
        if self.type == "imap" and not (self.host and self.username):
            raise ValueError("an imap mailbox needs host and username")
        if self.type != "imap" and not self.path:
            raise ValueError(f"a {self.type} mailbox needs a path")
        return self


class BouncesSection(_Section):
    """Bounce policy and the mailbox ``bounces process`` reads."""

    # Envelope sender bounces+TOKEN@<domain> so a bounce names its subscriber even when the DSN does not.
    verp: bool = False
    return_path: str | None = None  # default: the sender's address (with VERP: bounces@<the sender's domain>)
    soft_limit: int = Field(default=3, ge=1)  # this many soft bounces ...
    soft_days: int = Field(default=14, ge=1, le=3650)  # ... within this many days mark a subscriber bounced
    mailbox: MailboxSection | None = None

    @field_validator("return_path")
    @classmethod
    def _bare_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_email(_no_line_breaks(value), check_deliverability=False, allow_smtputf8=False).ascii_email
        except EmailNotValidError as exc:
            raise ValueError(f"{value!r} is not a valid address ({exc}); use a bare address such as "
                             f"bounces@example.org") from None


class TrackingSection(_Section):
    """Click counting (off by default; see docs/engagement.md). There is no open pixel, whatever is set."""

    clicks: bool = False  # item links go through <site_url>/c/<token>, which counts the click and redirects
    per_subscriber: bool = False  # also record who clicked (exported and erased with the subscriber)
    scanner_agents: tuple[str, ...] = ()  # more user agents of link scanners: regular expressions, any case

    @field_validator("scanner_agents")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError("an empty pattern would match every browser; remove it")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"{pattern!r} is not a regular expression ({exc}); escape . ( ) [ ] with \\"
                ) from None
        return value

    @model_validator(mode="after")
    def _per_subscriber_needs_clicks(self) -> TrackingSection:
        if self.per_subscriber and not self.clicks:
            raise ValueError("per_subscriber: true needs clicks: true (nothing is counted without it); set both "
                             "or neither")
        return self


class Config(_Section):
    """The whole configuration. ``base_dir`` is the folder of the config file."""

    newsletter: NewsletterSection
    database: DatabaseSection = DatabaseSection()
    templates: str = "templates"
    schedule: ScheduleSection = ScheduleSection()
    backend: BackendSection = BackendSection()
    web: WebSection = WebSection()
    preview: PreviewSection = PreviewSection()
    ingest: IngestSection = IngestSection()
    delivery: DeliverySection = DeliverySection()
    bounces: BouncesSection = BouncesSection()
    tracking: TrackingSection = TrackingSection()
    base_dir: Path = Field(default=Path("."), exclude=True)
    source: str = Field(default="<defaults>", exclude=True)

    @property
    def templates_dir(self) -> Path:
        return self.resolve(self.templates)

    def resolve(self, path: str | Path) -> Path:
        """An absolute path for a path written in the config file (relative to the file's folder)."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def inbox_dir(self) -> Path | None:
        """``ingest.inbox`` as an absolute folder, or None when no inbox is configured."""
        return self.resolve(self.ingest.inbox) if self.ingest.inbox else None

    @property
    def database_url(self) -> str:
        """``database.url`` with a relative SQLite path made absolute against ``base_dir``."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
            return prefix + str(self.resolve(url[len(prefix):]))
        return url


def config_from_mapping(data: dict[str, Any], *, base_dir: Path, source: str) -> Config:
    """Validate an already-parsed mapping (the YAML document) into a :class:`Config`."""
    data = dict(data)
    section = data.get("ingest")
    if isinstance(section, dict) and "api_token" in section:
        raise ConfigError(
            f"{source}: ingest.api_token: secrets do not go in the file; set NEWSLETTER_API_TOKEN instead"
        )
    api_token = os.environ.get("NEWSLETTER_API_TOKEN", "").strip()
    for variable, what, value in (("NEWSLETTER_API_TOKEN", "the API token", api_token),
                                  ("NEWSLETTER_PREVIEW_TOKEN", "the preview's token",
                                   os.environ.get("NEWSLETTER_PREVIEW_TOKEN", ""))):
        problem = _short_secret(what, value) if value else None  # set but empty: not set
        if problem:
            raise ConfigError(f"{variable}: {problem}")
    if api_token:
        data["ingest"] = {**(section if isinstance(section, dict) else {}), "api_token": api_token}
    database_url = os.environ.get("NEWSLETTER_DATABASE_URL")
    if database_url:
        section = data.get("database")
        data["database"] = {**(section if isinstance(section, dict) else {}), "url": database_url}
    try:
        config = Config.model_validate({**data, "base_dir": base_dir, "source": source})
    except ValidationError as exc:
        message = _describe(exc, source)
        if database_url and f"{source}: database.url:" in message:
            message = message.replace(f"{source}: database.url:", "NEWSLETTER_DATABASE_URL:")
        raise ConfigError(message) from None
    if "templates" in config.model_fields_set and not config.templates_dir.is_dir():
        raise ConfigError(
            f"{source}: templates: the folder {config.templates_dir} does not exist; create it, or remove the "
            f"key to use the packaged templates"
        )
    return config


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the config file.

    ``path`` defaults to ``$NEWSLETTER_CONFIG``, then ``./config.yaml``. Raises ConfigError when the file is
    missing, is not YAML, or has an unknown key or a bad value.
    """
    chosen = Path(path or os.environ.get("NEWSLETTER_CONFIG") or DEFAULT_CONFIG_FILE)
    if not chosen.is_file():
        raise ConfigError(
            f"{chosen}: config file not found; pass --config PATH or copy config.yaml from the project"
        )
    try:
        data = yaml.load(chosen.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as exc:
        first = "on this line" if exc.first == exc.line else f"(first on line {exc.first})"
        raise ConfigError(
            f"{chosen}:{exc.line}: the key '{exc.key}' is there twice {first}; "
            f"keep one, otherwise only the last would count"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{chosen}:{mark.line + 1}" if mark else str(chosen)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{where}: not valid YAML ({problem}); check indentation and quoting") from None
    except (ValueError, RecursionError) as exc:  # e.g. "2026-13-01" read as an impossible date
        raise ConfigError(
            f"{chosen}: a value cannot be read ({' '.join(str(exc).split())}); put text values in quotes"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{chosen}: not UTF-8 text; save the file as UTF-8") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{chosen}: expected a mapping of settings at the top level, see config.yaml")
    return config_from_mapping(data, base_dir=chosen.resolve().parent, source=str(chosen))


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, which YAML loaders take as "the last
    wins": a setting that silently does not count. Keys brought in by a merge (``<<: *base``) may be
    overridden, as YAML intends."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()  # mappings whose own keys were checked (ids of their nodes)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Every mapping passes here before it is read, and merged mappings before they are merged; the
        # first time, its keys are its own. Flattening then puts the merged keys beside them in place, so a
        # node read again (an anchor used twice) is not checked again.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: dict[tuple[str, str], int] = {}
            for key_node, _value in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    line = key_node.start_mark.line + 1
                    if (key_node.tag, key_node.value) in seen:
                        raise _DuplicateKey(key_node.value, line, seen[(key_node.tag, key_node.value)])
                    seen[(key_node.tag, key_node.value)] = line
        super().flatten_mapping(node)


def _describe(exc: ValidationError, source: str) -> str:
    """One line for the first problem pydantic found, naming the dotted key and what is allowed."""
    error = _first_error(exc)
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(error["loc"][:-1])
        return f"{source}: unknown key '{key}'; allowed here: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"{source}: missing required key '{key}'; see the documented config.yaml"
    message = error["msg"].removeprefix("Value error, ")
    return f"{source}: {key}: {message}"


def _first_error(exc: ValidationError) -> Any:
    """An unknown key first: a typo'd key also makes the key it should have been look missing."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return [name for name, field in model.model_fields.items() if not field.exclude]

