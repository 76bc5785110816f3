"""The console backend: prints each message to standard output. For trying things out; sends nothing."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from newsletter.backends.base import Backend, OutgoingMessage, SendResult, SendStatus


class ConsoleBackend(Backend):
    max_in_flight = None  # nothing leaves the machine
    def send(self, batch: Sequence[OutgoingMessage]) -> list[SendResult]:
        out = sys.stdout
        for message in batch:
            out.write(f"----- message {message.message_id} to {message.recipient} -----\n")
            out.write(message.data.decode("utf-8", errors="replace").replace("\r\n", "\n"))
            out.write("\n")
        out.flush()
        return [SendResult(m.delivery_id, SendStatus.SENT, "printed") for m in batch]

    def describe(self) -> str:
        return "console (standard output)"
