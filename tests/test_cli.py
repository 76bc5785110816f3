"""The command line: every command has --help with an example, and user mistakes give one line, no
traceback, and the right exit code."""

import email
import email.policy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from newsletter.cli import app
from tests.conftest import ROOT, sqlite_only

runner = CliRunner()


def config_file(tmp_path: Path, **extra: str) -> Path:
    path = tmp_path / "config.yaml"
    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    text = text.replace("# templates: my-templates", f"templates: {ROOT / 'templates'}")
    for old, new in extra.items():
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    return path


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"NEWSLETTER_SECRET_KEY": "k", "COLUMNS": "200"})


COMMANDS = [
    [], ["ingest"], ["run"], ["demo"], ["subscribers"], ["subscribers", "add"], ["subscribers", "import"],
    ["subscribers", "list"], ["subscribers", "remove"], ["subscribers", "export"], ["subscribers", "erase"],
    ["serve"], ["preview"], ["status"], ["worker"], ["digest"],
    ["digest", "prepare"], ["digest", "render"], ["digest", "send"], ["digest", "status"], ["digest", "check"],
    ["digest", "pause"], ["digest", "resume"], ["digest", "retry-failed"], ["digest", "cancel"], ["digest", "clicks"],
    ["digest", "order"], ["digest", "note"], ["digest", "subject"],
    ["bounces"], ["bounces", "process"], ["summaries"], ["summaries", "list"], ["summaries", "show"],
    ["summaries", "edit"], ["summaries", "exclude"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "newsletter")
def test_every_command_has_help_with_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output
    if len(command) == 2 or command[:1] in (["ingest"], ["run"], ["demo"], ["serve"], ["preview"], ["status"], ["worker"]):
        assert "--config" in result.output


def test_a_config_mistake_is_one_line_and_exit_code_2(tmp_path):
    path = config_file(tmp_path, **{"timezone: Europe/London": "timezone: Europe/Londn"})
    result = invoke("subscribers", "list", "--config", path)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {path}: schedule.timezone: 'Europe/Londn' is not an IANA timezone name such as Europe/London"
    ]


def test_the_whole_path_through_the_cli(tmp_path):
    path = config_file(tmp_path)
    good = tmp_path / "in" / "good.jsonl"
    good.parent.mkdir()
    good.write_text(
        '{"title": "A paper", "summary": "It found things.", "url": "https://example.org/a"}\n'
        '{"title": "Another", "summary": "It found more.", "url": "https://example.org/b"}\n',
        encoding="utf-8",
    )
    (tmp_path / "in" / "bad.json").write_text('{"title": "No closing brace"', encoding="utf-8")

    result = invoke("ingest", tmp_path / "in", "--config", path)
    assert result.exit_code == 1  # one file was rejected, and says so
    assert "bad.json" in result.output and "added 2, updated 0, unchanged 0, rejected 1" in result.output
    assert "Traceback" not in result.output

    assert invoke("subscribers", "add", "ada@example.org", "--name", "Ada", "--config", path).exit_code == 0
    bad_address = invoke("subscribers", "add", "not-an-address", "--config", path)
    assert bad_address.exit_code == 1 and "is not a valid email address" in bad_address.output
    imported = invoke("subscribers", "import", ROOT / "subscribers" / "example.csv", "--config", path)
    assert imported.exit_code == 0 and "added 6" in imported.output
    assert "ada@example.org" in invoke("subscribers", "list", "--config", path).output

    preview = invoke("digest", "render", "--out", tmp_path / "draft", "--config", path)
    assert preview.exit_code == 0 and "draft of issue #1" in preview.output
    assert "A paper" in (tmp_path / "draft" / "issue.html").read_text(encoding="utf-8")

    prepared = invoke("digest", "prepare", "--config", path)
    assert prepared.exit_code == 0 and "prepared issue #1" in prepared.output and "7 subscribers" in prepared.output
    assert "no summary is waiting; nothing prepared" in invoke("digest", "prepare", "--config", path).output

    sent = invoke("digest", "send", "--config", path)
    assert sent.exit_code == 0 and "sent 7" in sent.output and "finished" in sent.output
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 7
    status = invoke("digest", "status", "--config", path)
    assert "sent 7" in status.output and ": sent" in status.output

    again = invoke("digest", "send", "--config", path)
    assert again.exit_code == 1 and "already sent" in again.output and "no summary is waiting" in again.output

    # Once the issue is out, "render" previews the next one as soon as a new summary is waiting.
    assert "issue #1 (sent " in invoke("digest", "render", "--out", tmp_path / "p", "--config", path).output
    (tmp_path / "in" / "good.jsonl").write_text(
        '{"title": "A late paper", "summary": "Arrived after the send.", "url": "https://example.org/c"}\n',
        encoding="utf-8",
    )
    (tmp_path / "in" / "bad.json").unlink()
    assert invoke("ingest", tmp_path / "in", "--config", path).exit_code == 0
    assert "draft of issue #2" in invoke("digest", "render", "--out", tmp_path / "p", "--config", path).output
    waiting = invoke("digest", "send", "--config", path)
    assert waiting.exit_code == 1 and "1 summary is waiting: `newsletter digest prepare` makes the next issue" \
        in waiting.output

    exported = invoke("subscribers", "export", "--config", path)
    assert exported.output.splitlines()[0].startswith("email,name,status")
    assert invoke("subscribers", "remove", "ada@example.org", "--config", path).output.strip() == (
        "ada@example.org is unsubscribed"
    )


