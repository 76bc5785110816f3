"""The render stage: an issue's summaries through Jinja2 templates into a subject, HTML and a text part.

MJML is compiled once per issue. Per-subscriber values never reach the template engine: the context's
``recipient`` holds unique placeholder markers, and :meth:`RenderedIssue.personalise` substitutes the real
values into the compiled output (HTML-escaped into the HTML, verbatim into the text). With click counting
(``tracking.clicks``) each item's ``url`` is such a placeholder too (:class:`ItemLink`): where it leads (a
counted ``/c/`` link, the same for everyone or one per subscriber, or the item's own URL in the archive's
copy) is decided after the compile.

Templates are looked up in the user's templates folder first, then in the packaged defaults, so a user
file overrides the default of the same name. ``*.txt.j2`` templates are not autoescaped; every other
template (``*.mjml.j2``, ``*.html.j2``) is.

Any problem with a template (syntax, undefined variable, missing file, MJML that does not compile, a
digest part without the unsubscribe link or the postal address) raises
:class:`~newsletter.errors.TemplateError` naming the file, the line and what to do.
"""

from __future__ import annotations

import html
import logging
import re
import secrets
import textwrap
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)
from mjml import mjml2html

from newsletter.config import Config
from newsletter.dates import format_day, format_span
from newsletter.errors import TemplateError
from newsletter.models import Issue, Summary
from newsletter.note import render_note
from newsletter.resources import packaged_templates_dir
from newsletter.template_trace import TracingEnvironment, origin_of, traced_render

log = logging.getLogger(__name__)

SUBJECT_TEMPLATE = "subject.txt.j2"
DIGEST_MJML_TEMPLATE = "digest.mjml.j2"
DIGEST_TEXT_TEMPLATE = "digest.txt.j2"

DEFAULT_SECTION = "More research"  # the section for summaries without a category
MAX_SUBJECT_CHARS = 100  # the pre-send check's limit: a subject must be shorter than this
SUBJECT_LIMIT = MAX_SUBJECT_CHARS - 1  # the longest subject that passes
MIN_SUBJECT_TITLE = 15  # below this much room for the title, fit_subject drops the tail rather than the title
MAX_KEY_POINTS = 5
PREHEADER_LIMIT = 150
TEXT_WIDTH = 72

_LEGAL = "anti-spam law requires an unsubscribe link and the postal address in every email"
_HIDDEN = re.compile(r"<!--.*?-->|<head\b.*?</head>", re.DOTALL | re.IGNORECASE)  # nothing a reader sees
_MJML_DOCS = "https://documentation.mjml.io"
_JINJA_DOCS = "https://jinja.palletsprojects.com/en/stable/templates/"


@dataclass(frozen=True)
class RecipientValues:
    """One subscriber's values for personalisation; ``name`` is "" when unknown. ``links``: where each of
    the render's item links (:attr:`RenderedIssue.links`, in order) leads for this reader; empty: to the
    items' own URLs."""

    email: str
    name: str
    unsubscribe_url: str
    preferences_url: str
    links: tuple[str, ...] = ()


@dataclass(frozen=True)
class ItemLink:
    """An item's link in a render with click counting: the placeholder in its place, the item (its summary's
    id; None for a summary not saved), and the item's own URL."""

    marker: str
    item_id: int | None
    url: str


@dataclass(frozen=True)
class RenderedIssue:
    """An issue compiled once: ``html`` and ``text`` still hold the ``markers`` for per-subscriber values,
    and with click counting the placeholders of the item ``links``."""

    subject: str
    preheader: str
    html: str
    text: str
    markers: RecipientValues
    links: tuple[ItemLink, ...] = ()

    def personalise(self, values: RecipientValues) -> tuple[str, str]:
        """(html, text) for one subscriber: values HTML-escaped (quotes too) into the HTML, raw into the text."""
        html_part, text_part = self.html, self.text
        for marker, value in [*_pairs(self.markers, values), *self.link_pairs(values.links)]:
            html_part = html_part.replace(marker, html.escape(value, quote=True))
            text_part = text_part.replace(marker, value)
        return html_part, text_part

    def link_pairs(self, urls: Sequence[str] = ()) -> list[tuple[str, str]]:
        """(placeholder, where it leads) for each item link: ``urls`` in order, or the items' own URLs."""
        if not urls:
            return [(link.marker, link.url) for link in self.links]
        if len(urls) != len(self.links):
            raise ValueError(f"{len(urls)} link URLs for {len(self.links)} item links")
        return [(link.marker, url) for link, url in zip(self.links, urls, strict=True)]

    def with_links(self, urls: Sequence[str]) -> RenderedIssue:
        """This render with every item link leading to ``urls`` (one per link, in order) for every reader."""
        html_part, text_part = self.html, self.text
        for marker, url in self.link_pairs(urls):
            html_part = html_part.replace(marker, html.escape(url, quote=True))
            text_part = text_part.replace(marker, url)
        return replace(self, html=html_part, text=text_part, links=())


