"""The SMTP backend's connections, driven by one thread over non-blocking sockets.

Each connection ("lane") runs its messages' transactions as a generator (:meth:`SmtpLane.work` in
:mod:`newsletter.backends.smtp`) that reads like blocking code and yields what it waits for:

- :class:`Send` ``(parts)``: bytes to write (queued at once; a failure comes up at the next wait);
- :data:`REPLY`: one complete server reply, sent back as ``(code, text)`` like ``smtplib.SMTP.getreply``;
  a lost connection or a reply later than ``timeout`` is thrown in as ``SMTPServerDisconnected``;
- :class:`Connect`: a new connection, made by ``lane.connect()`` in a helper thread (connecting, TLS and
  login may take a remote server long; the other lanes go on meanwhile), or its DeliveryError thrown in;
- :class:`Sleep` ``(seconds)``: a pause (the rate limit);
- :data:`TAKE`: the next message put into the wire, sent back as ``(key, message)``, or None when the wire
  closes.

One thread for every connection instead of a thread each: the lanes take no turns at the interpreter's
lock with each other, and each message costs about half the CPU time (``docs/benchmarks.md``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import smtplib
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from newsletter.backends.base import OutgoingMessage, SendResult, SendStatus, Stream
from newsletter.errors import DeliveryError

log = logging.getLogger(__name__)

MAX_LINE = 8192  # smtplib's limit on a reply line


@dataclass(frozen=True)
class Send:
    parts: tuple[bytes, ...]


@dataclass(frozen=True)
class Connect:
    pass


@dataclass(frozen=True)
class Sleep:
    seconds: float


REPLY = "reply"
TAKE = "take"

Item = tuple[Any, OutgoingMessage]  # a message and the key its result is reported under
Work = Generator[Any, Any, None]


class Lane(Protocol):
    """What the wire needs of a connection; see :class:`newsletter.backends.smtp.SmtpLane`."""

    timeout: float
    sock: socket.socket | None  # the connection's socket while it has one

    def connect(self) -> Any:
        """A new connection (blocking, run in a helper thread); DeliveryError if there is none."""

    def adopt(self, connection: Any) -> None:
        """Use ``connection`` (what :meth:`connect` returned) from now on."""

    def drop(self) -> None:
        """Forget the connection without talking to the server."""

    def work(self, wire: Wire) -> Work:
        """The lane's life in this wire: take messages and send them until TAKE gives None."""


@dataclass
class _State:
    """The wire's view of one lane: its generator, what it waits for, its socket and buffers."""

    lane: Lane
    work: Work
    waiting: Any = None  # TAKE, REPLY, a Connect future, a Sleep deadline, or None while running
    sock: socket.socket | None = None  # the socket registered with the selector
    inbox: bytearray | None = None
    outbox: deque[memoryview] | None = None
    deadline: float | None = None  # when the reply (or the write) waited for is late
    closed: bool = False  # the server closed its end
    done: bool = False


