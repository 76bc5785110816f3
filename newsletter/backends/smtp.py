"""The SMTP backend: hands each message to a mail server (a relay or a provider's submission port).

One SMTP transaction (MAIL FROM, RCPT TO, DATA) per message, over connections opened as needed (the
first by :meth:`SmtpBackend.open`), each kept for up to ``max_messages_per_connection`` messages. When the
server offers PIPELINING (RFC 2920; Postfix and most relays do), a message's content and final dot go out
in one write with the next message's MAIL, RCPT and DATA, and the four replies are read together: one
round trip per message instead of four.
Per-message outcomes are results, never exceptions:

- accepted → SENT, detail = the server's reply (often carries its queue id);
- recipient or message refused with 5xx → FAILED, 4xx → RETRY, detail = ``"550 5.1.1 No such user"``;
- refused at MAIL FROM (the envelope sender, or the declared SIZE) → RETRY whatever the code: that is
  about our configuration or message, not the recipient, and must not count as a bounce;
- a non-ASCII address (the message builder makes none) → FAILED, not a bounce;
- a message that cannot be DKIM-signed → FAILED alone (not a bounce), the rest of the batch goes on;
- connection lost → reconnect once and resend; if reconnecting fails (or the fresh connection is lost
  too) that message is RETRY and its connection stops taking messages; the other connections carry the
  rest of the batch, and what none could carry is RETRY with the error as detail.

Messages are spread over ``connections`` parallel connections, all driven by one thread over
non-blocking sockets (:mod:`newsletter.backends.wire`): each connection takes its next message as soon as
it has sent one, from :meth:`SmtpBackend.send`'s batch or the send loop's stream. They are paced by a
shared ``rate_limit``; with ``dkim_selector`` set each message is DKIM-signed (dkimpy) just before DATA,
``relaxed/relaxed``, over-signing the headers a reader sees and acts on (see :func:`_dkim_headers`). The EHLO
name is ``ehlo_name``, by default the sender's domain.

A message whose connection dropped after the final ``.`` may have been delivered already; resending it
is the same ambiguity as any retry, and its deterministic Message-ID makes the copy recognisable.

The password never goes in the config file: it is read from ``NEWSLETTER_SMTP_PASSWORD`` when
``username`` is set. :meth:`~SmtpBackend.open` raises :class:`~newsletter.errors.DeliveryError` with a
one-line message when the server cannot be reached, TLS fails, or the login is refused.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from newsletter.backends.base import Backend, OutgoingMessage, SendResult, SendStatus, Stream, dot_stuff
from newsletter.backends.wire import REPLY, Connect, Send, Sleep, Wire, WireStream, Work, carry
from newsletter.errors import DeliveryError

if TYPE_CHECKING:
    from newsletter.config import Config

log = logging.getLogger(__name__)

PASSWORD_VARIABLE = "NEWSLETTER_SMTP_PASSWORD"


class SmtpOptions(BaseModel):
    """``backend.options`` for ``backend.name: smtp``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    # starttls: plain connect, then upgrade (port 587); tls: TLS from the first byte (port 465);
    # none: no encryption, for a relay on localhost or a trusted network only.
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = Field(default=None, min_length=1)  # password: $NEWSLETTER_SMTP_PASSWORD
    timeout: float = Field(default=30, gt=0)  # seconds, for connecting and for each server reply
    max_messages_per_connection: int = Field(default=100, ge=1)
    # A PEM file of CA certificates to trust instead of the system's, for a relay with a private CA.
    # Relative to the config file's folder.
    ca_file: str | None = None
    # Parallel connections; times delivery.in_flight_factor, how many messages may be in flight (sent,
    # result not yet recorded).
    connections: int = Field(default=4, ge=1, le=64)
    # Messages per second over all connections together; 0 = as fast as the server takes them.
    rate_limit: float = Field(default=0, ge=0)
    # DKIM signing (pip install 'newsletter[dkim]'): selector and private key (PEM file, relative to the
    # config file's folder, or the key itself in $NEWSLETTER_DKIM_PRIVATE_KEY). Domain: the sender's.
    dkim_selector: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")
    dkim_private_key: str | None = None
    dkim_domain: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]+$")
    # Feedback-ID header for Gmail's feedback loop, e.g. "digest:research-weekly:newsletter:example".
    feedback_id: str | None = Field(default=None, pattern=r"^[\x21-\x7e]{1,100}$")
    # The name this client gives in EHLO; default: the sender's domain (receivers compare it with the
    # sending host's DNS name, and a machine's own hostname is often a private one).
    ehlo_name: str | None = Field(default=None, pattern=r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*"
                                  r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$")

    @model_validator(mode="after")
    def _no_plaintext_password(self) -> SmtpOptions:
        loopback = self.host in ("localhost", "::1") or self.host.startswith("127.")
        if self.username and self.security == "none" and not loopback:
            raise ValueError(
                f"a username with security 'none' would send the password unencrypted to {self.host}; "
                "use security: starttls or tls"
            )
        if self.ca_file and self.security == "none":
            raise ValueError("ca_file is only used with security: starttls or tls")
        if self.dkim_private_key and not self.dkim_selector:
            raise ValueError("dkim_private_key needs dkim_selector (the DNS name <selector>._domainkey.<domain>)")
        return self


DKIM_KEY_VARIABLE = "NEWSLETTER_DKIM_PRIVATE_KEY"
_ENVELOPE_ACCEPTED = ((250,), (250, 251), (354,))  # the replies to MAIL FROM, RCPT TO and DATA that go on


class RateLimiter:
    """At most ``rate`` acquisitions per second over all threads (0: no limit). Clock and sleep injectable."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1 / rate if rate else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        wait = self.reserve()
        if wait:
            self.sleep(wait)

    def reserve(self) -> float:
        """Take the next turn: how many seconds to wait before using it (0: at once)."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = self.clock()
            at = max(now, self._next)
            self._next = at + self.interval
        return at - now


class SmtpBackend(Backend):
    """Sends through an SMTP server over ``connections`` parallel connections ("lanes"), each reused for up
    to ``max_messages_per_connection`` messages. Connecting, TLS and login use the standard library's
    :mod:`smtplib`; the transactions run over non-blocking sockets, all lanes in one thread.

    Status mapping: 2xx → SENT; 4xx, a refusal at MAIL FROM, or a connection that cannot be
    re-established → RETRY; 5xx at RCPT TO or DATA → FAILED.
    """

    Options = SmtpOptions
    options: SmtpOptions
    wants_dot_stuffed = True

    def __init__(self, options: BaseModel, *, config: Config) -> None:
        super().__init__(options, config=config)
        self.max_in_flight = self.options.connections
        self.limiter = RateLimiter(self.options.rate_limit)
        self._tls_context: ssl.SSLContext | None = None
        self._dkim_key: bytes | None = None
        self._dkim_headers: list[tuple[bytes, int]] = []  # (name, how many more times h= names it than it appears)
        self._lanes = [SmtpLane(self) for _ in range(self.options.connections)]

    @property
    def address(self) -> str:
        return f"{self.options.host}:{self.options.port}"

    def describe(self) -> str:
        return f"smtp {self.address} ({self.options.security}, {self.options.connections} connection(s))"

    def extra_headers(self) -> dict[str, str]:
        return {"Feedback-ID": self.options.feedback_id} if self.options.feedback_id else {}

    def open(self) -> None:
        """Load the DKIM key, connect the first lane; raises DeliveryError naming what to check."""
        self.close()
        if self.options.dkim_selector:
            self._dkim_key = self._load_dkim_key()
            self._dkim_headers = _dkim_headers(self.extra_headers())
        lane = self._lanes[0]
        lane.adopt(lane.connect())

    def close(self) -> None:
        """Say QUIT on every connection; one that is already dead is just closed."""
        for lane in self._lanes:
            lane.close()

    def send(self, batch: Sequence[OutgoingMessage]) -> list[SendResult]:
        """One result per message, in order; see the module docstring for the status mapping.

        Raises DeliveryError when the server cannot be reached before any message of the batch was handed
        over: an outage is not the recipients' failure and must not use up their retries.
        """
        results: list[SendResult | None] = [None] * len(batch)
        failures: dict[int, DeliveryError] = {}  # position -> why its lane went down
        wire = Wire(self._lanes[: max(1, min(len(self._lanes), len(batch)))])
        try:
            wire.put(list(enumerate(batch)))
            waiting, live = len(batch), True
            while waiting and live:
                finished, live = wire.take(None, waiting)
                for index, result, failure in finished:
                    results[index] = result
                    if failure is not None:
                        failures[index] = failure
                waiting -= len(finished)
        finally:
            wire.close()
        if not failures:
            return [r for r in results if r is not None]
        first = next(iter(failures.values()))
        if all(r is None or i in failures for i, r in enumerate(results)):
            raise first  # nothing was handed over: an outage, not the recipients' failure
        log.warning("%s; %d message(s) left for retry", first, sum(r is None for r in results) + len(failures))
        return [
            r or SendResult(m.delivery_id, SendStatus.RETRY, str(first)) for r, m in zip(results, batch, strict=True)
        ]

    def stream(self) -> Stream:
        """Every connection takes its next message as soon as it has sent one (see :mod:`newsletter.backends.wire`)."""
        return WireStream(self._lanes)

    def sign(self, data: bytes) -> bytes:
        """``data`` with a DKIM-Signature prepended when DKIM is configured (relaxed/relaxed; h= over-signs
        :func:`_dkim_headers`). Raises dkim.DKIMException for a message that cannot be signed."""
        if self._dkim_key is None:
            return data
        import dkim  # checked at open()

        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        present = Counter(line.split(b":", 1)[0].strip().lower() for line in head if line[:1] not in (b" ", b"\t"))
        headers = [name for name, more in self._dkim_headers for _ in range(present[name.lower()] + more)]
        domain = (self.options.dkim_domain or self.config.newsletter.sender_domain).encode()
        signature = dkim.sign(data, str(self.options.dkim_selector).encode(), domain, self._dkim_key,
                              canonicalize=(b"relaxed", b"relaxed"), include_headers=headers, linesep=b"\r\n")
        return signature + data

    def _load_dkim_key(self) -> bytes:
        try:
            import dkim  # noqa: F401
        except ImportError:
            raise DeliveryError(
                f"backend.options.dkim_selector is set in {self.config.source} but dkimpy is not installed; "
                "run: pip install 'newsletter[dkim]'"
            ) from None
        key = os.environ.get(DKIM_KEY_VARIABLE, "").encode()
        if not key:
            if not self.options.dkim_private_key:
                raise DeliveryError(
                    f"DKIM needs a private key: set backend.options.dkim_private_key in {self.config.source} "
                    f"or {DKIM_KEY_VARIABLE}"
                )
            path = self.config.resolve(self.options.dkim_private_key)
            try:
                key = path.read_bytes()
            except OSError as exc:
                raise DeliveryError(
                    f"cannot read the DKIM key {path} ({exc.strerror}); check backend.options.dkim_private_key"
                ) from None
        if b"PRIVATE KEY" not in key:
            raise DeliveryError("the DKIM private key is not a PEM file (-----BEGIN PRIVATE KEY-----)")
        from dkim.crypto import UnparsableKeyError, parse_pem_private_key

        try:  # a key that cannot sign at all stops the send here, rather than failing every message
            parse_pem_private_key(key)
        except UnparsableKeyError as exc:
            raise DeliveryError(f"the DKIM private key cannot be read ({exc}); check backend.options.dkim_private_key "
                                f"or {DKIM_KEY_VARIABLE}") from None
        return key

    def _context(self) -> ssl.SSLContext:
        """The default, verifying context; trusting only ``ca_file`` when it is set."""
        if self._tls_context is None:
            ca_file = self.config.resolve(self.options.ca_file) if self.options.ca_file else None
            try:
                self._tls_context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise DeliveryError(
                    f"cannot load backend.options.ca_file {ca_file} ({reason}); "
                    f"point it at the PEM file of the CA that signed the server's certificate"
                ) from None
        return self._tls_context


@dataclass(frozen=True)
class _Envelope:
    """A message made ready for one connection: its signed, dot-stuffed content and its MAIL FROM, RCPT TO
    and DATA commands."""

    message: OutgoingMessage
    content: bytes
    commands: tuple[bytes, ...]


Steps = Generator[Any, Any, Any]  # a lane's transaction code, run by the wire (see newsletter.backends.wire)


class SmtpLane:
    """One SMTP connection and the messages it carries, one transaction at a time.

    The transaction code is written as blocking code would be, but as generators run by a
    :class:`~newsletter.backends.wire.Wire`: ``yield Send(...)`` writes, ``(yield REPLY)`` is
    ``smtplib.SMTP.getreply()``, ``(yield Connect())`` connects (in a helper thread). Connecting and
    QUIT at the end use :mod:`smtplib` as it is.
    """

    def __init__(self, backend: SmtpBackend) -> None:
        self.backend = backend
        self.options = backend.options
        self.config = backend.config
        self.address = backend.address
        self.timeout = self.options.timeout
        self._smtp: smtplib.SMTP | None = None
        self._messages_on_connection = 0
        self._ahead: _Envelope | None = None  # the next message, its envelope already sent on this connection

    @property
    def sock(self) -> socket.socket | None:
        return self._smtp.sock if self._smtp is not None else None

    def close(self) -> None:
        """QUIT (blocking: not while a wire runs this lane)."""
        self._ahead = None
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()

    def adopt(self, connection: smtplib.SMTP) -> None:
        self._smtp = connection
        self._messages_on_connection = 0
        self._ahead = None

    def drop(self) -> None:
        """Forget a connection that is broken, without talking to the server."""
        self._ahead = None
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()


    def work(self, wire: Wire) -> Work:
        return carry(self.send_one, wire)

    # -- sending ---------------------------------------------------------------------------------

    def send_one(self, message: OutgoingMessage,
                 take_following: Callable[[], OutgoingMessage | None] = lambda: None) -> Steps:
        """Send one message, reconnecting once if the connection was lost; DeliveryError if that fails.

        ``take_following`` gives the message this lane is to send next (the same one on every call), taken
        only when its envelope can go out with this message's content (see :meth:`_content`); the next
        call must then be for that message.
        """
        try:
            return (yield from self._attempt(message, take_following))
        except OSError as exc:  # SMTPServerDisconnected, resets, timeouts; refusals are results already
            log.warning("lost the connection to %s (%s); reconnecting", self.address, exc)
            self.drop()
        try:
            return (yield from self._attempt(message, take_following))
        except OSError as exc:
            self.drop()
            raise DeliveryError(
                f"lost the connection to {self.address} again right after reconnecting ({exc})"
            ) from None

    def _attempt(self, message: OutgoingMessage, take_following: Callable[[], OutgoingMessage | None]) -> Steps:
        """One try at the transaction. Any error but a lost connection (a failed DKIM signature, a bug)
        may come in mid-transaction, so that connection is not used again."""
        try:
            return (yield from self._transaction(message, take_following))
        except OSError:
            raise
        except Exception:
            self.drop()
            raise

    def _transaction(self, message: OutgoingMessage, take_following: Callable[[], OutgoingMessage | None]) -> Steps:
        """MAIL, RCPT and DATA for one message. Refusals become results; a lost connection raises OSError."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.message is message:  # its envelope went out with the last message
            assert self._smtp is not None  # dropping or closing the connection forgets what was ahead
            smtp, envelope = self._smtp, ahead
        else:
            if ahead is not None:  # cannot happen with carry(); never let replies get out of step
                self.drop()
            smtp = yield from self.session()
            prepared = yield from self._prepare(smtp, message)
            if isinstance(prepared, SendResult):
                return prepared
            envelope = prepared
            yield from self._send_envelope(smtp, envelope)
        replies = yield from self._envelope_replies(smtp, envelope)
        for (code, reply), accepted, sender in zip(replies, _ENVELOPE_ACCEPTED, (True, False, False), strict=False):
            if code not in accepted:
                return (yield from self._refused(smtp, message, code, reply, sender=sender))
        return (yield from self._content(smtp, envelope, take_following))

    def _prepare(self, smtp: smtplib.SMTP, message: OutgoingMessage) -> Steps:
        """The message's content and envelope commands for this connection, counted against the rate limit
        and the connection's share; a FAILED result for an address this server cannot take."""
        if not (message.envelope_from + message.recipient).isascii():  # the builder makes none (InvalidAddress)
            return SendResult(message.delivery_id, SendStatus.FAILED,
                              f"{message.recipient!r}: not a plain ASCII address; not sent", bounce=False)
        try:
            signed = self.backend.sign(message.data)
        except Exception as exc:  # noqa: BLE001  dkimpy's errors about this message: it fails alone
            log.error("could not DKIM-sign the message of delivery %d: %s", message.delivery_id, exc)
            return SendResult(message.delivery_id, SendStatus.FAILED,
                              f"not sent: the message could not be DKIM-signed ({type(exc).__name__}: {exc})",
                              bounce=False)
        wait = self.backend.limiter.reserve()
        if wait:
            yield Sleep(wait)
        self._messages_on_connection += 1
        content = _dot_stuffed(message, signed)
        size = f" SIZE={len(content)}" if smtp.has_extn("size") else ""
        commands = (f"MAIL FROM:{_quoted(message.envelope_from)}{size}",
                    f"RCPT TO:{_quoted(message.recipient)}", "DATA")
        if any(ch in command for command in commands for ch in "\r\n"):  # never a second command in an address
            raise ValueError(f"line break in the envelope of {message.recipient!r}")
        return _Envelope(message, content, tuple(f"{command}\r\n".encode("ascii") for command in commands))

    def _send_envelope(self, smtp: smtplib.SMTP, envelope: _Envelope) -> Steps:
        """MAIL, RCPT and DATA in one write when the server offers PIPELINING (RFC 2920); else nothing yet,
        :meth:`_envelope_replies` sends them one at a time."""
        if smtp.has_extn("pipelining"):
            yield Send(envelope.commands)

    def _envelope_replies(self, smtp: smtplib.SMTP, envelope: _Envelope) -> Steps:
        """The replies to MAIL FROM, RCPT TO and DATA, in order, up to the first refusal.

        Pipelined, the three commands are already out and the replies are read together; reading stops at
        a 421, after which the server closes the connection. Otherwise each command waits for its reply.
        """
        replies: list[tuple[int, bytes]] = []
        if not smtp.has_extn("pipelining"):
            for command, accepted in zip(envelope.commands, _ENVELOPE_ACCEPTED, strict=True):
                yield Send((command,))
                replies.append((yield REPLY))
                if replies[-1][0] not in accepted:
                    break
            return replies
        for _ in envelope.commands:
            replies.append((yield REPLY))
            if replies[-1][0] == 421:
                return replies
        envelope_replies = zip(replies[:2], _ENVELOPE_ACCEPTED[:2], strict=True)
        refused = any(code not in accepted for (code, _), accepted in envelope_replies)
        if refused and replies[2][0] == 354:
            yield Send((b".\r\n",))  # a server that accepted DATA without a recipient gets an empty message
            yield REPLY
        return replies

    def _content(self, smtp: smtplib.SMTP, envelope: _Envelope,
                 take_following: Callable[[], OutgoingMessage | None]) -> Steps:
        """Send the message after the server's 354; its result from the reply to the final dot.

        With PIPELINING, the envelope of the lane's next message goes out in the same write (RFC 2920 lets
        the message content start a group of commands), so each message costs one round trip instead of
        two; the next :meth:`_transaction` reads its replies. Not when this connection has carried its
        share, and not under a rate limit (its wait would fall between DATA and the content).
        """
        message = envelope.message
        ahead: _Envelope | SendResult | None = None
        if smtp.has_extn("pipelining") and not self.backend.limiter.interval and \
                self._messages_on_connection < self.options.max_messages_per_connection:
            following = take_following()
            if following is not None:
                try:
                    ahead = yield from self._prepare(smtp, following)
                except Exception:  # noqa: BLE001  (e.g. its DKIM signature)
                    ahead = None  # the error comes up again in its own transaction, not in this one's DATA
        # one write, no copy of the message: the wire gathers the parts (sendmsg)
        yield Send((envelope.content, b".\r\n", *(ahead.commands if isinstance(ahead, _Envelope) else ())))
        code, reply = yield REPLY
        if isinstance(ahead, _Envelope) and code != 421:
            self._ahead = ahead
        if code != 250:
            # after the final dot the server has reset the transaction itself: no RSET (which would be
            # read as the next message's content once its pipelined DATA got a 354)
            return (yield from self._refused(smtp, message, code, reply, reset=False))
        return SendResult(message.delivery_id, SendStatus.SENT, _reply_text(code, reply))

    def _refused(self, smtp: smtplib.SMTP, message: OutgoingMessage, code: int, reply: bytes, *,
                 sender: bool = False, reset: bool = True) -> Steps:
        """The result for a refusal, leaving the connection ready for the next message.

        A refusal at MAIL FROM is RETRY whatever the code: it is about our sender or message size, not
        the recipient, and must not count as a bounce.
        """
        if code == 421:  # the server is closing the connection; the next message reconnects
            self.drop()
        elif reset:
            try:
                yield Send((b"RSET\r\n",))
                yield REPLY
            except (smtplib.SMTPException, OSError):
                self.drop()
        status = SendStatus.FAILED if 500 <= code < 600 and not sender else SendStatus.RETRY
        detail = _reply_text(code, reply)
        if sender:
            detail = f"envelope sender {message.envelope_from} refused: {detail}"
        log.info("%s for delivery %d: %s", status.value, message.delivery_id, detail)
        log.debug("delivery %d was to %s", message.delivery_id, message.recipient)
        return SendResult(message.delivery_id, status, detail)

    # -- connecting ------------------------------------------------------------------------------

    def session(self) -> Steps:
        """The current connection, replaced when missing or when it has carried its share of messages."""
        if self._smtp is None or self._messages_on_connection >= self.options.max_messages_per_connection:
            yield from self._quit()
            self.adopt((yield Connect()))
        assert self._smtp is not None
        return self._smtp

    def _quit(self) -> Steps:
        """QUIT and close the connection (a server that does not answer is just closed)."""
        if self._smtp is None:
            return
        try:
            yield Send((b"QUIT\r\n",))
            yield REPLY
        except (smtplib.SMTPException, OSError):
            pass
        self.drop()

    def connect(self) -> smtplib.SMTP:
        """A new connection: connected, greeted, secured and logged in as configured (blocking)."""
        options = self.options
        password = self._password() if options.username else ""
        context = self.backend._context() if options.security != "none" else None
        try:
            ehlo_name = options.ehlo_name or self.config.newsletter.sender_domain
            if options.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    options.host, options.port, local_hostname=ehlo_name, timeout=options.timeout, context=context
                )
            else:
                smtp = smtplib.SMTP(options.host, options.port, local_hostname=ehlo_name, timeout=options.timeout)
            try:
                smtp.ehlo_or_helo_if_needed()
                if options.security == "starttls":
                    smtp.starttls(context=context)
                    smtp.ehlo_or_helo_if_needed()
                if options.username:
                    smtp.login(options.username, password)
            except BaseException:
                smtp.close()
                raise
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(self._explain(exc)) from None
        log.debug("connected to %s (%s)", self.address, options.security)
        return smtp

    def _password(self) -> str:
        password = os.environ.get(PASSWORD_VARIABLE, "")
        if not password:
            raise DeliveryError(
                f"backend.options.username is set in {self.config.source} but {PASSWORD_VARIABLE} is not; "
                f"set {PASSWORD_VARIABLE} to the SMTP password (it never goes in the config file)"
            )
        return password

    def _explain(self, exc: Exception) -> str:
        """One line for a failure to connect, secure or log in: what happened and what to check."""
        where, source = self.address, self.config.source
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return (
                f"{where} refused the login as {self.options.username!r} "
                f"({_reply_text(exc.smtp_code, exc.smtp_error)}); "
                f"check backend.options.username in {source} and {PASSWORD_VARIABLE}"
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (
                f"cannot verify the TLS certificate of {where} ({exc.verify_message}); "
                f"check backend.options.host, or set backend.options.ca_file in {source} for a private CA"
            )
        if isinstance(exc, ssl.SSLError):
            return (
                f"TLS with {where} failed ({exc.reason or exc}); check backend.options.security in "
                f"{source} (tls for port 465, starttls for port 587)"
            )
        if isinstance(exc, socket.gaierror):
            return (
                f"cannot resolve {self.options.host!r} ({exc.strerror}); "
                f"check backend.options.host in {source}"
            )
        # smtplib reports a reply that never came as SMTPServerDisconnected raised from the timeout.
        if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
            return (
                f"no answer from {where} within {self.options.timeout:g} s; check backend.options.host, "
                f"port and security in {source} (port 465 needs security: tls)"
            )
        if isinstance(exc, smtplib.SMTPResponseException):
            return (
                f"{where} refused the session ({_reply_text(exc.smtp_code, exc.smtp_error)}); "
                f"check backend.options in {source}"
            )
        if isinstance(exc, smtplib.SMTPException) and not isinstance(exc, smtplib.SMTPServerDisconnected):
            return f"{where}: {exc}; check backend.options.security and username in {source}"
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        return f"cannot connect to {where} ({reason}); check backend.options.host/port in {source}"


_PLAIN_ADDRESS = re.compile(r'[^\s<>()\[\]\\,;:"@]+@[^\s<>()\[\]\\,;:"@]+')


def _dkim_headers(extra_headers: dict[str, str]) -> list[tuple[bytes, int]]:
    """What DKIM's h= covers, as ``(name, more)``: each header the message builder writes
    (:data:`newsletter.message.WRITTEN_HEADERS`) is named once more than it appears (an absent one once),
    so a copy with a second From, Subject or List-Unsubscribe prepended, or a Reply-To added, no longer
    verifies (RFC 6376 8.15); the backend's own extra headers (Feedback-ID) only as present (a relay may
    add its own)."""
    from newsletter.message import WRITTEN_HEADERS  # here, not at import: the builder is heavy for start-up

    return [*((name.encode(), 1) for name in WRITTEN_HEADERS), *((name.encode(), 0) for name in extra_headers)]


def _quoted(address: str) -> str:
    """``<address>`` for MAIL FROM and RCPT TO; what :func:`smtplib.quoteaddr` gives, without parsing a
    plain address (two parses per message were 7 % of a connection thread's time)."""
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def _dot_stuffed(message: OutgoingMessage, signed: bytes) -> bytes:
    """What goes after DATA: ``signed`` (the message, with a DKIM-Signature in front when signing) made
    safe for it (:func:`~newsletter.backends.base.dot_stuff`), ending with CRLF. A message the builder
    stuffed already (``dot_stuffed``) is not looked at again: only the signature in front of it is."""
    if message.dot_stuffed is None:
        stuffed = dot_stuff(signed)
    elif signed is message.data:
        stuffed = message.dot_stuffed
    elif signed.endswith(message.data):
        stuffed = dot_stuff(signed[:len(signed) - len(message.data)]) + message.dot_stuffed
    else:
        stuffed = dot_stuff(signed)
    return stuffed if stuffed.endswith(b"\r\n") else stuffed + b"\r\n"


def _reply_text(code: int, reply: bytes | str) -> str:
    """``550 5.1.1 No such user``: the code and the server's text on one line."""
    text = reply.decode("utf-8", errors="replace") if isinstance(reply, bytes) else reply
    return f"{code} {' '.join(text.split())}".strip()
