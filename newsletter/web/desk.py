"""The editor's desk: the preview's page, and the routes that shape the next issue and send it.

The page (``GET /``) shows the email as it will be sent (600 or 375 px wide; HTML, plain text, raw source or
headers) beside a panel: the next issue's items with their controls (order, lead, left out, a note, a
subject of its own, undo), the pre-send checks (errors first, each linking to the item or the line it is
about), "send a test to …" and the real send with its progress. A past issue is shown the same way, its
items read-only. Every change goes through :mod:`newsletter.issues.editorial` with the version of the next
issue the page showed, so a page that missed a change elsewhere is answered 409 ("changed elsewhere;
reload") and changes nothing. Sending goes through the functions the commands use: the checks
(:func:`newsletter.checks.check_issue`), :func:`newsletter.issues.prepare_issue`, then
:func:`newsletter.delivery.send_issue` in a background thread; pause and resume are
:func:`newsletter.issues.pause_issue` and :func:`~newsletter.issues.resume_issue`.

Every form works without JavaScript (a post, then the page again); the page's script sends them with
``fetch`` instead and brings the page up to date in place, keeping the focus where it was, so a keyboard
user moving an item down can press the same button again. Changes answer JSON to the script
(``X-Desk: 1``): ``{"number", "version", "message"}``, or ``{"error"}`` with 400 or 409.
"""

from __future__ import annotations

import asyncio
import html
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import func
from sqlmodel import select

from newsletter.checks import Finding, Severity, check_issue
from newsletter.click_report import issue_clicks
from newsletter.dates import format_moment
from newsletter.db import session
from newsletter.errors import Conflict, NewsletterError, TemplateError
from newsletter.firings import next_run_time
from newsletter.issues import (
    PrepareOutcome,
    editorial,
    find_issue,
    issue_status,
    pause_issue,
    prepare_issue,
    resume_issue,
)
from newsletter.issues.editorial import NextIssue, Seen
from newsletter.models import IssueStatus, Subscriber, SubscriberStatus, Summary, utcnow
from newsletter.render import DEFAULT_SECTION, SUBJECT_LIMIT, display_order, section_key
from newsletter.web.preview_state import (
    LARGEST_ISSUE,
    VIEWS,
    WIDTHS,
    FormChecked,
    PreviewState,
    form_token,
    issue_numbers,
    ref_problem,
    sample_parts,
)
from newsletter.web.security import preview_policy

router = APIRouter()
HERE = Path(__file__).parent
_PAGES = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                     trim_blocks=True, lstrip_blocks=True)
_STYLE = Markup((HERE / "templates" / "desk.css").read_text(encoding="utf-8"))  # inlined under the nonce
_SCRIPT = Markup((HERE / "templates" / "desk.js").read_text(encoding="utf-8"))
_VIEW_NAMES = {"html": "HTML", "text": "Plain text", "source": "Raw source", "headers": "Headers"}
_HTML_LINE = re.compile(r"^HTML line (\d+)")
_MESSAGE_LINE = re.compile(r"encoded message line (\d+)")
EXCERPT = 2  # lines shown around a template's line at fault


def _state(request: Request) -> PreviewState:
    return request.app.state.preview  # type: ignore[no-any-return]


