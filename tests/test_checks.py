"""Pre-send checks: a good issue passes; each rule finds its problem and says where; send refuses on errors."""

from __future__ import annotations

import email
import email.policy
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from newsletter.checks import (
    Severity,
    check_issue,
    check_message,
    has_errors,
    link_problem,
)
from newsletter.cli import app
from newsletter.config import Config
from newsletter.db import open_database
from newsletter.demo import DEMO_SETTINGS
from newsletter.issues import editorial, shown_issue
from newsletter.message import MessageTemplate
from newsletter.render import RecipientValues, RenderedIssue, render_issue
from tests.conftest import make_config
from tests.helpers import add_people, add_summaries, make_issue, make_summaries

READER = RecipientValues(
    "ada@example.org", "Ada", "https://news.example.org/unsubscribe/T", "https://news.example.org/preferences/T"
)
MESSAGE_ID = "<issue-12.abc@example.org>"


def build_message(config: Config, rendered: RenderedIssue, values: RecipientValues, *, message_id: str) -> bytes:
    return MessageTemplate(config, rendered).personalise(values, message_id=message_id)


def rules(config: Config, rendered: RenderedIssue, message: bytes | None = None) -> dict[str, str]:
    message = message or build_message(config, rendered, READER, message_id=MESSAGE_ID)
    return {finding.rule: f"{finding.where}: {finding.message}" for finding in check_message(config, rendered, message)}


@pytest.fixture
def rendered(config: Config) -> RenderedIssue:
    return render_issue(config, make_issue(), make_summaries())


def test_the_default_digest_passes_every_check(config: Config, rendered: RenderedIssue) -> None:
    assert rules(config, rendered) == {}


