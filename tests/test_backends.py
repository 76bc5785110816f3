"""Sending backends against real things: aiosmtpd servers on loopback, a temporary outbox, stdout."""

from __future__ import annotations

import re
import socket
import socketserver
import threading
import time
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from newsletter.backends import (
    OutgoingMessage,
    SendResult,
    SendStatus,
    backend_class,
    create_backend,
)
from newsletter.backends.console import ConsoleBackend
from newsletter.backends.file import FileBackend
from newsletter.backends.smtp import SmtpBackend
from newsletter.config import Config
from newsletter.errors import BackendNotFound, ConfigError, DeliveryError
from tests.conftest import RecordingHandler, SmtpServer, make_config

SENDER = "bounces@example.org"
PASSWORD = "correct horse battery staple"


def outgoing(number: int, recipient: str | None = None, body: str = "") -> OutgoingMessage:
    """A complete CRLF message; its body has a line starting with "." and non-ASCII text on purpose."""
    recipient = recipient or f"reader{number}@example.net"
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = "Research Weekly <digest@example.org>"
    message["To"] = recipient
    message["Subject"] = f"Issue {number}"
    message["Message-ID"] = f"<issue-1.{number}@example.org>"
    message.set_content(body or f"Hello reader {number} – grüße.\n.leading dot stays\n", cte="8bit")
    return OutgoingMessage(number, SENDER, recipient, message["Message-ID"], message.as_bytes())


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smtp_config(base_dir: Path, **options: Any) -> Config:
    return make_config(base_dir, backend={"name": "smtp", "options": options})


def smtp_backend(base_dir: Path, server: SmtpServer, **options: Any) -> SmtpBackend:
    """The backend as the application builds it: by name from the config."""
    options = {"host": server.host, "port": server.port, "security": "none", "connections": 1, **options}
    backend = create_backend(smtp_config(base_dir, **options))
    assert isinstance(backend, SmtpBackend)
    return backend


# -- servers ------------------------------------------------------------------------------------


@dataclass
class SessionHandler(RecordingHandler):
    """Also remembers the SMTP session (one per connection) of each message, and can drop a connection."""

    sessions: list[Any] = field(default_factory=list)
    drop_next_mail: bool = False
    refuse_mail: str = ""  # a reply to MAIL FROM instead of 250
    pipelining: bool = False  # offer PIPELINING (RFC 2920) in the EHLO reply
    # For each MAIL FROM: had the client already sent its RCPT TO (without waiting for the reply)?
    pipelined: list[bool] = field(default_factory=list)
    # For each message: had the next message's MAIL FROM come with it (before the reply to the final dot)?
    next_envelope_along: list[bool] = field(default_factory=list)
    refuse_data: dict[str, str] = field(default_factory=dict)  # recipient -> reply to the final dot

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        reply = await super().handle_RCPT(server, session, envelope, address, options)
        if reply.startswith("421"):  # as a real server does: the reply, then the connection is closed
            server.transport.write(f"{reply}\r\n".encode())
            server.transport.close()
        return reply

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        self.pipelined.append(b"RCPT TO" in server._reader._buffer)  # asyncio's buffered, not yet read bytes
        if self.drop_next_mail:  # like a server closing an idle connection
            self.drop_next_mail = False
            server.transport.close()
            return "421 4.4.2 Connection dropped"
        if self.refuse_mail:
            return self.refuse_mail
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.next_envelope_along.append(b"MAIL FROM" in server._reader._buffer)
        refusal = self.refuse_data.get(envelope.rcpt_tos[0], "")
        if refusal.startswith("421"):
            server.transport.write(f"{refusal}\r\n".encode())
            server.transport.close()
        if refusal:
            return refusal
        self.sessions.append(session)
        return await super().handle_DATA(server, session, envelope)

    def connections_per_message(self) -> list[int]:
        """For each received message, the number of the connection that carried it (1, 1, 2, ...)."""
        numbers: dict[int, int] = {}
        return [numbers.setdefault(id(session), len(numbers) + 1) for session in self.sessions]


@dataclass
class RunningServer(SmtpServer):
    controller: Controller
    running: bool = True

    def stop(self) -> None:
        if self.running:
            self.controller.stop()
            self.running = False