def _pairs(markers: RecipientValues, values: RecipientValues) -> list[tuple[str, str]]:
    return [
        (markers.email, values.email),
        (markers.name, values.name or ""),
        (markers.unsubscribe_url, values.unsubscribe_url),
        (markers.preferences_url, values.preferences_url),
    ]


def new_markers() -> RecipientValues:
    """Placeholders unique to one render: letters and digits only, so HTML escaping and MJML keep them."""
    nonce = secrets.token_hex(8).upper()
    return RecipientValues(
        email=f"NLP{nonce}EMAILX",
        name=f"NLP{nonce}NAMEX",
        unsubscribe_url=f"NLP{nonce}UNSUBSCRIBEURLX",
        preferences_url=f"NLP{nonce}PREFERENCESURLX",
    )


# -- the template context ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewsletterInfo:
    name: str
    postal_address: str
    site_url: str


@dataclass(frozen=True)
class TrackingInfo:
    """What is counted (``tracking`` in templates), so that the footer can say so."""

    clicks: bool  # item links are counted, without knowing who clicked unless per_subscriber
    per_subscriber: bool  # who clicked which link is recorded
    notice: str  # one sentence saying so: :func:`tracking_notice`


def tracking_notice(clicks: bool, per_subscriber: bool) -> str:
    """What the footer of every digest and the subscribe page say is tracked (never opens: there is no pixel)."""
    if clicks and per_subscriber:
        return ("We record which articles linked in our emails you click, with your subscription (ask us for a "
                "copy or to erase it), and never whether you open them.")
    if clicks:
        return ("We count how often each article linked in our emails is clicked, not who clicked, and never "
                "whether you open them.")
    return "We do not track whether you open our emails or which links you click."


@dataclass(frozen=True)
class IssueInfo:
    """``period_start``..``period_end``: the days of the span the issue covers (since the previous issue was
    prepared), in the configured timezone; ``period_end`` is the last day included."""

    number: int
    period_start: date
    period_end: date
    date_range: str
    archive_url: str  # this issue on the website: the "view in browser" link, the same for everyone


@dataclass(frozen=True)
class Item:
    """One summary as templates see it; ``ref`` is its link's number in the text part (None: no link)."""

    title: str
    url: str | None
    source: str | None
    category: str
    published: date | None
    published_label: str
    summary: str
    body: str | None
    key_points: tuple[str, ...]
    tags: tuple[str, ...]
    image_url: str | None
    image_alt: str
    subtitle: str | None = None
    article_type: str | None = None  # "Research Paper", "Review", ...
    paywalled: bool = False  # the source needs a subscription to read in full
    ref: int | None = None
    id: int | None = None  # the summary's row id (None for one not saved)
    lead: bool = False  # the editor's lead item: shown first, named by the default subject

    @property
    def meta(self) -> list[str]:
        """The item's source line, in order and without the missing parts: type, source, date, "Paywalled"."""
        parts = (self.article_type, self.source, self.published_label, "Paywalled" if self.paywalled else None)
        return [part for part in parts if part]


@dataclass(frozen=True)
class Section:
    title: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class LinkRef:
    number: int
    url: str


