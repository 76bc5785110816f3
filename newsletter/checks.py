"""Pre-send checks: what would make an email clipped, unreadable, undeliverable or illegal.

:func:`check_message` inspects one finished message (the bytes a backend would send) and returns
:class:`Finding` s, each naming its rule and where it is. :func:`check_issue` renders an issue the way
delivery does, builds the message for a sample recipient and checks it: ``newsletter digest check`` prints
its findings, ``digest send`` refuses to start on an error unless ``--force``, and the weekly job calls it
before sending.

Rules: ``html-size`` (Gmail clips an HTML part over 102 KB), ``img-alt``, ``line-length`` (998 octets,
RFC 5322), ``links`` (absolute, well-formed http(s) or mailto), ``unsubscribe`` (a link in both parts and
the ``List-Unsubscribe`` header), ``postal-address`` (in both parts), ``subject`` (present, under 100
characters), ``preheader`` (present and in the HTML), ``headers`` (the standard library's strict parser reads
exactly the headers we write, each once and without defects, one To with the subscriber's address, and the
Subject that was rendered), ``note`` (a warning: the editor's note is missing from a part, as it is with a
``digest.mjml.j2`` or ``digest.txt.j2`` of one's own written before notes existed).

The issue's checks run on the exact bytes the send loop would send (:class:`newsletter.message.Composer`,
through :func:`newsletter.issues.build_sample`) for a sample of real subscribers: the first on the list,
the one with the longest name and the one with the longest address.
"""

from __future__ import annotations

import email
import email.policy
import enum
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.errors import MessageError
from email.message import EmailMessage
from html.parser import HTMLParser
from urllib.parse import urlsplit

from sqlalchemy import Engine

from newsletter.config import Config
from newsletter.issues import IssueSample, build_sample, shown_issue
from newsletter.message import WRITTEN_HEADERS, single_line
from newsletter.note import render_note
from newsletter.render import MAX_SUBJECT_CHARS, RecipientValues, RenderedIssue
from newsletter.urls import http_url_problem

GMAIL_CLIP_BYTES = 102 * 1024  # Gmail shows "[Message clipped]" above this much HTML
SIZE_WARNING_BYTES = 90 * 1024
MAX_LINE_OCTETS = 998  # RFC 5322 2.1.1, without the CRLF


class Severity(enum.StrEnum):
    ERROR = "error"  # digest send refuses to start
    WARNING = "warning"  # worth a look; sending goes ahead


@dataclass(frozen=True)
class Finding:
    """One problem: ``rule`` (a name from the module docs), ``where`` it is, and what to do."""

    rule: str
    where: str
    message: str
    severity: Severity = Severity.ERROR

    def line(self) -> str:
        return f"{self.severity.value}: [{self.rule}] {self.where}: {self.message}"


def has_errors(findings: list[Finding]) -> bool:
    return any(finding.severity is Severity.ERROR for finding in findings)


# -- one message ------------------------------------------------------------------------------------------


def check_message(config: Config, rendered: RenderedIssue, message: bytes,
                  values: RecipientValues | None = None, extra_headers: Sequence[str] = ()) -> list[Finding]:
    """Every finding for ``message`` (the complete RFC 5322 bytes built from ``rendered``, for the reader
    ``values`` when given, with the backend's ``extra_headers``), errors first."""
    parsed: EmailMessage = email.message_from_bytes(message, policy=email.policy.default)  # type: ignore[assignment]
    html_part = _body(parsed, "html")
    text_part = _body(parsed, "plain")
    findings = [*_line_lengths(message), *_headers(message, rendered, values, extra_headers), *_subject(parsed),
                *_preheader(rendered, html_part)]
    if html_part is None:
        findings.append(Finding("html-size", "message", "there is no text/html part"))
    else:
        page = _Page.parse(html_part)
        findings += _size(html_part) + _images(page) + _links(page)
        findings += _unsubscribe_html(page, parsed) + _address("HTML part", page.visible_text, config)
    if text_part is None:
        findings.append(Finding("unsubscribe", "message", "there is no text/plain part"))
    else:
        findings += _unsubscribe_text(text_part, parsed) + _address("text part", text_part, config)
    return sorted(findings, key=lambda finding: finding.severity is not Severity.ERROR)


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    return part.get_content() if part is not None else None  # type: ignore[union-attr]


def _line_lengths(message: bytes) -> list[Finding]:
    return [
        Finding("line-length", f"encoded message line {number}", f"{len(line)} octets, over the limit of "
                f"{MAX_LINE_OCTETS}; servers may break or reject it, so encode the part (quoted-printable)")
        for number, line in enumerate(message.split(b"\r\n"), 1)
        if len(line) > MAX_LINE_OCTETS
    ]


_SINGLE = ("From", "To", "Subject", "Date", "Message-ID")


