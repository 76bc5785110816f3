"""Sending backends, found by name in the ``newsletter.backends`` entry-point group: the backend registry.

Built-ins (console, file, smtp) are registered in ``pyproject.toml`` exactly like third-party plugins, so
the core never branches on a backend's name. The configuration keeps ``backend.options`` as the mapping
the file gives; :func:`check_backend` validates it against the chosen backend's ``Options`` model (the
commands call it at start, :func:`create_backend` again), so ``newsletter.config`` never imports a backend.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from newsletter.backends.base import Backend, OutgoingMessage, SendResult, SendStatus
from newsletter.errors import BackendNotFound, ConfigError
from newsletter.plugins import load_plugin

if TYPE_CHECKING:
    from newsletter.config import Config

GROUP = "newsletter.backends"

__all__ = [
    "Backend", "OutgoingMessage", "SendResult", "SendStatus", "backend_class", "check_backend", "create_backend",
]


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


def check_backend(config: Config) -> tuple[type[Backend], BaseModel]:
    """The configured backend class and its options, validated: BackendNotFound for an unknown name,
    ConfigError naming the key (``backend.options.prot``) and what the backend allows for bad options."""
    cls = backend_class(config.backend.name, source=config.source)
    try:
        return cls, cls.Options.model_validate(config.backend.options)
    except ValidationError as exc:
        errors = exc.errors()
        error: Any = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo first
        key = ".".join(["backend", "options", *(str(part) for part in error["loc"])])
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(cls.Options.model_fields)
            raise ConfigError(
                f"{config.source}: unknown key '{key}'; the {config.backend.name} backend allows: {allowed}"
            ) from None
        raise ConfigError(f"{config.source}: {key}: {error['msg'].removeprefix('Value error, ')}") from None


def create_backend(config: Config) -> Backend:
    """Instantiate the configured backend with its validated options (see :func:`check_backend`)."""
    cls, options = check_backend(config)
    return cls(options, config=config)
