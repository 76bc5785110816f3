"""The one builder of message bytes: the send loop, ``digest check``, ``digest render``'s sample, the preview
and the confirmation and welcome emails all get their bytes from :class:`MessageTemplate`.

A template encodes everything that is the same for every reader once per issue, and
:meth:`MessageTemplate.personalise` splices one subscriber's headers and values in as bytes (microseconds
per message). :class:`Composer` is what the send loop and the checks use around it: the issue rendered once
per topic selection, a subscriber's signed links, the Message-ID and the envelope.

The message is ``multipart/alternative`` (text/plain first, text/html last, both UTF-8 quoted-printable,
so no line exceeds 998 octets) with CRLF line endings and RFC 2369/2919/8058 list headers.

Every header is written here, not by the standard library. A value that comes from data (the subject, a
subscriber's name, the list's name) goes through :func:`header_text` (or :func:`mailbox`, which uses it):
it becomes plain ASCII where that is safe and RFC 2047 encoded-words otherwise, so a ``=?…?=`` sequence in
a title or a name is carried as the literal text it is. The standard library's header classes decode such
sequences when they parse a value, and on Pythons without the CVE-2024-6923 fix (3.11.7 is one) they then
write a decoded line break into the header unquoted: a title could add a ``Bcc:``, a name could replace
the body. No untrusted text is handed to them.
"""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import hashlib
import html as html_escaping
import logging
import re
import secrets
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.quoprimime import body_encode
from email.utils import format_datetime, parseaddr
from typing import Any, Protocol

from newsletter.backends.base import OutgoingMessage, dot_stuff
from newsletter.bounces import return_path
from newsletter.config import Config
from newsletter.errors import InvalidAddress
from newsletter.models import Issue, Summary
from newsletter.render import ItemLink, RecipientValues, RenderedIssue, as_utc, render_issue, section_key
from newsletter.tokens import LinkSigner

log = logging.getLogger(__name__)

# Every header the builder writes itself; a backend's extra headers (Feedback-ID) come on top.
WRITTEN_HEADERS = (
    "From", "To", "Reply-To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
    "MIME-Version", "Content-Type",
)
_MESSAGE_ID = re.compile(r"^<[!-;=?-~]+@[!-;=?-~]+>$")  # printable ASCII without <, > or spaces
_HTTP_URI = re.compile(r"^https?://[!#-;=?-~]+$", re.IGNORECASE)  # printable ASCII without spaces, ", <, >
_MAX_URI = 900  # a List-Unsubscribe line must stay under 998 octets
_LINE = 78  # RFC 5322's recommended line length; the hard limit is 998
_WORD = 75  # the longest RFC 2047 encoded-word
_EW_LINE = 76  # the longest line with an encoded-word (RFC 2047 2)
_MAX_NAME = 400  # a display name longer than this is shortened: header lines must stay under 998 octets
_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_ATOMS = re.compile(f"[{_ATEXT}]+(?: [{_ATEXT}]+)*")
_ADDRESS = re.compile(
    f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\\.)*[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
)
# Characters an RFC 2047 "Q" word may carry as themselves: in a display name only these (RFC 2047 5.3);
# in unstructured text (Subject) any printable ASCII but "=", "?", "_" and space.
_Q_PHRASE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_TEXT = frozenset(range(0x21, 0x7F)) - frozenset(b"=?_")


# -- headers: written by us ---------------------------------------------------------------------------------