def _headers(message: bytes, rendered: RenderedIssue, values: RecipientValues | None,
             extra_headers: Sequence[str]) -> list[Finding]:
    """The message as ``email.policy.strict`` reads it: the builder's headers and the backend's only (anything
    else, a Bcc:, came from data that escaped), each once, without defects."""
    ours = {name.lower() for name in (*WRITTEN_HEADERS, *extra_headers)}
    try:
        parsed: EmailMessage = email.message_from_bytes(message, policy=email.policy.strict)  # type: ignore[assignment]
        found = [(key, parsed[key]) for key in parsed.keys()]
    except (MessageError, ValueError) as exc:
        return [Finding("headers", "message", f"the standard library's strict parser refuses it ({exc})")]
    findings = [Finding("headers", f"{key} header", "is not a header this newsletter writes: text from a "
                        "summary or a name has become mail structure; do not send")
                for key, _value in found if key.lower() not in ours]
    findings += [Finding("headers", f"{key} header", f"is malformed ({value.defects[0]})")
                 for key, value in found if value.defects]
    for name in _SINGLE:
        count = len(parsed.get_all(name) or [])
        if count != 1:
            findings.append(Finding("headers", f"{name} header", f"appears {count} times; a message needs exactly one"))
    to = parsed.get("To")
    if values is not None and to is not None and [a.addr_spec for a in to.addresses] != [values.email]:
        findings.append(Finding("headers", "To header", f"names {[a.addr_spec for a in to.addresses]} instead of "
                                f"only the subscriber's {values.email!r}"))
    subject = parsed.get("Subject")
    if subject is not None and str(subject) != single_line(rendered.subject):
        findings.append(Finding("headers", "Subject header", f"reads {str(subject)[:60]!r}, not the rendered "
                                f"subject {single_line(rendered.subject)[:60]!r}"))
    return findings


def _subject(message: EmailMessage) -> list[Finding]:
    subject = " ".join(str(message.get("Subject", "")).split())
    if not subject:
        return [Finding("subject", "Subject header", "the subject is empty; write one in subject.txt.j2")]
    if len(subject) >= MAX_SUBJECT_CHARS:
        return [Finding("subject", "Subject header", f"{len(subject)} characters ({subject[:40]!r}…); keep it "
                        f"under {MAX_SUBJECT_CHARS}, mail clients cut long subjects (edit subject.txt.j2)")]
    return []


def _preheader(rendered: RenderedIssue, html_part: str | None) -> list[Finding]:
    if not rendered.preheader.strip():
        return [Finding("preheader", "preheader", "the preheader is empty; inboxes show the start of the "
                        "body instead (include partials/preheader.mjml.j2 first in <mj-body>)")]
    if html_part is not None and html.escape(rendered.preheader, quote=False) not in html_part.replace("&#39;", "'"):
        return [Finding("preheader", "HTML part", "the preheader is not in the HTML; include "
                        "partials/preheader.mjml.j2 first in the template's <mj-body>")]
    return []


def _size(html_part: str) -> list[Finding]:
    size = len(html_part.encode("utf-8"))
    kb = f"{size / 1024:.1f} KB"
    if size > GMAIL_CLIP_BYTES:
        return [Finding("html-size", "HTML part", f"{kb}, over Gmail's 102 KB limit, so Gmail clips it and "
                        "hides the footer; fewer items or shorter summaries")]
    if size > SIZE_WARNING_BYTES:
        return [Finding("html-size", "HTML part", f"{kb}, close to Gmail's 102 KB limit", Severity.WARNING)]
    return []


def _images(page: _Page) -> list[Finding]:
    return [
        Finding("img-alt", f"HTML line {line}: <img src={src[:80]!r}>", "no alt text; screen readers and "
                "clients that block images show nothing (set the summary's image_alt)")
        for line, src, alt in page.images
        if not (alt or "").strip()
    ]


def _links(page: _Page) -> list[Finding]:
    return [
        Finding("links", f"HTML line {line}: link {text[:40]!r}", f"{href[:100]!r} {problem}")
        for line, href, text in page.links
        if (problem := link_problem(href))
    ]


def link_problem(href: str) -> str | None:
    """Why ``href`` is not a usable link in an email, or None: a ``mailto:`` with an address, or what
    :func:`~newsletter.urls.http_url_problem` accepts for a public page (the rule summaries' links are
    checked by at ingest, so a link that went in passes here)."""
    if href.lower().startswith("mailto:"):
        address = urlsplit(href).path
        return None if re.fullmatch(r"[^@\s<>\"]+@[^@\s<>\"]+", address) else "is a mailto: without an address"
    return http_url_problem(href, example="https://example.org/page", public=True)


def _unsubscribe_html(page: _Page, message: EmailMessage) -> list[Finding]:
    findings = []
    header = str(message.get("List-Unsubscribe", ""))
    urls = re.findall(r"<(https?://[^>]+)>", header)
    if not urls:
        findings.append(Finding("unsubscribe", "List-Unsubscribe header", "missing or without an http(s) link"))
    elif not any(href == urls[0] for _line, href, _text in page.links):
        findings.append(Finding("unsubscribe", "HTML part", "no visible unsubscribe link; keep "
                                "{{ recipient.unsubscribe_url }} in the footer"))
    return findings


