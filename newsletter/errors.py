"""The exceptions newsletter raises for problems a user can fix.

Every message is written for the person at the keyboard: what went wrong, where (file, line, key), and
what to do. The CLI prints it on one line and exits non-zero; nothing else catches these silently.
"""


class NewsletterError(Exception):
    """Root of every error a user can act on. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(NewsletterError, ValueError):
    """The configuration file or an environment override is missing, malformed or has a bad value."""

    exit_code = 2


class InvalidAddress(NewsletterError, ValueError):
    """An email address that does not validate."""


class IngestError(NewsletterError, ValueError):
    """A summary file that cannot be read; the whole file is rejected."""


class InvalidToken(NewsletterError, ValueError):
    """A link token that was tampered with or signed for another purpose."""


class ExpiredToken(InvalidToken):
    """A link token whose validity period (confirmation links) has passed."""


class TemplateError(NewsletterError):
    """A template that is missing, does not render, or does not compile to HTML. ``file`` and ``line``
    name the file the problem is in, where known (the preview shows that line)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.line = line


class Conflict(NewsletterError):
    """The next issue was changed by someone else (another tab, a command) since the editor last saw it;
    nothing was changed. The desk answers it with HTTP 409."""


class DeliveryError(NewsletterError):
    """Sending cannot start or go on (no prepared issue, backend cannot connect, ...)."""


class DatabaseUnavailable(NewsletterError):
    """The database could not be reached, or stayed locked, for longer than the command may wait
    (``database.outage_limit``), or the command was stopped while waiting for it."""


class DatabaseFull(NewsletterError):
    """The disk holding the database is full: nothing was written by the statement that failed."""


class BackendNotFound(ConfigError, LookupError):
    """The configured backend name is not registered under the ``newsletter.backends`` entry points."""


class TransitionRefused(NewsletterError):
    """An issue was asked for a step its state does not allow (resume a cancelled issue, cancel a sent one);
    the message names its state and the step."""
