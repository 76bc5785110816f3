"""Every top-level MJML template (``templates/*.mjml.j2``): valid MJML, styles inline, accessible.

The digest is rendered with the sample issue; any other top-level template (confirm, welcome, ...) is
rendered with the same variables and lenient undefined values, so a template added later is covered too.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest
from jinja2 import ChainableUndefined

from newsletter.config import Config
from newsletter.render import (
    RecipientValues,
    compile_mjml,
    issue_context,
    new_markers,
    render_issue,
    template_environment,
)
from tests.conftest import ROOT
from tests.browser import chromium, require_chromium
from tests.helpers import make_issue, make_summaries
from tests.tools import missing, require

TEMPLATES = sorted(path.name for path in (ROOT / "templates").glob("*.mjml.j2"))
VALIDATOR = ROOT / "tools" / "mjml" / "node_modules" / ".bin" / "mjml"
READER = RecipientValues(
    "ada@example.org", "Ada", "https://news.example.org/unsubscribe/T", "https://news.example.org/preferences/T"
)
GENERIC_LINK_TEXTS = {"here", "click here", "click", "link", "this link", "more", "read more", "this"}


def rendered_mjml(config: Config, name: str) -> str:
    """The template ``name`` rendered to MJML with the sample issue's variables (unknown ones are empty)."""
    env = template_environment(config)
    env.undefined = ChainableUndefined  # other templates may use variables the digest does not have
    context = issue_context(config, make_issue(), make_summaries(), new_markers())
    context["subject"] = "Research Weekly #12"
    # what the confirmation and welcome emails have beyond the digest's variables
    context.update(confirm_url="https://news.example.org/confirm/T", archive_url="https://news.example.org/archive")
    return env.get_template(name).render(context)


@pytest.fixture(params=TEMPLATES)
def compiled(request: pytest.FixtureRequest, config: Config) -> tuple[str, str]:
    """(template name, its compiled and inlined HTML)."""
    return request.param, compile_mjml(rendered_mjml(config, request.param), request.param)