def issue_context(config: Config, issue: Issue, items: Sequence[Summary], recipient: RecipientValues,
                  placeholders: Sequence[ItemLink | None] = ()) -> dict[str, Any]:
    """The variables every digest template sees (documented in the README's template section).

    ``items`` are shown in :func:`display_order`; ``sections`` are its runs of items of one category, so
    by default each category once, in order of first appearance, uncategorised summaries last under
    :data:`DEFAULT_SECTION`. ``note`` is the editor's note (None without one). ``placeholders`` (from
    :func:`item_links` over ``items`` in display order, one each): each item's ``url`` is its link's
    placeholder.
    """
    lead = issue.lead_id
    ordered = [replace(_item(summary, config), lead=lead is not None and summary.id == lead)
               for summary in display_order(items, issue.item_order, lead)]
    if placeholders:
        ordered = [replace(item, url=link.marker) if link else item
                   for item, link in zip(ordered, placeholders, strict=True)]
    sections = _number_links(_sections(ordered))
    flat = [item for section in sections for item in section.items]
    links = list({item.url: LinkRef(item.ref, item.url) for item in flat if item.url and item.ref}.values())
    start, end = span_days(config, issue)
    return {
        "newsletter": NewsletterInfo(
            config.newsletter.name, config.newsletter.postal_address, config.newsletter.site_url
        ),
        "issue": IssueInfo(
            issue.number, start, end, format_span(start, end, config.newsletter.locale),
            f"{config.newsletter.site_url}/archive/{issue.number}",
        ),
        "sections": sections,
        "items": flat,
        "item_count": len(flat),
        "links": links,
        "recipient": recipient,
        "preheader": make_preheader(flat),
        "note": render_note(issue.note, TEXT_WIDTH),
        "tracking": TrackingInfo(config.tracking.clicks, config.tracking.per_subscriber,
                                 tracking_notice(config.tracking.clicks, config.tracking.per_subscriber)),
    }


def section_title(summary: Summary) -> str:
    """The section a summary is shown under: its category, whitespace collapsed, or :data:`DEFAULT_SECTION`."""
    return " ".join((summary.category or "").split()) or DEFAULT_SECTION


def section_key(summary: Summary) -> str:
    """The section a summary is shown under, compared case-insensitively."""
    return section_title(summary).casefold()


def display_order(summaries: Sequence[Summary], order: Sequence[int] = (), lead: int | None = None) -> list[Summary]:
    """``summaries`` in the order the digest shows them, for an issue's ``item_order`` and ``lead_id``.

    By default grouped by category in order of first appearance, uncategorised ones last. Once an editor
    chose (:mod:`newsletter.issues.editorial`): the ``lead`` item first, then those in ``order`` in that
    order, then any not placed yet (arrived after the choice) in the default order.
    """
    groups: dict[str, list[Summary]] = {}
    for summary in summaries:
        groups.setdefault(section_key(summary), []).append(summary)
    keys = sorted(groups, key=lambda key: key == DEFAULT_SECTION.casefold())  # stable: keeps first appearance
    default = [summary for key in keys for summary in groups[key]]
    if not order and lead is None:
        return default
    rank = {summary_id: n for n, summary_id in enumerate(order)}
    placed = sorted((s for s in default if s.id in rank), key=lambda s: rank[s.id or 0])
    ordered = placed + [s for s in default if s.id not in rank]
    return ordered if lead is None else sorted(ordered, key=lambda s: s.id != lead)  # stable: the lead first


def item_links(config: Config, items: Sequence[Summary]) -> tuple[ItemLink | None, ...]:
    """With ``tracking.clicks``, a fresh placeholder for the link of each of ``items`` (None: it has no link),
    letters and digits only like the recipient's markers; without it, nothing."""
    if not config.tracking.clicks:
        return ()
    nonce = secrets.token_hex(8).upper()
    return tuple(
        ItemLink(f"NLP{nonce}LINK{n}X", summary.id, url) if (url := item_url(summary)) else None
        for n, summary in enumerate(items)
    )


def span_days(config: Config, issue: Issue) -> tuple[date, date]:
    """The first and the last day of the span ``issue`` covers, in the configured timezone (the stored end
    is exclusive: an issue prepared at midnight ends the day before)."""
    start = _local(issue.period_start, config).date()
    end = (_local(issue.period_end, config) - timedelta(microseconds=1)).date()
    return start, max(start, end)


def span_label(config: Config, issue: Issue) -> str:
    """``16–22 November 2026``: the days ``issue`` covers, as templates show them (``issue.date_range``)."""
    return format_span(*span_days(config, issue), config.newsletter.locale)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime; a naive value is taken as UTC (SQLite drops the offset)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _local(moment: datetime, config: Config) -> datetime:
    """``moment`` in the configured zone."""
    return as_utc(moment).astimezone(config.schedule.zone)


