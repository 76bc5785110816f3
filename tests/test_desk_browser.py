"""The editor's desk in a real browser (Playwright driving Debian's Chromium, under the page's own
Content-Security-Policy): what an editor does in the page (drag an item, move one with the keyboard alone,
leave one out, write a note) is what the send writes to the outbox; the layout at 1280 and 375 px; two tabs
never overwrite each other. Each state is kept as a screenshot under test-artifacts/desk/ (printed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import add_people, add_summaries
from tests.outbox import html_part, text_part, wait_for_messages
from tests.preview_support import Project, make_project, served_preview
from tests.test_preview_browser import COLUMNS
from tests.browser import require_chromium

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
require_chromium(module=True)

ARTIFACTS = ROOT / "test-artifacts" / "desk"
PAPER = re.compile(r"https://example\.org/papers/(\d+)")
expect = sync_api.expect


# The lines of a <pre>'s text that the browser shows on more than one line (wrapped).
REWRAPPED = """(element) => {
  const text = element.firstChild;
  const wrapped = [];
  let offset = 0;
  for (const line of text.textContent.split("\\n")) {
    const range = document.createRange();
    range.setStart(text, offset);
    range.setEnd(text, offset + line.length);
    if (new Set([...range.getClientRects()].map((box) => Math.round(box.top))).size > 1) wrapped.push(line);
    offset += line.length + 1;
  }
  return wrapped;
}"""


def papers(part: str) -> list[int]:
    return list(dict.fromkeys(int(n) for n in PAPER.findall(part)))


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "test-secret-key")
    project = make_project(tmp_path, summaries=0)
    add_summaries(project.engine, 2, category="Neuroscience")  # papers 0, 1 (ids 1, 2)
    add_summaries(project.engine, 2, category="Climate")  # papers 2, 3 (ids 3, 4)
    add_people(project.engine, "ada@example.org", "bob@example.org")
    yield project
    project.engine.dispose()


@pytest.fixture
def server(project: Project) -> Iterator[str]:
    with served_preview(project) as base:
        yield base


@pytest.fixture
def desk(browser, server: str) -> Iterator[object]:
    """The desk at 1280 x 800, open and listening for changes; fails the test on any CSP violation."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(server)
    page.wait_for_function("document.documentElement.dataset.live === 'yes'")
    yield page
    assert [line for line in console if "Content Security Policy" in line] == []
    page.close()


def items(page) -> list[str]:
    return page.locator("#items .item .title").all_inner_texts()


def send_from_the_page(page, project: Project, name: str, recipients: int = 2) -> list:
    """Send now, confirmed, from the page; the messages the file backend wrote."""
    page.get_by_role("link", name="Send now…").click()
    expect(page.get_by_role("alertdialog")).to_contain_text(f"to {recipients} subscribers now?")
    shot(page, f"{name}-confirm")
    page.get_by_role("button", name=f"Send to {recipients} now").click()
    expect(page.locator("#send-status")).to_have_text("sent")
    expect(page.locator("#description")).to_contain_text("issue #1 (sent ")  # the page caught up by itself
    expect(page.frame_locator("#email").locator(".nl-title a").first).to_be_visible()
    shot(page, f"{name}-sent")
    return wait_for_messages(project.root / "outbox", recipients)


def test_dragging_an_item_changes_the_order_the_send_writes(desk, project: Project) -> None:
    shot(desk, "desk-1280")
    expect(desk.locator("#checks")).to_be_in_viewport()  # visible at 1280 x 800 without scrolling
    assert desk.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    desk.locator("#item-4").drag_to(desk.locator("#item-1"), target_position={"x": 20, "y": 4})
    expect(desk.locator("#items .item .title").first).to_have_text("Paper number 3")
    assert items(desk) == ["Paper number 3", "Paper number 0", "Paper number 1", "Paper number 2"]
    frame = desk.frame_locator("#email")
    expect(frame.locator(".nl-title a").first).to_have_text("Paper number 3")  # the email shows it at once
    shot(desk, "dragged")
    for message in send_from_the_page(desk, project, "dragged"):
        assert papers(text_part(message)) == [3, 0, 1, 2] and papers(html_part(message)) == [3, 0, 1, 2]


