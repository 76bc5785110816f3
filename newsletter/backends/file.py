"""The file backend: writes each message as an ``.eml`` file into an outbox folder.

Files are written to a temporary name and renamed, so a reader of the outbox never sees half a message;
sending the same delivery again overwrites its file rather than adding a second one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from newsletter.backends.base import Backend, OutgoingMessage, SendResult, SendStatus
from newsletter.errors import DeliveryError


class FileOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    outbox: str = "outbox"  # relative to the config file's folder


class FileBackend(Backend):
    Options = FileOptions
    max_in_flight = None  # writing a message again replaces it

    @property
    def outbox(self) -> Path:
        return self.config.resolve(self.options.outbox)

    def open(self) -> None:
        try:
            self.outbox.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeliveryError(
                f"cannot create the outbox {self.outbox} ({exc.strerror}); "
                f"check backend.options.outbox in {self.config.source}"
            ) from None

    def send(self, batch: Sequence[OutgoingMessage]) -> list[SendResult]:
        results = []
        for message in batch:
            path = self.outbox / self.file_name(message)
            try:
                temporary = path.with_suffix(".tmp")
                temporary.write_bytes(message.data)
                os.replace(temporary, path)
            except OSError as exc:
                results.append(SendResult(message.delivery_id, SendStatus.RETRY, f"{path}: {exc.strerror}"))
            else:
                results.append(SendResult(message.delivery_id, SendStatus.SENT, str(path)))
        return results

    @staticmethod
    def file_name(message: OutgoingMessage) -> str:
        """``<message-id>.eml`` with characters unsafe in file names replaced."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", message.message_id.strip("<>"))
        return f"{stem}.eml"

    def describe(self) -> str:
        return f"file outbox {self.outbox}"
