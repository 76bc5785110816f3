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


# -- a third-party backend installed as a package ---------------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from tests.conftest import ROOT  # noqa: E402

PLUGIN = ROOT / "tests" / "plugins" / "newsletter-pigeon"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pigeon plugin pip-installed into a folder of its own (no network: no build isolation)."""
    import shutil

    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "pigeon"
    shutil.copytree(PLUGIN, source)  # setuptools builds in the source folder; keep the checkout clean
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(source)],
        check=True, capture_output=True,
    )
    return target


def newsletter_cli(site: Path, base: Path, backend: str, *args: str) -> subprocess.CompletedProcess[str]:
    settings = {
        "newsletter": {"name": "Research Weekly", "sender": "Research Weekly <digest@example.org>",
                       "postal_address": "1 Example Street, Example City", "site_url": "https://news.example.org"},
        "database": {"url": "sqlite:///newsletter.db"},
        "templates": str(ROOT / "templates"),
        "backend": {"name": backend},
    }
    (base / "config.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "NEWSLETTER_SECRET_KEY": "k"}
    return subprocess.run([sys.executable, "-m", "newsletter", *args, "-c", str(base / "config.yaml")],
                          cwd=base, env=env, capture_output=True, text=True, timeout=120)


def test_an_installed_plugin_is_picked_by_name_in_config(site: Path, tmp_path: Path) -> None:
    samples = ROOT / "newsletter" / "samples" / "summaries"
    assert newsletter_cli(site, tmp_path, "pigeon", "ingest", str(samples)).returncode == 0
    assert newsletter_cli(site, tmp_path, "pigeon", "subscribers", "add", "ada@example.org").returncode == 0
    assert newsletter_cli(site, tmp_path, "pigeon", "digest", "prepare").returncode == 0
    sent = newsletter_cli(site, tmp_path, "pigeon", "digest", "send")
    assert sent.returncode == 0, sent.stderr
    assert "sent 1" in sent.stdout and "via pigeon loft" in sent.stdout
    (letter,) = (tmp_path / "loft").glob("*.eml")
    assert b"To: Ada <ada@example.org>" in letter.read_bytes() or b"ada@example.org" in letter.read_bytes()


def test_a_plugin_missing_its_optional_dependency_says_what_to_install(site: Path, tmp_path: Path) -> None:
    result = newsletter_cli(site, tmp_path, "pigeon-cloud", "digest", "status")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: " + str(tmp_path / "config.yaml") + ": backend.name: the 'pigeon-cloud' backend from "
        "newsletter-pigeon needs the module 'carrier_pigeon_sdk', which is not installed; install it (e.g. pip "
        "install carrier-pigeon-sdk) or see newsletter-pigeon's documentation for its extras"
    ]


def test_a_missing_plugin_lists_the_installed_backends(site: Path, tmp_path: Path) -> None:
    result = newsletter_cli(site, tmp_path, "carrier", "digest", "status")
    assert result.returncode == 2
    assert "no backend called 'carrier'; installed backends: console, file, pigeon, pigeon-cloud, smtp" in result.stderr