class Wire:
    """Messages put in from any thread are sent over ``lanes`` by one thread of its own; results are
    collected by :meth:`take`. :meth:`close` stops it; lanes left in the middle of a transaction lose their
    connection, the others keep theirs (back in blocking mode) for the next wire."""

    def __init__(self, lanes: Sequence[Lane]) -> None:
        self._lock = threading.Lock()
        self._arrivals = threading.Condition(self._lock)
        self._incoming: list[Item] = []
        self._finished: list[tuple[Any, SendResult, DeliveryError | None]] = []
        self._enough = 1
        self._closing = False
        self._live = len(lanes)  # lanes not down
        self._queue: deque[Item] = deque()  # the I/O thread's: messages no lane has taken
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._helpers = ThreadPoolExecutor(len(lanes) or 1, thread_name_prefix="smtp-connect")
        self._timers: list[tuple[float, int, _State]] = []
        self._tick = itertools.count()
        self._states = [_State(lane, lane.work(self)) for lane in lanes]
        self._thread = threading.Thread(target=self._run, name="smtp-wire", daemon=True)
        self._thread.start()

    # -- any thread ------------------------------------------------------------------------------

    def put(self, items: Sequence[Item]) -> None:
        with self._lock:
            self._incoming.extend(items)
        self._wake()

    def take(self, timeout: float | None, enough: int = 1) -> tuple[list[tuple[Any, SendResult, DeliveryError | None]], bool]:
        """``(key, result, failure)`` of the messages finished since the last call, waiting up to
        ``timeout`` for ``enough`` of them; and whether any lane is still up."""
        with self._lock:
            if len(self._finished) < enough and self._live and timeout != 0:
                self._enough = enough  # the sending thread is woken once for all of them
                self._arrivals.wait_for(lambda: len(self._finished) >= enough or not self._live, timeout)
                self._enough = 1
            finished, self._finished = self._finished, []
            return finished, self._live > 0

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self._wake()
        self._thread.join()
        self._helpers.shutdown(wait=True)
        for state in self._states:  # a connection made for a lane that was stopped meanwhile
            if isinstance(state.waiting, Future) and not state.waiting.cancelled() and not state.waiting.exception():
                state.waiting.result().close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:  # already full of wake-ups
            pass

    # -- called by the lanes, in the I/O thread --------------------------------------------------

    def take_now(self) -> Item | None:
        """The next message if one is waiting (a lane sending its envelope early)."""
        return self._queue.popleft() if self._queue else None

    def give_back(self, item: Item) -> None:
        """A message a lane took but cannot send: first in line for the others."""
        self._queue.appendleft(item)

    def finish(self, key: Any, result: SendResult, failure: DeliveryError | None = None) -> None:
        with self._lock:
            self._finished.append((key, result, failure))
            if failure is not None:  # its lane is down
                self._live -= 1
            if len(self._finished) >= self._enough or not self._live:
                self._arrivals.notify()

    # -- the I/O thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            for state in self._states:
                self._step(state, None)
            while True:
                with self._lock:
                    self._queue.extend(self._incoming)
                    self._incoming.clear()
                    closing = self._closing
                if closing:
                    break
                for state in self._states:  # lanes waiting for a message get one
                    if state.waiting == TAKE and self._queue:
                        self._step(state, self._queue.popleft())
                self._poll()
        except BaseException:
            log.exception("the SMTP connections' thread failed")
            raise
        finally:
            self._stop()

    def _poll(self) -> None:
        now = time.monotonic()
        deadlines = [s.deadline for s in self._states if s.deadline is not None]
        if self._timers:
            deadlines.append(self._timers[0][0])
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        for key, mask in self._selector.select(timeout):
            if key.data is None:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            state: _State = key.data
            if state.sock is not key.fileobj:
                continue
            if mask & selectors.EVENT_WRITE and not self._flush(state):
                if state.waiting == REPLY:
                    self._step(state, None, smtplib.SMTPServerDisconnected("Server not connected"))
                continue
            if mask & selectors.EVENT_READ:
                self._receive(state)
            self._serve(state)
            if state.closed and state.waiting != REPLY:  # an idle connection the server closed
                state.lane.drop()
                self._sync(state)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, state = heapq.heappop(self._timers)
            if isinstance(state.waiting, Sleep):
                self._step(state, None)
        for state in self._states:
            if isinstance(state.waiting, Future) and state.waiting.done():
                future, state.waiting = state.waiting, None
                try:
                    connection = future.result()
                except BaseException as exc:  # noqa: BLE001  DeliveryError, or a bug: the lane's to handle
                    self._step(state, None, exc)
                else:
                    state.lane.adopt(connection)
                    self._step(state, connection)
            elif state.deadline is not None and state.deadline <= now and state.waiting == REPLY:
                self._fail(state, smtplib.SMTPServerDisconnected("Connection unexpectedly closed: timed out"))

    def _serve(self, state: _State) -> None:
        """Hand the lane the reply it waits for, if it is complete (or the loss of its connection)."""
        while state.waiting == REPLY and state.inbox is not None:
            reply = _reply(state.inbox)
            if reply is None:
                if state.closed:
                    self._fail(state, smtplib.SMTPServerDisconnected("Connection unexpectedly closed"))
                return
            if isinstance(reply, Exception):
                self._fail(state, reply)
                return
            self._step(state, reply)

    def _fail(self, state: _State, exc: BaseException) -> None:
        state.lane.drop()
        self._sync(state)
        self._step(state, None, exc)

    def _step(self, state: _State, value: Any, exc: BaseException | None = None) -> None:
        """Resume the lane's generator with ``value`` (or ``exc``) until it waits for something."""
        state.waiting, state.deadline = None, None
        while not state.done:
            try:
                request = state.work.throw(exc) if exc is not None else state.work.send(value)
            except StopIteration:
                state.done = True
                self._sync(state)
                return
            value, exc = None, None
            self._sync(state)
            if isinstance(request, Send):
                if state.sock is None or state.outbox is None:
                    exc = smtplib.SMTPServerDisconnected("please run connect() first")
                    continue
                state.outbox.extend(memoryview(part) for part in request.parts if part)
                if not self._flush(state):
                    exc = smtplib.SMTPServerDisconnected("Server not connected")
                continue
            if request == REPLY:
                state.waiting = REPLY
                state.deadline = time.monotonic() + state.lane.timeout
                self._serve(state)
                return
            if request == TAKE:
                if self._queue and not self._closing:
                    value = self._queue.popleft()
                    continue
                if self._closing:
                    continue  # value None: the lane stops
                state.waiting = TAKE
                return
            if isinstance(request, Connect):
                future = self._helpers.submit(state.lane.connect)
                future.add_done_callback(lambda _: self._wake())
                state.waiting = future
                return
            if isinstance(request, Sleep):
                state.waiting = request
                heapq.heappush(self._timers, (time.monotonic() + request.seconds, next(self._tick), state))
                return
            raise TypeError(f"a lane yielded {request!r}")

    def _sync(self, state: _State) -> None:
        """Register the lane's current socket with the selector (non-blocking), and forget an old one."""
        sock = state.lane.sock
        if sock is state.sock:
            return
        if state.sock is not None:
            try:
                self._selector.unregister(state.sock)
            except (KeyError, ValueError, OSError):
                pass
        state.sock, state.inbox, state.outbox, state.closed = sock, None, None, False
        if sock is not None:
            sock.setblocking(False)
            state.inbox, state.outbox = bytearray(), deque()
            self._selector.register(sock, selectors.EVENT_READ, state)

    def _flush(self, state: _State) -> bool:
        """Write what the lane has queued, as far as the socket takes it; False when the connection broke."""
        sock, outbox = state.sock, state.outbox
        assert sock is not None and outbox is not None
        try:
            while outbox:
                if isinstance(sock, ssl.SSLSocket):  # no sendmsg: one buffer at a time
                    sent = sock.send(outbox[0])
                else:
                    sent = sock.sendmsg(outbox)
                while outbox and sent >= len(outbox[0]):
                    sent -= len(outbox.popleft())
                if sent:
                    outbox[0] = outbox[0][sent:]
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            pass
        except OSError:
            state.lane.drop()
            self._sync(state)
            return False
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if outbox else 0)
        self._selector.modify(sock, events, state)
        if outbox and state.deadline is None:
            state.deadline = time.monotonic() + state.lane.timeout
        return True

    def _receive(self, state: _State) -> None:
        sock, inbox = state.sock, state.inbox
        assert sock is not None and inbox is not None
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    state.closed = True
                    break
                inbox += data
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()) and len(data) < 65536:
                    break
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except OSError as exc:
            if state.waiting == REPLY:
                self._fail(state, smtplib.SMTPServerDisconnected(f"Connection unexpectedly closed: {exc}"))
            else:
                state.closed = True

    def _stop(self) -> None:
        """Stop every lane: an idle one keeps its connection (blocking again), a busy one loses it."""
        for state in self._states:
            if not state.done:
                try:
                    state.work.close()
                except Exception:  # noqa: BLE001  a lane's clean-up must not keep the others from theirs
                    log.exception("could not stop an SMTP connection cleanly")
            busy = state.waiting not in (TAKE, None) or (state.outbox is not None and state.outbox)
            if busy and not state.done:
                state.lane.drop()
            elif state.lane.sock is not None:
                state.lane.sock.settimeout(state.lane.timeout)  # blocking again, for QUIT
            if state.sock is not None:
                try:
                    self._selector.unregister(state.sock)
                except (KeyError, ValueError, OSError):
                    pass
            state.sock = None
        with self._lock:
            self._live = 0
            self._arrivals.notify_all()


