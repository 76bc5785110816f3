"""Bounce reports, complaints and mailed unsubscribe requests mark the right subscriber, from every mailbox kind."""

from __future__ import annotations

import mailbox
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import select

from newsletter.bounces import BounceError, process_bounces, record_bounce, return_path
from newsletter.db import session
from newsletter.models import Event, EventKind, Subscriber, SubscriberStatus, utcnow
from tests.conftest import make_config
from tests.helpers import add_people


def dsn(recipient: str, *, status: str = "5.1.1", action: str = "failed", to: str = "digest@example.org",
        message_id: str = "<issue-1.abc@example.org>", returned_to: str | None = None) -> bytes:
    """A delivery status notification shaped like Postfix's (RFC 3464)."""
    return (
        f"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        f"--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\r\n"
        f"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nOriginal-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected\r\n\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: Research Weekly <digest@example.org>\r\nTo: {returned_to or recipient}\r\n"
        f"Message-ID: {message_id}\r\nSubject: Research Weekly\r\n\r\n"
        f"--B--\r\n"
    ).encode()


def complaint(recipient: str) -> bytes:
    return (
        "From: fbl@isp.example\r\nTo: digest@example.org\r\nSubject: abuse report\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n\r\n'
        "--F\r\nContent-Type: text/plain\r\n\r\nA complaint\r\n\r\n"
        "--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n\r\n"
        f"--F\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: digest@example.org\r\nTo: {recipient}\r\n"
        "Subject: Research Weekly\r\n\r\n--F--\r\n"
    ).encode()


def plain(sender: str, to: str, subject: str = "unsubscribe") -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message.set_content("please remove me")
    return message.as_bytes()


def status_of(engine, address: str) -> SubscriberStatus:
    with session(engine) as db:
        return db.exec(select(Subscriber.status).where(Subscriber.email == address)).one()


def events(engine) -> list[tuple[str, EventKind]]:
    with session(engine) as db:
        rows = db.exec(select(Subscriber.email, Event.kind).join(Event)).all()
    return sorted((a, k) for a, k in rows)


@pytest.fixture
def people(engine):
    add_people(engine, "gone@example.net", "full@example.net", "angry@example.net", "leaving@example.net",
               "fine@example.net")


def maildir_config(tmp_path: Path, kind: str = "maildir"):
    return make_config(tmp_path, bounces={"mailbox": {"type": kind, "path": f"bounces.{kind}"}})


@pytest.mark.parametrize("kind", ["maildir", "mbox"])
def test_mailbox_reports_mark_subscribers_and_are_removed(tmp_path, engine, people, kind):
    config = maildir_config(tmp_path, kind)
    path = tmp_path / f"bounces.{kind}"
    box = mailbox.Maildir(path, create=True) if kind == "maildir" else mailbox.mbox(path, create=True)
    box.add(dsn("gone@example.net"))
    box.add(dsn("full@example.net", status="4.2.2", action="delayed"))
    box.add(complaint("angry@example.net"))
    box.add(plain("Leaving Person <leaving@example.net>", "unsubscribe@example.org"))
    box.add(plain("someone@example.com", "digest@example.org", "Out of office"))  # not for us to judge
    box.flush()

    report = process_bounces(engine, config)

    assert (report.messages, report.hard, report.soft, report.complaints, report.unsubscribed, report.left) == \
        (5, 1, 1, 1, 1, 1)
    assert status_of(engine, "gone@example.net") is SubscriberStatus.BOUNCED
    assert status_of(engine, "full@example.net") is SubscriberStatus.ACTIVE  # one soft bounce is not enough
    assert status_of(engine, "angry@example.net") is SubscriberStatus.COMPLAINED
    assert status_of(engine, "leaving@example.net") is SubscriberStatus.UNSUBSCRIBED
    assert status_of(engine, "fine@example.net") is SubscriberStatus.ACTIVE
    assert events(engine) == [
        ("angry@example.net", EventKind.COMPLAINT), ("full@example.net", EventKind.BOUNCE_SOFT),
        ("gone@example.net", EventKind.BOUNCE_HARD), ("leaving@example.net", EventKind.UNSUBSCRIBED),
    ]
    reopened = mailbox.Maildir(path) if kind == "maildir" else mailbox.mbox(path)
    assert [m["Subject"] for m in reopened] == ["Out of office"]  # handled ones removed, the rest kept
    assert process_bounces(engine, config).messages == 1


