"""One subscriber's message: MIME structure, exact headers, line limits, header injection, Message-IDs.

Everything goes through the one builder, :class:`newsletter.message.MessageTemplate`; its bytes are judged by
the standard library's parser (lenient and strict) and, for ordinary values, compared with a message the
standard library builds itself from the same parts.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from newsletter.config import Config
from newsletter.errors import InvalidAddress
from newsletter.message import MessageTemplate, make_message_id
from newsletter.models import Issue, Summary
from newsletter.render import RecipientValues, RenderedIssue, new_markers, render_issue
from tests.conftest import make_config
from tests.helpers import make_issue, make_summaries

SENT_AT = datetime(2026, 11, 23, 8, 0, 5, tzinfo=UTC)
UNSUBSCRIBE = "https://news.example.org/unsubscribe/eyJzIjoiYWJjIn0.ZmFrZS1zaWduYXR1cmU"
PREFS = "https://news.example.org/preferences/eyJzIjoiYWJjIn0.ZmFrZS1zaWduYXR1cmU"
ZOE = RecipientValues(
    email="zoe@example.org", name="Zoë O'Brien, PhD", unsubscribe_url=UNSUBSCRIBE, preferences_url=PREFS
)
MESSAGE_ID = "<issue-12.0123456789abcdef0123@example.org>"


def sample_rendered(subject: str = "Research Weekly #12: Sleep spindles and 3 more") -> RenderedIssue:
    """A small rendered issue whose HTML has one very long line, as compiled MJML does."""
    markers = new_markers()
    html = (
        "<!doctype html><html><body>"
        + "<p>Zusammenfassung über Schlaf &amp; Gedächtnis.</p>" * 200
        + f"<p>Hello {markers.name}, this went to {markers.email}.</p>"
        + f'<a href="{markers.unsubscribe_url}">Unsubscribe</a></body></html>'
    )
    text = f"Hello {markers.name}\n\nÜber Schlaf & Gedächtnis.\n\nUnsubscribe:\n{markers.unsubscribe_url}\n"
    return RenderedIssue(subject=subject, preheader="Sleep spindles", html=html, text=text, markers=markers)


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def build_message(config: Config, rendered: RenderedIssue, values: RecipientValues, *, message_id: str,
                  date: datetime | None = None) -> bytes:
    return MessageTemplate(config, rendered).personalise(values, message_id=message_id, date=date)


def build(config: Config, values: RecipientValues = ZOE, rendered: RenderedIssue | None = None) -> bytes:
    return build_message(config, rendered or sample_rendered(), values, message_id=MESSAGE_ID, date=SENT_AT)


def test_multipart_alternative_with_text_first_and_html_last(config: Config) -> None:
    message = parse(build(config))
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    for part in parts:
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
        assert "MIME-Version" not in part
    text, html = (part.get_content() for part in parts)
    assert "Hello Zoë O'Brien, PhD" in text and "Über Schlaf & Gedächtnis." in text
    assert UNSUBSCRIBE in text
    assert "Hello Zoë O&#x27;Brien, PhD, this went to zoe@example.org." in html
    assert f'<a href="{UNSUBSCRIBE}">Unsubscribe</a>' in html


def test_headers_are_exact(config: Config) -> None:
    message = parse(build(config))
    assert message["From"] == "Research Weekly <digest@example.org>"
    assert message["To"] == '"Zoë O\'Brien, PhD" <zoe@example.org>'
    (to,) = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Zoë O'Brien, PhD", "zoe@example.org")
    assert message["Subject"] == "Research Weekly #12: Sleep spindles and 3 more"
    assert message["Date"] == "Mon, 23 Nov 2026 08:00:05 +0000"
    assert message["Message-ID"] == MESSAGE_ID
    assert message["List-Id"] == "Research Weekly <research-weekly.example.org>"
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>, <mailto:unsubscribe@example.org?subject=unsubscribe>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["MIME-Version"] == "1.0"
    assert "Reply-To" not in message
    for name in ("From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe"):
        assert len(message.get_all(name) or []) == 1, name


def test_reply_to_and_unsubscribe_mailto_come_from_the_config(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        newsletter={
            "name": "Research Weekly",
            "sender": "Research Weekly <digest@example.org>",
            "reply_to": "Editors <editors@example.org>",
            "unsubscribe_mailto": "leave@lists.example.org",
            "postal_address": "Research Weekly, 1 Example Street, 12345 Example City, Country",
            "site_url": "https://news.example.org",
        },
    )
    message = parse(build(config))
    assert message["Reply-To"] == "Editors <editors@example.org>"
    assert message["List-Unsubscribe"].endswith("<mailto:leave@lists.example.org?subject=unsubscribe>")


def test_a_name_is_optional(config: Config) -> None:
    message = parse(build(config, RecipientValues("bob@example.org", "", UNSUBSCRIBE, PREFS)))
    assert message["To"] == "bob@example.org"
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Hello , this went to bob@example.org." in html


def test_lines_end_in_crlf_and_stay_under_998_octets(config: Config) -> None:
    long_url = UNSUBSCRIBE + "x" * 300
    data = build(config, RecipientValues("zoe@example.org", "Zoë " * 100, long_url, PREFS))
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert data.endswith(b"\r\n")


def test_a_long_unsubscribe_url_is_not_mangled_into_encoded_words(config: Config) -> None:
    long_url = UNSUBSCRIBE + "x" * 200
    data = build(config, RecipientValues("zoe@example.org", "", long_url, PREFS))
    header_block = data.split(b"\r\n\r\n", 1)[0]
    assert f"List-Unsubscribe: <{long_url}>,\r\n <mailto:".encode() in header_block
    assert parse(data)["List-Unsubscribe"].startswith(f"<{long_url}>")


@pytest.mark.parametrize(
    "name",
    ["Eve\r\nBcc: victim@example.com", "Eve\nBcc: victim@example.com", "Eve\rBcc: victim@example.com",
     "Eve\u2028Bcc: victim@example.com", "Eve\x00\x1b[31m\r\n\r\nInjected body"],
)  # fmt: skip
def test_a_name_cannot_inject_headers(config: Config, name: str) -> None:
    data = build(config, RecipientValues("eve@example.org", name, UNSUBSCRIBE, PREFS))
    header_block = data.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"^Bcc:", header_block, re.MULTILINE | re.IGNORECASE)
    message = parse(data)
    assert "Bcc" not in message
    assert [a.addr_spec for a in message["To"].addresses] == ["eve@example.org"]
    assert "\n" not in message["To"] and "\x00" not in message["To"]


def test_a_subject_cannot_inject_headers(config: Config) -> None:
    message = parse(build(config, rendered=sample_rendered("Weekly\r\nBcc: victim@example.com")))
    assert message["Subject"] == "Weekly Bcc: victim@example.com"
    assert "Bcc" not in message


@pytest.mark.parametrize(
    "address", ["zoe@example.org\r\nBcc: victim@example.com", "zoe@example.org, eve@example.org", "", "not-an-address"]
)
def test_an_unusable_address_is_rejected(config: Config, address: str) -> None:
    with pytest.raises(InvalidAddress, match="cannot send to"):
        build(config, RecipientValues(address, "Zoë", UNSUBSCRIBE, PREFS))


def test_bad_message_id_or_unsubscribe_url_is_a_programming_error(config: Config) -> None:
    with pytest.raises(ValueError, match="message_id"):
        build_message(config, sample_rendered(), ZOE, message_id="<a@b>\r\nBcc: x@y")
    with pytest.raises(ValueError, match="unsubscribe URL"):
        build(config, RecipientValues("zoe@example.org", "", "https://x.example/u>\r\nBcc: x@y", PREFS))


def test_plain_http_unsubscribe_gets_no_one_click_header(config: Config) -> None:
    message = parse(build(config, RecipientValues("zoe@example.org", "", "http://localhost:8000/unsubscribe/t", PREFS)))
    assert message["List-Unsubscribe"].startswith("<http://localhost:8000/unsubscribe/t>")
    assert "List-Unsubscribe-Post" not in message


def test_date_defaults_to_now_and_naive_dates_are_utc(config: Config) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    message = parse(build_message(config, sample_rendered(), ZOE, message_id=MESSAGE_ID))
    assert before <= message["Date"].datetime <= datetime.now(UTC)
    naive = parse(build_message(config, sample_rendered(), ZOE, message_id=MESSAGE_ID, date=datetime(2026, 1, 2, 3, 4)))
    assert naive["Date"] == "Fri, 02 Jan 2026 03:04:00 +0000"


def test_message_id_is_deterministic_and_reveals_nothing(config: Config) -> None:
    token = "Zq3tK0p8yW1vX4sN2mB7cD5e"
    first = make_message_id(config, 12, token)
    assert first == make_message_id(config, 12, token)
    assert re.fullmatch(r"<issue-12\.[0-9a-f]{20}@example\.org>", first)
    assert first != make_message_id(config, 13, token)
    assert first != make_message_id(config, 12, token + "x")
    assert token not in first


def test_a_rendered_issue_becomes_a_complete_message(config: Config) -> None:
    rendered = render_issue(config, make_issue(), make_summaries())
    message_id = make_message_id(config, 12, "token-of-zoe")
    message = parse(build_message(config, rendered, ZOE, message_id=message_id, date=SENT_AT))
    assert message["Subject"] == rendered.subject
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert f'href="{UNSUBSCRIBE}"' in html and UNSUBSCRIBE in text
    assert "zoe@example.org" in html and "zoe@example.org" in text
    assert rendered.markers.unsubscribe_url not in html + text


# -- encode once, splice per subscriber: the same message the standard library builds ---------------------

LONG_URL = "https://news.example.org/unsubscribe/" + "x" * 150


def stdlib_message(config: Config, rendered: RenderedIssue, values: RecipientValues, *, message_id: str,
                   date: datetime) -> bytes:
    """The reference: the standard library's own EmailMessage with the same parts, for ordinary values only
    (it is the header machinery the builder must not hand untrusted text to)."""
    from email.headerregistry import Address
    from email.message import MIMEPart
    from email.utils import format_datetime, formataddr

    values = replace(values, name=" ".join(values.name.split()))  # a name is one line in every part
    html, text = rendered.personalise(values)
    letter = config.newsletter
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = letter.sender
    message["To"] = Address(display_name=values.name, addr_spec=values.email)
    if letter.reply_to:
        message["Reply-To"] = letter.reply_to
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = message_id
    message["List-Id"] = formataddr((letter.name, letter.list_id))
    message["List-Unsubscribe"] = f"<{values.unsubscribe_url}>, <mailto:{letter.unsubscribe_address}?subject=unsubscribe>"
    if values.unsubscribe_url.startswith("https://"):
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.make_alternative()
    html_part = MIMEPart(policy=email.policy.SMTP)
    html_part.set_content(html, subtype="html", charset="utf-8", cte="quoted-printable")
    message.attach(html_part)  # type: ignore[arg-type]
    return message.as_bytes()


def same_message(spliced: bytes, fresh: bytes) -> None:
    """Both parse to the same headers, structure and decoded parts, and obey the line limits."""
    a, b = parse(spliced), parse(fresh)
    names = lambda m: sorted(k.lower() for k in m.keys() if k.lower() != "content-type")  # noqa: E731
    assert names(a) == names(b)
    for key in b.keys():
        if key.lower() != "content-type":  # differs only by the random MIME boundary
            assert " ".join(str(a[key]).split()) == " ".join(str(b[key]).split()), key
    assert a.get_content_type() == b.get_content_type() == "multipart/alternative"
    pa, pb = list(a.iter_parts()), list(b.iter_parts())
    assert [p.get_content_type() for p in pa] == [p.get_content_type() for p in pb]
    for x, y in zip(pa, pb, strict=True):
        assert x.get_content() == y.get_content()
        assert x["Content-Transfer-Encoding"] == y["Content-Transfer-Encoding"]
    for line in spliced.split(b"\r\n"):
        assert len(line) <= 998
    body = spliced.partition(b"\r\n\r\n")[2]
    assert all(len(line) <= 76 for line in body.split(b"\r\n")), "a quoted-printable line is over 76 octets"
    assert b"\n" not in spliced.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    "values",
    [
        ZOE,
        RecipientValues("ada@example.org", "Ada", UNSUBSCRIBE, PREFS),
        RecipientValues("ada@example.org", "", LONG_URL, LONG_URL.replace("unsubscribe", "preferences")),
        RecipientValues("joerg@example.net", "Jörg = <Müller> & \"Söhne\"", UNSUBSCRIBE, PREFS),
        RecipientValues("a.very.long.address.indeed@subdomain.example.org", "A name that goes on " * 5, UNSUBSCRIBE, PREFS),
    ],
    ids=["accents", "plain", "long-urls", "specials", "long-name"],
)
@pytest.mark.parametrize("plain_http", [False, True])
def test_spliced_message_is_the_same_message_as_a_fresh_build(tmp_path: Path, values: RecipientValues, plain_http: bool) -> None:
    from newsletter.demo import DEMO_SETTINGS
    site = "http://news.example.org" if plain_http else "https://news.example.org"
    config = make_config(tmp_path, newsletter={**DEMO_SETTINGS["newsletter"], "site_url": site,
                                               "reply_to": "Editors <editors@example.org>"})
    if plain_http:
        values = RecipientValues(values.email, values.name, values.unsubscribe_url.replace("https", "http", 1),
                                 values.preferences_url)
    rendered = sample_rendered()
    template = MessageTemplate(config, rendered)
    spliced = template.personalise(values, message_id=MESSAGE_ID, date=SENT_AT)
    fresh = stdlib_message(config, rendered, values, message_id=MESSAGE_ID, date=SENT_AT)
    same_message(spliced, fresh)


def test_spliced_message_of_the_real_templates_matches_a_fresh_build(config: Config) -> None:
    rendered = render_issue(config, make_issue(), make_summaries())
    spliced = MessageTemplate(config, rendered).personalise(ZOE, message_id=MESSAGE_ID, date=SENT_AT)
    same_message(spliced, stdlib_message(config, rendered, ZOE, message_id=MESSAGE_ID, date=SENT_AT))
    assert UNSUBSCRIBE in parse(spliced).get_body(("plain",)).get_content()


def test_a_marker_split_across_encoded_lines_is_still_replaced(config: Config) -> None:
    """A marker placed so that one quoted-printable encoding of the whole body would wrap inside it."""
    markers = new_markers()
    for offset in range(60, 80):
        text = "é" * (offset // 3) + "a" * (offset % 3) + markers.unsubscribe_url + "\n"
        rendered = RenderedIssue("S", "p", f'<a href="{markers.unsubscribe_url}">u</a>', text, markers)
        spliced = MessageTemplate(config, rendered).personalise(ZOE, message_id=MESSAGE_ID, date=SENT_AT)
        assert markers.unsubscribe_url.encode() not in spliced
        fresh = stdlib_message(config, rendered, ZOE, message_id=MESSAGE_ID, date=SENT_AT)
        same_message(spliced, fresh)
        assert parse(spliced).get_body(("plain",)).get_content().rstrip().endswith(UNSUBSCRIBE)


def test_splicing_injects_no_header_from_a_name(config: Config) -> None:
    evil = RecipientValues("ada@example.org", "Ada\r\nBcc: victim@example.net", UNSUBSCRIBE, PREFS)
    spliced = MessageTemplate(config, sample_rendered()).personalise(evil, message_id=MESSAGE_ID, date=SENT_AT)
    assert parse(spliced)["Bcc"] is None
    with pytest.raises(ValueError):
        MessageTemplate(config, sample_rendered()).personalise(ZOE, message_id="<a@b>\r\nBcc: x@y")


# -- any text from data: the sent bytes as two independent parsers read them (property tests) ---------------

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EVIL = (
    "\r", "\n", "\r\n", "\x00", "\u200f", "\u202e", "\u2028", "🧠", "👩🏽‍🔬", "=?", "?=", '"', "\\", "<", ">", ",", ";",
    "=?utf-8?q?study=0D=0ABcc:_victim@evil.example?=",
    "=?utf-8?q?Eve=0D=0AContent-Type:_text/html=0D=0A=0D=0A<h1>x</h1>?=",
    "=?utf-8?b?RXZlDQpCY2M6IHZAZXZpbC5leGFtcGxl?=",
    "=?iso-8859-1?q?=E9?=", "To: x@evil.example", "Bcc: victim@evil.example",
)
TEXT = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(EVIL)), max_size=12).map("".join)
NAMES = st.one_of(TEXT, st.text(min_size=150, max_size=220), st.sampled_from(["Ana María García-López", "x" * 200]))
ADDRESSES = st.one_of(
    st.emails(), st.sampled_from(["firstname.lastname@example.org", "ada@example.org", "a@b.example"]),
    st.tuples(st.sampled_from(EVIL), st.emails()).map(lambda pair: pair[0] + pair[1]), TEXT,
)
EXPECTED_HEADERS = sorted(
    ["from", "to", "subject", "date", "message-id", "list-id", "list-unsubscribe", "list-unsubscribe-post",
     "mime-version", "content-type"]
)


def as_shown(value: str) -> str:
    """What a header or the body must show for ``value``: whitespace runs as one space, control characters
    (and unpaired surrogates, which no charset can carry) left out. Written here independently of the code."""
    kept = "".join(ch for ch in value if ch.isspace() or not (ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0
                                                              or 0xD800 <= ord(ch) < 0xE000))
    return " ".join(kept.split())


def read_as_the_stdlib_does(data: bytes, subject: str, name: str, address: str) -> None:
    """The oracle: the standard library's parser, lenient and strict, on the exact bytes."""
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    for policy in (email.policy.default, email.policy.strict):
        message: EmailMessage = email.message_from_bytes(data, policy=policy)  # type: ignore[assignment]
        assert not message.defects
        assert sorted(key.lower() for key in message.keys()) == EXPECTED_HEADERS
        for key in message.keys():
            assert not message[key].defects, (key, message[key].defects)
            assert "\r" not in str(message[key]) and "\n" not in str(message[key]), key
        [to] = message.get_all("To") or []
        assert len(to.addresses) == 1
        assert to.addresses[0].addr_spec == address
        shown, whole = to.addresses[0].display_name, as_shown(name)
        # the whole name, or (one that cannot be written as a few encoded-words) its beginning and "…"
        assert shown == whole or (shown.endswith("…") and whole.startswith(shown[:-1]))
        assert str(message["Subject"]) == as_shown(subject)
        assert message.get_content_type() == "multipart/alternative"
        parts = list(message.iter_parts())
        assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
        assert all(not list(part.iter_parts()) and not part.defects for part in parts)
        assert as_shown(name) in parts[0].get_content()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=TEXT, name=NAMES, address=ADDRESSES)