def test_an_item_moves_with_the_keyboard_alone_and_keeps_the_focus(desk, project: Project) -> None:
    target = "Move “Paper number 0” down"
    for _ in range(80):  # Tab through the page, as a keyboard user does, to the item's "down" button
        desk.keyboard.press("Tab")
        if desk.evaluate("document.activeElement.getAttribute('aria-label')") == target:
            break
    else:
        pytest.fail(f"Tab never reached {target!r}")
    desk.keyboard.press("Enter")
    expect(desk.locator("#items .item .title").nth(1)).to_have_text("Paper number 0")
    assert desk.evaluate("document.activeElement.getAttribute('aria-label')") == target  # the same button
    desk.keyboard.press("Enter")
    expect(desk.locator("#items .item .title").nth(2)).to_have_text("Paper number 0")
    expect(desk.get_by_role("status")).to_contain_text("Moved “Paper number 0” down.")
    shot(desk, "keyboard-moved")
    desk.keyboard.press("Space")  # a button takes Space as well as Enter
    expect(desk.locator("#items .item .title").nth(3)).to_have_text("Paper number 0")
    # last now: "down" is disabled, so the focus is on the same item's "up", not lost to the page
    expect(desk.locator(":focus")).to_have_attribute("aria-label", "Move “Paper number 0” up")
    for message in send_from_the_page(desk, project, "keyboard"):
        assert papers(text_part(message)) == [1, 2, 3, 0]


def test_an_item_left_out_and_a_note_written_in_the_page_are_what_the_send_writes(desk, project: Project) -> None:
    desk.get_by_role("button", name="Leave “Paper number 1” out").click()
    expect(desk.locator("#left-out")).to_contain_text("Paper number 1")
    expect(desk.frame_locator("#email").get_by_text("Paper number 1")).to_have_count(0)
    desk.get_by_text("Editor's note").click()
    desk.get_by_label("Markdown:").fill("A *short* week, and [a call for reviewers](https://example.org/call).")
    desk.get_by_role("button", name="Save note").click()
    expect(desk.frame_locator("#email").locator("em", has_text="short")).to_be_visible()
    desk.get_by_role("link", name="Plain text").click()
    expect(desk.locator("#text")).to_contain_text("A short week, and a call for reviewers")
    shot(desk, "note-and-left-out-text")
    for message in send_from_the_page(desk, project, "note-and-left-out"):
        text, html = text_part(message), html_part(message)
        assert "Paper number 1" not in text and "Paper number 1" not in html
        assert text.index("A short week") < text.index("Paper number 0")
        assert html.index("a call for reviewers") < html.index(">Paper number 0</a>")


def test_undo_takes_back_the_last_change_in_the_page(desk) -> None:
    desk.get_by_role("button", name="Make “Paper number 2” the lead").click()
    expect(desk.locator("#items .item.lead .title")).to_have_text("Paper number 2")
    desk.get_by_role("button", name="Undo").click()
    expect(desk.locator("#items .item.lead")).to_have_count(0)
    expect(desk.get_by_role("status")).to_contain_text("Undid: made “Paper number 2” the lead.")


def test_the_subject_is_counted_as_it_is_typed(desk) -> None:
    subject = desk.get_by_label("Subject")
    subject.fill("A subject of my own")
    expect(desk.locator("#subject-count")).to_have_text("19 / 99")
    subject.fill("x" * 120)
    expect(desk.locator("#subject-count")).to_have_class(re.compile("over"))
    desk.get_by_role("button", name="Save", exact=True).click()
    expect(desk.get_by_role("alert")).to_contain_text("the subject is 120 characters; keep it to 99")
    subject.fill("Shorter")
    desk.get_by_role("button", name="Save", exact=True).click()
    expect(desk.locator("#shown-subject")).to_have_text("Shorter")


