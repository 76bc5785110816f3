"""The log an operator reads: one line per job run with its outcome and duration, the same fields in JSON,
and no email address in any line above DEBUG."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from newsletter.logs import HANDLER_NAME, configure_logging
from newsletter.schedule import Job, build_jobs, run_job
from tests.conftest import make_config
from tests.helpers import add_people, add_summaries


class Stderr(io.StringIO):
    """What newsletter's own handler writes, as a command's stderr would show it."""

    def configure(self, level: int, log_format: str = "plain") -> None:
        configure_logging(level, log_format)  # type: ignore[arg-type]
        [handler] = [h for h in logging.getLogger().handlers if h.get_name() == HANDLER_NAME]
        handler.setStream(self)  # type: ignore[attr-defined]


@pytest.fixture
def stderr() -> Iterator[Stderr]:
    yield Stderr()


def test_each_job_run_is_one_line_with_its_outcome_and_duration_in_both_formats(config, engine, stderr):
    [digest] = [job for job in build_jobs(config, threading.Event()) if job.id == "digest"]
    stderr.configure(logging.INFO)
    run_job(engine, config, digest)
    [line] = [line for line in stderr.getvalue().splitlines() if "job digest" in line]
    assert " INFO newsletter.schedule: job digest: " in line and line.endswith(" s)")

    stderr.configure(logging.INFO, "json")
    stderr.seek(0)
    stderr.truncate()
    run_job(engine, config, digest)
    entries = [json.loads(line) for line in stderr.getvalue().splitlines() if line.strip()]
    [entry] = [entry for entry in entries if entry.get("job") == "digest"]
    assert entry["level"] == "INFO" and isinstance(entry["seconds"], float) and entry["outcome"]
    assert entry["message"] == f"job digest: {entry['outcome']} ({entry['seconds']:.2f} s)"


def test_a_failed_job_is_one_line_with_its_duration_and_failed_as_outcome(config, engine, stderr):
    def broken(_engine, _config):
        raise ValueError("the template folder vanished")

    stderr.configure(logging.INFO, "json")
    run_job(engine, config, Job("inbox", None, broken))  # type: ignore[arg-type]
    [entry] = [json.loads(line) for line in stderr.getvalue().splitlines() if '"job"' in line]
    assert (entry["level"], entry["job"], entry["outcome"]) == ("ERROR", "inbox", "failed")
    assert entry["message"].startswith("job inbox failed after ") and "vanished" in entry["traceback"]


def test_a_send_ends_with_one_summary_line_whose_counts_are_fields_in_json(tmp_path, engine, stderr):
    from newsletter.backends import create_backend
    from newsletter.delivery import send_issue
    from newsletter.issues import prepare_issue

    config = make_config(tmp_path)
    add_summaries(engine, 2)
    add_people(engine, "ada@example.org", "bob@example.org")
    prepare_issue(engine, config)
    stderr.configure(logging.INFO, "json")
    send_issue(engine, config, create_backend(config), 1)
    [entry] = [json.loads(line) for line in stderr.getvalue().splitlines() if '"sent"' in line]
    assert (entry["issue"], entry["sent"], entry["failed"], entry["remaining"]) == (1, 2, 0, 0)
    assert entry["message"].startswith("issue #1: sent 2, ") and "finished" in entry["message"]


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_no_address_in_a_line_above_debug_whatever_logs_it(stderr, log_format):
    stderr.configure(logging.DEBUG, log_format)
    log = logging.getLogger("newsletter.anything")
    log.info("550 5.1.1 <ada.lovelace+news@example.org>: Recipient address rejected")
    try:
        raise ValueError("cannot send to bob@mail.example.co.uk")
    except ValueError:
        log.exception("a bug while sending")
    log.debug("delivery 7 was to ada.lovelace+news@example.org")
    written = stderr.getvalue()
    above_debug, debug = written.split("delivery 7", 1)
    at = above_debug.find("@")
    assert at == -1, above_debug[max(0, at - 80):at + 40]
    assert above_debug.count("<address>") == 3  # the reply, and the traceback's source line and message
    assert "ada.lovelace+news@example.org" in debug  # -v's DEBUG lines may show it