@example(subject="Sleep =?utf-8?q?study=0D=0ABcc:_victim@evil.example?=", name="Zoë", address="zoe@example.org")
@example(subject="Weekly", name="Ana María García-López", address="firstname.lastname@example.org")
@example(subject="Weekly", name="=?utf-8?q?Eve=0D=0AContent-Type:_text/html=0D=0A=0D=0A<h1>x</h1>?=",
         address="eve@example.org")
def test_any_subject_name_and_address_become_exactly_the_intended_headers(
    tmp_path_factory: pytest.TempPathFactory, subject: str, name: str, address: str
) -> None:
    """Either the address is refused with a one-line reason, or the sent bytes, read by the standard
    library's parser under both the default and the strict policy, have exactly the expected headers, one
    To with the subscriber's address and name, the intended Subject and the multipart structure."""
    config = make_config(tmp_path_factory.getbasetemp())
    rendered = sample_rendered(subject)
    values = RecipientValues(address, name, UNSUBSCRIBE, PREFS)
    try:
        data = MessageTemplate(config, rendered).personalise(values, message_id=MESSAGE_ID, date=SENT_AT)
    except InvalidAddress as exc:
        assert "\n" not in str(exc) and "cannot send to" in str(exc)
        return
    read_as_the_stdlib_does(data, subject, name, address)