def test_soft_bounces_mark_bounced_only_when_enough_fall_within_the_window(tmp_path, engine, people):
    config = make_config(tmp_path, bounces={"soft_limit": 3, "soft_days": 10})
    now = utcnow()
    with session(engine) as db:
        person = db.exec(select(Subscriber).where(Subscriber.email == "full@example.net")).one()
        assert not record_bounce(db, config, person, hard=False, detail={}, now=now - timedelta(days=30))
        assert not record_bounce(db, config, person, hard=False, detail={}, now=now - timedelta(days=5))
        assert not record_bounce(db, config, person, hard=False, detail={}, now=now - timedelta(days=1))
        db.commit()  # the first one is too old: 2 in the window
        assert person.status is SubscriberStatus.ACTIVE
        assert record_bounce(db, config, person, hard=False, detail={}, now=now)
        db.commit()
    assert status_of(engine, "full@example.net") is SubscriberStatus.BOUNCED


def test_a_verp_return_path_names_the_subscriber_even_when_the_dsn_names_another_address(tmp_path, engine, people):
    config = make_config(tmp_path, bounces={"verp": True, "mailbox": {"type": "maildir", "path": "box"}})
    with session(engine) as db:
        token = db.exec(select(Subscriber.token).where(Subscriber.email == "gone@example.net")).one()
    address = return_path(config, token)
    assert address == f"bounces+{token}@example.org"
    box = mailbox.Maildir(tmp_path / "box", create=True)
    # A forwarding address bounced: the DSN names the forward target, not our subscriber.
    box.add(dsn("forwarded@elsewhere.example", to=address))
    process_bounces(engine, config)
    assert status_of(engine, "gone@example.net") is SubscriberStatus.BOUNCED


def test_the_returned_message_id_matches_when_the_recipient_is_unknown(tmp_path, engine, people):
    from newsletter.models import Delivery, IssueStatus
    from tests.helpers import make_issue

    config = maildir_config(tmp_path)
    with session(engine) as db:
        issue = make_issue(1)
        issue.status = IssueStatus.SENT
        db.add(issue)
        db.flush()
        person = db.exec(select(Subscriber).where(Subscriber.email == "gone@example.net")).one()
        db.add(Delivery(issue_id=issue.id, subscriber_id=person.id, message_id="<issue-1.xyz@example.org>"))
        db.commit()
    box = mailbox.Maildir(tmp_path / "bounces.maildir", create=True)
    box.add(dsn("alias@other.example", message_id="<issue-1.xyz@example.org>"))
    process_bounces(engine, config)
    assert status_of(engine, "gone@example.net") is SubscriberStatus.BOUNCED


def test_nul_bytes_in_a_report_find_nobody_and_stop_nothing(tmp_path, engine, people):
    """Anyone can mail the bounce address. A NUL (which PostgreSQL cannot compare or store) in the
    recipient, the returned Message-ID or an unsubscribe request's sender must not stop the run."""
    config = maildir_config(tmp_path)
    box = mailbox.Maildir(tmp_path / "bounces.maildir", create=True)
    box.add(dsn("gone\x00@example.net", message_id="<issue-1.\x00@example.org>"))
    box.add(plain("fine@example.net", "unsubscribe@example.org").replace(b"fine@", b"fine\x00@"))
    box.add(dsn("full@example.net"))
    box.flush()

    report = process_bounces(engine, config)

    assert (report.messages, report.hard, report.unsubscribed) == (3, 1, 0)
    assert status_of(engine, "full@example.net") is SubscriberStatus.BOUNCED
    assert status_of(engine, "gone@example.net") is status_of(engine, "fine@example.net") is SubscriberStatus.ACTIVE


def test_without_a_configured_mailbox_or_with_a_missing_one_the_error_says_what_to_set(tmp_path, engine):
    with pytest.raises(BounceError, match="bounces.mailbox is not set"):
        process_bounces(engine, make_config(tmp_path))
    with pytest.raises(BounceError, match=r"bounces.mailbox.path: .*bounces.maildir does not exist"):
        process_bounces(engine, maildir_config(tmp_path))


def test_an_imap_mailbox_without_password_says_which_variable(tmp_path, engine, monkeypatch):
    monkeypatch.delenv("NEWSLETTER_IMAP_PASSWORD", raising=False)
    config = make_config(tmp_path, bounces={"mailbox": {"type": "imap", "host": "127.0.0.1", "username": "b"}})
    with pytest.raises(BounceError, match="set NEWSLETTER_IMAP_PASSWORD"):
        process_bounces(engine, config)


