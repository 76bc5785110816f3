"""Issue item 7b: a private Postfix from Debian on loopback delivers the digest to a Maildir, bounces an
unknown user with a DSN it generates itself, and ``bounces process`` on that Maildir marks the subscriber.

The instance lives entirely in a temporary folder (its own config, queue and data directories, a free
loopback port, the log in a file); the system's Postfix is never started or changed. Postfix's master must
start as root, so the test is skipped for other users or without Postfix installed. Delivery uses the
``virtual`` agent with a static uid (nobody) so no system account has to be created.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from sqlmodel import select

from newsletter.backends import create_backend
from newsletter.bounces import process_bounces
from newsletter.db import session
from newsletter.delivery import send_issue
from newsletter.issues import prepare_issue
from newsletter.models import Event, EventKind, Subscriber, SubscriberStatus
from tests.conftest import _free_port, make_config
from tests.helpers import add_people, add_summaries
from tests.tools import missing

pytestmark = pytest.mark.slow
if shutil.which("postfix") is None or not Path("/usr/lib/postfix/sbin/master").exists():
    missing("Debian's postfix is not installed (apt-get install postfix)", module=True)
if os.geteuid() != 0:
    missing("Postfix's master daemon must be started as root", module=True)

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def main_cf(root: Path) -> str:
    return f"""\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.net
mydomain = example.net
myorigin = example.net
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
alias_maps =
alias_database =
biff = no
relayhost =
recipient_delimiter = +
virtual_mailbox_domains = example.net
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = texthash:{root}/etc/vmailbox
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
# Accept unknown users at SMTP time so that Postfix itself generates the bounce (a DSN), as a remote
# domain's server would after accepting.
smtpd_reject_unlisted_recipient = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
"""


@pytest.fixture
def postfix():
    root = Path(tempfile.mkdtemp(prefix="newsletter-postfix-"))
    root.chmod(0o755)  # Postfix's daemons run as the postfix user and must reach the queue
    port = _free_port()
    for name in ("etc", "queue", "data", "mail"):
        (root / name).mkdir()
    shutil.chown(root / "data", "postfix")
    shutil.chown(root / "mail", "nobody", "nogroup")
    (root / "etc" / "main.cf").write_text(main_cf(root))
    (root / "etc" / "master.cf").write_text(MASTER_CF.format(port=port))
    (root / "etc" / "vmailbox").write_text("reader@example.net reader/\nbounces@example.net bounces/\n")
    command = ["postfix", "-c", str(root / "etc")]
    started = subprocess.run([*command, "start"], capture_output=True, text=True)
    if started.returncode != 0:
        log = (root / "maillog").read_text() if (root / "maillog").exists() else ""
        pytest.fail(f"private postfix did not start: {started.stderr} {log[-2000:]}")
    try:
        yield root, port
    finally:
        subprocess.run([*command, "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def wait_for_files(folder: Path, count: int, timeout: float = 30) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(folder.glob("new/*")) if folder.exists() else []
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{folder}: expected {count} messages within {timeout} s")


def test_postfix_delivers_bounces_an_unknown_user_and_bounces_process_marks_them(postfix, config, engine):
    root, port = postfix
    smtp = make_config(
        config.base_dir,
        newsletter={"name": "Research Weekly", "sender": "Research Weekly <digest@example.net>",
                    "postal_address": "1 Example Street, Example City", "site_url": "https://news.example.org"},
        backend={"name": "smtp", "options": {"host": "127.0.0.1", "port": port, "security": "none"}},
        bounces={"verp": True, "mailbox": {"type": "maildir", "path": str(root / "mail" / "bounces")}},
    )
    add_summaries(engine, 1)
    add_people(engine, "reader@example.net", "ghost@example.net")
    prepare_issue(engine, smtp)

    report = send_issue(engine, smtp, create_backend(smtp), 1)
    assert report.sent == 2  # Postfix accepted both; it finds out about the ghost only when delivering

    (delivered,) = wait_for_files(root / "mail" / "reader", 1)
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in delivered.read_bytes()
    (dsn,) = wait_for_files(root / "mail" / "bounces", 1)
    assert b"report-type=delivery-status" in dsn.read_bytes()

    result = process_bounces(engine, smtp)
    assert (result.hard, result.newly_bounced, result.left) == (1, 1, 0)
    with session(engine) as db:
        people = {s.email: s.status for s in db.exec(select(Subscriber))}
        (event,) = db.exec(select(Event).where(Event.kind == EventKind.BOUNCE_HARD)).all()
    assert people == {"reader@example.net": SubscriberStatus.ACTIVE, "ghost@example.net": SubscriberStatus.BOUNCED}
    assert "5.1.1" in event.detail["reason"]
    assert not list((root / "mail" / "bounces").glob("new/*"))  # processed reports leave the mailbox