def test_a_title_that_is_an_encoded_word_reads_the_same_in_the_subject_and_the_html(config: Config) -> None:
    """Through the real templates: the stdlib decodes the Subject to exactly the literal title the HTML shows."""
    summary = make_summaries()[1]
    summary.title = "=?utf-8?q?Caf=C3=A9_study=0D=0ABcc:_victim@evil.example?="
    rendered = render_issue(config, make_issue(), [summary])
    data = MessageTemplate(config, rendered).personalise(ZOE, message_id=MESSAGE_ID, date=SENT_AT)
    for policy in (email.policy.default, email.policy.strict):
        message: EmailMessage = email.message_from_bytes(data, policy=policy)  # type: ignore[assignment]
        assert "Bcc" not in message
        assert summary.title in str(message["Subject"]) and "Café" not in str(message["Subject"])
        assert summary.title in message.get_body(("html",)).get_content()  # type: ignore[union-attr]


def smtplib_stuffed(data: bytes) -> bytes:
    """What smtplib's ``SMTP.data()`` sends for ``data`` (its own rule, ``_quote_periods``)."""
    return re.sub(rb"(?m)^\.", b"..", data)


DOTTY = st.lists(st.one_of(st.text(max_size=20), st.sampled_from([".", "\n.", ".\n", "..", "\n..x", " .", "=2E"])),
                 max_size=15).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=DOTTY, html=DOTTY, name=st.one_of(DOTTY, NAMES), address=ADDRESSES, line=st.integers(60, 90))