def _reply(inbox: bytearray) -> tuple[int, bytes] | Exception | None:
    """One complete reply taken from the start of ``inbox`` as smtplib's ``getreply`` reads it (lines
    ending with LF, continued while the fourth character is "-"), or None if it has not all come yet."""
    lines: list[bytes] = []
    start = 0
    while True:
        end = inbox.find(b"\n", start)
        if end < 0:
            if len(inbox) - start > MAX_LINE:
                return smtplib.SMTPResponseException(500, "Line too long.")
            return None
        line = bytes(inbox[start:end + 1])
        if len(line) > MAX_LINE:
            return smtplib.SMTPResponseException(500, "Line too long.")
        start = end + 1
        lines.append(line[4:].strip(b" \t\r\n"))
        try:
            code = int(line[:3])
        except ValueError:
            code = -1
            break
        if line[3:4] != b"-":
            break
    del inbox[:start]
    return code, b"\n".join(lines)


class WireStream(Stream):
    """The send loop's :class:`~newsletter.backends.base.Stream` over a :class:`Wire` of all the backend's
    lanes: each takes its next message as soon as it has sent one (see the base class for the contract)."""

    def __init__(self, lanes: Sequence[Lane]) -> None:
        self._wire = Wire(lanes)
        self._failure: DeliveryError | None = None
        self._out = 0  # messages put whose results were not taken

    def put(self, messages: Sequence[OutgoingMessage]) -> None:
        self._out += len(messages)
        self._wire.put([(message.delivery_id, message) for message in messages])

    def take(self, timeout: float | None, enough: int = 1) -> list[SendResult]:
        finished, live = self._wire.take(timeout, max(1, min(enough, self._out)))
        self._out -= len(finished)
        for _, _, failure in finished:
            self._failure = self._failure or failure
        if not finished and not live:
            raise self._failure or DeliveryError("the SMTP connections stopped")
        return [result for _, result, _ in finished]

    def close(self) -> None:
        self._wire.close()