@sqlite_only  # the demo's database is a file in its folder
def test_demo_with_a_config_uses_its_newsletter_and_templates_but_its_own_database(tmp_path):
    templates = tmp_path / "my-templates"
    templates.mkdir()
    (templates / "subject.txt.j2").write_text("{{ newsletter.name }} weekly letter", encoding="utf-8")
    path = config_file(
        tmp_path,
        **{"name: Research Weekly": "name: Lab Notes", f"templates: {ROOT / 'templates'}": "templates: my-templates"},
    )
    result = invoke("demo", "--dir", tmp_path / "demo", "--config", path)
    assert result.exit_code == 0, result.output
    assert '"Lab Notes weekly letter"' in result.output
    assert not (tmp_path / "subscribers" / "newsletter.db").exists()  # the user's database is untouched
    assert (tmp_path / "demo" / "newsletter.db").exists()
    messages = list((tmp_path / "demo" / "outbox").glob("*.eml"))
    assert len(messages) == 6
    assert b"Subject: Lab Notes weekly letter" in messages[0].read_bytes()


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        ({"timezone: Europe/London": "timezone: Europe"}, "schedule.timezone: 'Europe' is not an IANA timezone"),
        pytest.param({"url: sqlite:///subscribers/newsletter.db": "url: sqlite:///config.yaml"},
                     "cannot open the database", marks=sqlite_only),
        pytest.param({"url: sqlite:///subscribers/newsletter.db": "url: sqlite:///config.yaml/x.db"},
                     "cannot create the database folder", marks=sqlite_only),
        ({f"templates: {ROOT / 'templates'}": "templates: no-such-folder"}, "templates: the folder"),
    ],
    ids=["zone-folder", "not-a-database", "folder-is-a-file", "missing-templates"],
)
def test_config_and_database_mistakes_are_one_line(tmp_path, replace, expected):
    path = config_file(tmp_path, **replace)
    result = invoke("subscribers", "list", "--config", path)
    assert result.exit_code in (1, 2)
    assert len(result.output.strip().splitlines()) == 1 and expected in result.output
    assert "Traceback" not in result.output


def test_a_bad_database_url_in_the_environment_is_blamed_on_the_variable(tmp_path):
    result = runner.invoke(app, ["subscribers", "list", "--config", str(config_file(tmp_path))],
                           env={"NEWSLETTER_DATABASE_URL": "mysql://x"})
    assert result.exit_code == 2
    assert result.output.startswith("error: NEWSLETTER_DATABASE_URL: 'mysql://x' must start with sqlite:///")


def test_an_unreachable_postgresql_server_is_one_line_without_the_password(tmp_path):
    url = "postgresql+psycopg://newsletter:s3cret@127.0.0.1:1/newsletter"  # nothing listens on port 1
    result = runner.invoke(app, ["subscribers", "list", "--config", str(config_file(tmp_path))],
                           env={"NEWSLETTER_DATABASE_URL": url})
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "cannot open the database 'postgresql+psycopg://newsletter:***@127.0.0.1:1/newsletter'" in result.output
    assert "s3cret" not in result.output


def test_export_to_an_impossible_place_says_so(tmp_path):
    result = invoke("subscribers", "export", "--out", tmp_path / "no" / "such" / "dir.csv", "--config", config_file(tmp_path))
    assert result.exit_code == 1 and "cannot write" in result.output and "choose another --out" in result.output


@sqlite_only  # the demo's database is a file in its folder
def test_demo_never_overwrites_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "prod").mkdir()
    (tmp_path / "prod" / "config.yaml").write_text("newsletter: {}\n", encoding="utf-8")
    result = invoke("demo", "--dir", tmp_path / "prod")
    assert result.exit_code == 1 and "already holds files that are not from a demo" in result.output
    assert (tmp_path / "prod" / "config.yaml").read_text(encoding="utf-8") == "newsletter: {}\n"
    assert invoke("demo", "--dir", tmp_path / "d").exit_code == 0
    assert invoke("demo", "--dir", tmp_path / "d").exit_code == 0  # a demo folder is fair game
    is_a_file = invoke("demo", "--dir", tmp_path / "prod" / "config.yaml")
    assert is_a_file.exit_code == 1 and "is a file; --dir needs a folder" in is_a_file.output