@example(text=".starts with a dot\n.\n..", html="." * 200, name=".Dot", address="a.b@example.org", line=76)
def test_the_smtp_form_is_the_message_dot_stuffed_as_smtplib_would(
    tmp_path_factory: pytest.TempPathFactory, text: str, html: str, name: str, address: str, line: int
) -> None:
    """The send loop hands the SMTP backend each message dot-stuffed by the template (its static pieces
    once per issue, the values per message): exactly what smtplib makes of the whole message, wherever
    the dots fall (at the start of a line of the text, of an encoded line, of a value), and the message
    itself is the one personalise() builds."""
    config = make_config(tmp_path_factory.getbasetemp())
    markers = new_markers()
    filler = "x" * line  # moves where quoted-printable breaks its lines
    rendered = RenderedIssue(
        subject="Weekly", preheader="", markers=markers,
        text=f"{text}\n{markers.name}\n.{markers.email}{filler}{text}\n{markers.unsubscribe_url}\n.",
        html=f"{html}{filler}{markers.name}.{filler}.{markers.preferences_url}{html}.{markers.unsubscribe_url}",
    )
    values = RecipientValues(address, name, UNSUBSCRIBE, PREFS)
    template = MessageTemplate(config, rendered)
    try:
        data, stuffed = template.personalise_for_smtp(values, message_id=MESSAGE_ID, date=SENT_AT)
    except InvalidAddress:
        return
    assert data == template.personalise(values, message_id=MESSAGE_ID, date=SENT_AT)
    assert stuffed == smtplib_stuffed(data)


