"""The whole path against a real SMTP server: ingest the bundled samples, import the example list,
prepare, send, and read what arrived."""

import re
from pathlib import Path

from newsletter.backends import create_backend
from newsletter.delivery import send_issue
from newsletter.ingest import ingest_paths
from newsletter.issues import prepare_issue
from newsletter.resources import sample_summaries_dir
from newsletter.subscribers import import_csv
from tests.conftest import ROOT, make_config


def test_samples_to_smtp_inboxes(tmp_path: Path, smtp_server, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "end-to-end")
    config = make_config(
        tmp_path,
        backend={"name": "smtp", "options": {"host": smtp_server.host, "port": smtp_server.port, "security": "none"}},
    )
    from newsletter.db import open_database

    engine = open_database(config)
    ingested = ingest_paths(engine, [sample_summaries_dir()])
    assert ingested.rejected == [] and ingested.added >= 8
    import_csv(engine, ROOT / "subscribers" / "example.csv")
    prepared = prepare_issue(engine, config)
    report = send_issue(engine, config, create_backend(config), 1)
    assert report.sent == prepared.recipient_count == 6

    received = {m.recipients[0]: m for m in smtp_server.messages}
    assert set(received) == {
        "ada.lovelace@example.org", "grace.hopper@example.org", "katherine.johnson@example.org",
        "soren.kierkegaard@example.net", "marie.curie@example.com", "alan.turing@example.net",
    }
    unsubscribe_urls = set()
    for address, envelope in received.items():
        assert envelope.envelope_from == "digest@example.org"
        message = envelope.parsed()
        assert address in message["To"]
        assert message["From"] == "Research Weekly <digest@example.org>"
        assert message["Subject"] == prepared.issue.subject
        assert message["List-Id"] == "Research Weekly <research-weekly.example.org>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["Message-ID"] and message["Date"]
        https_url, mailto = re.findall(r"<([^>]+)>", message["List-Unsubscribe"])
        assert https_url.startswith("https://news.example.org/unsubscribe/")
        assert mailto.startswith("mailto:unsubscribe@example.org")
        assert message.get_content_type() == "multipart/alternative"
        text_part, html_part = message.get_payload()
        assert (text_part.get_content_type(), html_part.get_content_type()) == ("text/plain", "text/html")
        text, html = text_part.get_content(), html_part.get_content()
        for body in (text, html):
            assert https_url in body.replace("&amp;", "&")  # the visible unsubscribe link is this subscriber's
            assert "1 Example Street, 12345 Example City" in body
        assert address.split("@")[0] not in https_url  # the token reveals nothing
        unsubscribe_urls.add(https_url)
    assert len(unsubscribe_urls) == 6
    engine.dispose()
