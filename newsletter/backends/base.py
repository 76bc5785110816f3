"""The contract every sending backend fulfils.

The delivery loop owns the ledger; a backend only moves bytes. For each batch it is given ready-encoded
messages and returns one :class:`SendResult` per message, in the same order, never raising for a problem
with a single recipient. The loop is::

    with backend:                 # open() ... close()
        results = backend.send(batch)

A plugin subclasses :class:`Backend`, declares its options as a pydantic model in ``Options`` (validated
when the config is loaded, so a typo fails at start), and registers itself in its own package::

    [project.entry-points."newsletter.backends"]
    mybackend = "my_package.module:MyBackend"
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from newsletter.config import Config


class SendStatus(enum.StrEnum):
    """What happened to one message: the ledger maps these onto Delivery states."""

    SENT = "sent"  # accepted by the next hop
    RETRY = "retry"  # temporary failure (4xx, connection lost): try again later
    FAILED = "failed"  # permanent failure (5xx): do not try again


@dataclass(frozen=True)
class OutgoingMessage:
    """One message, ready to go: ``data`` is the complete RFC 5322 message with CRLF line endings."""

    delivery_id: int
    envelope_from: str
    recipient: str
    message_id: str
    data: bytes


@dataclass(frozen=True)
class SendResult:
    delivery_id: int
    status: SendStatus
    detail: str = ""  # the server's reply or the error, for the ledger and the operator
    # For FAILED: whether the recipient's server refused the address (a hard bounce, which stops mail to
    # the subscriber). False for a message that failed on our side (it could not be built or signed):
    # that says nothing about the address.
    bounce: bool = True


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backend:
    """Base class for sending backends.

    Subclasses implement :meth:`send`; :meth:`open` and :meth:`close` default to doing nothing. ``send``
    may raise only for a failure that affects the whole batch before anything was handed over (the loop
    then marks the batch for retry); per-recipient problems are reported as results.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions
    # How many messages the backend carries at once. The loop hands over this many times
    # delivery.in_flight_factor before it writes their results to the ledger: after a crash, at most that
    # many can be sent twice. None = the whole batch, for backends where sending the same message again
    # replaces it (files) or does nothing.
    max_in_flight: int | None = 1

    def __init__(self, options: BaseModel, *, config: Config) -> None:
        self.options = options
        self.config = config

    def open(self) -> None:
        """Acquire connections or folders. Raises DeliveryError with a message saying what to fix."""

    def send(self, batch: Sequence[OutgoingMessage]) -> list[SendResult]:
        """Send every message of ``batch``; return one result per message in the same order."""
        raise NotImplementedError(f"{type(self).__name__}.send")

    def close(self) -> None:
        """Release what :meth:`open` acquired. Called even when sending failed."""

    def extra_headers(self) -> dict[str, str]:
        """Headers every message of this backend carries (e.g. ``Feedback-ID``); written once per issue."""
        return {}

    def describe(self) -> str:
        """A short human description of where messages go, for the CLI's summary line."""
        return type(self).__name__

    def __enter__(self) -> Backend:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
