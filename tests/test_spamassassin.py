"""A real spam filter judges what the demo sends: Debian's SpamAssassin, local rules only (no network).

SpamAssassin runs through its own Perl API (Mail::SpamAssassin, from the same Debian package as the
``spamassassin`` command, the same checks as ``spamassassin -L -t``) because the command always creates
``~/.spamassassin`` in the real home of the user running it; here all its state stays in the test's folder.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from newsletter.demo import run_demo
from tests.tools import missing

if shutil.which("spamassassin") is None:
    missing("spamassassin is not installed (apt-get install spamassassin)", module=True)

CHECK = r"""
my $home = $ARGV[0];
my $sa = Mail::SpamAssassin->new({local_tests_only => 1, home_dir_for_helpers => $home,
    userstate_dir => "$home/.spamassassin", userprefs_filename => "$home/user_prefs", dont_copy_prefs => 1});
my $mail = $sa->parse(do { local $/; <STDIN> });
my $status = $sa->check($mail);
printf "%s\n%s", $status->get_score, $status->get_report;
$status->finish; $mail->finish; $sa->finish;
"""


def spam_report(message: bytes, home: Path) -> tuple[float, str]:
    """(score, the report listing the rules that fired) for ``message``, local tests only."""
    (home / "user_prefs").touch()
    result = subprocess.run(
        ["perl", "-MMail::SpamAssassin", "-e", CHECK, str(home)], input=message, capture_output=True,
        timeout=300, env={"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, check=True,
    )
    score, _, report = result.stdout.decode("utf-8", errors="replace").partition("\n")
    return float(score), report.partition("Content analysis details:")[2].strip()


def test_the_demos_message_scores_under_one_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "spam-test")
    result = run_demo(tmp_path / "demo")
    message = sorted(result.outbox.glob("*.eml"))[0].read_bytes()
    score, rules = spam_report(message, tmp_path)
    assert score < 1.0, f"SpamAssassin scored the demo's message {score}:\n{rules}"
    assert "HTML_FONT_LOW_CONTRAST" not in rules, rules  # the hidden preheader is not white-on-white