# -- the page ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One item in the panel's list: its place, the section heading above it (where its category starts),
    and whether it may move up or down."""

    summary: Summary
    position: int  # 1 is first
    heading: str | None
    lead: bool
    can_rise: bool
    can_sink: bool


def _rows(items: list[Summary], order: Sequence[int], lead: int | None, editable: bool) -> list[Row]:
    ordered = display_order(items, order, lead)
    first_movable = 2 if lead is not None and ordered and ordered[0].id == lead else 1
    rows, previous = [], None
    for position, summary in enumerate(ordered, 1):
        key = section_key(summary)
        heading = " ".join((summary.category or "").split()) or DEFAULT_SECTION
        is_lead = summary.id == lead
        rows.append(Row(summary, position, heading if key != previous else None, is_lead,
                        editable and not is_lead and position > first_movable,
                        editable and not is_lead and position < len(ordered)))
        previous = key
    return rows


@router.get("/", response_class=HTMLResponse)
def page(
    request: Request, issue: str = "next", view: str = "html", width: str = "desktop", part: str = "",
    notice: str = "", error: str = "", confirm: str = "",
) -> HTMLResponse:
    """The desk: the email as it will be sent beside the panel that shapes, checks and sends it."""
    state = _state(request)
    view = view if view in VIEWS else "html"
    width = width if width in WIDTHS else "desktop"
    nonce = secrets.token_urlsafe(18)
    bad_ref = ref_problem(issue)
    context: dict[str, Any] = {
        "name": state.config.newsletter.name, "issue": issue, "view": view, "width": width, "part": part,
        "widths": WIDTHS, "views": _VIEW_NAMES, "version": state.version, "notice": notice,
        "form_error": error, "numbers": issue_numbers(state), "problem": state.config_error or bad_ref,
        "sample": None, "findings": [], "nonce": nonce, "style": _STYLE, "script": _SCRIPT,
        "csrf": form_token(state.form_key, request.state.desk_session), "subject_limit": SUBJECT_LIMIT,
        "next": None, "rows": [], "clicks": None, "clicks_by_item": {}, "excerpt": None, "send": None, "confirm": confirm == "send",
        "fragment": request.headers.get("x-desk") == "refresh",
    }  # fmt: skip
    if issue == "next" and not context["problem"]:
        context["next"] = upcoming = editorial.next_issue_state(state.engine)
        context["rows"] = _rows(upcoming.items, upcoming.choices.order, upcoming.choices.lead, editable=True)
    if not context["problem"]:
        try:
            sample = state.sample(issue)
        except NewsletterError as exc:
            context["problem"] = str(exc)
            context["excerpt"] = _excerpt(exc)
        else:
            context["sample"] = sample
            findings = state.findings(sample)
            context["findings"] = [(f, _finding_link(f, sample.items, issue, width)) for f in findings]
            context["errors"] = sum(f.severity is Severity.ERROR for f in findings)
            context["html"], context["text"], context["source"], context["headers"] = sample_parts(sample)
            if issue != "next":
                context["rows"] = _rows(sample.items, sample.issue.item_order, sample.issue.lead_id, editable=False)
                clicks = issue_clicks(state.engine, state.config, sample.issue.number)
                context["clicks"] = clicks
                context["clicks_by_item"] = clicks.by_item()
    context["send"] = _send_panel(state, context)
    status = 400 if bad_ref else 200
    return HTMLResponse(_PAGES.get_template("desk.html").render(context), status_code=status,
                        headers={"Content-Security-Policy": preview_policy(nonce)})


def _excerpt(exc: NewsletterError) -> dict[str, Any] | None:
    """The lines around a template error's line, from the file the editor wrote, for the page."""
    if not isinstance(exc, TemplateError) or not exc.file or not exc.line:
        return None
    try:
        lines = Path(exc.file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    first = max(1, exc.line - EXCERPT)
    shown = [(n, lines[n - 1], n == exc.line) for n in range(first, min(len(lines), exc.line + EXCERPT) + 1)]
    return {"file": exc.file, "line": exc.line, "lines": shown}


def _finding_link(finding: Finding, items: list[Summary], issue: str, width: str) -> str | None:
    """Where a finding points: the item it is about (a link or an image of a summary), else the view and
    line of the message it names."""
    about = f"{finding.where} {finding.message}"
    if finding.rule in ("links", "img-alt"):
        for item in items:
            if any(url and html.escape(url, quote=False)[:80] in html.escape(about, quote=False)
                   for url in (item.url, item.image_url)):
                return f"#item-{item.id}"
    base = f"?issue={issue}&width={width}"
    if match := _HTML_LINE.match(finding.where):
        return f"{base}&view=source&part=html#H{match.group(1)}"
    if match := _MESSAGE_LINE.search(finding.where):
        return f"{base}&view=source#L{match.group(1)}"
    if finding.rule == "subject":
        return "#subject" if issue == "next" else f"{base}&view=headers"
    if finding.rule == "headers":
        return f"{base}&view=headers"
    if "text part" in finding.where:
        return f"{base}&view=text"
    if finding.rule == "preheader" or "HTML part" in finding.where:
        return f"{base}&view=source&part=html"
    return None


@dataclass(frozen=True)
class SendPanel:
    """What the send section shows: the next issue to send, or an issue's progress."""

    number: int
    status: str  # "next", or the issue's state
    subject: str
    recipients: int  # active subscribers now (next) or the issue's deliveries
    counts: dict[str, int]
    rate: float | None
    next_firing: str
    running: bool
    error: str | None


def _send_panel(state: PreviewState, context: dict[str, Any]) -> SendPanel | None:
    sample = context["sample"]
    if sample is None:
        return None
    upcoming: NextIssue | None = context["next"]
    if upcoming is not None and upcoming.items:  # the sample is the next issue
        with session(state.engine) as db:
            active = db.exec(select(func.count()).where(Subscriber.status == SubscriberStatus.ACTIVE)).one()
        firing = next_run_time(state.config)
        when = f"{format_moment(firing, state.config.newsletter.locale)} ({state.config.schedule.timezone})"
        return SendPanel(upcoming.number, "next", sample.rendered.subject, active, {}, None, when, False, None)
    if sample.issue.id is None:
        return None
    report = issue_status(state.engine, sample.issue.number)
    job = state.sends.get(sample.issue.number)
    counts = {status.value: count for status, count in report.counts.items()}
    return SendPanel(report.issue.number, report.issue.status.value, report.issue.subject, sum(counts.values()),
                     counts, report.rate_per_minute, "", bool(job and job.running), job.error if job else None)


# -- changes to the next issue ------------------------------------------------------------------------------

Number = Annotated[int, Form(ge=0, le=LARGEST_ISSUE)]
Version = Annotated[int, Form(ge=0, le=LARGEST_ISSUE)]
SummaryId = Annotated[int, Form(ge=1, le=LARGEST_ISSUE)]


async def _apply(request: Request, change: Callable[[Seen], NextIssue], number: int, version: int) -> Response:
    """Make ``change`` on the next issue the page showed; answer JSON to the page's script, else go back."""
    state = _state(request)
    try:
        result = await asyncio.to_thread(change, Seen(number, version))
    except Conflict as exc:
        return _answer(request, 409, error=str(exc))
    except NewsletterError as exc:
        return _answer(request, 400, error=str(exc))
    state.database_changed("the next issue")
    return _answer(request, 200, message=result.done, number=result.number, version=result.version)


def _answer(request: Request, status: int, *, error: str = "", message: str = "", location: str = "/?issue=next",
            **values: Any) -> Response:
    if request.headers.get("x-desk"):
        body = {"error": error} if error else {"message": message, **values}
        return JSONResponse(body, status_code=status)
    separator = "&" if "?" in location else "?"
    query = f"error={quote(error, safe='')}" if error else f"notice={quote(message, safe='')}"
    return RedirectResponse(f"{location}{separator}{query}", status_code=303)


@router.post("/desk/move", dependencies=FormChecked)
async def move(request: Request, id: SummaryId, position: Annotated[int, Form(ge=0, le=10_000)], number: Number,
               version: Version) -> Response:
    """Show an item at ``position`` (0 is first)."""
    return await _apply(request, lambda seen: editorial.move(_state(request).engine, id, position, seen=seen),
                        number, version)


@router.post("/desk/leave-out", dependencies=FormChecked)
async def leave_out(request: Request, id: SummaryId, number: Number, version: Version) -> Response:
    """Leave an item out of the next issue."""
    return await _apply(request, lambda seen: editorial.leave_out(_state(request).engine, id, seen=seen),
                        number, version)


@router.post("/desk/bring-back", dependencies=FormChecked)
async def bring_back(request: Request, id: SummaryId, number: Number, version: Version) -> Response:
    """Bring a left-out item back, to where it was."""
    return await _apply(request, lambda seen: editorial.leave_out(_state(request).engine, id, out=False, seen=seen),
                        number, version)


@router.post("/desk/lead", dependencies=FormChecked)
async def lead(request: Request, id: SummaryId, number: Number, version: Version) -> Response:
    """Make an item the lead: first, and named by the default subject."""
    return await _apply(request, lambda seen: editorial.set_lead(_state(request).engine, id, seen=seen),
                        number, version)


@router.post("/desk/unpin", dependencies=FormChecked)
async def unpin(request: Request, number: Number, version: Version) -> Response:
    """No lead item any more."""
    return await _apply(request, lambda seen: editorial.set_lead(_state(request).engine, None, seen=seen),
                        number, version)


@router.post("/desk/note", dependencies=FormChecked)
async def note(request: Request, number: Number, version: Version,
               text: Annotated[str, Form(max_length=50_000)] = "") -> Response:
    """The editor's note (Markdown); empty removes it."""
    return await _apply(request, lambda seen: editorial.set_note(_state(request).engine, text, seen=seen),
                        number, version)


@router.post("/desk/subject", dependencies=FormChecked)
async def subject(request: Request, number: Number, version: Version,
                  text: Annotated[str, Form(max_length=5_000)] = "") -> Response:
    """The subject of the next issue; empty goes back to the template's."""
    return await _apply(request, lambda seen: editorial.set_subject(_state(request).engine, text, seen=seen),
                        number, version)


@router.post("/desk/undo", dependencies=FormChecked)
async def undo(request: Request, number: Number, version: Version) -> Response:
    """Take back the last change to the next issue."""
    return await _apply(request, lambda seen: editorial.undo(_state(request).engine, seen=seen), number, version)


# -- sending ----------------------------------------------------------------------------------------------


# The ids of the items the confirmation showed, in order ("3,1,2"): the next issue is sent only as shown.
ShownItems = Annotated[str, Form(max_length=100_000, pattern=r"^[0-9]*(,[0-9]+)*$")]
ITEMS_CHANGED = "the next issue's items changed since this page showed them (a summary arrived or went); reload"


@router.post("/send", dependencies=FormChecked)
async def send(request: Request, number: Number, version: Version, items: ShownItems = "") -> Response:
    """Send issue ``number`` to every subscriber now: the next issue as the page showed it (the same items
    in the same order, its checks passing; it is prepared first, as ``digest prepare`` does) or an issue
    prepared already."""
    state = _state(request)
    shown = tuple(int(item) for item in items.split(",") if item)
    try:
        sending = await asyncio.to_thread(_prepare_to_send, state, number, version, shown)
    except Conflict as exc:
        return _answer(request, 409, error=str(exc))
    except NewsletterError as exc:
        upcoming = await asyncio.to_thread(editorial.next_issue_state, state.engine)
        shown = "next" if upcoming.number == number else number
        return _answer(request, 400, error=str(exc), location=f"/?issue={shown}")
    state.start_send(sending)
    state.database_changed(f"issue #{sending}")
    return _answer(request, 200, message=f"sending issue #{sending}", number=sending,
                   location=f"/?issue={sending}")


def _prepare_to_send(state: PreviewState, number: int, version: int, shown: tuple[int, ...]) -> int:
    """The number of the issue to send: the next one prepared now (if it is still the one the page showed,
    with the ``shown`` items, and passes its checks), or issue ``number`` when it is prepared already."""
    engine, config = state.engine, state.config
    cutoff = utcnow()  # what arrives after the comparison below waits for the issue after this one
    upcoming = editorial.next_issue_state(engine)
    if upcoming.number == number:
        if upcoming.seen != Seen(number, version):
            raise Conflict(editorial.CHANGED_ELSEWHERE)
        if tuple(item.id for item in upcoming.items) != shown:
            raise Conflict(ITEMS_CHANGED)
        report = check_issue(engine, config)
        if not report.ok:
            raise NewsletterError(f"issue #{number} fails the pre-send checks (see Checks); fix them before sending")
        result = prepare_issue(engine, config, now=cutoff)
        if result.outcome is not PrepareOutcome.CREATED or result.issue is None:
            raise NewsletterError(result.message())
        return result.issue.number
    with session(engine) as db:
        issue = find_issue(db, number)
    if issue.status is not IssueStatus.PREPARED:
        raise NewsletterError(f"issue #{number} is {issue.status.value}; only a prepared issue is sent from here")
    if not check_issue(engine, config, number).ok:
        raise NewsletterError(f"issue #{number} fails the pre-send checks (see Checks); fix them before sending")
    return number


IssueNumber = Annotated[int, Form(ge=1, le=LARGEST_ISSUE)]


@router.post("/pause", dependencies=FormChecked)
async def pause(request: Request, number: IssueNumber) -> Response:
    """Pause an issue being sent: the send stops after the messages in flight."""
    state = _state(request)
    try:
        await asyncio.to_thread(pause_issue, state.engine, number)
    except NewsletterError as exc:
        return _answer(request, 400, error=str(exc), location=f"/?issue={number}")
    state.database_changed(f"issue #{number}")
    return _answer(request, 200, message=f"issue #{number} paused", number=number, location=f"/?issue={number}")


@router.post("/resume", dependencies=FormChecked)
async def resume(request: Request, number: IssueNumber) -> Response:
    """Let a paused issue be sent again, and send it."""
    state = _state(request)
    try:
        await asyncio.to_thread(resume_issue, state.engine, number)
    except NewsletterError as exc:
        return _answer(request, 400, error=str(exc), location=f"/?issue={number}")
    state.start_send(number)
    state.database_changed(f"issue #{number}")
    return _answer(request, 200, message=f"issue #{number} is being sent again", number=number,
                   location=f"/?issue={number}")


@router.get("/progress")
def progress(request: Request, issue: Annotated[int, Query(ge=1, le=LARGEST_ISSUE)]) -> JSONResponse:
    """An issue's deliveries by state from the ledger, its sending rate and whether the desk is sending it."""
    state = _state(request)
    try:
        report = issue_status(state.engine, issue)
    except NewsletterError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    job = state.sends.get(issue)
    counts = {status.value: count for status, count in report.counts.items()}
    return JSONResponse({
        "number": report.issue.number, "status": report.issue.status.value, "counts": counts,
        "total": sum(counts.values()), "rate_per_minute": report.rate_per_minute,
        "running": bool(job and job.running), "error": job.error if job else None,
    })  # fmt: skip