def write_config_file(tmp_path, config) -> None:
    """A config.yaml for the CLI: the test's database and the Maildir ``bounces.maildir`` beside it."""
    (tmp_path / "config.yaml").write_text(
        "newsletter:\n  name: Research Weekly\n  sender: Research Weekly <digest@example.org>\n"
        "  postal_address: 1 Example Street, Example City\n  site_url: https://news.example.org\n"
        f"database:\n  url: {config.database.url}\n"
        "bounces:\n  mailbox:\n    type: maildir\n    path: bounces.maildir\n", encoding="utf-8")


def test_bounces_process_cli_reports_what_it_did(tmp_path, engine, people):
    from typer.testing import CliRunner

    from newsletter.cli import app

    config = maildir_config(tmp_path)
    write_config_file(tmp_path, config)
    mailbox.Maildir(tmp_path / "bounces.maildir", create=True).add(dsn("gone@example.net"))
    result = CliRunner().invoke(app, ["bounces", "process", "-c", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    assert "1 hard and 0 soft bounces (1 subscribers now bounced)" in result.output
    assert status_of(engine, "gone@example.net") is SubscriberStatus.BOUNCED


# -- IMAP, against a private Dovecot ------------------------------------------------------------------------------

DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/run/state
log_path = {root}/dovecot.log
instance_name = newsletter-test-{port}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={root}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


@pytest.fixture
def dovecot():
    """A private Dovecot IMAP server on a free loopback port, all of it in a temporary folder."""
    import os
    import shutil
    import subprocess
    import tempfile

    from tests.conftest import _free_port

    from tests.tools import missing

    if shutil.which("dovecot") is None or os.geteuid() != 0:
        missing("needs Debian's dovecot-imapd (apt-get install dovecot-imapd) and root (Dovecot's master drops privileges itself)")
    root = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
    root.chmod(0o755)
    port = _free_port()
    (root / "mail").mkdir()
    shutil.chown(root / "mail", "nobody", "nogroup")
    (root / "users").write_text("bounces:{PLAIN}imap-secret\n")
    conf = root / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(root=root, port=port))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # the daemon keeps pipes open
    subprocess.run(["dovecot", "-c", str(conf)], check=True, **quiet)
    try:
        yield port
    finally:
        subprocess.run(["dovecot", "-c", str(conf), "stop"], **quiet)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_imap_mailbox_is_processed_and_emptied(tmp_path, engine, people, dovecot, monkeypatch):
    import imaplib

    monkeypatch.setenv("NEWSLETTER_IMAP_PASSWORD", "imap-secret")
    imap = imaplib.IMAP4("127.0.0.1", dovecot)
    imap.login("bounces", "imap-secret")
    for message in (dsn("gone@example.net"), plain("leaving@example.net", "unsubscribe@example.org"),
                    plain("friend@example.com", "digest@example.org", "Thanks!")):
        imap.append("INBOX", None, None, message)
    config = make_config(tmp_path, bounces={"mailbox": {
        "type": "imap", "host": "127.0.0.1", "port": dovecot, "security": "none", "username": "bounces"}})

    report = process_bounces(engine, config)

    assert (report.messages, report.hard, report.unsubscribed, report.left) == (3, 1, 1, 1)
    assert status_of(engine, "gone@example.net") is SubscriberStatus.BOUNCED
    assert status_of(engine, "leaving@example.net") is SubscriberStatus.UNSUBSCRIBED
    imap.select("INBOX")
    _, remaining = imap.uid("SEARCH", "ALL")
    assert len(remaining[0].split()) == 1  # only the message nobody understood is left
    imap.logout()
    monkeypatch.setenv("NEWSLETTER_IMAP_PASSWORD", "wrong")
    with pytest.raises(BounceError, match=rf"cannot read the IMAP mailbox bounces@127.0.0.1:{dovecot}"):
        process_bounces(engine, config)


def test_a_malformed_report_is_left_in_the_mailbox_and_the_rest_processed(tmp_path, engine, people, monkeypatch):
    from newsletter import bounces

    config = maildir_config(tmp_path)
    box = mailbox.Maildir(tmp_path / "bounces.maildir", create=True)
    box.add(b"Subject: broken\r\nContent-Type: multipart/report; report-type=delivery-status\r\n\r\nno parts")
    box.add(dsn("gone@example.net"))
    original = bounces._dsn_recipients

    def fragile(message):
        if message["Subject"] == "broken":
            raise ValueError("cannot parse")
        return original(message)

    monkeypatch.setattr(bounces, "_dsn_recipients", fragile)
    report = process_bounces(engine, config)
    assert (report.hard, report.left) == (1, 1)
    assert [m["Subject"] for m in mailbox.Maildir(tmp_path / "bounces.maildir")] == ["broken"]


# -- a mailbox path that is not what its type expects --------------------------------------------------------------


def test_a_maildir_folder_without_cur_new_tmp_is_an_empty_mailbox_not_an_error(tmp_path, engine, people):
    (tmp_path / "bounces.maildir").mkdir()  # what a fresh install has before the first bounce arrives
    report = process_bounces(engine, maildir_config(tmp_path))
    assert (report.messages, report.left) == (0, 0)


def test_a_folder_that_holds_other_things_than_a_maildir_is_a_one_line_error(tmp_path, engine, people):
    (tmp_path / "bounces.maildir" / "Maildir" / "new").mkdir(parents=True)  # the home folder, not the Maildir
    with pytest.raises(BounceError) as raised:
        process_bounces(engine, maildir_config(tmp_path))
    message = str(raised.value)
    assert "\n" not in message and "bounces.mailbox.path" in message
    assert "is not a Maildir (no cur/, new/ or tmp/, but Maildir)" in message
    assert "set the path to the Maildir folder itself" in message


def test_a_maildir_missing_one_of_cur_new_tmp_gets_it_and_is_read(tmp_path, engine, people):
    path = tmp_path / "bounces.maildir"
    mailbox.Maildir(path, create=True).add(dsn("gone@example.net"))
    (path / "cur").rmdir()
    assert process_bounces(engine, maildir_config(tmp_path)).hard == 1
    assert status_of(engine, "gone@example.net") is SubscriberStatus.BOUNCED


def test_a_file_where_a_maildir_is_expected_is_a_one_line_error_naming_the_key(tmp_path, engine):
    (tmp_path / "bounces.maildir").write_text("not a mailbox\n")
    with pytest.raises(BounceError) as raised:
        process_bounces(engine, maildir_config(tmp_path))
    message = str(raised.value)
    assert "\n" not in message and "bounces.mailbox.path" in message and "bounces.maildir" in message
    assert "is a file, not a Maildir folder" in message and "bounces.mailbox.type: mbox" in message


def test_a_folder_or_an_unreadable_file_where_an_mbox_is_expected_is_a_one_line_error(tmp_path, engine):
    import os

    (tmp_path / "bounces.mbox").mkdir()
    with pytest.raises(BounceError, match=r"bounces.mailbox.path: .*bounces.mbox is a folder, not an mbox file"):
        process_bounces(engine, maildir_config(tmp_path, "mbox"))
    (tmp_path / "bounces.mbox").rmdir()
    (tmp_path / "bounces.mbox").write_bytes(b"")
    (tmp_path / "bounces.mbox").chmod(0)
    try:
        if os.access(tmp_path / "bounces.mbox", os.R_OK):
            pytest.skip("running as root: permissions do not stop reading")
        with pytest.raises(BounceError, match=r"bounces.mailbox.path: .*cannot open the mbox file \(Permission denied\)"):
            process_bounces(engine, maildir_config(tmp_path, "mbox"))
    finally:
        (tmp_path / "bounces.mbox").chmod(0o600)


def test_the_bounces_job_logs_a_bad_mailbox_path_as_one_line_without_a_traceback(tmp_path, engine, caplog):
    import threading

    from newsletter.schedule import build_jobs, run_job

    (tmp_path / "bounces.maildir").write_text("not a mailbox\n")
    config = maildir_config(tmp_path)
    job = next(job for job in build_jobs(config, threading.Event()) if job.id == "bounces")
    caplog.set_level("ERROR")
    run_job(engine, config, job)
    [record] = caplog.records
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert record.getMessage().startswith("job bounces failed after ") and "bounces.mailbox.path" in record.getMessage()


def test_bounces_process_cli_says_what_is_wrong_with_the_path_in_one_line(tmp_path, engine):
    from typer.testing import CliRunner

    from newsletter.cli import app

    (tmp_path / "bounces.maildir").write_text("not a mailbox\n")
    config = maildir_config(tmp_path)
    write_config_file(tmp_path, config)
    result = CliRunner().invoke(app, ["bounces", "process", "-c", str(tmp_path / "config.yaml")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "bounces.mailbox.path" in result.output and "not a Maildir folder" in result.output
