"""Loading plugin classes from entry points: backends and ingest readers register the same way."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import TypeVar

from newsletter.errors import NewsletterError

T = TypeVar("T")


def load_plugin(entry_point: EntryPoint, base: type[T], error: type[NewsletterError], where: str = "") -> type[T]:
    """The class ``entry_point`` names, checked to be a subclass of ``base``.

    Raises ``error`` (prefixed with ``where``) when it cannot be imported or is not such a class.
    """
    kind = base.__name__.lower()
    try:
        cls = entry_point.load()
    except ImportError as exc:
        raise error(
            f"{where}the {entry_point.name!r} {kind} ({entry_point.value}) could not be imported ({exc}); "
            f"install the package that provides it"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise error(
            f"{where}the {entry_point.name!r} {kind} ({entry_point.value}) is not a subclass of "
            f"{base.__module__}.{base.__name__}"
        )
    return cls
