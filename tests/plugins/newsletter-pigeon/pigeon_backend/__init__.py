"""A backend plugin as small as it gets: options, one send method, per-message results."""

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from newsletter.backends import Backend, SendResult, SendStatus


class PigeonOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    loft: str = "loft"


class PigeonBackend(Backend):
    Options = PigeonOptions
    max_in_flight = None  # writing a message again replaces it

    def send(self, batch):
        loft = self.config.resolve(self.options.loft)
        loft.mkdir(parents=True, exist_ok=True)
        for message in batch:
            (Path(loft) / f"{message.delivery_id}.eml").write_bytes(message.data)
        return [SendResult(m.delivery_id, SendStatus.SENT, "flown") for m in batch]

    def describe(self):
        return "pigeon loft"
