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
        package = entry_point.dist.name if entry_point.dist else "the package that provides it"
        missing = (exc.name or "").split(".")[0]
        if missing and missing != entry_point.module.split(".")[0]:  # the plugin is there, a dependency is not
            raise error(
                f"{where}the {entry_point.name!r} {kind} from {package} needs the module {exc.name!r}, which is "
                f"not installed; install it (e.g. pip install {missing.replace('_', '-')}) or "
                f"see {package}'s documentation for its extras"
            ) from None
        raise error(
            f"{where}the {entry_point.name!r} {kind} ({entry_point.value}) could not be imported ({exc}); "
            f"install {package}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise error(
            f"{where}the {entry_point.name!r} {kind} ({entry_point.value}) is not a subclass of "
            f"{base.__module__}.{base.__name__}"
        )
    return cls
