"""The SMTP backend (being written)."""

from newsletter.backends.base import Backend


class SmtpBackend(Backend):
    pass