def _published_day(moment: datetime, config: Config) -> date:
    """The day to show for ``moment``: midnight UTC is a bare date as ingested, so it is shown as is;
    any other time is converted to the configured zone."""
    moment = as_utc(moment)
    if moment.time() == time(0):
        return moment.date()  # converting would show the day before west of UTC
    return moment.astimezone(config.schedule.zone).date()


def _item(summary: Summary, config: Config) -> Item:
    published = _published_day(summary.published_at, config) if summary.published_at else None
    image_url = _web_url(summary.image_url)
    return Item(
        title=" ".join(summary.title.split()),
        url=_web_url(summary.url),
        source=(summary.source or "").strip() or None,
        category=section_title(summary),
        published=published,
        published_label=format_day(published, config.newsletter.locale) if published else "",
        summary=summary.summary.strip(),
        body=summary.body,
        key_points=tuple(p.strip() for p in summary.key_points if p and p.strip())[:MAX_KEY_POINTS],
        tags=tuple(summary.tags),
        image_url=image_url,
        image_alt=" ".join((summary.image_alt or summary.title).split()) if image_url else "",
        subtitle=" ".join((summary.subtitle or "").split()) or None,
        article_type=" ".join((summary.article_type or "").split()) or None,
        paywalled=bool(summary.paywalled),
        id=summary.id,
    )


def item_url(summary: Summary) -> str | None:
    """The URL an item of ``summary`` links to (an http(s) URL), or None: what a click link may lead to."""
    return _web_url(summary.url, warn=False)


def _web_url(url: str | None, *, warn: bool = True) -> str | None:
    """``url`` if it is an http(s) link; anything else (``javascript:``, blanks) is dropped."""
    url = (url or "").strip()
    if re.match(r"^https?://[^\s]+$", url, re.IGNORECASE):
        return url
    if url and warn:
        log.warning("ignoring a link that is not http(s): %.80r", url)
    return None


def _sections(items: list[Item]) -> list[Section]:
    """Each run of items of one category (case-insensitively; the first spelling names it) as a section."""
    titles: dict[str, str] = {}
    runs: list[tuple[str, list[Item]]] = []
    for item in items:
        key = item.category.casefold()
        titles.setdefault(key, item.category)
        if runs and runs[-1][0] == key:
            runs[-1][1].append(item)
        else:
            runs.append((key, [item]))
    return [Section(titles[key], tuple(run)) for key, run in runs]


def _number_links(sections: list[Section]) -> list[Section]:
    """Give every distinct link a number, in display order (the same URL keeps its number)."""
    numbers: dict[str, int] = {}
    numbered = []
    for section in sections:
        items = []
        for item in section.items:
            if item.url:
                numbers.setdefault(item.url, len(numbers) + 1)
                item = replace(item, ref=numbers[item.url])
            items.append(item)
        numbered.append(Section(section.title, tuple(items)))
    return numbered