# -- click links (tracking.clicks) -------------------------------------------------------------------------


def counted_items(base_dir: Path, **tracking: bool) -> tuple[Config, Issue, list[Summary]]:
    """An issue and its items as saved ones are (ids set), with click counting on."""
    config = make_config(base_dir, tracking={"clicks": True, **tracking})
    issue = make_issue()
    issue.id = 1
    items = make_summaries()
    for number, summary in enumerate(items, start=1):
        summary.id = number
    return config, issue, items


def links_of(data: bytes) -> list[str]:
    """Every link of both parts (the HTML's as lxml reads them)."""
    import lxml.html

    message = parse(data)
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return [*(link for _e, _a, link, _p in lxml.html.fromstring(html).iterlinks()), *re.findall(r"https?://\S+", text)]


def test_spliced_click_links_give_the_same_message_as_a_fresh_build(tmp_path: Path, config: Config) -> None:
    config, issue, items = counted_items(tmp_path / "counted")
    rendered = render_issue(config, issue, items)
    links = tuple(f"https://news.example.org/c/{'x' * 60}{n}" for n in range(len(rendered.links)))
    per_reader = replace(ZOE, links=links)
    spliced = MessageTemplate(config, rendered).personalise(per_reader, message_id=MESSAGE_ID, date=SENT_AT)
    same_message(spliced, stdlib_message(config, rendered, per_reader, message_id=MESSAGE_ID, date=SENT_AT))
    written_once = MessageTemplate(config, rendered, links=links).personalise(ZOE, message_id=MESSAGE_ID, date=SENT_AT)
    same_message(written_once, spliced)
    direct = MessageTemplate(config, rendered).personalise(ZOE, message_id=MESSAGE_ID, date=SENT_AT)
    same_message(direct, stdlib_message(config, rendered, ZOE, message_id=MESSAGE_ID, date=SENT_AT))
    assert {summary.url for summary in items} <= set(links_of(direct))