@pytest.fixture(params=[False, True], ids=["one-command-at-a-time", "pipelining"])
def start_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., RunningServer]]:
    """Start aiosmtpd servers with a SessionHandler; ``kwargs`` go to aiosmtpd's Controller. Every test
    using it runs twice: against a server without PIPELINING and one offering it (then the backend sends
    MAIL, RCPT and DATA in one write), since the two take different paths through the backend."""
    servers: list[RunningServer] = []

    def start(**kwargs: Any) -> RunningServer:
        handler = SessionHandler(pipelining=request.param)
        controller = Controller(handler, hostname="127.0.0.1", port=unused_port(), **kwargs)
        controller.start()
        servers.append(RunningServer("127.0.0.1", controller.port, handler, controller))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    """The test CA as a PEM file next to the config, named relative to it as a user would."""
    ca.cert_pem.write_to_path(str(tmp_path / "relay-ca.pem"))
    return "relay-ca.pem"


@pytest.fixture
def tls_server(ca: trustme.CA, start_server: Callable[..., RunningServer]) -> Callable[..., RunningServer]:
    """A server with a certificate for 127.0.0.1; ``implicit=True`` speaks TLS from the first byte."""

    def start(implicit: bool = False, **kwargs: Any) -> RunningServer:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        if implicit:
            return start_server(ssl_context=context, **kwargs)
        return start_server(tls_context=context, require_starttls=True, **kwargs)

    return start


@dataclass
class Authenticator:
    """Accepts alice with PASSWORD and remembers every attempt as (mechanism, login)."""

    attempts: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.attempts.append((mechanism, data.login.decode()))
        # handled=False: aiosmtpd sends the 235 / 535 reply itself.
        accepted = (data.login, data.password) == (b"alice", PASSWORD.encode())
        return AuthResult(success=accepted, handled=False)


def auth_server(tls_server: Callable[..., RunningServer], authenticator: Authenticator) -> RunningServer:
    """STARTTLS required, then AUTH LOGIN (PLAIN switched off) required before MAIL."""
    return tls_server(
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
        auth_exclude_mechanism=["PLAIN"],
    )


# -- SMTP: delivery -----------------------------------------------------------------------------