def padded(rendered: RenderedIssue, kilobytes: int) -> RenderedIssue:
    """``rendered`` with its HTML padded to about ``kilobytes`` KB (after personalisation)."""
    missing = kilobytes * 1024 - len(rendered.html.encode())
    return replace(rendered, html=rendered.html.replace("</body>", "<p>" + "word " * (missing // 5) + "</p></body>"))


def test_html_over_102_kb_is_clipped_by_gmail(config: Config, rendered: RenderedIssue) -> None:
    assert "over Gmail's 102 KB limit" in rules(config, padded(rendered, 103))["html-size"]
    near = padded(rendered, 95)
    findings = check_message(config, near, build_message(config, near, READER, message_id=MESSAGE_ID))
    assert [(f.rule, f.severity) for f in findings] == [("html-size", Severity.WARNING)] and not has_errors(findings)


def test_an_image_without_alt_text_is_named(config: Config, rendered: RenderedIssue) -> None:
    page = replace(rendered, html=rendered.html.replace('alt="EEG trace with sleep spindles highlighted"', 'alt=""'))
    assert "<img src='https://img.example.org/spindles.png'>" in rules(config, page)["img-alt"]


def test_lines_over_998_octets_in_the_encoded_message(config: Config, rendered: RenderedIssue) -> None:
    message = build_message(config, rendered, READER, message_id=MESSAGE_ID)
    long_header = b"X-Long: " + b"x" * 1200 + b"\r\n"
    found = rules(config, rendered, long_header + message)
    assert found["line-length"].startswith("encoded message line 1: 1208 octets")


@pytest.mark.parametrize(
    ("href", "problem"),
    [
        ("/archive/12", "must be an absolute http(s) URL"),
        ("javascript:alert(1)", "must be an absolute http(s) URL"),
        ("https://exa mple.org/", "spaces"),
        ("https://localhost/x", "which readers cannot reach"),
        ("https://example.org:port/", "as its port, which must be a number"),
        ("https://news.example.org@evil.example/", "before its host, so it opens evil.example"),
        ("mailto:", "without an address"),
    ],
)
def test_links_must_be_absolute_and_well_formed(
    config: Config, rendered: RenderedIssue, href: str, problem: str
) -> None:
    page = replace(rendered, html=rendered.html.replace("https://climate.example.org/ocean-heat", href, 1))
    assert problem in rules(config, page)["links"]
    assert "link 'Ocean heat content reaches a record high'" in rules(config, page)["links"]


def test_good_links_pass() -> None:
    assert link_problem("https://example.org/a?b=c#d") is None
    assert link_problem("mailto:editor@example.org?subject=hi") is None


def test_missing_unsubscribe_link_and_postal_address(config: Config, rendered: RenderedIssue) -> None:
    marker, address = rendered.markers.unsubscribe_url, config.newsletter.postal_address
    stripped = replace(
        rendered,
        html=rendered.html.replace(f'href="{marker}"', 'href="https://news.example.org/"').replace(address, ""),
        text=rendered.text.replace(marker, "").replace(address, ""),
    )
    found = check_message(config, stripped, build_message(config, stripped, READER, message_id=MESSAGE_ID))
    where = {(f.rule, f.where.split(":")[0]) for f in found}
    assert {("unsubscribe", "HTML part"), ("unsubscribe", "text part")} <= where
    assert {("postal-address", "HTML part"), ("postal-address", "text part")} <= where


def test_subject_and_preheader(config: Config, rendered: RenderedIssue) -> None:
    long = replace(rendered, subject="A" * 100, preheader="")
    found = rules(config, long)
    assert "100 characters" in found["subject"] and "preheader is empty" in found["preheader"]
    empty = replace(rendered, subject=" ")
    assert "the subject is empty" in rules(config, empty)["subject"]


def test_check_issue_uses_the_users_templates(tmp_path: Path, engine) -> None:
    folder = tmp_path / "mine" / "partials"
    folder.mkdir(parents=True)
    (folder / "item.mjml.j2").write_text(
        '<mj-section><mj-column><mj-text><a href="/relative">{{ item.title }}</a></mj-text>'
        '<mj-image src="https://img.example.org/x.png" alt="" /></mj-column></mj-section>'
    )
    config = make_config(tmp_path, templates=str(tmp_path / "mine"))
    add_summaries(engine, 2)
    report = check_issue(engine, config)
    assert report.description.startswith("draft of issue #1") and not report.ok
    assert {f.rule for f in report.findings} == {"links", "img-alt"}


def test_a_note_left_out_by_a_template_of_ones_own_is_a_warning_naming_it(tmp_path: Path, engine) -> None:
    add_summaries(engine, 2)
    editorial.set_note(engine, "A *short* week; see [the call](https://example.org/call).")
    assert check_issue(engine, make_config(tmp_path)).findings == []  # the default templates show it
    folder = tmp_path / "mine"
    folder.mkdir()
    digest = (Path(__file__).resolve().parent.parent / "templates" / "digest.mjml.j2").read_text(encoding="utf-8")
    (folder / "digest.mjml.j2").write_text(digest.replace('{% include "partials/note.mjml.j2" %}', ""))
    report = check_issue(engine, make_config(tmp_path, templates=str(folder)))
    assert [f.line() for f in report.findings] == [
        "warning: [note] HTML part: the editor's note is not shown; add it to your digest.mjml.j2 (include "
        "\"partials/note.mjml.j2\" after the header)"]
    assert report.ok  # a warning: the send goes ahead


runner = CliRunner()


def cli(config_file: Path, *args: str):
    env = {"NEWSLETTER_SECRET_KEY": "k", "COLUMNS": "200"}
    return runner.invoke(app, [*args, "--config", str(config_file)], env=env)


def test_digest_check_and_send_refuse_on_errors_unless_forced(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    (templates / "partials").mkdir(parents=True)
    config_file = tmp_path / "config.yaml"
    settings = {**DEMO_SETTINGS, "templates": "templates", "backend": {"name": "file", "options": {"outbox": "outbox"}}}
    config_file.write_text(yaml.safe_dump(settings))
    engine = open_database(make_config(tmp_path, **settings))
    add_summaries(engine, 1)
    add_people(engine, "ada@example.org")
    engine.dispose()
    assert cli(config_file, "digest", "check").exit_code == 0
    assert cli(config_file, "digest", "prepare").exit_code == 0

    (templates / "subject.txt.j2").write_text("{{ 'Far too long a subject line ' * 5 }}")
    checked = cli(config_file, "digest", "check")
    assert checked.exit_code == 1 and "[subject] Subject header: 139 characters" in checked.output
    refused = cli(config_file, "digest", "send")
    assert refused.exit_code == 1 and "fails the pre-send checks above" in refused.output
    assert not (tmp_path / "outbox").exists() or not list((tmp_path / "outbox").iterdir())
    forced = cli(config_file, "digest", "send", "--force")
    assert forced.exit_code == 0, forced.output
    assert len(list((tmp_path / "outbox").iterdir())) == 1


def test_an_ordinary_issue_with_a_long_first_title_passes_the_subject_check(tmp_path: Path) -> None:
    # The audit's repro: three items whose first title is ~95 characters gave "[subject] ... 121 characters".
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({**DEMO_SETTINGS, "backend": {"name": "file", "options": {"outbox": "outbox"}}}))
    title = "Older adults with denser sleep spindles remembered more word pairs the next morning in a cohort"
    assert len(title) == 95
    items = [{"title": t, "summary": "A sentence.", "url": f"https://example.org/{n}"}
             for n, t in enumerate([title, "Second paper", "Third paper"])]
    feed = tmp_path / "items.jsonl"
    feed.write_text("\n".join(json.dumps(item) for item in items), encoding="utf-8")
    assert cli(config_file, "ingest", str(feed)).exit_code == 0
    engine = open_database(make_config(tmp_path, **DEMO_SETTINGS))
    add_people(engine, "ada@example.org")
    engine.dispose()
    checked = cli(config_file, "digest", "check")
    assert checked.exit_code == 0, checked.output
    assert "[subject]" not in checked.output


# -- the checks read the bytes that are sent, for real subscribers ----------------------------------------

from newsletter.checks import check_sample  # noqa: E402
from newsletter.issues import build_sample  # noqa: E402
from newsletter.db import session  # noqa: E402
from newsletter.models import Subscriber, SubscriberStatus  # noqa: E402


def test_the_checks_build_the_first_the_longest_name_and_the_longest_address_on_the_list(config, engine) -> None:
    add_summaries(engine, 2)
    with session(engine) as db:
        for address, name in [("ada@example.org", "Ada"), ("firstname.lastname.of.a.long.address@research.example.org", "B"),
                            ("ana@example.org", "Ana María García-López de la Fuente y Rodríguez"), ("c@example.org", None)]:
            db.add(Subscriber(email=address, name=name, status=SubscriberStatus.ACTIVE))
        db.commit()
    sample = build_sample(config, *shown_issue(engine, config))
    assert [m.recipient.email for m in sample.messages] == [
        "ada@example.org", "ana@example.org", "firstname.lastname.of.a.long.address@research.example.org"]
    for message in sample.messages:
        parsed = email.message_from_bytes(message.data, policy=email.policy.strict)
        assert [a.addr_spec for a in parsed["To"].addresses] == [message.recipient.email]
    assert check_sample(config, sample) == []


def test_a_subscriber_no_message_can_be_built_for_is_named_but_does_not_stop_the_send(config, engine) -> None:
    add_summaries(engine, 1)
    with session(engine) as db:
        db.add(Subscriber(email="ada@example.org", name="Ada", status=SubscriberStatus.ACTIVE))
        db.add(Subscriber(email="jörg.with.a.long.address@example.org", name="Jörg", status=SubscriberStatus.ACTIVE))
        db.commit()
    report = check_issue(engine, config)
    assert report.ok
    [finding] = report.findings
    assert finding.severity is Severity.WARNING and "'jörg.with.a.long.address@example.org'" in finding.where
    assert "cannot send to" in finding.message and "fails this message alone" in finding.message


def test_digest_check_sees_exactly_what_the_send_loop_sends(config, engine) -> None:
    """The sample the checks read and the message the file backend writes for the same subscriber differ
    only in their Date and their random MIME boundary."""
    from newsletter.backends import create_backend
    from newsletter.delivery import send_issue
    from newsletter.issues import prepare_issue

    add_summaries(engine, 2)
    add_people(engine, "ada@example.org")
    prepare_issue(engine, config)
    checked = build_sample(config, *shown_issue(engine, config, 1)).message
    send_issue(engine, config, create_backend(config), 1)
    [sent] = (config.base_dir / "outbox").glob("*.eml")

    def normalised(data: bytes) -> bytes:
        boundary = re.search(rb'boundary="([^"]+)"', data).group(1)  # type: ignore[union-attr]
        return re.sub(rb"\r\nDate: [^\r]+", b"", data).replace(boundary, b"BOUNDARY")

    assert normalised(checked) == normalised(sent.read_bytes())


@pytest.mark.parametrize("tracking", [{"clicks": True}, {"clicks": True, "per_subscriber": True}],
                         ids=["clicks", "per-subscriber"])
def test_with_click_counting_the_checks_pass_on_exactly_what_is_sent(tmp_path: Path, engine, tracking) -> None:
    from newsletter.backends import create_backend
    from newsletter.delivery import send_issue
    from newsletter.issues import prepare_issue

    config = make_config(tmp_path, tracking=tracking)
    add_summaries(engine, 2)
    add_people(engine, "ada@example.org")
    prepare_issue(engine, config)
    assert check_issue(engine, config, 1).findings == []
    checked = build_sample(config, *shown_issue(engine, config, 1)).message
    assert b"/c/" in checked
    send_issue(engine, config, create_backend(config), 1)
    [sent] = (config.base_dir / "outbox").glob("*.eml")

    def normalised(data: bytes) -> bytes:
        boundary = re.search(rb'boundary="([^"]+)"', data).group(1)  # type: ignore[union-attr]
        return re.sub(rb"\r\nDate: [^\r]+", b"", data).replace(boundary, b"BOUNDARY")

    assert normalised(checked) == normalised(sent.read_bytes())


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"Subject: Sleep study\r\nBcc: victim@evil.example\r\n", "Bcc header: is not a header this newsletter writes"),
        (b"To: To:\r\n Ana =?utf-8?b?TWFyw61h?= <ana@example.org>\r\n", "To header: is malformed"),
        (b"Subject: =?utf-8?q?Caf=C3=A9?=\r\n", "Subject header: reads 'Café', not the rendered subject"),
    ],
    ids=["injected-bcc", "to-to", "decoded-subject"],
)
def test_the_headers_check_reads_the_bytes_with_the_strict_parser(
    config: Config, rendered: RenderedIssue, raw: bytes, problem: str
) -> None:
    """Messages broken the ways the old builder broke them (crafted bytes: the builder cannot make them now)."""
    good = build_message(config, rendered, READER, message_id=MESSAGE_ID)
    name = raw.split(b":", 1)[0]
    head, body = good.split(b"\r\n\r\n", 1)
    lines = [line for line in re.split(rb"\r\n(?! )", head) if not line.startswith(name + b":")]
    broken = b"\r\n".join([raw.rstrip(b"\r\n"), *lines]) + b"\r\n\r\n" + body
    found = [f"{f.where}: {f.message}" for f in check_message(config, rendered, broken, READER) if f.rule == "headers"]
    assert any(problem in line for line in found), found


def test_the_checks_see_the_backends_extra_headers_as_the_send_writes_them(tmp_path: Path, engine) -> None:
    from newsletter.checks import check_issue

    smtp = make_config(tmp_path, backend={"name": "smtp", "options": {
        "host": "mail.example.org", "security": "none", "feedback_id": "weekly:research:nl"}})
    add_summaries(engine, 2)
    add_people(engine, "ada@example.org")
    sample = build_sample(smtp, *shown_issue(engine, smtp))
    parsed = email.message_from_bytes(sample.messages[0].data, policy=email.policy.strict)
    assert parsed["Feedback-ID"] == "weekly:research:nl"  # the bytes the send loop builds, header included
    report = check_issue(engine, smtp)
    assert [f.line() for f in report.findings if f.rule == "headers"] == []  # a backend's header is ours