def test_numbers_too_large_for_the_database_are_refused_by_the_option(tmp_path):
    result = invoke("digest", "send", "--issue", "99999999999999999999", "--config", config_file(tmp_path))
    assert result.exit_code == 2 and "--issue" in result.output and "Traceback" not in result.output


def test_export_one_subscriber_as_json_and_erase_them(tmp_path):
    path = config_file(tmp_path)
    assert invoke("subscribers", "add", "ada@example.org", "--name", "Ada", "--config", path).exit_code == 0
    shown = invoke("subscribers", "export", "ADA@example.org", "--config", path)
    assert shown.exit_code == 0
    data = json.loads(shown.stdout)
    assert data["subscriber"]["email"] == "ada@example.org" and data["events"][0]["kind"] == "subscribed"
    out = tmp_path / "ada.json"
    assert invoke("subscribers", "export", "ada@example.org", "--out", out, "--config", path).exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8")) == data
    mixed = invoke("subscribers", "export", "ada@example.org", "--status", "active", "--config", path)
    assert mixed.exit_code == 1 and "leave it out when exporting one EMAIL" in mixed.output

    refused = runner.invoke(app, ["subscribers", "erase", "ada@example.org", "--config", str(path)], input="n\n",
                            env={"NEWSLETTER_SECRET_KEY": "k"})
    assert refused.exit_code == 1
    erased = invoke("subscribers", "erase", "ada@example.org", "--yes", "--config", path)
    assert erased.exit_code == 0 and "erased ada@example.org: the subscriber, 1 events" in erased.output
    gone = invoke("subscribers", "export", "ada@example.org", "--config", path)
    assert gone.exit_code == 1
    assert gone.output.strip() == "error: ada@example.org was erased; nothing but a hash of the address is stored"
    again = invoke("subscribers", "add", "ada@example.org", "--config", path)
    assert again.exit_code == 1 and "must not be added again" in again.output