def make_preheader(items: Sequence[Item], limit: int = PREHEADER_LIMIT) -> str:
    """The first titles joined by `` · ``, at most ``limit`` characters, cut at a word with an ellipsis."""
    text = ""
    for item in items:
        candidate = f"{text} · {item.title}" if text else item.title
        if len(candidate) > limit:
            if not text:
                text = candidate[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:·") + "…"
            break
        text = candidate
    return text


# -- the Jinja environment --------------------------------------------------------------------------------


def template_dirs(config: Config) -> list[Path]:
    """Where templates are looked up, first match wins: the user's folder (if it exists), then the defaults."""
    dirs = [config.templates_dir] if config.templates_dir.is_dir() else []
    packaged = packaged_templates_dir()
    if packaged.resolve() not in {d.resolve() for d in dirs}:
        dirs.append(packaged)
    return dirs


def template_environment(config: Config) -> Environment:
    """A Jinja2 environment over :func:`template_dirs`: strict undefined, autoescape except ``*.txt.j2``."""
    return _environment(ChoiceLoader([FileSystemLoader(str(d)) for d in template_dirs(config)]))


def _environment(loader: Any, kind: type[Environment] = Environment) -> Environment:
    env = kind(
        loader=loader,
        undefined=StrictUndefined,
        autoescape=_autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["wrap"] = wrap_text
    env.filters["paragraphs"] = paragraphs
    env.filters["shorten"] = shorten
    env.globals["fit_subject"] = fit_subject
    env.globals["subject_limit"] = SUBJECT_LIMIT
    return env


def _autoescape(template_name: str | None) -> bool:
    """Escape everything but plain-text templates: a forgotten extension errs on the safe side."""
    return not (template_name or "").lower().endswith((".txt.j2", ".txt"))


def wrap_text(text: str, width: int = TEXT_WIDTH, indent: str = "", subsequent_indent: str | None = None) -> str:
    """The ``wrap`` filter: each paragraph (blank-line separated) filled to ``width``; long URLs stay whole."""
    paragraphs_ = [" ".join(p.split()) for p in re.split(r"\n\s*\n", str(text))]
    later = indent if subsequent_indent is None else subsequent_indent
    return "\n\n".join(
        textwrap.fill(
            p, width, initial_indent=indent, subsequent_indent=later,
            break_long_words=False, break_on_hyphens=False,
        )
        for p in paragraphs_
        if p
    )  # fmt: skip


def shorten(text: str, width: int) -> str:
    """The ``shorten`` filter: ``text`` on one line in at most ``width`` characters, cut at a word with "…".

    A text without a space early enough (one very long word) is cut inside the word; ``width`` below 1 gives "".
    """
    flat = " ".join(str(text).split())
    if len(flat) <= width:
        return flat
    if width < 1:
        return ""
    cut = flat[: width - 1]
    if flat[width - 1] != " " and " " in cut:  # the cut falls inside a word: drop that word
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:·–—-") + "…"


def fit_subject(head: str, title: str, tail: str = "", limit: int = SUBJECT_LIMIT) -> str:
    """``head + title + tail`` in at most ``limit`` characters, for ``subject.txt.j2``.

    The title is shortened at a word (:func:`shorten`) to leave room for ``head`` (the newsletter's name and
    number) and ``tail`` (" and 3 more"). If that would leave the title under ``MIN_SUBJECT_TITLE`` characters
    (a long newsletter name), the tail is dropped; if even ``head`` leaves no room, the whole line is shortened.
    """
    head, tail = re.sub(r"\s+", " ", str(head)).lstrip(), re.sub(r"\s+", " ", str(tail)).rstrip()
    title = " ".join(str(title).split())
    if len(head) + len(title) + len(tail) <= limit:
        return head + title + tail
    if limit - len(head) - len(tail) < MIN_SUBJECT_TITLE:
        tail = ""
    room = limit - len(head) - len(tail)
    if room < min(MIN_SUBJECT_TITLE, len(title)):
        return shorten(head + title, limit)
    return head + shorten(title, room) + tail


def paragraphs(text: str) -> list[str]:
    """The ``paragraphs`` filter: ``text`` split at blank lines, whitespace inside each collapsed."""
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", str(text)) if p.strip()]


# -- rendering --------------------------------------------------------------------------------------------


def render_subject(config: Config, issue: Issue, items: Sequence[Summary]) -> str:
    """The subject line of ``issue`` with ``items``: the editor's (``issue.subject_override``) or
    ``subject.txt.j2``'s (no MJML is compiled).

    Whitespace, line breaks included, is collapsed to single spaces. Raises TemplateError, also for an
    empty subject.
    """
    return _subject(template_environment(config), issue_context(config, issue, items, new_markers()), issue)


def render_issue(config: Config, issue: Issue, items: Sequence[Summary]) -> RenderedIssue:
    """Render ``issue`` with ``items`` once (in :func:`display_order`); personalise per subscriber after.

    The subject is :func:`render_subject`'s. Raises TemplateError, also when the HTML or the text part lacks the
    unsubscribe link (``recipient.unsubscribe_url``) or ``newsletter.postal_address``.
    """
    env = template_environment(config)
    markers = new_markers()
    links = item_links(config, display_order(items, issue.item_order, issue.lead_id))
    context = issue_context(config, issue, items, markers, links)
    context["subject"] = subject = _subject(env, context, issue)
    html_part = render_mjml(env, DIGEST_MJML_TEMPLATE, context)
    text_part = tidy_text(render_template(env, DIGEST_TEXT_TEMPLATE, context))
    address = config.newsletter.postal_address
    _require_legal_footer(describe_template(env, DIGEST_MJML_TEMPLATE), html_part, markers, address, is_html=True)
    _require_legal_footer(describe_template(env, DIGEST_TEXT_TEMPLATE), text_part, markers, address, is_html=False)
    log.info("rendered issue %s: %d items, %d bytes of HTML", issue.number, len(context["items"]), len(html_part))
    return RenderedIssue(subject, context["preheader"], html_part, text_part, markers,
                         tuple(link for link in links if link))


def _subject(env: Environment, context: Mapping[str, Any], issue: Issue | None = None) -> str:
    """The editor's subject for ``issue`` if there is one, else ``subject.txt.j2`` on one line; the
    template sees no ``recipient`` (a subject is the same for everyone)."""
    if issue is not None and issue.subject_override and issue.subject_override.strip():
        return " ".join(issue.subject_override.split())
    subject_context = {key: value for key, value in context.items() if key != "recipient"}
    subject = " ".join(render_template(env, SUBJECT_TEMPLATE, subject_context).split())
    if not subject:
        raise TemplateError(f"{describe_template(env, SUBJECT_TEMPLATE)}: renders an empty subject; write one line")
    return subject


def _require_legal_footer(name: str, content: str, markers: RecipientValues, address: str, *, is_html: bool) -> None:
    """Raise TemplateError unless ``content`` shows the unsubscribe link and the postal address.

    In the HTML part, comments and the ``<head>`` do not count and the link must be an ``href``; the
    address is compared unescaped and with whitespace collapsed (the text part wraps a long address).
    """
    if is_html:
        content = _HIDDEN.sub(" ", content)
        has_link = re.search(rf"href=[\"']{markers.unsubscribe_url}[\"']", content) is not None
        content = html.unescape(content)
    else:
        has_link = markers.unsubscribe_url in content
    missing = []
    if not has_link:
        missing.append("the unsubscribe link {{ recipient.unsubscribe_url }}")
    if " ".join(address.split()) not in " ".join(content.split()):
        missing.append("the postal address {{ newsletter.postal_address }}")
    if missing:
        raise TemplateError(f"{name}: lacks {' and '.join(missing)}; {_LEGAL}, so add it to this template")


def tidy_text(text: str) -> str:
    """Trailing spaces removed, at most two blank lines in a row, exactly one final newline."""
    lines = [line.rstrip() for line in text.splitlines()]
    return re.sub(r"\n{4,}", "\n\n\n", "\n".join(lines)).strip("\n") + "\n"


def render_template(env: Environment, name: str, context: Mapping[str, Any]) -> str:
    """Render template ``name``; any failure becomes a TemplateError naming the file and line."""
    try:
        return env.get_template(name).render(context)
    except Exception as exc:  # template code is user-editable: any failure is theirs to fix
        raise _template_error(exc, env, name, context) from exc


def render_mjml(env: Environment, name: str, context: Mapping[str, Any]) -> str:
    """Template ``name`` rendered with ``context`` and compiled to HTML (:func:`compile_mjml`).

    When the MJML does not compile, the error names the file that wrote the line at fault (the partial
    included, not the template that included it) and its line: the output is rendered again with every
    piece tagged with its file and line (:mod:`newsletter.template_trace`). Raises TemplateError.
    """
    source = render_template(env, name, context)
    try:
        return compile_mjml(source, describe_template(env, name))
    except MjmlError as exc:
        if exc.offset is None:
            raise
        located = _locate(env, name, context, source, exc.offset)
        if located is None:
            raise
        file, line = located
        raise TemplateError(f"{file}:{line}: {exc.problem}: {_source_line(file, line)!r}; {exc.advice}",
                            file=file, line=line) from exc


class MjmlError(TemplateError):
    """MJML that does not compile; ``offset`` is where in the rendered source the fault is (None: unknown)."""

    def __init__(self, name: str, problem: str, advice: str, source: str, offset: int | None) -> None:
        near = _near(source, offset)
        super().__init__(f"{name}: {problem}{near}; {advice}")
        self.problem, self.advice, self.offset = problem, advice, offset


def compile_mjml(source: str, name: str) -> str:
    """Rendered MJML to HTML with mjml-python, ``<mj-style inline="inline">`` CSS then inlined.

    mjml-python leaves inline styles as a ``<style>`` block, which Gmail (in some views) and Outlook ignore,
    so they are moved onto the elements here, as the official MJML does; a style already on an element
    wins. ``fonts={}``: no web font is fetched from Google (privacy, speed). ``name`` is the template the
    source came from, for the error message. Raises TemplateError (MjmlError, with where the fault is in
    ``source`` when it can be found, for a source that does not compile).
    """
    try:
        compiled = mjml2html(source, fonts={})  # the module global is looked up per call: tests count calls
    except Exception as exc:
        offset, what = mjml_fault(source, str(exc))
        raise MjmlError(
            name, f"the rendered MJML does not compile ({exc}{f': {what}' if what else ''})",
            f"check that every <mj-...> element is closed and nested as {_MJML_DOCS} describes", source, offset,
        ) from exc
    unknown = re.search(r"<(mj-[a-z0-9-]+)", compiled)
    if unknown:
        raise MjmlError(
            name, f"<{unknown.group(1)}> is not an MJML element, so it reached the HTML unchanged",
            f"fix its name or use <mj-raw> (see {_MJML_DOCS})", source, _find(source, f"<{unknown.group(1)}"),
        )
    return _inline_styles(source, compiled, name)


def _find(source: str, text: str) -> int | None:
    found = source.find(text)
    return found if found >= 0 else None


# What mjml-python's parser cannot take, found where it does not say (it names a position for some errors,
# not for an element left open or a malformed tag): a tag balance over the rendered source.
_TAG = re.compile(r"""<(/?)([A-Za-z][\w:.-]*)((?:\s+[^\s=/<>"']+(?:\s*=\s*(?:"[^"]*"|'[^']*'))?)*)\s*(/?)>""")
_VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source", "track",
                   "embed", "param"})
