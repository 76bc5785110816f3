"""The preview in a real browser (Playwright driving Debian's Chromium): phone and desktop widths, every
title visible, live reload after a template edit, and body text contrast in light and dark mode, all under
the preview's Content-Security-Policy (which Chromium enforces); another site framing it gets nothing."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.backends import create_backend
from newsletter.config import load_config
from newsletter.delivery import send_unfinished
from newsletter.issues import prepare_issue
from tests.helpers import add_people, add_summaries
from tests.preview_support import Project, make_project, served_preview
from tests.browser import require_chromium
from tests.web_support import REFUSED, frame_from_another_site

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
require_chromium(module=True)

TITLES = [f"Paper number {n}" for n in range(3)]

CONTRAST = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const el = walker.currentNode.parentElement;
    const text = walker.currentNode.textContent.trim();
    if (!text || el.getClientRects().length === 0 || getComputedStyle(el).visibility === 'hidden') continue;
    const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(background(el))].sort((x, y) => y - x);
    found.push({text: text.slice(0, 40), ratio: (a + 0.05) / (b + 0.05), color: getComputedStyle(el).color});
  }
  return found;
}"""


# How many characters of the element's (monospace) font fit on one of its lines.
COLUMNS = """(element) => {
  const style = getComputedStyle(element);
  const context = document.createElement("canvas").getContext("2d");
  context.font = style.font;
  const inner = element.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  return inner / context.measureText("x").width;
}"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "test-secret-key")
    project = make_project(tmp_path)
    yield project
    project.engine.dispose()


@pytest.fixture
def server(project: Project) -> Iterator[str]:
    with served_preview(project) as base:
        yield base


def png_width(path: Path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


@pytest.mark.parametrize(("width", "viewport"), [("phone", 375), ("desktop", 600)])
def test_no_horizontal_scroll_and_every_title_visible(
    browser, server: str, tmp_path: Path, width: str, viewport: int
) -> None:
    page = browser.new_page(viewport={"width": viewport, "height": 900})
    page.goto(f"{server}/?width={width}")
    frame = page.frame_locator("#email")
    for title in TITLES:
        sync_api.expect(frame.locator(".nl-title a", has_text=title)).to_be_visible()
    email = page.frame(url=lambda url: "/email" in url)
    assert email is not None
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert email.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    assert page.locator("#email").bounding_box()["width"] <= viewport
    shot = tmp_path / f"preview-{viewport}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert png_width(shot) == viewport
    email_shot = tmp_path / f"email-{viewport}.png"
    page.locator("#email").screenshot(path=str(email_shot))
    assert email_shot.stat().st_size > 10_000  # a rendered email, not a blank frame
    page.close()


def test_editing_a_template_updates_the_page_without_a_reload_click(browser, server: str, project: Project) -> None:
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(server)
    sync_api.expect(page.get_by_role("button", name="Send test")).to_have_css("background-color", "rgb(15, 107, 102)")
    frame = page.frame_locator("#email")
    sync_api.expect(frame.get_by_text("3 summaries in this issue")).to_be_visible()
    page.wait_for_function("document.documentElement.dataset.live === 'yes'")  # listening for changes
    start = time.monotonic()
    project.edit("partials/header.mjml.j2", "in this issue", "in this issue, fresh from the editor")
    sync_api.expect(frame.get_by_text("3 summaries in this issue, fresh from the editor")).to_be_visible(timeout=5000)
    print(f"template edit visible in the page after {time.monotonic() - start:.2f} s")
    page.get_by_role("link", name="Plain text").click()
    sync_api.expect(page.locator("#text")).to_have_css("white-space", "pre")  # by class, not style attributes
    assert 72 <= page.locator("#text").evaluate(COLUMNS) < 73
    page.get_by_label("Send a test to").fill("editor@example.org")
    page.get_by_role("button", name="Send test").click()
    sync_api.expect(page.get_by_role("status")).to_contain_text("sent a test of draft of issue #1")
    assert [line for line in console if "Content Security Policy" in line] == []
    page.close()


def test_another_site_cannot_frame_the_preview(browser, server: str) -> None:
    urls = [f"{server}/", f"{server}/email?issue=next"]
    assert frame_from_another_site(browser, urls) == [REFUSED, REFUSED, "<other site>/own"]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_body_text_contrast_is_at_least_4_5_to_1(browser, server: str, scheme: str) -> None:
    page = browser.new_page(viewport={"width": 600, "height": 900}, color_scheme=scheme)
    page.goto(f"{server}/email?issue=next")
    texts = page.evaluate(CONTRAST)
    assert len(texts) > 20 and any(t["text"].startswith("Paper number 0") for t in texts)
    low = [t for t in texts if t["ratio"] < 4.5]
    assert low == [], low
    dark_body = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (dark_body == "rgb(11, 15, 20)") == (scheme == "dark")
    page.close()


def test_after_an_issue_went_out_a_new_summary_is_what_the_preview_shows_first(
    browser, server: str, project: Project
) -> None:
    config = load_config(project.config_file)
    add_people(project.engine, "ada@example.org")
    prepare_issue(project.engine, config)
    send_unfinished(project.engine, config, create_backend(config))  # issue #1, with papers 0-2, went out
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(server)
    sync_api.expect(page.locator("#description")).to_contain_text("issue #1 (sent ")
    page.wait_for_function("document.documentElement.dataset.live === 'yes'")
    add_summaries(project.engine, 1)  # "Paper number 3" arrives: the page moves to it by itself
    sync_api.expect(page.locator("#description")).to_contain_text("draft of issue #2 (not prepared yet)")
    frame = page.frame_locator("#email")
    sync_api.expect(frame.locator(".nl-title a", has_text="Paper number 3")).to_be_visible()
    sync_api.expect(frame.locator(".nl-title a", has_text="Paper number 0")).to_have_count(0)
    page.close()