def test_pause_resume_retry_failed_cancel_and_status_through_the_cli(tmp_path):
    path = config_file(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text(
        '{"title": "A paper", "summary": "It found things.", "url": "https://example.org/a"}\n', encoding="utf-8")
    assert invoke("ingest", tmp_path / "in", "--config", path).exit_code == 0
    for person in ("ada@example.org", "bob@example.org"):
        assert invoke("subscribers", "add", person, "--config", path).exit_code == 0
    assert invoke("digest", "prepare", "--config", path).exit_code == 0

    assert "issue #1 is paused" in invoke("digest", "pause", "--config", path).output
    refused = invoke("digest", "send", "--config", path)
    assert refused.exit_code == 1 and "issue #1 is paused; run `newsletter digest resume N`" in refused.output
    assert "paused" in invoke("digest", "status", "1", "--config", path).output
    assert invoke("digest", "resume", "1", "--config", path).exit_code == 0
    again = invoke("digest", "resume", "1", "--config", path)
    assert again.exit_code == 1 and "issue #1 is sending; it cannot be resumed" in again.output

    (tmp_path / "outbox").write_text("a file where the outbox folder should be")
    broken = invoke("digest", "send", "--config", path)
    assert broken.exit_code == 1 and "cannot create the outbox" in broken.output
    (tmp_path / "outbox").unlink()
    assert "sent 2" in invoke("digest", "send", "--config", path).output
    assert "0 failed deliveries queued again" in invoke("digest", "retry-failed", "--config", path).output
    status = invoke("digest", "status", "--config", path)
    assert "sent 2" in status.output and ": sent" in status.output
    cancelled = invoke("digest", "cancel", "--config", path)
    assert cancelled.exit_code == 1 and "issue #1 is sent; it cannot be cancelled" in cancelled.output


def test_a_worker_with_nothing_to_send_says_so_and_exits(tmp_path):
    result = invoke("worker", "--until-done", "--config", config_file(tmp_path))
    assert result.exit_code == 0, result.output
    assert "nothing to send: no prepared issue has deliveries due" in result.output


def test_config_and_verbose_are_accepted_before_or_after_the_command(tmp_path):
    config = config_file(tmp_path)
    assert invoke("--config", config, "subscribers", "add", "ada@example.org").exit_code == 0
    assert invoke("subscribers", "add", "bob@example.org", "--config", config).exit_code == 0
    listed = invoke("-c", config, "subscribers", "list")
    assert listed.exit_code == 0 and "ada@example.org" in listed.output and "bob@example.org" in listed.output
    sample = ROOT / "newsletter" / "samples" / "summaries" / "01-senolytic-muscle-repair.md"
    quiet = invoke("--config", config, "ingest", sample)
    after = invoke("ingest", sample, "--config", config, "-v")
    before = invoke("-v", "--config", config, "ingest", sample)
    assert " INFO " not in quiet.stderr
    for verbose in (after, before):  # -v logs what each stage does, wherever it is written
        assert f"INFO newsletter.ingest.store: {sample}: added 0, updated 0, unchanged 1" in verbose.stderr
    other = tmp_path / "other"
    other.mkdir()
    # the command's own --config wins over the one before the command
    assert invoke("--config", config_file(other), "subscribers", "list", "--config", config).output == listed.output


def test_the_list_of_commands_shows_each_summary_as_one_reflowed_paragraph():
    listing = runner.invoke(app, ["digest", "--help"], env={"COLUMNS": "100"}).output
    send = listing[listing.index("│ send"):listing.index("│ check")]
    lines = [line.strip("│ ").strip() for line in send.splitlines()]
    assert all(len(line) > 60 for line in lines[:-1]), send  # no line cut short where the docstring broke


def test_the_next_issue_is_shaped_from_the_command_line_and_sent_as_shaped(tmp_path):
    path = config_file(tmp_path)
    inbox = tmp_path / "in"
    inbox.mkdir()
    for n, title in enumerate(["First paper", "Second paper", "Third paper"], 1):
        (inbox / f"{n}.jsonl").write_text(f'{{"title": "{title}", "summary": "What it found.", '
                                          f'"url": "https://example.org/{n}"}}\n', encoding="utf-8")
        assert invoke("ingest", inbox / f"{n}.jsonl", "--config", path).exit_code == 0
    assert invoke("subscribers", "add", "ada@example.org", "--config", path).exit_code == 0

    listed = invoke("digest", "order", "--config", path)
    assert listed.exit_code == 0
    assert listed.output.splitlines() == ["next issue #1:", "   1. [1] First paper", "   2. [2] Second paper",
                                          "   3. [3] Third paper"]
    shaped = invoke("digest", "order", "3", "--lead", "2", "--leave-out", "1", "--config", path)
    assert shaped.exit_code == 0, shaped.output
    assert shaped.output.splitlines()[:5] == ["next issue #1:", "   1. [2] Second paper  (lead)",
                                              "   2. [3] Third paper", "left out (--bring-back ID):",
                                              "      [1] First paper"]
    assert invoke("digest", "note", "A *short* week.", "--config", path).output == "next issue #1: note:\nA *short* week.\n"
    subject = invoke("digest", "subject", "Two papers, by hand", "--config", path)
    assert subject.output.strip() == "next issue #1: 'Two papers, by hand' (the editor's, 19/99 characters)"

    assert invoke("digest", "prepare", "--config", path).exit_code == 0
    assert invoke("digest", "send", "--config", path).exit_code == 0
    [sent] = list((tmp_path / "outbox").glob("*.eml"))
    message = email.message_from_bytes(sent.read_bytes(), policy=email.policy.strict)
    text = message.get_body(("plain",)).get_content()
    assert message["Subject"] == "Two papers, by hand"
    assert text.index("A short week.") < text.index("Second paper") < text.index("Third paper")
    assert "First paper" not in text


def test_a_change_that_makes_no_sense_is_one_line_and_changes_nothing(tmp_path):
    path = config_file(tmp_path)
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "a.jsonl").write_text('{"title": "A paper", "summary": "What it found."}\n', encoding="utf-8")
    assert invoke("ingest", inbox / "a.jsonl", "--config", path).exit_code == 0
    for args, error in [
        (["order", "1", "--leave-out", "1"], "error: “A paper” is left out; bring it back to place it"),
        (["order", "7"], "error: summary 7 is not waiting for the next issue; see `newsletter digest order` for the "
                         "ones that are"),
        (["order", "--undo"], "error: there is nothing to undo"),
        (["subject", "x" * 120], "error: the subject is 120 characters; keep it to 99 (mail clients cut longer ones, "
                                 "and the pre-send check refuses them)"),
        (["note", "--file", tmp_path / "missing.md"], f"error: cannot read {tmp_path / 'missing.md'} (No such file or "
                                                      "directory); give a UTF-8 text file"),
    ]:
        result = invoke("digest", *args, "--config", path)
        assert (result.exit_code, result.output.strip()) == (1, error), args
    assert invoke("digest", "order", "--config", path).output.splitlines() == ["next issue #1:", "   1. [1] A paper"]
