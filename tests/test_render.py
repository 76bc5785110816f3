"""The render stage: templates → subject, compiled HTML and text part; personalisation; template errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from html import escape as html_escape
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from newsletter import render
from newsletter.config import Config
from newsletter.demo import DEMO_SETTINGS
from newsletter.errors import TemplateError
from newsletter.render import (
    DEFAULT_SECTION,
    RecipientValues,
    RenderedIssue,
    display_order,
    render_issue,
    template_environment,
)
from tests.conftest import make_config
from tests.helpers import make_issue, make_summaries

BERLIN = ZoneInfo("Europe/Berlin")
ALICE = RecipientValues(
    email="alice@example.org",
    name="Alice",
    unsubscribe_url="https://news.example.org/u/alice-token",
    preferences_url="https://news.example.org/p/alice-token",
)
BOB = RecipientValues(
    email="bob@example.org",
    name="",
    unsubscribe_url="https://news.example.org/u/bob-token",
    preferences_url="https://news.example.org/p/bob-token",
)


@pytest.fixture
def rendered(config: Config) -> RenderedIssue:
    return render_issue(config, make_issue(), make_summaries())


def user_templates(tmp_path: Path, files: dict[str, str]) -> Config:
    """A config whose user templates folder holds ``files``; everything else comes from the packaged set."""
    folder = tmp_path / "my-templates"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content, encoding="utf-8")
    return make_config(tmp_path, templates=str(folder))


FOOTER_WITHOUT_UNSUBSCRIBE = (
    "<mj-section><mj-column><mj-text>{{ newsletter.postal_address }}</mj-text></mj-column></mj-section>"
)
FOOTER_WITHOUT_ADDRESS = (
    '<mj-section><mj-column><mj-text><a href="{{ recipient.unsubscribe_url }}">Unsubscribe</a></mj-text>'
    "</mj-column></mj-section>"
)


@pytest.mark.parametrize(
    ("files", "part", "missing"),
    [
        ({"digest.txt.j2": "{{ newsletter.postal_address }}\n"}, "digest.txt.j2", "the unsubscribe link"),
        ({"digest.txt.j2": "{{ recipient.unsubscribe_url }}\n"}, "digest.txt.j2", "the postal address"),
        ({"partials/footer.mjml.j2": FOOTER_WITHOUT_UNSUBSCRIBE}, "digest.mjml.j2", "the unsubscribe link"),
        ({"partials/footer.mjml.j2": FOOTER_WITHOUT_ADDRESS}, "digest.mjml.j2", "the postal address"),
        (
            {"partials/footer.mjml.j2": "<mj-raw><!-- {{ recipient.unsubscribe_url }} "
             "{{ newsletter.postal_address }} --></mj-raw>"},
            "digest.mjml.j2",
            "the unsubscribe link .* and the postal address",
        ),
    ],
    ids=["text-no-unsubscribe", "text-no-address", "html-no-unsubscribe", "html-no-address", "html-in-comment"],
)
def test_a_digest_part_without_the_legal_footer_is_a_template_error(
    tmp_path: Path, files: dict[str, str], part: str, missing: str
) -> None:
    config = user_templates(tmp_path, files)
    with pytest.raises(TemplateError) as caught:
        render_issue(config, make_issue(), make_summaries())
    message = str(caught.value)
    assert re.search(rf"{re.escape(part)}: lacks {missing}", message), message
    assert "anti-spam law requires an unsubscribe link and the postal address in every email" in message


def test_the_legal_footer_check_allows_escaped_and_wrapped_addresses(tmp_path: Path) -> None:
    address = "O'Brien & Daughters <Publishing>, Unit 4, The Old Granary, 17 Long Quay Road, Cork T12 AB34, Ireland"
    config = make_config(tmp_path, newsletter={**DEMO_SETTINGS["newsletter"], "postal_address": address})
    html, text = render_issue(config, make_issue(), make_summaries()).personalise(ALICE)
    assert "O'Brien &amp; Daughters &lt;Publishing&gt;" in html  # escaped (an apostrophe in text needs none)
    assert address not in text and " ".join(text.split()).endswith(address)  # wrapped at 72 columns


def test_html_holds_every_title_link_category_and_the_legal_footer(rendered: RenderedIssue) -> None:
    html, _text = rendered.personalise(ALICE)
    for summary in make_summaries():
        assert render.html.escape(summary.title, quote=False) in html
        assert f'href="{render.html.escape(summary.url or "")}"' in html
    for label in ("Neuroscience", "Climate", DEFAULT_SECTION):
        assert f">{label}<" in html
    assert rendered.preheader and render.html.escape(rendered.preheader, quote=False) in html
    assert "Research Weekly, 1 Example Street, 12345 Example City, Country" in html
    assert re.search(r'<a href="https://news\.example\.org/u/alice-token"[^>]*>Unsubscribe</a>', html)
    assert 'alt="EEG trace with sleep spindles highlighted"' in html
    assert "Issue 12 · November 16\u2009–\u200922, 2026" in html
    assert "Read the summary" in html
    assert "<link" not in html and "fonts.googleapis" not in html  # no third-party font request


def test_sections_follow_first_appearance_with_uncategorised_last(config: Config) -> None:
    context = render.issue_context(config, make_issue(), make_summaries(), render.new_markers())
    assert [s.title for s in context["sections"]] == ["Neuroscience", "Climate", DEFAULT_SECTION]
    assert [len(s.items) for s in context["sections"]] == [2, 1, 1]
    assert [item.ref for item in context["items"]] == [1, 2, 3, 4]
    assert context["item_count"] == 4
    assert len(context["items"][0].key_points) == render.MAX_KEY_POINTS
    assert context["issue"].period_start == date(2026, 11, 16)
    assert context["issue"].period_end == date(2026, 11, 22)


def test_subject_renders_without_compiling_mjml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_mjml(source: str, **options: object) -> str:
        raise AssertionError("render_subject compiled MJML")

    config = user_templates(tmp_path, {"digest.mjml.j2": "{{ not_a_variable }}", "digest.txt.j2": "{% if %}"})
    expected = render_issue(make_config(tmp_path), make_issue(), make_summaries()).subject
    monkeypatch.setattr(render, "mjml2html", no_mjml)
    assert render.render_subject(config, make_issue(), make_summaries()) == expected
    assert expected.startswith("Research Weekly #12: Sleep spindles") and expected.endswith(" and 3 more")


def test_an_empty_subject_is_a_template_error_for_subject_and_issue(tmp_path: Path) -> None:
    config = user_templates(tmp_path, {"subject.txt.j2": "{{ '' }}\n"})
    for render_ in (render.render_subject, render_issue):
        with pytest.raises(TemplateError, match=r"my-templates/subject\.txt\.j2: renders an empty subject"):
            render_(config, make_issue(), make_summaries())


def test_subject_is_one_line_naming_the_first_title_and_the_rest(config: Config) -> None:
    summaries = make_summaries()
    summaries[0].title = "Sleep spindles\r\nBcc: someone@example.org"
    result = render_issue(config, make_issue(), summaries)
    assert result.subject == "Research Weekly #12: Sleep spindles Bcc: someone@example.org and 3 more"
    assert "\n" not in result.subject and "\r" not in result.subject


def test_preheader_lists_first_titles_within_150_characters(rendered: RenderedIssue) -> None:
    assert rendered.preheader.startswith("Sleep spindles consolidate motor memory")
    assert len(rendered.preheader) <= 150


def test_text_part_reads_on_its_own(rendered: RenderedIssue) -> None:
    _html, text = rendered.personalise(ALICE)
    for line in text.splitlines():
        if len(line) > 72:  # only a URL, which cannot be broken, may overflow
            assert re.fullmatch(r"(\[\d+\] )?https?://\S+", line), line
    assert "Sleep spindles consolidate motor memory in adolescents & adults [1]" in text
    assert "[1] https://journals.example.org/neuro/sleep-spindles?ref=rss&utm_source=feed" in text
    assert "[4] https://meta.example.org/peer-review" in text
    assert text.index("[4] https://") > text.index("Reviewers disagree")  # references at the bottom
    assert not re.search(r"&(amp|lt|gt|quot|#\d+);", text)
    assert "https://news.example.org/u/alice-token" in text
    assert text.rstrip().endswith("Research Weekly, 1 Example Street, 12345 Example City, Country")
    assert "\n\n\n\n" not in text and not any(line != line.rstrip() for line in text.splitlines())


def test_summary_text_is_escaped_in_html(config: Config) -> None:
    summaries = make_summaries()
    summaries[1].summary = 'Heat rose. <script>alert("x")</script> <b>bold</b>'
    html, text = render_issue(config, make_issue(), summaries).personalise(ALICE)
    assert "<script>" not in html and "<b>bold" not in html
    assert "&lt;script&gt;" in html
    assert '<script>alert("x")</script>' in text  # the text part is not HTML: nothing to escape


def test_subtitle_article_type_and_paywall_are_shown_in_both_parts(config: Config) -> None:
    summaries = make_summaries()
    summaries[0].subtitle = "Why teenagers learn motor skills overnight"
    summaries[0].article_type = "Research Paper"
    summaries[0].paywalled = True
    html, text = render_issue(config, make_issue(), summaries).personalise(ALICE)
    assert "<em>Why teenagers learn motor skills overnight</em>" in html
    assert "Research Paper · Journal of Neuroscience" in html and "· Paywalled" in html
    assert "Why teenagers learn motor skills overnight" in text
    assert "Research Paper · Journal of Neuroscience" in text and "· Paywalled" in text
    assert text.count("Paywalled") == html.count("Paywalled") == 1  # only the item behind a paywall


def test_links_that_are_not_http_are_dropped(config: Config) -> None:
    summaries = make_summaries()
    summaries[2].url = "javascript:alert(1)"
    html, text = render_issue(config, make_issue(), summaries).personalise(ALICE)
    assert "javascript:" not in html and "javascript:" not in text


def test_personalise_escapes_values_in_html_and_keeps_them_raw_in_text(tmp_path: Path) -> None:
    config = user_templates(
        tmp_path,
        {
            "partials/header.mjml.j2": (
                '<mj-section><mj-column><mj-text><a title="{{ recipient.name }}" href="#">'
                "Hello {{ recipient.name }}</a></mj-text></mj-column></mj-section>\n"
            ),
            "digest.txt.j2": (
                "Hello {{ recipient.name }}\n{{ recipient.unsubscribe_url }}\n{{ newsletter.postal_address }}\n"
            ),
        },
    )
    result = render_issue(config, make_issue(), make_summaries())
    values = RecipientValues(
        email="zoe@example.org", name='Zoë "Z" <O\'Brien>', unsubscribe_url="https://x.example/u?a=1&b=2",
        preferences_url="https://x.example/p?a=1&b=2"
    )
    html, text = result.personalise(values)
    assert 'title="Zoë &quot;Z&quot; &lt;O&#x27;Brien&gt;"' in html
    assert "Hello Zoë &quot;Z&quot; &lt;O&#x27;Brien&gt;" in html
    assert 'href="https://x.example/u?a=1&amp;b=2"' in html
    assert text == f'Hello Zoë "Z" <O\'Brien>\nhttps://x.example/u?a=1&b=2\n{config.newsletter.postal_address}\n'
    for marker in (result.markers.name, result.markers.email, result.markers.unsubscribe_url):
        assert marker not in html and marker not in text
    assert "Hello \n" in result.personalise(BOB)[1]  # an unknown name is an empty string


def test_mjml_compiles_once_for_any_number_of_recipients(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real: Callable[..., str] = render.mjml2html

    def counting(source: str, **options: object) -> str:
        calls.append(source)
        return real(source, **options)

    monkeypatch.setattr(render, "mjml2html", counting)
    result = render_issue(config, make_issue(), make_summaries())
    (alice_html, alice_text), (bob_html, bob_text) = result.personalise(ALICE), result.personalise(BOB)
    assert len(calls) == 1
    assert "u/alice-token" in alice_html and "u/alice-token" not in bob_html
    assert "u/bob-token" in bob_html and "u/bob-token" in bob_text and "u/alice-token" in alice_text
    assert "alice@example.org" in alice_html and "bob@example.org" in bob_html


def test_markers_differ_between_renders(config: Config) -> None:
    first = render_issue(config, make_issue(), make_summaries())
    second = render_issue(config, make_issue(), make_summaries())
    assert first.markers != second.markers
    assert first.personalise(ALICE) == second.personalise(ALICE)  # the output itself is deterministic


def test_user_template_overrides_the_packaged_one(tmp_path: Path) -> None:
    config = user_templates(tmp_path, {"subject.txt.j2": "{{ newsletter.name }} — issue {{ issue.number }}\n"})
    result = render_issue(config, make_issue(7), make_summaries())
    assert result.subject == "Research Weekly — issue 7"
    assert "Read the summary" in result.html  # the other templates still come from the packaged set


def test_autoescape_is_on_for_mjml_and_off_for_text(config: Config) -> None:
    env = template_environment(config)
    assert env.from_string("{{ v }}").render(v="<&>") == "&lt;&amp;&gt;"  # strings: safe default
    assert callable(env.autoescape)
    assert env.autoescape("digest.mjml.j2") and env.autoescape("partials/item.mjml.j2")
    assert env.autoescape("page.html.j2")
    assert not env.autoescape("digest.txt.j2")


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    config = user_templates(tmp_path, {"subject.txt.j2": "{{ newsletter.name }}\n\n{% if issue.number %}\n"})
    with pytest.raises(TemplateError) as caught:
        render_issue(config, make_issue(), make_summaries())
    message = str(caught.value)
    assert re.search(r"my-templates/subject\.txt\.j2:\d+: template syntax error", message), message
    assert "endif" in message


def test_undefined_variable_names_file_line_and_known_names(tmp_path: Path) -> None:
    footer = "<mj-section><mj-column>\n<mj-text>{{ newsletter.postal_adress }}</mj-text>\n</mj-column></mj-section>"
    config = user_templates(tmp_path, {"partials/footer.mjml.j2": footer})
    with pytest.raises(TemplateError) as caught:
        render_issue(config, make_issue(), make_summaries())
    message = str(caught.value)
    assert "my-templates/partials/footer.mjml.j2:2:" in message, message
    assert "postal_adress" in message and "recipient" in message


def test_missing_partial_names_the_including_file(tmp_path: Path) -> None:
    digest = "<mjml><mj-body>\n{% include 'partials/sidebar.mjml.j2' %}\n</mj-body></mjml>"
    config = user_templates(tmp_path, {"digest.mjml.j2": digest})
    with pytest.raises(TemplateError) as caught:
        render_issue(config, make_issue(), make_summaries())
    message = str(caught.value)
    assert "digest.mjml.j2:2:" in message and "'partials/sidebar.mjml.j2' not found" in message, message


def test_mjml_that_does_not_compile_is_a_template_error(tmp_path: Path) -> None:
    config = user_templates(tmp_path, {"digest.mjml.j2": "<mjml><mj-body><mj-section><mj-column>\n</mjml>"})
    with pytest.raises(TemplateError, match=r"digest\.mjml\.j2:1: the rendered MJML does not compile .*"
                                            r"<mj-column> is not closed before </mjml>"):
        render_issue(config, make_issue(), make_summaries())


def test_unknown_mjml_element_is_a_template_error(tmp_path: Path) -> None:
    config = user_templates(tmp_path, {"digest.mjml.j2": "<mjml><mj-body><mj-sectoin></mj-sectoin></mj-body></mjml>"})
    with pytest.raises(TemplateError, match="mj-sectoin"):
        render_issue(config, make_issue(), make_summaries())


def test_a_bare_date_keeps_its_day_west_of_utc(tmp_path: Path) -> None:
    config = make_config(tmp_path, schedule={"cron": "0 8 * * mon", "timezone": "America/New_York"})
    summaries = make_summaries()
    summaries[0].published_at = datetime(2026, 11, 16, tzinfo=UTC)  # "2026-11-16" as ingested
    summaries[1].published_at = datetime(2026, 11, 18)  # the same, naive, as SQLite returns it
    summaries[3].published_at = datetime(2026, 11, 20, 3, 30, tzinfo=UTC)  # a real moment: 19 Nov in New York
    items = {item.title: item for item in render.issue_context(config, make_issue(), summaries, ALICE)["items"]}
    assert items[summaries[0].title].published == date(2026, 11, 16)
    assert items[summaries[0].title].published_label == "November 16, 2026"
    assert items[summaries[1].title].published == date(2026, 11, 18)
    assert items[summaries[3].title].published == date(2026, 11, 19)
    _html, text = render_issue(config, make_issue(), summaries).personalise(ALICE)
    assert "Journal of Neuroscience · November 16, 2026" in text


def test_as_utc_takes_naive_values_as_utc_and_converts_aware_ones() -> None:
    assert render.as_utc(datetime(2026, 1, 2, 3, 4)) == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    converted = render.as_utc(datetime(2026, 1, 2, 3, 4, tzinfo=BERLIN))
    assert converted.tzinfo is UTC and converted == datetime(2026, 1, 2, 2, 4, tzinfo=UTC)


def test_wrap_filter_keeps_paragraphs_and_long_urls() -> None:
    url = "https://example.org/" + "x" * 80
    wrapped = render.wrap_text("word " * 30 + "\n\nnext paragraph " + url, width=40)
    assert all(len(line) <= 40 or line == url for line in wrapped.splitlines())
    assert "\n\nnext paragraph\n" + url in wrapped


@pytest.mark.parametrize("name", ["Research Weekly", "The Quarterly Digest of Longevity, Sleep and Climate Research"])
@pytest.mark.parametrize("title_words", [1, 12, 16, 40])
@pytest.mark.parametrize("count", [1, 3, 120])
def test_the_default_subject_stays_under_the_pre_send_limit(
    tmp_path: Path, name: str, title_words: int, count: int
) -> None:
    newsletter = {**DEMO_SETTINGS["newsletter"], "name": name}
    config = make_config(tmp_path, newsletter=newsletter)
    title = " ".join(["Spindles"] * title_words)
    summaries = (make_summaries() * 40)[:count]
    summaries[0].title = title
    subject = render.render_subject(config, make_issue(number=1234), summaries)
    assert len(subject) < 100, subject
    assert subject.startswith(f"{name} #1234: Spindles")
    if count > 1:
        assert subject.endswith(f" and {count - 1} more")
    if len(f"{name} #1234: {title}") + (len(f" and {count - 1} more") if count > 1 else 0) < 100:
        assert title in subject  # nothing is cut that fits
    else:
        assert "Spindles…" in subject and "Spindl…" not in subject  # cut after a whole word


def test_a_newsletter_name_near_its_limit_still_gives_a_subject_under_100(tmp_path: Path) -> None:
    newsletter = {**DEMO_SETTINGS["newsletter"], "name": " ".join(["Research"] * 11)}  # 98 characters
    summaries = make_summaries()
    summaries[0].title = "Sleep spindles " * 10
    subject = render.render_subject(make_config(tmp_path, newsletter=newsletter), make_issue(), summaries)
    assert len(subject) < 100 and subject.startswith("Research Research") and subject.endswith("…")


def test_the_shorten_filter_cuts_at_a_word_with_an_ellipsis() -> None:
    assert render.shorten("Sleep spindles predict recall", 100) == "Sleep spindles predict recall"
    assert render.shorten("Sleep spindles predict recall", 20) == "Sleep spindles…"
    assert render.shorten("Sleep spindles, predict recall", 16) == "Sleep spindles…"  # no dangling comma
    assert render.shorten("Supercalifragilistic", 10) == "Supercali…"  # one long word: cut inside it
    assert render.shorten("Sleep", 0) == ""


# -- an MJML error names the file the editor wrote, and its line ----------------------------------------------

DEFAULTS = Path(__file__).resolve().parent.parent / "templates"


def closed_on_their_own_line() -> list[tuple[str, int, str]]:
    """(template, line, closing tag) for every element of the default digest opened and closed on one line
    (but the category label, which the digest turns off: its sections are headed by the category)."""
    found = []
    for path in [DEFAULTS / "digest.mjml.j2", *sorted(DEFAULTS.glob("partials/*.mjml.j2"))]:
        if path.name == "transactional-head.mjml.j2":  # the confirmation and welcome emails' head
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            closing = re.search(r"</(mj-[a-z-]+)>\s*$", line)
            if closing and f"<{closing.group(1)}" in line and "{{ item.category }}" not in line:
                found.append((path.relative_to(DEFAULTS).as_posix(), number, closing.group(0).strip()))
    return found


def shaped_issue_with_every_part():
    """An issue whose render goes through every line of the default partials: a note, a subtitle, an image."""
    issue = make_issue()
    issue.note = "A note from the editor."
    summaries = make_summaries()
    summaries[1].subtitle = "A subtitle"
    return issue, summaries


@pytest.mark.parametrize(("name", "line", "closing"), closed_on_their_own_line())
def test_an_element_left_open_is_reported_in_the_partial_and_line_that_opens_it(
        tmp_path: Path, name: str, line: int, closing: str) -> None:
    lines = (DEFAULTS / name).read_text(encoding="utf-8").split("\n")
    lines[line - 1] = lines[line - 1][::-1].replace(closing[::-1], "", 1)[::-1]  # its last closing tag goes
    config = user_templates(tmp_path, {name: "\n".join(lines)})
    with pytest.raises(TemplateError) as caught:
        render_issue(config, *shaped_issue_with_every_part())
    where = f"my-templates/{name}:{line}: "
    assert where in str(caught.value), str(caught.value)
    assert caught.value.file.endswith(f"my-templates/{name}") and caught.value.line == line
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("name", "old", "new", "line", "what"), [
    ("partials/item.mjml.j2", "<mj-divider />", "<mj-divider>", 12, "<mj-divider> is not closed before </mj-column>"),
    ("partials/header.mjml.j2", 'mj-class="meta"', "mj-class=meta", 5, "starts no well-formed tag"),
    ("partials/footer.mjml.j2", "</mj-column>", "</mj-column></mj-column>", 21, "</mj-column> closes no open element"),
    ("partials/note.mjml.j2", "<mj-column>", "<mj-column>\n    <mj-raw>", 8, "<mj-raw> is not closed before </mj-column>"),
    ("partials/item.mjml.j2", '<mj-text mj-class="meta">', '<mj-txt mj-class="meta">', 24,
     "<mj-txt> is not an MJML element"),
])  # fmt: skip
def test_each_kind_of_mjml_fault_names_the_partial_its_line_and_what_is_wrong(
        tmp_path: Path, name: str, old: str, new: str, line: int, what: str) -> None:
    source = (DEFAULTS / name).read_text(encoding="utf-8")
    assert old in source
    config = user_templates(tmp_path, {name: source.replace(old, new, 1)})
    with pytest.raises(TemplateError) as caught:
        render_issue(config, *shaped_issue_with_every_part())
    message = str(caught.value)
    assert f"my-templates/{name}:{line}: " in message and what in message, message
    assert "digest.mjml.j2" not in message


TRACKING_MODES = {
    "off": ({}, "We do not track whether you open our emails or which links you click."),
    "clicks": ({"clicks": True}, "We count how often each article linked in our emails is clicked, not who clicked"),
    "per-subscriber": ({"clicks": True, "per_subscriber": True},
                       "We record which articles linked in our emails you click, with your subscription"),
}


@pytest.mark.parametrize("mode", TRACKING_MODES)
def test_both_parts_say_what_is_tracked(tmp_path, config, mode):
    tracking, sentence = TRACKING_MODES[mode]
    rendered = render_issue(make_config(tmp_path, tracking=tracking), make_issue(), make_summaries())
    html, text = rendered.personalise(ALICE)
    visible = " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<head>.*</head>", "", html, flags=re.S)).split())
    assert sentence in visible
    assert sentence in " ".join(text.split())
    assert "never whether you open" in visible or mode == "off"  # no pixel in any mode


def test_with_click_counting_each_item_url_is_a_placeholder_filled_after_the_compile(tmp_path, config):
    rendered = render_issue(make_config(tmp_path, tracking={"clicks": True}), make_issue(), make_summaries())
    urls = [summary.url for summary in display_order(make_summaries())]
    assert [link.url for link in rendered.links] == urls  # one per item, in the order the digest shows them
    assert not any(url in rendered.html or url in rendered.text for url in urls)
    assert all(link.marker in rendered.html and link.marker in rendered.text for link in rendered.links)
    direct_html, direct_text = rendered.personalise(ALICE)  # no link values given: straight to the items
    counted = [f"https://news.example.org/c/item{n}" for n in range(len(urls))]
    html, text = rendered.personalise(RecipientValues(**{**ALICE.__dict__, "links": tuple(counted)}))
    for url, link in zip(urls, counted, strict=True):
        assert f'href="{html_escape(url)}"' in direct_html and url in direct_text
        assert f'href="{link}"' in html and f"] {link}" in text
        assert url not in html and url not in text