def test_smtp_delivers_each_message_with_its_envelope_and_exact_bytes(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    smtp_server = start_server()
    batch = [outgoing(n) for n in (1, 2, 3)]
    with smtp_backend(tmp_path, smtp_server) as backend:
        results = backend.send(batch)

    assert [(r.delivery_id, r.status) for r in results] == [(n, SendStatus.SENT) for n in (1, 2, 3)]
    assert all(r.detail.startswith("250 ") for r in results)
    assert [(m.envelope_from, m.recipients) for m in smtp_server.messages] == [
        (SENDER, [f"reader{n}@example.net"]) for n in (1, 2, 3)
    ]
    # aiosmtpd's envelope.content is the DATA payload with the terminating ".\r\n" removed and
    # dot-stuffing undone. Our messages already end in CRLF, so nothing is added: the bytes received
    # must equal the bytes sent, including the 8-bit text and the line that starts with ".".
    for sent, received in zip(batch, smtp_server.messages):
        assert sent.data.endswith(b"\r\n")
        assert received.data == sent.data
    assert smtp_server.messages[0].parsed()["Subject"] == "Issue 1"


def test_smtp_permanent_refusal_fails_only_that_recipient(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server()
    server.handler.reject["reader2@example.net"] = "550 5.1.1 No such user"
    with smtp_backend(tmp_path, server) as backend:
        results = backend.send([outgoing(1), outgoing(2), outgoing(3)])

    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.FAILED, SendStatus.SENT]
    assert results[1].detail == "550 5.1.1 No such user"
    assert [m.recipients for m in server.messages] == [["reader1@example.net"], ["reader3@example.net"]]
    assert server.handler.connections_per_message() == [1, 1]  # the refusal did not cost the connection


def test_smtp_pipelines_the_envelope_only_when_the_server_offers_it(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server()
    with smtp_backend(tmp_path, server) as backend:
        results = backend.send([outgoing(n) for n in (1, 2, 3)])

    assert [r.status for r in results] == [SendStatus.SENT] * 3
    assert server.handler.pipelined == [server.handler.pipelining] * 3


def test_smtp_pipelining_sends_the_next_envelope_with_the_message_before(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    """One round trip per message: the content, the final dot and the next MAIL, RCPT and DATA go out
    together (RFC 2920 lets the content start a group). The last message of a batch has no next."""
    server = start_server()
    with smtp_backend(tmp_path, server) as backend:
        results = backend.send([outgoing(n) for n in (1, 2, 3)])

    assert [r.status for r in results] == [SendStatus.SENT] * 3
    assert server.handler.next_envelope_along == [server.handler.pipelining] * 2 + [False]
    assert server.handler.connections_per_message() == [1, 1, 1]


def test_smtp_under_a_rate_limit_sends_no_envelope_early(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    """The limiter's wait must not fall between a message's DATA and its content."""
    server = start_server()
    with smtp_backend(tmp_path, server, rate_limit=1000) as backend:
        results = backend.send([outgoing(n) for n in (1, 2, 3)])

    assert [r.status for r in results] == [SendStatus.SENT] * 3
    assert server.handler.next_envelope_along == [False] * 3


def test_smtp_a_message_that_cannot_be_signed_fails_alone_and_the_batch_goes_on(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    """Signing the next message fails after this one's DATA got its 354 (with PIPELINING its envelope would
    have gone out along): this one is still delivered, the unsigned one fails alone with its reason (not
    as a bounce: it says nothing about the address), and the rest of the batch is sent."""
    server = start_server()
    with smtp_backend(tmp_path, server, timeout=30) as backend:
        sign = backend.sign

        def failing_sign(data: bytes) -> bytes:
            if b"reader2@" in data:
                raise RuntimeError("the DKIM key cannot sign")
            return sign(data)

        backend.sign = failing_sign  # type: ignore[method-assign]
        started = time.monotonic()
        results = backend.send([outgoing(1), outgoing(2), outgoing(3)])
        took = time.monotonic() - started

    assert [(r.status, r.bounce) for r in results] == [
        (SendStatus.SENT, True), (SendStatus.FAILED, False), (SendStatus.SENT, True)]
    assert "could not be DKIM-signed (RuntimeError: the DKIM key cannot sign)" in results[1].detail
    assert [m.recipients for m in server.messages] == [["reader1@example.net"], ["reader3@example.net"]]
    assert took < 10  # not a wait for the 30 s timeout on a connection stuck in DATA


def test_smtp_an_unexpected_error_on_one_message_fails_it_alone(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    """A bug or a library error while one message is on the wire: that message fails with the error (it
    may have arrived, so it is not resent), the connection is not used again, the others go out."""
    server = start_server()
    with smtp_backend(tmp_path, server, timeout=30) as backend:
        lane = backend._lanes[0]
        content = lane._content

        def broken_content(smtp, envelope, take_following):  # type: ignore[no-untyped-def]
            if envelope.message.delivery_id == 2:
                raise KeyError("a bug")
            return content(smtp, envelope, take_following)

        lane._content = broken_content  # type: ignore[method-assign]
        results = backend.send([outgoing(1), outgoing(2), outgoing(3)])

    assert [(r.status, r.bounce) for r in results] == [
        (SendStatus.SENT, True), (SendStatus.FAILED, False), (SendStatus.SENT, True)]
    assert "KeyError" in results[1].detail
    assert [m.recipients for m in server.messages] == [["reader1@example.net"], ["reader3@example.net"]]


def test_smtp_ehlo_name_is_the_senders_domain_unless_set(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server()
    with smtp_backend(tmp_path, server) as backend:
        backend.send([outgoing(1)])
    with smtp_backend(tmp_path / "b", server, ehlo_name="mail-out.example.net") as backend:
        backend.send([outgoing(2)])
    assert [session.host_name for session in server.handler.sessions] == ["example.org", "mail-out.example.net"]
    with pytest.raises(ConfigError, match="ehlo_name"):
        smtp_config(tmp_path, host="localhost", ehlo_name="bad name\r\nMAIL FROM:<x@y>")


def test_smtp_message_refused_at_the_final_dot_fails_alone_and_the_next_one_goes_on(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    """A refusal of the content must not send an RSET, which a server that already took the next
    message's pipelined DATA would read as that message's content."""
    server = start_server()
    server.handler.refuse_data["reader2@example.net"] = "554 5.7.1 Message content rejected"
    with smtp_backend(tmp_path, server) as backend:
        results = backend.send([outgoing(n) for n in (1, 2, 3)])

    assert [(r.status, r.detail) for r in results] == [
        (SendStatus.SENT, "250 Message accepted"),
        (SendStatus.FAILED, "554 5.7.1 Message content rejected"),
        (SendStatus.SENT, "250 Message accepted"),
    ]
    assert [m.recipients for m in server.messages] == [["reader1@example.net"], ["reader3@example.net"]]
    assert server.messages[1].data == outgoing(3).data
    assert server.handler.connections_per_message() == [1, 1]


def test_smtp_421_at_the_final_dot_retries_that_message_and_the_next_goes_on_a_new_connection(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server()
    server.handler.refuse_data["reader2@example.net"] = "421 4.3.2 Shutting down"
    with smtp_backend(tmp_path, server) as backend:
        results = backend.send([outgoing(n) for n in (1, 2, 3)])

    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.RETRY, SendStatus.SENT]
    assert results[1].detail == "421 4.3.2 Shutting down"
    assert [m.recipients for m in server.messages] == [["reader1@example.net"], ["reader3@example.net"]]
    assert server.handler.connections_per_message() == [1, 2]


def test_smtp_refused_envelope_sender_is_retried_not_a_bounce_and_the_connection_goes_on(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server()
    server.handler.refuse_mail = "553 5.7.1 Sender address rejected"
    with smtp_backend(tmp_path, server) as backend:
        refused = backend.send([outgoing(1)])
        server.handler.refuse_mail = ""
        accepted = backend.send([outgoing(2)])

    assert refused[0].status is SendStatus.RETRY
    assert refused[0].detail == f"envelope sender {SENDER} refused: 553 5.7.1 Sender address rejected"
    assert accepted[0].status is SendStatus.SENT
    assert [m.recipients for m in server.messages] == [["reader2@example.net"]]  # no empty message either
    assert server.handler.connections_per_message() == [1]


@pytest.mark.parametrize("reply", ["451 4.3.0 Mailbox busy, try later", "421 4.3.2 Service shutting down"])
def test_smtp_temporary_refusal_is_retried_and_the_batch_goes_on(
    tmp_path: Path, start_server: Callable[..., RunningServer], reply: str
) -> None:
    smtp_server = start_server()
    smtp_server.handler.reject["reader1@example.net"] = reply
    with smtp_backend(tmp_path, smtp_server) as backend:
        results = backend.send([outgoing(1), outgoing(2)])

    assert (results[0].status, results[0].detail) == (SendStatus.RETRY, reply)
    assert results[1].status is SendStatus.SENT
    assert [m.recipients for m in smtp_server.messages] == [["reader2@example.net"]]


def test_smtp_pipelined_envelope_refused_although_data_got_354_ends_with_an_empty_message(tmp_path: Path) -> None:
    """RFC 2920 says a server must refuse DATA when no recipient was accepted; one that answers 354 anyway
    is given the lone "." it now waits for, so the connection stays in step for the next message."""
    script = {b"MAIL": b"250 OK", b"RCPT": b"550 5.1.1 No such user", b"DATA": b"354 Go ahead", b".": b"554 No recipients",
              b"RSET": b"250 OK", b"QUIT": b"221 Bye"}
    seen: list[bytes] = []

    class Sloppy(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"220 sloppy ESMTP\r\n")
            for line in self.rfile:
                command = line.strip().split(b" ")[0].split(b":")[0].upper()
                seen.append(command)
                if command == b"EHLO":
                    self.wfile.write(b"250-sloppy\r\n250 PIPELINING\r\n")
                    continue
                self.wfile.write(script[command] + b"\r\n")
                if command == b"QUIT":
                    return

    with socketserver.TCPServer(("127.0.0.1", 0), Sloppy) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        address = SmtpServer("127.0.0.1", server.server_address[1], RecordingHandler())
        with smtp_backend(tmp_path, address) as backend:
            results = backend.send([outgoing(1), outgoing(2)])
        server.shutdown()

    assert [(r.status, r.detail) for r in results] == [(SendStatus.FAILED, "550 5.1.1 No such user")] * 2
    assert seen[1:] == [b"MAIL", b"RCPT", b"DATA", b".", b"RSET"] * 2 + [b"QUIT"]


def test_smtp_reconnects_after_max_messages_per_connection(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server()
    with smtp_backend(tmp_path, server, max_messages_per_connection=2) as backend:
        results = backend.send([outgoing(n) for n in range(1, 6)])

    assert [r.status for r in results] == [SendStatus.SENT] * 5
    assert [m.recipients[0] for m in server.messages] == [f"reader{n}@example.net" for n in range(1, 6)]
    assert server.handler.connections_per_message() == [1, 1, 2, 2, 3]


def test_smtp_reconnects_when_the_server_dropped_the_connection(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server()
    with smtp_backend(tmp_path, server) as backend:
        first = backend.send([outgoing(1)])
        server.handler.drop_next_mail = True
        second = backend.send([outgoing(2), outgoing(3)])

    assert [r.status for r in first + second] == [SendStatus.SENT] * 3
    assert [m.recipients[0] for m in server.messages] == [f"reader{n}@example.net" for n in (1, 2, 3)]
    assert server.handler.connections_per_message() == [1, 2, 2]


def test_smtp_batch_is_refused_whole_when_the_server_is_gone(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server()
    with smtp_backend(tmp_path, server, timeout=5) as backend:
        server.stop()  # closes our connection; reconnecting is refused
        with pytest.raises(DeliveryError, match=f"cannot connect to 127.0.0.1:{server.port}"):
            backend.send([outgoing(1), outgoing(2)])


def test_smtp_server_lost_mid_batch_leaves_the_rest_for_retry(
    tmp_path: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server()
    with smtp_backend(tmp_path, server, timeout=5) as backend:
        first = backend.send([outgoing(1)])
        lane = backend._lanes[0]
        original = lane._transaction

        def stop_after_first(message: OutgoingMessage, take_following: Any) -> SendResult:
            if message.delivery_id == 3:
                server.stop()
            return original(message, take_following)

        lane._transaction = stop_after_first  # type: ignore[method-assign]
        results = backend.send([outgoing(2), outgoing(3), outgoing(4)])

    assert first[0].status is SendStatus.SENT
    assert [r.status for r in results] == [SendStatus.SENT, SendStatus.RETRY, SendStatus.RETRY]
    assert f"127.0.0.1:{server.port}" in results[1].detail


@pytest.mark.parametrize("smtputf8", [True, False])
def test_smtp_a_non_ascii_address_fails_that_message_only(
    tmp_path: Path, start_server: Callable[..., RunningServer], smtputf8: bool
) -> None:
    """The message builder sends to plain ASCII addresses only; one handed to the backend anyway is not
    sent (whether or not the server offers SMTPUTF8), not counted as a bounce, and the batch goes on."""
    server = start_server(enable_SMTPUTF8=smtputf8)
    with smtp_backend(tmp_path, server) as backend:
        results = backend.send([outgoing(1, "jörg@example.net"), outgoing(2)])

    assert (results[0].status, results[0].bounce) == (SendStatus.FAILED, False)
    assert "not a plain ASCII address" in results[0].detail
    assert results[1].status is SendStatus.SENT
    assert [m.recipients for m in server.messages] == [["reader2@example.net"]]


def test_smtp_describe_and_defaults(tmp_path: Path) -> None:
    backend = create_backend(smtp_config(tmp_path, host="smtp.example.org"))
    assert backend.describe() == "smtp smtp.example.org:587 (starttls, 4 connection(s))"


# -- SMTP: connecting, TLS and login ------------------------------------------------------------


def test_smtp_unreachable_server_fails_at_open_naming_host_and_port(tmp_path: Path) -> None:
    port = unused_port()
    backend = create_backend(smtp_config(tmp_path, host="127.0.0.1", port=port, security="none"))
    with pytest.raises(DeliveryError) as raised:
        backend.open()
    message = str(raised.value)
    assert f"cannot connect to 127.0.0.1:{port} (Connection refused)" in message
    assert "backend.options.host/port" in message


def test_smtp_starttls_against_an_implicit_tls_port_times_out_with_a_hint(
    tmp_path: Path, tls_server: Callable[..., RunningServer]
) -> None:
    server = tls_server(implicit=True)  # waits for a TLS hello while the client waits for a greeting
    backend = smtp_backend(tmp_path, server, security="starttls", timeout=0.5)
    with pytest.raises(DeliveryError) as raised:
        backend.open()
    assert f"no answer from 127.0.0.1:{server.port} within 0.5 s" in str(raised.value)
    assert "port 465 needs security: tls" in str(raised.value)


def test_smtp_implicit_tls_against_a_plain_port_names_the_security_option(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    backend = smtp_backend(tmp_path, smtp_server, security="tls")
    with pytest.raises(DeliveryError) as raised:
        backend.open()
    assert f"TLS with 127.0.0.1:{smtp_server.port} failed" in str(raised.value)
    assert "check backend.options.security" in str(raised.value)


def test_smtp_starttls_and_login_deliver(
    tmp_path: Path,
    tls_server: Callable[..., RunningServer],
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", PASSWORD)
    authenticator = Authenticator()
    server = auth_server(tls_server, authenticator)
    options = {"security": "starttls", "username": "alice", "ca_file": ca_file}
    with smtp_backend(tmp_path, server, **options) as backend:
        results = backend.send([outgoing(1)])

    # The server refuses MAIL before STARTTLS and before AUTH, so arriving proves both happened.
    assert results[0].status is SendStatus.SENT
    assert server.messages[0].data == outgoing(1).data
    assert authenticator.attempts == [("LOGIN", "alice")]


def test_smtp_implicit_tls_delivers(
    tmp_path: Path, tls_server: Callable[..., RunningServer], ca_file: str
) -> None:
    server = tls_server(implicit=True)
    with smtp_backend(tmp_path, server, security="tls", ca_file=ca_file) as backend:
        results = backend.send([outgoing(1)])

    assert results[0].status is SendStatus.SENT
    assert server.messages[0].data == outgoing(1).data


def test_smtp_wrong_password_fails_at_open(
    tmp_path: Path,
    tls_server: Callable[..., RunningServer],
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "wrong")
    server = auth_server(tls_server, Authenticator())
    backend = smtp_backend(tmp_path, server, security="starttls", username="alice", ca_file=ca_file)
    with pytest.raises(DeliveryError) as raised:
        backend.open()
    message = str(raised.value)
    assert f"127.0.0.1:{server.port} refused the login as 'alice' (535" in message
    assert "NEWSLETTER_SMTP_PASSWORD" in message


def test_smtp_missing_password_variable_fails_at_open(
    tmp_path: Path, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SMTP_PASSWORD", raising=False)
    backend = smtp_backend(tmp_path, smtp_server, username="alice")
    with pytest.raises(DeliveryError, match="set NEWSLETTER_SMTP_PASSWORD"):
        backend.open()


def test_smtp_certificate_from_an_unknown_ca_is_refused(
    tmp_path: Path, tls_server: Callable[..., RunningServer]
) -> None:
    server = tls_server()
    backend = smtp_backend(tmp_path, server, security="starttls")  # no ca_file: system CAs only
    with pytest.raises(DeliveryError) as raised:
        backend.open()
    assert f"cannot verify the TLS certificate of 127.0.0.1:{server.port}" in str(raised.value)
    assert "backend.options.ca_file" in str(raised.value)
    assert server.messages == []


# -- file ---------------------------------------------------------------------------------------


def test_file_backend_writes_one_eml_per_message_and_overwrites_on_resend(tmp_path: Path) -> None:
    backend = create_backend(make_config(tmp_path, backend={"name": "file", "options": {"outbox": "out"}}))
    outbox = tmp_path / "out"
    with backend:
        results = backend.send([outgoing(1), outgoing(2)])
        resent = outgoing(1, body="Corrected text.\n")
        again = backend.send([resent])

    assert [r.status for r in results + again] == [SendStatus.SENT] * 3
    first, second = outbox / "issue-1.1_example.org.eml", outbox / "issue-1.2_example.org.eml"
    assert sorted(outbox.iterdir()) == [first, second]  # no duplicate, no .tmp left behind
    assert first.read_bytes() == resent.data
    assert second.read_bytes() == outgoing(2).data
    assert again[0].detail == str(first)


def test_file_backend_unusable_outbox_fails_at_open(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    config = make_config(tmp_path, backend={"name": "file", "options": {"outbox": "not-a-folder/out"}})
    with pytest.raises(DeliveryError) as raised:
        create_backend(config).open()
    assert f"cannot create the outbox {tmp_path / 'not-a-folder' / 'out'}" in str(raised.value)
    assert "check backend.options.outbox" in str(raised.value)


# -- console ------------------------------------------------------------------------------------


def test_console_backend_prints_recipient_and_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = create_backend(make_config(tmp_path, backend={"name": "console"}))
    with backend:
        results = backend.send([outgoing(1), outgoing(2)])

    out = capsys.readouterr().out
    assert [r.status for r in results] == [SendStatus.SENT] * 2
    assert "to reader1@example.net" in out and "to reader2@example.net" in out
    assert "Subject: Issue 1" in out
    assert "Hello reader 2 – grüße." in out
    assert "\r" not in out


# -- loading by name ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"), [("console", ConsoleBackend), ("file", FileBackend), ("smtp", SmtpBackend)]
)
def test_backend_class_finds_builtins_by_name(name: str, cls: type) -> None:
    assert backend_class(name) is cls


def test_unknown_backend_lists_the_installed_ones(tmp_path: Path) -> None:
    with pytest.raises(BackendNotFound, match=r"'carrier-pigeon'.*installed backends: console, file, smtp"):
        make_config(tmp_path, backend={"name": "carrier-pigeon"})


def test_misspelt_smtp_option_names_the_key_and_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        smtp_config(tmp_path, host="smtp.example.org", prot=465)
    message = str(raised.value)
    assert "unknown key 'backend.options.prot'" in message
    assert "host, port, security, username, timeout, max_messages_per_connection, ca_file" in message


def test_misspelt_required_smtp_option_is_named_rather_than_reported_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'backend\.options\.hots'.*allows: host, port"):
        smtp_config(tmp_path, hots="smtp.example.org")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"host": "x", "security": "ssl"}, "backend.options.security: Input should be 'starttls', 'tls' or 'none'"),
        ({"host": "x", "port": 0}, "backend.options.port: Input should be greater than or equal to 1"),
        ({"host": "x", "port": 70000}, "backend.options.port: Input should be less than or equal to 65535"),
        ({"port": 25}, "backend.options.host: Field required"),
        (
            {"host": "smtp.example.org", "security": "none", "username": "u"},
            "backend.options: a username with security 'none' would send the password unencrypted",
        ),
        ({"host": "x", "security": "none", "ca_file": "ca.pem"}, "backend.options: ca_file is only used with"),
    ],
)
def test_bad_smtp_option_values_fail_at_config_load(
    tmp_path: Path, options: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        smtp_config(tmp_path, **options)


# -- SMTP: parallel connections, rate limit, DKIM, Feedback-ID ------------------------------------------------


@dataclass
class ConcurrentHandler(SessionHandler):
    """Holds each DATA until ``expected`` sessions are in DATA at once (or 5 s pass); records the peak."""

    expected: int = 3
    active: int = 0
    peak: int = 0

    def __post_init__(self) -> None:
        import asyncio

        self.all_in = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio

        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.active >= self.expected:
            self.all_in.set()
        try:
            await asyncio.wait_for(self.all_in.wait(), timeout=60)  # generous: a busy machine starts connections late
        except TimeoutError:
            pass
        self.active -= 1
        return await super().handle_DATA(server, session, envelope)


def send_over_parallel_connections(
    tmp_path: Path, connections: int, messages: int
) -> tuple[ConcurrentHandler, list[SendResult]]:
    """Send ``messages`` over ``connections`` connections to a server that holds each DATA until that many
    sessions are in DATA at once."""
    handler = ConcurrentHandler(expected=connections)
    controller = Controller(handler, hostname="127.0.0.1", port=unused_port())
    controller.start()
    try:
        server = SmtpServer("127.0.0.1", controller.port, handler)
        with smtp_backend(tmp_path, server, connections=connections) as backend:
            return handler, backend.send([outgoing(n) for n in range(1, messages + 1)])
    finally:
        controller.stop()


def test_smtp_sends_over_parallel_connections(tmp_path: Path) -> None:
    handler, results = send_over_parallel_connections(tmp_path, connections=3, messages=6)
    assert [r.status for r in results] == [SendStatus.SENT] * 6
    assert [r.delivery_id for r in results] == list(range(1, 7))
    assert handler.peak == 3 and handler.all_in.is_set()
    assert len(set(handler.connections_per_message())) == 3
    assert sorted(m.recipients[0] for m in handler.messages) == sorted(f"reader{n}@example.net" for n in range(1, 7))


def test_smtp_a_batch_no_larger_than_the_connections_uses_every_connection(tmp_path: Path) -> None:
    """A connection takes its next message only when it can send that message's envelope early: without
    PIPELINING, never, so four messages go over four connections at once, not two by two."""
    handler, results = send_over_parallel_connections(tmp_path, connections=4, messages=4)
    assert [r.status for r in results] == [SendStatus.SENT] * 4
    assert handler.peak == 4
    assert len(set(handler.connections_per_message())) == 4


def test_rate_limiter_spaces_messages_evenly_across_threads() -> None:
    from newsletter.backends.smtp import RateLimiter

    now = [100.0]
    slept: list[float] = []
    limiter = RateLimiter(4, clock=lambda: now[0], sleep=slept.append)  # 4/s: one every 0.25 s
    for _ in range(4):
        limiter.acquire()
    assert slept == [0.25, 0.5, 0.75]  # the first goes at once, each later one waits its turn
    now[0] += 10  # idle for a while: no burst credit is saved up beyond the next slot
    slept.clear()
    limiter.acquire()
    limiter.acquire()
    assert slept == [0.25]


@pytest.fixture
def dkim_verifier(tmp_path: Path):
    """A fresh RSA key in ``tmp_path/dkim.pem`` (selector ``nl2026``, domain example.org); returns dkimpy's
    verifier with the key's public half as the only DNS record it can look up."""
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "dkim.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    dns = {b"nl2026._domainkey.example.org.": f"v=DKIM1; k=rsa; p={public}".encode()}
    return lambda message: dkim.verify(message, dnsfunc=lambda name, timeout=5: dns.get(name))


def test_dkim_signature_covers_the_list_headers_and_verifies(config, engine, smtp_server, tmp_path: Path,
                                                             dkim_verifier) -> None:
    from newsletter.delivery import send_issue
    from newsletter.issues import prepare_issue
    from tests.conftest import make_config
    from tests.helpers import add_people, add_summaries

    smtp = make_config(tmp_path, backend={"name": "smtp", "options": {
        "host": smtp_server.host, "port": smtp_server.port, "security": "none", "dkim_selector": "nl2026",
        "dkim_private_key": "dkim.pem", "feedback_id": "digest:weekly:newsletter:example"}})
    add_summaries(engine, 1)
    add_people(engine, "ada@example.org")
    prepare_issue(engine, smtp)
    assert send_issue(engine, smtp, create_backend(smtp), 1).sent == 1

    data = smtp_server.messages[0].data
    message = smtp_server.messages[0].parsed()
    assert message["Feedback-ID"] == "digest:weekly:newsletter:example"
    signed = {h.strip().lower() for h in str(message["DKIM-Signature"]).replace("\r\n", "").split("h=")[1].split(";")[0].split(":")}
    assert {"from", "subject", "list-unsubscribe", "list-unsubscribe-post", "feedback-id", "to"} <= signed
    assert dkim_verifier(data)
    tampered = data.replace(b"List-Unsubscribe: <https://", b"List-Unsubscribe: <http://", 1)
    assert not dkim_verifier(tampered)


def test_dkim_is_relaxed_and_over_signs_what_a_reader_sees(config, engine, smtp_server, tmp_path: Path,
                                                           dkim_verifier) -> None:
    """relaxed/relaxed survives a relay that re-spaces headers or body lines; every header a reader sees
    or acts on is named once more in h= than it appears, so a copy with a second From, Subject or
    List-Unsubscribe put in front (or a Reply-To added) no longer verifies. Judged by dkimpy's verifier."""
    import email
    import email.policy

    from newsletter.delivery import send_issue
    from newsletter.issues import prepare_issue
    from tests.helpers import add_people, add_summaries

    smtp = make_config(tmp_path, backend={"name": "smtp", "options": {
        "host": smtp_server.host, "port": smtp_server.port, "security": "none", "dkim_selector": "nl2026",
        "dkim_private_key": "dkim.pem"}})
    add_summaries(engine, 1)
    add_people(engine, "ada@example.org")
    prepare_issue(engine, smtp)
    assert send_issue(engine, smtp, create_backend(smtp), 1).sent == 1
    data = smtp_server.messages[0].data
    verifies = dkim_verifier

    signature = email.message_from_bytes(data, policy=email.policy.default)["DKIM-Signature"]
    tags = dict(tag.strip().split("=", 1) for tag in "".join(str(signature).split()).split(";") if tag.strip())
    assert tags["c"] == "relaxed/relaxed"
    named = [name.lower() for name in tags["h"].split(":")]
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    present = [line.split(":", 1)[0].lower() for line in head.split("\r\n") if line[:1] not in (" ", "\t")]
    for header in ("from", "to", "subject", "date", "message-id", "list-id", "list-unsubscribe",
                   "list-unsubscribe-post", "reply-to"):
        assert named.count(header) == present.count(header) + 1, header
    assert verifies(data)

    signature_end = data.index(b"\r\nFrom: ") + 2
    for extra in (b"List-Unsubscribe: <https://evil.example/u>\r\n", b"From: Bank <security@example.org>\r\n",
                  b"Subject: Your account is locked\r\n", b"Reply-To: thief@evil.example\r\n"):
        assert not verifies(data[:signature_end] + extra + data[signature_end:]), extra
    respaced = data.replace(b"\r\nSubject: ", b"\r\nSubject:   ", 1).replace(b"\r\n\r\n--", b"  \r\n\r\n--", 1)
    assert respaced != data and verifies(respaced)


def test_a_dkim_key_that_cannot_sign_stops_the_send_at_open(tmp_path: Path, smtp_server: SmtpServer) -> None:
    (tmp_path / "k.pem").write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    backend = smtp_backend(tmp_path, smtp_server, dkim_selector="s1", dkim_private_key="k.pem")
    with pytest.raises(DeliveryError, match="the DKIM private key cannot be read"):
        backend.open()


def test_dkim_without_dkimpy_installed_says_what_to_install(tmp_path: Path, smtp_server: SmtpServer, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "dkim", None)  # as if not installed
    backend = smtp_backend(tmp_path, smtp_server, dkim_selector="s1", dkim_private_key="k.pem")
    with pytest.raises(DeliveryError, match=r"dkimpy is not installed; run: pip install 'newsletter\[dkim\]'"):
        backend.open()