_RAW = frozenset({"mj-style", "mj-title", "mj-preview", "style", "script"})  # content is text, not tags


def mjml_fault(source: str, message: str) -> tuple[int | None, str]:
    """(offset in ``source``, what is wrong there) for mjml-python's error ``message``: the first tag that
    is left open, closes nothing or is malformed, unless the position the message names (if any) comes
    first; (None, "") when neither is known.

    The parser names the place where it gave up, which for an element left open is the next one (an
    ``<mj-divider>`` without its ``/`` is reported at the element after it): the tag balance finds the
    element itself."""
    position = re.search(r"at position (\d+)", message)
    named = len(source.encode()[: int(position.group(1))].decode(errors="ignore")) if position else None
    offset, what = _unbalanced(source)
    if offset is not None and (named is None or offset <= named):
        return offset, what
    return named, ""


def _unbalanced(source: str) -> tuple[int | None, str]:
    """The first tag of ``source`` that is malformed, closes nothing, or is left open; (None, "") if none."""
    stack: list[tuple[str, int]] = []
    at = source.find("<")
    while at >= 0:
        if source.startswith("<!--", at):
            end = source.find("-->", at)
            if end < 0:
                return at, "this comment is never closed"
            at = source.find("<", end)
            continue
        tag = _TAG.match(source, at)
        if tag is None:
            return at, "this '<' starts no well-formed tag (quote attribute values; write &lt; for a '<' in text)"
        closing, name, _attributes, empty = tag.groups()
        name = name.lower()
        following = tag.end()
        if closing:
            if stack and stack[-1][0] == name:
                stack.pop()
            elif any(open_name == name for open_name, _ in stack):
                return stack[-1][1], f"<{stack[-1][0]}> is not closed before </{name}>"
            else:
                return at, f"</{name}> closes no open element"
        elif name in _RAW and not empty:
            closed = re.compile(rf"</{re.escape(name)}\s*>", re.IGNORECASE).search(source, following)
            if closed is None:
                return at, f"<{name}> is never closed"
            following = closed.end()
        elif not empty and name not in _VOID:
            stack.append((name, at))
        at = source.find("<", following)
    if stack:
        return stack[-1][1], f"<{stack[-1][0]}> is never closed"
    return None, ""