@pytest.mark.parametrize("per_subscriber", [False, True])
def test_every_reader_gets_click_links_naming_the_items_and_only_per_subscriber_themselves(
        tmp_path: Path, config: Config, monkeypatch: pytest.MonkeyPatch, per_subscriber: bool) -> None:
    from newsletter import render
    from newsletter.message import Composer
    from newsletter.models import Subscriber
    from newsletter.tokens import LinkSigner, url_hash

    calls: list[int] = []
    original = render.mjml2html
    monkeypatch.setattr(render, "mjml2html", lambda *a, **k: calls.append(1) or original(*a, **k))
    config, issue, items = counted_items(tmp_path / "counted", per_subscriber=per_subscriber)
    composer = Composer(config, issue, items)
    template = composer.template([])
    assert template is not None
    signer = LinkSigner(config)
    expected = {(summary.id, url_hash(summary.url or "")) for summary in items}
    for n in range(5):
        reader = Subscriber(email=f"reader{n}@example.org", name=f"Reader {n}", token=f"reader-token-{n}")
        data = composer.compose(n, reader, template).data
        email.message_from_bytes(data, policy=email.policy.strict)  # raises on any defect
        clicks = [signer.read_click(link.rsplit("/", 1)[1]) for link in links_of(data) if "/c/" in link]
        # title, image (where there is one) and button in the HTML, a numbered reference in the text
        assert len(clicks) == 3 * len(items) + len([summary for summary in items if summary.image_url])
        assert {(click.item, click.url_hash) for click in clicks} == expected
        assert {click.issue for click in clicks} == {issue.number}
        assert {click.subscriber for click in clicks} == {reader.token if per_subscriber else None}
        assert not {summary.url for summary in items} & set(links_of(data))
    assert len(calls) == 1  # MJML compiled once for every reader


def test_a_draft_links_straight_to_its_items(tmp_path: Path, config: Config) -> None:
    """An issue not saved yet (the preview's next digest) has no number a click could be counted under."""
    from newsletter.message import Composer
    from newsletter.models import Subscriber

    config, issue, items = counted_items(tmp_path / "counted", per_subscriber=True)
    issue.id = None
    composer = Composer(config, issue, items)
    template = composer.template([])
    assert template is not None
    data = composer.compose(0, Subscriber(email="ada@example.org", name="Ada", token="t"), template).data
    assert not [link for link in links_of(data) if "/c/" in link]
    assert {summary.url for summary in items} <= set(links_of(data))