def single_line(value: str | None) -> str:
    """``value`` with each run of whitespace (CR, LF, tab, Unicode line breaks) as one space and control
    characters and unpaired surrogates (which no charset can carry) dropped."""
    value = value or ""
    if not value.isprintable():  # else there is no control character to drop (the common case, fast)
        value = "".join(ch for ch in value if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cs"))
    return " ".join(value.split())


def header_text(value: str | None, *, used: int, phrase: bool = False) -> str:
    """``value`` as a header field body written by us: one line of text, folded to 78 characters where it
    can be, after ``used`` characters of the line (the field name and ": ").

    Printable ASCII without ``=?`` is written as it is (a display name as atoms or a quoted string);
    anything else as RFC 2047 encoded-words of UTF-8, which readers decode back to exactly ``value``
    (whitespace runs collapsed, control characters dropped, see :func:`single_line`). ``phrase`` is for a
    display name in an address header (see :func:`_phrase`).
    """
    text = single_line(value)
    if phrase:
        return _phrase(text, used)
    if _plain(text) and all(len(word) < _LINE for word in text.split(" ")):
        return _fold(text.split(" "), used, _LINE)
    # whitespace between two encoded-words is not part of the text: they may be split anywhere
    return _fold(_encoded_words(text, _Q_TEXT), used, _EW_LINE)


def _plain(text: str) -> bool:
    """Text a header may carry as it is: printable ASCII that no reader could take for an encoded-word."""
    return text.isascii() and text.isprintable() and "=?" not in text


def _phrase(text: str, used: int) -> str:
    """A display name: atoms, a quoted string, or encoded-words between plain words.

    Two encoded-words side by side in a display name are read differently by different parsers (RFC 2047
    drops the space between them, Python's email package keeps it), so each run of words that needs
    encoding must fit in one encoded-word. A name where one does not (a very long word in a non-Latin
    script) is shortened to what fits in one, ending with "…"; the body still shows it whole.
    """
    if not text:
        return ""
    quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if _plain(text) and len(text) < _MAX_NAME:
        if _ATOMS.fullmatch(text):
            return _fold(text.split(" "), used, _LINE)
        if used + len(quoted) <= _LINE:
            return quoted
    tokens: list[str] = []
    run: list[str] = []
    for word in [*text.split(" "), ""]:  # "" ends the last run
        if word and not (_plain(word) and _ATOMS.fullmatch(word)):
            run.append(word)
            continue
        if run:
            encoded = _encoded_words(" ".join(run), _Q_PHRASE)
            if len(encoded) > 1:
                return _shortened(text)
            tokens += encoded
            run = []
        if word:
            tokens.append(word)
    if sum(len(token) + 1 for token in tokens) > _MAX_NAME:
        return _shortened(text)
    return _fold(tokens, used, _EW_LINE)


def _shortened(text: str) -> str:
    """The longest beginning of ``text`` that fits in one encoded-word with "…" after it."""
    for end in range(min(len(text) - 1, _WORD), 0, -1):  # one encoded-word holds fewer than 75 characters
        words = _encoded_words(text[:end].rstrip() + "…", _Q_PHRASE)
        if len(words) == 1:
            return words[0]
    return _encoded_words("…", _Q_PHRASE)[0]


def _fold(words: Sequence[str], used: int, limit: int) -> str:
    """Words joined by spaces, a line break (before the space) where a line would pass ``limit``."""
    lines: list[str] = []
    line, width = "", used
    for word in words:
        if line and width + 1 + len(word) > limit:
            lines.append(line)
            line, width = word, 1 + len(word)
        else:
            line, width = (f"{line} {word}", width + 1 + len(word)) if line else (word, width + len(word))
    return "\r\n ".join([*lines, line])


def _encoded_words(text: str, safe: frozenset[int]) -> list[str]:
    """``text`` as encoded-words of at most 75 characters, split between characters (never inside one's
    UTF-8 bytes). Q encoding (mostly readable) unless B is much shorter (text in non-Latin scripts)."""
    data = text.encode("utf-8")
    q_length = sum(1 if byte in safe or byte == 0x20 else 3 for byte in data)
    if q_length <= 1.5 * 4 * -(-len(data) // 3):
        prefix, size = "=?utf-8?q?", lambda chunk: sum(1 if b in safe or b == 0x20 else 3 for b in chunk)
    else:
        prefix, size = "=?utf-8?b?", lambda chunk: 4 * -(-len(chunk) // 3)
    room = _WORD - len(prefix) - len("?=")
    chunks: list[bytes] = []
    chunk = b""
    for ch in text:
        encoded = ch.encode("utf-8")
        if chunk and size(chunk + encoded) > room:
            chunks.append(chunk)
            chunk = b""
        chunk += encoded
    chunks.append(chunk)
    if prefix.endswith("q?"):
        return [prefix + "".join(chr(b) if b in safe else "_" if b == 0x20 else f"={b:02X}" for b in c) + "?="
                for c in chunks]
    return [prefix + base64.b64encode(c).decode("ascii") + "?=" for c in chunks]


def checked_address(address: str) -> str:
    """``address`` if it is one plain ASCII address (``local@domain``, a dot-atom on both sides) that every
    parser reads the same way; InvalidAddress otherwise, with a one-line reason."""
    if not _ADDRESS.fullmatch(address) or len(address) > 254:
        why = "it contains a line break or a control character" if not address.isprintable() else (
            "empty" if not address else "not of the form name@example.org in plain ASCII")
    elif "=?" in address:
        why = "it contains '=?', which mail programs may decode as an encoded word"
    else:
        return address
    raise InvalidAddress(
        f"cannot send to {address!r}: not a single plain (ASCII) email address ({why}); "
        "correct or remove this subscriber"
    )


def mailbox(name: str | None, address: str, *, used: int) -> str:
    """``Name <address>`` (or the bare address without a name) for an address header, after ``used``
    characters of its line. Raises InvalidAddress for an address that is not one plain address."""
    address = checked_address(address)
    if not single_line(name):
        return address
    phrase = header_text(name, used=used, phrase=True)
    last_line = phrase.rpartition("\n")[2]
    width = (used if last_line == phrase else 0) + len(last_line)
    return f"{phrase}\r\n <{address}>" if width + 3 + len(address) > _LINE else f"{phrase} <{address}>"


def _field(name: str, body: str) -> bytes:
    return f"{name}: {body}\r\n".encode("ascii")


def _config_mailbox(name: str, value: str) -> bytes:
    """A header with an address from the config (``Name <address>``), written by :func:`mailbox` too."""
    display, address = parseaddr(value)
    return _field(name, mailbox(display, address, used=len(name) + 2))


# -- bodies -------------------------------------------------------------------------------------------------

_QP_SAFE = re.compile(r"^[!-<>-~]+(?: [!-<>-~]+)*$")  # printable ASCII except "=", no edge/double spaces
_SOFT_BREAK = b"=\r\n"
_QP_LINE = 75  # 76 octets per encoded line, one kept for the soft line break's "="


def qp_encode(value: str) -> bytes:
    """``value`` as UTF-8 quoted-printable body text with CRLF lines of at most 76 octets."""
    if _QP_SAFE.fullmatch(value):  # the common case (URLs, addresses, plain names): only line length matters
        if len(value) <= _QP_LINE:
            return value.encode("ascii")
        chunks = [value[i:i + _QP_LINE] for i in range(0, len(value), _QP_LINE)]
        return _SOFT_BREAK.join(chunk.encode("ascii") for chunk in chunks)
    # maxlinelen 75: a soft line break may follow the last line
    data = value.encode("utf-8", errors="replace").decode("latin-1")
    return body_encode(data, maxlinelen=_QP_LINE, eol="\r\n").encode("ascii")


@dataclasses.dataclass(frozen=True)
class _Part:
    """One text part's encoded body: static chunks with the names of the fields between them."""

    chunks: tuple[bytes, ...]
    fields: tuple[str, ...]  # len(chunks) == len(fields) + 1
    is_html: bool


# -- the message --------------------------------------------------------------------------------------------


_FIELDS = ("email", "name", "unsubscribe_url", "preferences_url")  # the text fields of RecipientValues


class MessageTemplate:
    """A rendered issue (or a transactional email) encoded once; :meth:`personalise` splices one
    subscriber in as bytes.

    The bodies are split at the renderer's markers (one per text field of :class:`RecipientValues`, and one
    per item link of a render with click counting) and each piece is quoted-printable encoded on its own,
    ended by a soft line break, so no encoder can split a marker and a spliced value never lengthens an
    encoded line beyond 76 octets. ``extra_headers`` (e.g. ``Feedback-ID``) are the same for every message;
    ``list_headers`` False leaves out List-Id and List-Unsubscribe (an email to someone who is not on the
    list yet). ``links``: where the item links lead for every reader, written in once; None: per reader
    (``RecipientValues.links``, the items' own URLs when that is empty).
    """

    def __init__(self, config: Config, rendered: RenderedIssue, *, extra_headers: dict[str, str] | None = None,
                 list_headers: bool = True, links: Sequence[str] | None = None) -> None:
        self.config = config
        self.rendered = rendered  # as rendered, item links still placeholders: what the archive's copy is made of
        self.list_headers = list_headers
        body = rendered.with_links(links) if links is not None and rendered.links else rendered
        self._links = tuple(link.marker for link in body.links)
        self._direct = tuple(link.url for link in body.links)
        self.fields = (*_FIELDS, *(f"link{n}" for n in range(len(self._links))))
        self._markers = {**{getattr(rendered.markers, name): name for name in _FIELDS},
                         **{marker: f"link{n}" for n, marker in enumerate(self._links)}}
        letter = config.newsletter
        self._from = _config_mailbox("From", letter.sender)
        self._subject = (_config_mailbox("Reply-To", letter.reply_to) if letter.reply_to else b"") + _field(
            "Subject", header_text(rendered.subject, used=len("Subject: ")))
        self._list_id = _field("List-Id", f"{header_text(letter.name, used=9, phrase=True)} <{letter.list_id}>")
        self._mailto = f"mailto:{letter.unsubscribe_address}?subject=unsubscribe".encode("ascii")
        # "=_" cannot occur in quoted-printable text, so the boundary never appears in a body
        boundary = f"=_nl_{secrets.token_hex(12)}"
        extra = b"".join(_field(name, header_text(value, used=len(name) + 2))
                         for name, value in (extra_headers or {}).items())
        part = 'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
        self._mime = (
            extra + b"MIME-Version: 1.0\r\n"
            + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode("ascii")
        )
        pieces: tuple[bytes | _Part, ...] = (
            f"--{boundary}\r\n{part.format('plain')}".encode("ascii"),
            self._split(body.text, is_html=False),
            f"\r\n--{boundary}\r\n{part.format('html')}".encode("ascii"),
            self._split(body.html, is_html=True),
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        )
        self._body = _segments(pieces)
        self._line_starts = _line_starts(self._body)
        self._wire_body = tuple(dot_stuff(segment, line_start) if isinstance(segment, bytes) else segment
                                for segment, line_start in zip(self._body, self._line_starts, strict=True))
        places = {segment for segment in self._body if isinstance(segment, tuple)}
        self._text_fields = sorted(field for is_html, field in places if not is_html)
        self._html_fields = sorted(field for is_html, field in places if is_html)
        self._dates: tuple[int, bytes] = (-1, b"")  # the last Date header written, by the second it names

    def _split(self, body: str, *, is_html: bool) -> _Part:
        markers = self._markers
        pattern = re.compile("|".join(re.escape(marker) for marker in markers))
        pieces = pattern.split(body)
        found = tuple(markers[m] for m in pattern.findall(body))
        if not pieces[-1].endswith("\n"):
            pieces[-1] += "\n"
        return _Part(tuple(qp_encode(piece) if piece else b"" for piece in pieces), found, is_html)

    def personalise(self, values: RecipientValues, *, message_id: str, date: datetime | None = None) -> bytes:
        """The complete message for one subscriber, with CRLF line endings.

        ``values.unsubscribe_url`` goes into the body and ``List-Unsubscribe`` (with ``List-Unsubscribe-Post``
        when it is https); ``date`` defaults to now and is written in UTC (a naive value is taken as UTC).
        Raises InvalidAddress for an unusable recipient address and ValueError for a malformed
        ``message_id`` or unsubscribe URL (both are the caller's bug, not the subscriber's).
        """
        head, encoded = self._head_and_values(values, message_id=message_id, date=date)
        return self._joined(head, encoded)

    def _head_and_values(self, values: RecipientValues, *, message_id: str,
                         date: datetime | None) -> tuple[bytes, dict[tuple[bool, str], bytes]]:
        """The headers (through the blank line) and the encoded values for the body's places."""
        if not _MESSAGE_ID.match(message_id):
            raise ValueError(f"message_id {message_id!r} must look like <local@domain>")
        url = values.unsubscribe_url
        if self.list_headers and (not _HTTP_URI.match(url) or len(url) > _MAX_URI):
            raise ValueError(f"unsubscribe URL {url!r} must be an http(s) URL without spaces")
        name = single_line(values.name)
        out = [
            self._from,
            _field("To", mailbox(name, values.email, used=len("To: "))),
            self._subject,
            self._date(as_utc(date) if date else datetime.now(UTC)),
            _field("Message-ID", message_id),
        ]
        if self.list_headers:
            out += [self._list_id, b"List-Unsubscribe: <", url.encode("ascii"), b">,\r\n <", self._mailto, b">\r\n"]
            if url.lower().startswith("https://"):
                out.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")  # RFC 8058 needs https
        out.append(self._mime)
        raw = {field: getattr(values, field) or "" for field in _FIELDS}
        raw["name"] = name
        if self._links:
            links = values.links or self._direct
            if len(links) != len(self._links):
                raise ValueError(f"{len(links)} link URLs for {len(self._links)} item links")
            raw.update((f"link{n}", url) for n, url in enumerate(links))
        encoded = {(False, field): qp_encode(raw[field]) for field in self._text_fields}
        encoded.update({(True, field): qp_encode(html_escaping.escape(raw[field], quote=True))
                        for field in self._html_fields})
        return b"".join(out), encoded

    def personalise_for_smtp(self, values: RecipientValues, *, message_id: str,
                             date: datetime | None = None) -> tuple[bytes, bytes]:
        """:meth:`personalise`'s message, and the same message dot-stuffed for SMTP's DATA (RFC 5321
        4.5.2: a line that starts with "." gets one more). The body's static pieces are stuffed once per
        template, so per message only the spliced values are looked at, not the whole message."""
        head, encoded = self._head_and_values(values, message_id=message_id, date=date)
        data = self._joined(head, encoded)
        stuffed: dict[tuple[Any, bool], bytes] = {}
        out = [head]  # no header line starts with "."; each place knows if its value starts a line
        for segment, line_start in zip(self._wire_body, self._line_starts, strict=True):
            if isinstance(segment, bytes):
                out.append(segment)
                continue
            key = (segment, line_start)
            if key not in stuffed:
                value = encoded[segment]
                if value.endswith(b"\n"):  # the next line's start would not be where the template expects
                    return data, dot_stuff(data)
                stuffed[key] = dot_stuff(value, line_start)
            out.append(stuffed[key])
        return data, b"".join(out)

    def _joined(self, head: bytes, encoded: dict[tuple[bool, str], bytes]) -> bytes:
        """The message: ``head``, then the body with each value place filled from ``encoded``."""
        return b"".join([head, *(segment if isinstance(segment, bytes) else encoded[segment] for segment in self._body)])

    def _date(self, moment: datetime) -> bytes:
        """The Date header for ``moment`` (UTC), written once per second of sending."""
        second = int(moment.timestamp() // 1)
        if self._dates[0] != second:
            self._dates = (second, _field("Date", format_datetime(moment.replace(microsecond=0))))
        return self._dates[1]


def _line_starts(body: Sequence[Any]) -> tuple[bool, ...]:
    """For each body segment, whether it starts a line: the body starts one, and a segment does after one
    that ends with a line break. Values (quoted-printable of one line of text) never end with one."""
    starts, line_start = [], True
    for segment in body:
        starts.append(line_start)
        line_start = segment.endswith(b"\n") if isinstance(segment, bytes) and segment else \
            (line_start if isinstance(segment, bytes) else False)
    return tuple(starts)


def _segments(pieces: Sequence[bytes | _Part]) -> tuple[Any, ...]:
    """The body as a flat sequence of bytes that are the same in every message and ``(is_html, field)``
    places for a subscriber's encoded values, with the soft line breaks around each value already decided:
    a chunk that does not end its line gets one before the value, and the value gets one after it unless
    the chunk after it begins with a line break (a soft break there would be ambiguous)."""
    out: list[Any] = []
    for piece in pieces:
        if isinstance(piece, bytes):
            out.append(piece)
            continue
        for chunk, field, after in zip(piece.chunks, piece.fields, piece.chunks[1:], strict=False):
            out.append(chunk + _SOFT_BREAK if chunk and not chunk.endswith(b"\r\n") else chunk)
            out.append((piece.is_html, field))
            if not after.startswith(b"\r\n"):
                out.append(_SOFT_BREAK)
        out.append(piece.chunks[-1])
    merged: list[Any] = []  # neighbouring bytes joined once here rather than in every message
    for segment in out:
        if isinstance(segment, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += segment
        elif segment != b"":
            merged.append(segment)
    return tuple(merged)


def message_parts(data: bytes) -> tuple[str, str]:
    """(html, text) of a message built here, decoded: what a reader's mail program shows."""
    parsed: EmailMessage = email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[assignment]
    html_part, text_part = parsed.get_body(("html",)), parsed.get_body(("plain",))
    html, text = (part.get_content().replace("\r\n", "\n") if part else "" for part in (html_part, text_part))  # type: ignore[union-attr]
    return html, text


def make_message_id(config: Config, issue_number: int, subscriber_token: str) -> str:
    """``<issue-N.HASH@sender-domain>``: the same for every retry, revealing no address or row id."""
    digest = hashlib.sha256(f"newsletter-message-id\0{subscriber_token}".encode()).hexdigest()[:20]
    return f"<issue-{issue_number}.{digest}@{config.newsletter.sender_domain}>"


# -- an issue, per subscriber ---------------------------------------------------------------------------------


class Reader(Protocol):
    """What the composer needs of a subscriber (a :class:`~newsletter.models.Subscriber` or a claimed row)."""

    email: str
    name: str | None
    token: str


def recipient_values(config: Config, subscriber: Reader, links: LinkSigner | None = None) -> RecipientValues:
    """A subscriber's personal values: name, address and links signed from its token."""
    links = links or LinkSigner(config)
    return RecipientValues(
        email=subscriber.email,
        name=subscriber.name or "",
        unsubscribe_url=links.unsubscribe_url(subscriber.token),
        preferences_url=links.preferences_url(subscriber.token),
    )


class Composer:
    """An issue's messages, one subscriber at a time: what the send loop sends and what the checks,
    ``digest render`` and the preview look at. Renders once per distinct topic selection (cached).

    With ``tracking.clicks`` the items' links lead to ``<site_url>/c/<token>``: one token per item, written
    into the encoded issue once, or with ``tracking.per_subscriber`` one per item and subscriber, spliced
    in like the unsubscribe link. A draft (an issue not saved yet) links straight to its items: there is
    no issue for a click to be counted in.
    """

    def __init__(self, config: Config, issue: Issue, items: Sequence[Summary],
                 extra_headers: dict[str, str] | None = None, *, dot_stuffed: bool = False) -> None:
        self.config = config
        self.issue = issue
        self.items = list(items)
        self.links = LinkSigner(config)
        self.extra_headers = extra_headers or {}
        self.dot_stuffed = dot_stuffed  # also make each message's SMTP DATA form (Backend.wants_dot_stuffed)
        self._templates: dict[tuple[int | None, ...], MessageTemplate] = {}
        self._counted = config.tracking.clicks and issue.id is not None
        self._per_reader = self._counted and config.tracking.per_subscriber

    def values(self, subscriber: Reader, template: MessageTemplate | None = None) -> RecipientValues:
        """``subscriber``'s values; for ``template``, with their own click links when those are per reader."""
        values = recipient_values(self.config, subscriber, self.links)
        if template is None or not self._per_reader or not template.rendered.links:
            return values
        return dataclasses.replace(values, links=tuple(
            self._click_url(link, subscriber.token) for link in template.rendered.links))

    def _issue_links(self, rendered: RenderedIssue) -> list[str] | None:
        """Where every reader's item links lead, or None when each reader's lead to their own tokens."""
        if not rendered.links or self._per_reader:
            return None
        return [self._click_url(link) if self._counted else link.url for link in rendered.links]

    def _click_url(self, link: ItemLink, subscriber_token: str | None = None) -> str:
        if link.item_id is None:  # a summary that is not saved cannot be named: straight to it
            return link.url
        return self.links.click_url(self.issue.number, link.item_id, link.url, subscriber_token)

    def template(self, topics: Sequence[str]) -> MessageTemplate | None:
        """The encoded issue for a topic selection (empty = everything); None when it has no item."""
        wanted = {" ".join(t.split()).casefold() for t in topics if t and t.strip()}
        chosen = [s for s in self.items if not wanted or section_key(s) in wanted]
        if not chosen:
            return None
        key = tuple(s.id for s in chosen)
        if key not in self._templates:
            rendered = render_issue(self.config, self.issue, chosen)
            self._templates[key] = MessageTemplate(self.config, rendered, extra_headers=self.extra_headers,
                                                   links=self._issue_links(rendered))
        return self._templates[key]

    def compose(self, delivery_id: int, subscriber: Reader, template: MessageTemplate,
                date: datetime | None = None) -> OutgoingMessage:
        """The message for ``subscriber``; raises InvalidAddress (or ValueError) when none can be built."""
        message_id = make_message_id(self.config, self.issue.number, subscriber.token)
        values = self.values(subscriber, template)
        if self.dot_stuffed:
            data, stuffed = template.personalise_for_smtp(values, message_id=message_id, date=date)
        else:
            data, stuffed = template.personalise(values, message_id=message_id, date=date), None
        return OutgoingMessage(delivery_id, return_path(self.config, subscriber.token), subscriber.email,
                               message_id, data, dot_stuffed=stuffed)
