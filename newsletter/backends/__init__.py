"""Sending backends, found by name in the ``newsletter.backends`` entry-point group.

Built-ins (console, file, smtp) are registered in ``pyproject.toml`` exactly like third-party plugins, so
the core never branches on a backend's name.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from newsletter.backends.base import Backend, OutgoingMessage, SendResult, SendStatus
from newsletter.errors import BackendNotFound
from newsletter.plugins import load_plugin

if TYPE_CHECKING:
    from newsletter.config import Config

GROUP = "newsletter.backends"

__all__ = ["Backend", "OutgoingMessage", "SendResult", "SendStatus", "backend_class", "create_backend"]


def available_backends() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def backend_class(name: str, *, source: str = "config") -> type[Backend]:
    """The Backend subclass registered as ``name``; raises BackendNotFound naming the choices."""
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        choices = ", ".join(available_backends()) or "none (is newsletter installed with pip?)"
        raise BackendNotFound(
            f"{source}: backend.name: no backend called {name!r}; installed backends: {choices}"
        )
    return load_plugin(matches[0], Backend, BackendNotFound, f"{source}: backend.name: ")


def create_backend(config: Config) -> Backend:
    """Instantiate the configured backend with its validated options."""
    cls = backend_class(config.backend.name, source=config.source)
    return cls(cls.Options.model_validate(config.backend.options), config=config)
