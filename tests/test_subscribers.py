"""The subscriber list: normalised unique addresses, CSV import with line-numbered errors, and no
reactivation of anyone who left."""

from pathlib import Path

import pytest

from newsletter.errors import InvalidAddress, NewsletterError
from newsletter.models import SubscriberStatus
from newsletter.subscribers import (
    add_subscriber,
    export_csv,
    import_csv,
    list_subscribers,
    normalise_address,
    remove_subscriber,
)


def test_addresses_are_normalised_and_bad_ones_explained():
    assert normalise_address("  Ada@EXAMPLE.org ") == "Ada@example.org"
    with pytest.raises(InvalidAddress, match="'not-an-address' is not a valid email address"):
        normalise_address("not-an-address")
    with pytest.raises(InvalidAddress, match="'jörg@example.org' is not a valid email address: Internationalized characters"):
        normalise_address("jörg@example.org")
    assert normalise_address("joerg@Bücher.example") == "joerg@xn--bcher-kva.example"  # as headers need it


def test_add_is_case_insensitive_and_updates_the_name(engine):
    add_subscriber(engine, "Ada@Example.org", "Ada")
    again = add_subscriber(engine, "ada@example.ORG", "Ada Lovelace")
    assert [(s.email, s.name) for s in list_subscribers(engine)] == [("Ada@example.org", "Ada Lovelace")]
    assert again.status is SubscriberStatus.ACTIVE


def test_names_lose_line_breaks(engine):
    subscriber = add_subscriber(engine, "x@example.org", "Eve\r\nBcc: all@example.org")
    assert subscriber.name == "Eve Bcc: all@example.org"


def test_removed_addresses_stay_removed(engine):
    add_subscriber(engine, "ada@example.org")
    assert remove_subscriber(engine, "ADA@example.org").status is SubscriberStatus.UNSUBSCRIBED
    with pytest.raises(NewsletterError, match="is unsubscribed; only the subscriber can rejoin"):
        add_subscriber(engine, "ada@example.org")
    with pytest.raises(NewsletterError, match="not on the list"):
        remove_subscriber(engine, "nobody@example.org")


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "list.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_import_reports_bad_rows_by_line_and_imports_the_rest(engine, tmp_path):
    add_subscriber(engine, "gone@example.org")
    remove_subscriber(engine, "gone@example.org")
    add_subscriber(engine, "known@example.org", "Old Name")
    path = write_csv(
        tmp_path,
        "Email,Name\n"
        "new@example.org,New Person\n"
        "broken-address,Nobody\n"
        "KNOWN@example.org,New Name\n"
        "GONE@example.org,Back Again\n"
        "dup@example.org,First\n"
        "dup@example.org,Second\n"
        ",empty\n",
    )
    rows_seen = []
    report = import_csv(engine, path, on_row=lambda: rows_seen.append(1))
    assert len(rows_seen) == 7  # the progress bar advances once per data row, bad ones included
    assert [line for line, _ in report.bad_rows] == [3, 8]
    assert "'broken-address' is not a valid email address" in report.bad_rows[0][1]
    assert (report.added, report.updated, report.left_list) == (2, 1, 1)
    people = {s.email: s for s in list_subscribers(engine)}
    assert people["known@example.org"].name == "New Name"
    assert people["gone@example.org"].status is SubscriberStatus.UNSUBSCRIBED
    assert people["dup@example.org"].name == "Second"
    assert import_csv(engine, path).added == 0  # re-importing the same file adds nobody


def test_import_without_an_email_column_is_refused(engine, tmp_path):
    with pytest.raises(NewsletterError, match="the first line must name the columns, including 'email'"):
        import_csv(engine, write_csv(tmp_path, "address,name\nx@example.org,X\n"))
    assert list_subscribers(engine) == []


def test_the_committed_example_csv_imports_cleanly(engine):
    report = import_csv(engine, Path(__file__).parent.parent / "subscribers" / "example.csv")
    assert report.bad_rows == [] and report.added >= 5


def test_export_writes_every_subscriber(engine, tmp_path):
    add_subscriber(engine, "a@example.org", "A")
    add_subscriber(engine, "b@example.org")
    remove_subscriber(engine, "b@example.org")
    out = tmp_path / "out.csv"
    with out.open("w", newline="") as handle:
        assert export_csv(engine, handle) == 2
    lines = out.read_text().splitlines()
    assert lines[0] == "email,name,status,topics,created_at,confirmed_at,unsubscribed_at"
    assert lines[1].startswith("a@example.org,A,active,")
    assert lines[2].startswith("b@example.org,,unsubscribed,")
