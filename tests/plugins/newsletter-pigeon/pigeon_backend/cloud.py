"""A backend that needs an optional dependency which is not installed."""

import carrier_pigeon_sdk  # noqa: F401

from newsletter.backends import Backend


class CloudBackend(Backend):
    pass