def carry(lane_work: Callable[[OutgoingMessage, Callable[[], OutgoingMessage | None]], Generator[Any, Any, SendResult]],
          wire: Wire) -> Work:
    """A lane's life in ``wire``: take a message, send it with ``lane_work(message, take_following)``, report
    its result, go on with the message it took early (if any), until the wire closes or the lane goes down.

    A DeliveryError from ``lane_work`` takes the lane down: its message is RETRY with the error, and a
    message it had taken early is given back for the other lanes. Any other exception fails that message
    alone (it may have been delivered, so it is not retried); the lane goes on.
    """
    item = yield TAKE
    while item is not None:
        key, message = item
        following: Item | None = None

        def take_following() -> OutgoingMessage | None:
            """The message this lane sends next, taken when its envelope can go out early."""
            nonlocal following
            if following is None:
                following = wire.take_now()
            return None if following is None else following[1]

        try:
            result = yield from lane_work(message, take_following)
        except DeliveryError as exc:
            if following is not None:
                wire.give_back(following)
            wire.finish(key, SendResult(message.delivery_id, SendStatus.RETRY, str(exc)), exc)
            return  # this lane is down; the others go on
        except Exception as exc:  # noqa: BLE001  a bug or a library error about this one message
            log.exception("could not send the message of delivery %d", message.delivery_id)
            result = SendResult(message.delivery_id, SendStatus.FAILED,
                                f"could not be sent ({type(exc).__name__}: {exc})", bounce=False)
        wire.finish(key, result)
        item = following if following is not None else (yield TAKE)