def _locate(
    env: Environment, name: str, context: Mapping[str, Any], source: str, offset: int
) -> tuple[str, int] | None:
    """(file, line) of the template that wrote character ``offset`` of ``source`` (``name`` rendered with
    ``context``), or None when the traced render differs from ``source``."""
    tracing = _environment(env.loader, TracingEnvironment)
    assert isinstance(tracing, TracingEnvironment)
    try:
        pieces = traced_render(tracing, name, context)
    except Exception:  # the render just worked; a diagnosis must never hide the error it explains
        log.debug("tracing %s failed", name, exc_info=True)
        return None
    if "".join(pieces) != source:
        return None
    return origin_of(pieces, offset)


def _source_line(file: str, line: int) -> str:
    """Line ``line`` of ``file``, stripped and shortened, for an error message ("" when unreadable)."""
    try:
        text = Path(file).read_text(encoding="utf-8").splitlines()[line - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return ""
    return shorten(text.strip(), 100)


_INLINE_STYLE = re.compile(
    r"<mj-style\b[^>]*\binline=[\"']inline[\"'][^>]*>(.*?)</mj-style>", re.DOTALL | re.IGNORECASE
)


def _inline_styles(source: str, compiled: str, name: str) -> str:
    """``compiled`` with the CSS of the source's inline ``<mj-style>`` blocks applied to the elements."""
    blocks = [block.strip() for block in _INLINE_STYLE.findall(source) if block.strip()]
    if not blocks:
        return compiled
    for block in blocks:  # mjml-python copies each block into the head verbatim: it is not needed there
        compiled = compiled.replace(f'<style type="text/css">{block}</style>', "", 1)
    inliner = css_inline.CSSInliner(
        inline_style_tags=False,  # MJML's own head styles (resets, media queries) stay where they are
        keep_style_tags=True,
        load_remote_stylesheets=False,
        extra_css="\n".join(blocks),
    )
    try:
        return inliner.inline(compiled)
    except ValueError as exc:  # css_inline.InlineError
        raise TemplateError(
            f"{name}: the CSS in <mj-style inline=\"inline\"> cannot be inlined ({exc}); fix it"
        ) from exc


def _near(source: str, offset: int | None) -> str:
    """Where in the rendered MJML ``offset`` is, for an error that cannot name the template's own line."""
    if offset is None or not source:
        return ""
    line_number = source.count("\n", 0, offset) + 1
    line = source.splitlines()[min(line_number, len(source.splitlines())) - 1].strip()
    return f" at line {line_number} of the rendered MJML: {line[:100]!r}"


def _template_error(exc: Exception, env: Environment, name: str, context: Mapping[str, Any]) -> TemplateError:
    """A user-facing TemplateError: ``file:line: problem; what to do``."""
    file, line = describe_template(env, name), None
    frame = _innermost_template_frame(exc, env)
    if frame:
        file, line = frame
    if isinstance(exc, TemplateSyntaxError):
        file, line = exc.filename or exc.name or file, exc.lineno
    where = f"{file}:{line}" if line else file
    if isinstance(exc, TemplateSyntaxError):
        problem = (exc.message or "").rstrip(". ")
        message = f"{where}: template syntax error: {problem}; fix the syntax (see {_JINJA_DOCS})"
    elif isinstance(exc, TemplateNotFound):
        dirs = " or ".join(str(d) for d in _search_dirs(env))
        message = f"{where}: template {exc.name!r} not found in {dirs}; create it there or correct the name"
    elif isinstance(exc, UndefinedError):
        known = ", ".join(sorted(context))
        message = f"{where}: {exc.message}; the variables available here are: {known}"
    else:
        message = f"{where}: {type(exc).__name__}: {exc}; fix the expression on that line"
    return TemplateError(message, file=file if line else None, line=line)


def _search_dirs(env: Environment) -> list[str]:
    loaders = env.loader.loaders if isinstance(env.loader, ChoiceLoader) else [env.loader]
    return [str(p) for loader in loaders if isinstance(loader, FileSystemLoader) for p in loader.searchpath]


def describe_template(env: Environment, name: str) -> str:
    """The file ``name`` resolves to, or the bare name when it cannot be found."""
    for directory in _search_dirs(env):
        path = Path(directory) / name
        if path.is_file():
            return str(path)
    return name


def _innermost_template_frame(exc: Exception, env: Environment) -> tuple[str, int] | None:
    """(file, line) of the deepest traceback frame inside a template file (Jinja rewrites them so)."""
    roots = [Path(d).resolve() for d in _search_dirs(env)]
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if frame.lineno and any(path.is_relative_to(root) for root in roots) and path.is_file():
            found = (frame.filename, frame.lineno)
    return found
