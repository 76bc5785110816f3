"""What both web apps (the public pages and the editors' preview) do for safety whatever the route: the
security headers on every answer, a one-line reason for a malformed request, and no token in any log line.

Policies (``Content-Security-Policy``):

- :data:`PAGE_POLICY` for our own pages: nothing but our stylesheet and forms posting to us; no script at all.
- :data:`EMAIL_POLICY` for an email shown as a page (the archive, the preview's frame): its inline styles and
  remote images, never a script or a plugin, no form.
- the preview page itself: :func:`preview_policy`, its one script and stylesheet by a fresh nonce.

None of them may be framed by another site (``frame-ancestors``; ``X-Frame-Options`` for older browsers),
except the preview's email frame, which the preview itself frames.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PAGE_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
               "frame-ancestors 'none'; base-uri 'none'")
EMAIL_POLICY = ("default-src 'none'; style-src 'unsafe-inline' https:; img-src https: http: data:; "
                "font-src https: data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
# /<route>/<token>: the token is a secret (a click link's may name its subscriber)
TOKEN_ROUTES = frozenset({"confirm", "unsubscribe", "preferences", "c"})


def preview_policy(nonce: str) -> str:
    """The preview page's policy: its own script and style (``nonce``), the live-reload stream, its frame."""
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
            f"frame-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def framed_by_self(policy: str) -> str:
    """``policy`` for a page only its own site may frame."""
    return policy.replace("frame-ancestors 'none'", "frame-ancestors 'self'")


SERVER_ERROR = "The server could not answer this request: an error on its side, written to its log."


class SecurityHeaders:
    """ASGI middleware: adds ``headers`` to every HTTP answer that does not set them itself (a route sets
    its own ``Content-Security-Policy`` where it needs another one). ``X-Frame-Options`` follows the
    policy's ``frame-ancestors``. ``no_store_except`` lists path prefixes that may be cached.

    An unexpected error (a bug) is answered here, before Starlette's outermost handler would answer it
    without these headers: a 500 with :data:`SERVER_ERROR` as its one line (``{"error": ...}`` under
    ``json_paths``), then the error goes on up to be logged with its traceback by the server."""

    def __init__(self, app: ASGIApp, headers: dict[str, str], no_store_except: tuple[str, ...] = (),
                 json_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        self.no_store_except = no_store_except
        self.json_paths = json_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope["path"])
        cacheable = path.startswith(self.no_store_except) if self.no_store_except else False
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [(name, value) for name, value in self.headers if name not in present]
                if not cacheable and b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                policy = next((v for n, v in [*headers, *extra] if n.lower() == b"content-security-policy"), b"")
                if b"x-frame-options" not in present:
                    framing = b"SAMEORIGIN" if b"frame-ancestors 'self'" in policy else b"DENY"
                    extra.append((b"x-frame-options", framing))
                message = {**message, "headers": headers + extra}
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception:
            if not started:  # half an answer cannot be taken back: then the server only closes the connection
                error: Response = (JSONResponse({"error": SERVER_ERROR}, status_code=500)
                                   if self.json_paths and path.startswith(self.json_paths)
                                   else PlainTextResponse(SERVER_ERROR, status_code=500))
                await error(scope, receive, with_headers)
            raise


_PLACES = {"path": "path parameter", "query": "query parameter", "body": "form field"}


def describe_invalid(exc: RequestValidationError) -> str:
    """One line for the first problem in a request FastAPI could not parse: where it is and what is wrong."""
    errors = exc.errors()
    if not errors:
        return "the request is not valid"
    error = errors[0]
    location = [str(part) for part in error.get("loc", ())]
    where = f"{_PLACES.get(location[0], location[0])} '{location[-1]}'" if len(location) > 1 else "the request"
    message = " ".join(str(error.get("msg", "is not valid")).split())
    return f"{where}: {message}"[:300]


# -- logs ----------------------------------------------------------------------------------------------------

_QUERY_VALUE = re.compile(r"([?&][^=&\s\"?#]*=)[^&\s\"#]*")
_PATH = re.compile(r"/[^\s\"?#]*")


def redact(text: str) -> str:
    """``text`` with every path segment after ``/confirm/``, ``/unsubscribe/``, ``/preferences/`` or ``/c/``
    (the links' tokens) and every query value (the preview's ``?token=``, and anything else) replaced by "…"."""

    def path(match: re.Match[str]) -> str:
        segments = match[0].split("/")
        for n in range(1, len(segments) - 1):
            if unquote(segments[n]) in TOKEN_ROUTES and segments[n + 1]:
                segments[n + 1] = "…"
        return "/".join(segments)

    return _QUERY_VALUE.sub(r"\1…", _PATH.sub(path, text))


class RedactTokens(logging.Filter):
    """Rewrites a record's message and string arguments with :func:`redact` (a filter never drops)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: redact(val) if isinstance(val, str) else val for key, val in record.args.items()}
        return True


_CLICK_PATH = re.compile(r"(?:^|/)c/[^/?\s]+$")


class NoClickLines(logging.Filter):
    """Drops an access log line about a click link (``/c/<token>``): the client's address and the time of a
    click would tie it to a person, which a click is never stored with unless ``tracking.per_subscriber``
    (and a line per click is a good part of what a click costs the server)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        path = args[2] if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str) else ""
        return not _CLICK_PATH.search(path.partition("?")[0])


_REDACT = RedactTokens()
_NO_CLICKS = NoClickLines()
ACCESS_LOG = "uvicorn.access"  # its records' arguments: client, method, path, HTTP version, status
# The servers' loggers, and ours under newsletter.web (which never log a URL; this keeps it so). A filter on
# a logger applies to the records logged there, not to its children's, hence each name.
LOGGERS = (ACCESS_LOG, "uvicorn.error", "uvicorn", "gunicorn.access", "gunicorn.error",
           *(f"newsletter.web.{module}" for module in ("app", "pages", "archive", "api", "mail", "preview", "clicks")))


def redact_logs(loggers: Iterable[str] = LOGGERS) -> None:
    """Put :class:`RedactTokens` on the loggers that write about requests, and :class:`NoClickLines` (first)
    on uvicorn's access log (idempotent).

    Called by both app factories, so however an app is served (``newsletter serve``, ``uvicorn ...:app``,
    tests), the access log never carries a link's token, nor a line per click. The filters sit on the
    loggers, not on handlers, so they hold whatever handlers a logging configuration adds later."""
    for name in loggers:
        logger = logging.getLogger(name)
        if name == ACCESS_LOG and _NO_CLICKS not in logger.filters:
            logger.filters.insert(0, _NO_CLICKS)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)