def test_a_second_tab_is_told_it_missed_a_change_and_overwrites_nothing(browser, desk, server: str) -> None:
    second = browser.new_page(viewport={"width": 1280, "height": 800})
    second.goto(server)
    second.wait_for_function("document.documentElement.dataset.live === 'yes'")
    second.get_by_text("Editor's note").click()
    second.get_by_label("Markdown:").fill("Typed in the second tab")  # not saved yet
    desk.get_by_text("Editor's note").click()
    desk.get_by_label("Markdown:").fill("Saved in the first tab")
    desk.get_by_role("button", name="Save note").click()
    expect(desk.get_by_role("status")).to_contain_text("Wrote a note.")
    expect(second.get_by_role("alert")).to_contain_text("changed elsewhere")  # told before saving
    expect(second.get_by_label("Markdown:")).to_have_value("Typed in the second tab")  # kept to copy
    second.get_by_role("button", name="Save note").click()
    expect(second.get_by_role("alert")).to_contain_text("changed elsewhere since this page showed it; reload")
    shot(second, "changed-elsewhere")
    second.get_by_role("button", name="Reload").click()
    expect(second.get_by_label("Markdown:")).to_have_value("Saved in the first tab")
    expect(desk.frame_locator("#email").get_by_text("Saved in the first tab")).to_be_visible()
    second.close()


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (375, 800)])
def test_no_horizontal_scroll_and_the_plain_text_is_72_columns_of_whole_words(browser, server: str, width: int,
                                                                              height: int) -> None:
    page = browser.new_page(viewport={"width": width, "height": height})
    for view in ("html", "source", "headers", "text"):
        page.goto(f"{server}/?view={view}")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), view
    shot(page, f"text-{width}")
    pre = page.locator("#text")
    style = pre.evaluate("(e) => [getComputedStyle(e).whiteSpace, getComputedStyle(e).wordBreak]")
    assert style == ["pre", "normal"]  # the text part's own lines, never a word (or a link) cut by the page
    assert pre.evaluate(REWRAPPED) == []  # every line of the text part is one line on the screen
    if width >= 1000:
        assert 72 <= pre.evaluate(COLUMNS) < 73
    else:
        page.goto(f"{server}/")
        shot(page, "desk-375")
        panel, email = page.locator("#panel").bounding_box(), page.locator("#email-pane").bounding_box()
        assert panel["y"] >= email["y"] + email["height"] - 1  # below 1,000 px the panel stacks under the email
    page.close()


@pytest.fixture
def samples_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Project]]:
    """The desk on the bundled sample summaries (ten of them, long titles, five sections)."""
    from newsletter.ingest import ingest_paths
    from newsletter.resources import sample_summaries_dir

    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "test-secret-key")
    project = make_project(tmp_path, summaries=0)
    ingest_paths(project.engine, [sample_summaries_dir()])
    add_people(project.engine, "ada@example.org", "bob@example.org", "cy@example.org")
    with served_preview(project) as base:
        yield base, project
    project.engine.dispose()


def test_with_ten_long_items_the_checks_stay_in_view_and_an_mjml_error_shows_where_it_is(browser,
                                                                                       samples_server) -> None:
    server, project = samples_server
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server)
    expect(page.locator("#items .item")).to_have_count(10)
    expect(page.locator("#checks")).to_be_in_viewport()
    expect(page.frame_locator("#email").locator(".nl-title a").first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.get_by_role("button", name=re.compile("Make “Rewetted peatlands")).click()
    expect(page.locator("#items .item.lead .title")).to_contain_text("Rewetted peatlands")
    page.get_by_text("Editor's note").click()
    page.get_by_label("Markdown:").fill("Ten papers this week, and **a new section**: notes from the blog.")
    page.get_by_role("button", name="Save note").click()
    expect(page.frame_locator("#email").get_by_text("a new section")).to_be_visible()
    page.goto(server)  # as an editor finds it later: the note written, the lead pinned
    expect(page.frame_locator("#email").locator(".nl-title a").first).to_be_visible()
    expect(page.locator("#checks")).to_be_in_viewport()
    shot(page, "samples-1280")
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(f"{server}/?width=phone")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, "samples-375")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(server)
    page.wait_for_function("document.documentElement.dataset.live === 'yes'")
    project.edit("partials/header.mjml.j2", "{{ issue.date_range }}</mj-text>", "{{ issue.date_range }}")
    problem = page.locator("#problem")
    expect(problem).to_contain_text("partials/header.mjml.j2:5: the rendered MJML does not compile")
    expect(problem.locator(".fault")).to_contain_text("5")
    shot(page, "samples-mjml-error")
    page.close()
