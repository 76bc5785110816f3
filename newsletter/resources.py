"""Where the files shipped with newsletter are: default templates and the demo's sample data.

In an installed wheel they sit inside the package (``newsletter/templates``, ``newsletter/samples``); in a
source checkout or editable install the templates and the example subscriber list are at the top of the
checkout, where editors find them.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent


def packaged_templates_dir() -> Path:
    """The default email templates that a user's templates folder overrides by file name."""
    inside = PACKAGE_DIR / "templates"
    return inside if inside.is_dir() else CHECKOUT_DIR / "templates"


def sample_summaries_dir() -> Path:
    """The bundled sample summaries the demo ingests."""
    return PACKAGE_DIR / "samples" / "summaries"


def sample_subscribers_csv() -> Path:
    """The example subscriber list (``subscribers/example.csv`` in the checkout)."""
    inside = PACKAGE_DIR / "samples" / "subscribers.csv"
    return inside if inside.is_file() else CHECKOUT_DIR / "subscribers" / "example.csv"