def test_there_is_a_digest_template_to_check() -> None:
    assert "digest.mjml.j2" in TEMPLATES


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_template_compiles_with_mjml_python_without_warnings(config: Config, name: str) -> None:
    source = rendered_mjml(config, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning from the compiler fails the test
        html = compile_mjml(source, name)  # raises on errors and on unknown <mj-*> elements
    assert "<mj-" not in html and html.lstrip().lower().startswith("<!doctype html>")


@pytest.fixture(scope="session")
def validator() -> Path:
    """The official MJML validator (npm package mjml, pinned in tools/mjml), installed on first use."""
    require("node", "node is not installed, so the official MJML validator cannot run (apt-get install nodejs npm)")
    if not VALIDATOR.exists():
        npm = require("npm", "npm is not installed, so the official MJML validator cannot be installed (apt-get install npm)")
        result = subprocess.run([npm, "ci", "--prefix", str(VALIDATOR.parents[2]), "--no-audit", "--no-fund"],
                                capture_output=True, text=True, timeout=600)
        if result.returncode or not VALIDATOR.exists():
            missing(f"`npm ci --prefix tools/mjml` failed: {(result.stderr or result.stdout).strip()[-300:]}")
    return VALIDATOR


def test_every_template_passes_the_official_mjml_validator_in_strict_mode(
    config: Config, tmp_path: Path, validator: Path
) -> None:
    files = []
    for name in TEMPLATES:
        path = tmp_path / name.replace(".j2", "")
        path.write_text(rendered_mjml(config, name), encoding="utf-8")
        files.append(str(path))
    result = subprocess.run(
        [str(validator), "--config.validationLevel", "strict", "--validate", *files],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validator_rejects_an_invalid_attribute(config: Config, tmp_path: Path, validator: Path) -> None:
    """The validator test above can fail: the same call refuses MJML with an unknown attribute."""
    bad = tmp_path / "bad.mjml"
    bad.write_text(rendered_mjml(config, "digest.mjml.j2").replace("<mj-text", '<mj-text colour="red"', 1))
    result = subprocess.run(
        [str(validator), "--config.validationLevel", "strict", "--validate", str(bad)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "colour" in result.stdout + result.stderr


class Elements(HTMLParser):
    """Every element of the body with its attributes, and the text of each link."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html_lang: str | None = None
        self.metas: list[dict[str, str | None]] = []
        self.body: list[tuple[str, dict[str, str | None]]] = []
        self.links: list[tuple[dict[str, str | None], str]] = []
        self._in_body = False
        self._link: list | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "html":
            self.html_lang = values.get("lang")
        elif tag == "meta":
            self.metas.append(values)
        elif tag == "body":
            self._in_body = True
        elif self._in_body:
            self.body.append((tag, values))
            if tag == "a":
                self._link = [values, ""]
            elif tag == "img" and self._link is not None:
                self._link[1] += values.get("alt") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._link is not None:
            self.links.append((self._link[0], " ".join(self._link[1].split())))
            self._link = None

    def handle_data(self, data: str) -> None:
        if self._link is not None:
            self._link[1] += data


def test_styles_gmail_and_outlook_need_are_inline(compiled: tuple[str, str]) -> None:
    name, html = compiled
    page = Elements(html)
    for tag, attrs in page.body:
        style = attrs.get("style") or ""
        if tag == "a":
            assert re.search(r"(^|;)\s*color:", style), f"{name}: a link without an inline colour: {attrs}"
        if tag in ("p", "li", "ul"):
            assert "margin" in style, f"{name}: <{tag}> without an inline margin: {attrs}"
    head_styles = " ".join(re.findall(r"<style[^>]*>(.*?)</style>", html, re.DOTALL))
    assert ".nl-kicker" not in head_styles  # inline-only rules leave the head, as the official MJML does


def test_inlining_applies_the_theme_and_keeps_the_elements_own_styles(config: Config) -> None:
    html, _text = render_issue(config, make_issue(), make_summaries()).personalise(READER)
    assert re.search(r'<a href="https://climate\.example\.org/ocean-heat" style="[^"]*color: #111827', html)
    assert re.search(r'<p class="nl-kicker" style="[^"]*text-transform: uppercase', html)
    button = re.search(r'<a href="https://climate\.example\.org/ocean-heat" target="_blank" style="[^"]*"', html)
    assert button and "color: #ffffff" in button.group(0)  # the button keeps its own white text


def test_digest_shows_every_part_a_reader_needs(config: Config) -> None:
    html, _text = render_issue(config, make_issue(), make_summaries()).personalise(READER)
    links = {text: attrs["href"] for attrs, text in Elements(html).links}
    assert links["Change your preferences"] == READER.preferences_url
    assert links["Unsubscribe"] == READER.unsubscribe_url
    assert links["View this issue in your browser"] == "https://news.example.org/archive/12"
    assert 'alt="EEG trace with sleep spindles highlighted"' in html
    assert html.count("Finding number") == 5  # at most five key findings per item
    assert html.count(">Read the summary<") == 4
    assert "Issue 12 · November 16\u2009–\u200922, 2026" in html
    assert ">Climate</div>" in html and "Research Weekly, 1 Example Street" in html


def test_language_colour_scheme_and_alt_texts(compiled: tuple[str, str]) -> None:
    name, html = compiled
    page = Elements(html)
    assert page.html_lang == "en", name
    schemes = {meta.get("name"): meta.get("content") for meta in page.metas}
    assert schemes.get("color-scheme") == "light dark", name
    assert "x-apple-disable-message-reformatting" in schemes, name  # iOS Mail keeps the layout as designed
    assert "prefers-color-scheme: dark" in html, name
    for tag, attrs in page.body:
        if tag == "img":
            assert (attrs.get("alt") or "").strip(), f"{name}: <img> without alt: {attrs}"


def test_link_texts_say_where_they_go(compiled: tuple[str, str]) -> None:
    name, html = compiled
    for attrs, text in Elements(html).links:
        assert text, f"{name}: a link without text: {attrs}"
        assert text.lower().rstrip(".") not in GENERIC_LINK_TEXTS, f"{name}: link text {text!r} says nothing"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_buttons_keep_their_rounded_corners_in_both_colour_schemes(config: Config, scheme: str) -> None:
    """Chromium draws the digest in the reader's colour scheme; the first button's corner pixel shows the
    card behind it (a rounded corner), its edge the button's own colour."""
    require_chromium()
    import base64

    html, _text = render_issue(config, make_issue(), make_summaries()).personalise(READER)
    card, button = {"light": ((255, 255, 255), (15, 107, 102)), "dark": ((22, 27, 34), (126, 226, 217))}[scheme]
    with chromium() as browser:
        page = browser.new_page(color_scheme=scheme, viewport={"width": 700, "height": 900})
        page.set_content(html, wait_until="load")
        shot = page.locator("td.nl-button table").first.screenshot()
        pixels = page.evaluate("""async (src) => {
            const image = new Image(); image.src = src; await image.decode();
            const canvas = document.createElement("canvas");
            canvas.width = image.width; canvas.height = image.height;
            const context = canvas.getContext("2d"); context.drawImage(image, 0, 0);
            const at = (x, y) => Array.from(context.getImageData(x, y, 1, 1).data.slice(0, 3));
            return {corner: at(1, 1), edge: at(3, Math.floor(image.height / 2))};
        }""", "data:image/png;base64," + base64.b64encode(shot).decode())

    def near(rgb: list[int], expected: tuple[int, int, int]) -> bool:
        return all(abs(a - b) <= 3 for a, b in zip(rgb, expected, strict=True))

    assert near(pixels["edge"], button), pixels
    assert near(pixels["corner"], card), pixels  # square corners would show the button's colour here
