"""A broken plugin gives a message naming it, not a traceback."""

from importlib.metadata import EntryPoint

import pytest

from newsletter.backends import Backend
from newsletter.errors import BackendNotFound, IngestError
from newsletter.ingest import Reader
from newsletter.plugins import load_plugin


def entry(value: str) -> EntryPoint:
    return EntryPoint(name="pigeon", value=value, group="newsletter.backends")


def test_a_plugin_that_cannot_be_imported_says_which_and_what_to_do():
    with pytest.raises(BackendNotFound, match=r"config.yaml: the 'pigeon' backend \(no_such_pkg.mod:X\) could "
                       r"not be imported .*; install the package that provides it"):
        load_plugin(entry("no_such_pkg.mod:X"), Backend, BackendNotFound, "config.yaml: ")


def test_a_plugin_of_the_wrong_kind_is_refused():
    with pytest.raises(IngestError, match=r"'pigeon' reader \(newsletter.models:Summary\) is not a subclass of "
                       r"newsletter.ingest.base.Reader"):
        load_plugin(entry("newsletter.models:Summary"), Reader, IngestError)


def test_a_good_plugin_loads():
    assert load_plugin(entry("newsletter.backends.file:FileBackend"), Backend, BackendNotFound).__name__ == "FileBackend"