def _unsubscribe_text(text: str, message: EmailMessage) -> list[Finding]:
    urls = re.findall(r"<(https?://[^>]+)>", str(message.get("List-Unsubscribe", "")))
    if urls and urls[0] not in text:
        return [Finding("unsubscribe", "text part", "no unsubscribe link; keep {{ recipient.unsubscribe_url }} "
                        "in digest.txt.j2")]
    return []


def _address(where: str, text: str, config: Config) -> list[Finding]:
    address = " ".join(config.newsletter.postal_address.split())
    if address not in " ".join(text.split()):
        return [Finding("postal-address", where, "the postal address is missing (anti-spam law requires it); keep "
                        "{{ newsletter.postal_address }} in the footer")]
    return []


class _Page(HTMLParser):
    """What the checks need from an HTML part: links, images and the text a reader sees."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[int, str, str]] = []  # (line, href, link text)
        self.images: list[tuple[int, str, str | None]] = []  # (line, src, alt)
        self._open_link: list[object] | None = None
        self._hidden_depth = 0  # inside <head>, <style>, <script> or <title>
        self._text: list[str] = []

    @classmethod
    def parse(cls, document: str) -> _Page:
        page = cls()
        page.feed(document)
        page.close()
        return page

    @property
    def visible_text(self) -> str:
        return " ".join(self._text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        line = self.getpos()[0]
        if tag in ("head", "style", "script", "title"):
            self._hidden_depth += 1
        elif tag == "a" and "href" in values:
            self._open_link = [line, (values["href"] or "").strip(), ""]
        elif tag == "img":
            self.images.append((line, values.get("src") or "", values.get("alt")))
            if self._open_link is not None:
                self._open_link[2] = f"{self._open_link[2]} {values.get('alt') or ''}"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("head", "style", "script", "title"):
            self._hidden_depth = max(0, self._hidden_depth - 1)
        elif tag == "a" and self._open_link is not None:
            line, href, text = self._open_link
            self.links.append((int(line), str(href), " ".join(str(text).split())))  # type: ignore[call-overload]
            self._open_link = None

    def handle_data(self, data: str) -> None:
        if self._hidden_depth:
            return
        self._text.append(data)
        if self._open_link is not None:
            self._open_link[2] = f"{self._open_link[2]}{data}"


# -- an issue ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckReport:
    description: str
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not has_errors(self.findings)


def check_sample(config: Config, sample: IssueSample) -> list[Finding]:
    """The findings for every sample message, each once, errors first; a finding that depends on the reader
    (headers, line lengths) names the reader's address. A sample reader no message can be built for is a
    warning: the send fails that message alone."""
    seen: dict[str, Finding] = {}
    for message in sample.messages:
        for finding in check_message(config, message.rendered, message.data, message.values, sample.extra_headers):
            if finding.rule in ("headers", "line-length") and len(sample.messages) > 1:
                finding = Finding(finding.rule, f"message to {message.values.email}: {finding.where}",
                                  finding.message, finding.severity)
            seen.setdefault(finding.line(), finding)
    unbuildable = [Finding("headers", f"subscriber {address!r}", f"{why}; the send fails this message alone",
                           Severity.WARNING) for address, why in sample.unbuildable]
    findings = [*seen.values(), *unbuildable, *_note_shown(sample)]
    return sorted(findings, key=lambda finding: finding.severity is not Severity.ERROR)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _note_shown(sample: IssueSample) -> list[Finding]:
    """A warning for each part that does not show the issue's editor's note."""
    note = render_note(sample.issue.note)
    if note is None or not sample.messages:
        return []
    parsed: EmailMessage = email.message_from_bytes(sample.message, policy=email.policy.default)  # type: ignore[assignment]
    html_part, text_part = _body(parsed, "html"), _body(parsed, "plain")
    missing = []
    shown = _flat(_Page.parse(note.html).visible_text)
    if html_part is not None and shown not in _flat(_Page.parse(html_part).visible_text):
        missing.append(("HTML part", "digest.mjml.j2 (include \"partials/note.mjml.j2\" after the header)"))
    if text_part is not None and _flat(note.text) not in _flat(text_part):
        missing.append(("text part", "digest.txt.j2 ({{ note.text }} where it should show)"))
    return [Finding("note", where, f"the editor's note is not shown; add it to your {template}", Severity.WARNING)
            for where, template in missing]


def check_issue(engine: Engine, config: Config, number: int | None = None, *, now: datetime | None = None
                ) -> CheckReport:
    """Render issue ``number`` (default: what :func:`newsletter.issues.shown_issue` shows: the draft of the
    next issue when summaries are waiting, else the newest) as it would be sent and check the messages of
    the sample readers.

    What ``digest check`` prints and what ``digest send`` and the weekly job run first. Raises TemplateError
    when the templates do not render and NewsletterError when there is no such issue.
    """
    sample = build_sample(config, *shown_issue(engine, config, number, now=now))
    return CheckReport(sample.description, check_sample(config, sample))
