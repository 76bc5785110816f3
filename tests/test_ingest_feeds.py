"""Feeds: RSS 0.91/2.0 and Atom from files and from a real HTTP server on a free port, with conditional GET
(ETag and Last-Modified), a 304, a broken feed, an HTTP error and the size limit."""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from lxml import etree
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import select

from newsletter.config import IngestSection
from newsletter.db import session
from newsletter.errors import IngestError
from newsletter.ingest import ingest_paths
from newsletter.ingest.feeds import FeedReader, feed_states, fetch_feed, parse_feed, poll_feeds
from newsletter.models import Summary
from tests.conftest import make_config

FEEDS = Path(__file__).parent / "samples" / "feeds"


@dataclass
class Feed:
    """What the test server serves at one path; ``requests`` records the conditional headers it saw."""

    body: bytes
    status: int = 200
    etag: str | None = '"v1"'
    last_modified: str | None = "Mon, 13 Apr 2026 07:00:00 GMT"
    requests: list[dict[str, str | None]] = field(default_factory=list)


class FeedServer:
    def __init__(self) -> None:
        self.feeds: dict[str, Feed] = {}
        feeds = self.feeds

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                feed = feeds.get(self.path)
                if feed is None:
                    self.send_error(404)
                    return
                seen = {"If-None-Match": self.headers.get("If-None-Match"),
                        "If-Modified-Since": self.headers.get("If-Modified-Since")}
                feed.requests.append(seen)
                if feed.etag and seen["If-None-Match"] == feed.etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(feed.status)
                self.send_header("Content-Type", "application/rss+xml")
                if feed.etag:
                    self.send_header("ETag", feed.etag)
                if feed.last_modified:
                    self.send_header("Last-Modified", feed.last_modified)
                self.send_header("Content-Length", str(len(feed.body)))
                self.end_headers()
                self.wfile.write(feed.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, path: str, feed: Feed) -> str:
        self.feeds[path] = feed
        return self.base + path


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def stored(engine) -> dict[str, Summary]:
    with session(engine) as db:
        return {row.uid: row for row in db.exec(select(Summary))}


SETTINGS = IngestSection()


def test_rss2_items_keep_guid_link_date_category_image_and_sanitised_text(engine, feed_server) -> None:
    url = feed_server.serve("/feed.xml", Feed((FEEDS / "rss2.xml").read_bytes()))
    before = datetime.now(UTC)
    result = fetch_feed(engine, url, SETTINGS)
    assert (result.status, result.report.added) == ("ok", 2)
    rows = stored(engine)
    senolytic = rows[f"{url}#guid=digest-2026-0413-senolytic"]  # the guid, within its feed, is the identity
    assert senolytic.summary == "Old mice given dasatinib plus quercetin repaired injured muscle almost as well as young mice."
    assert (senolytic.source, senolytic.category) == ("Example Science Digest", "Longevity & Aging")
    assert senolytic.image_url == "https://digest.example.org/img/muscle.jpg"
    assert senolytic.published_at.replace(tzinfo=UTC) == datetime(2026, 4, 13, 5, 0, tzinfo=UTC)
    undated = rows["https://digest.example.org/spindles"]  # no guid: the link
    assert undated.published_at.replace(tzinfo=UTC) >= before  # kept, with the ingest time


def test_a_second_poll_sends_the_validators_and_a_304_changes_nothing(engine, feed_server) -> None:
    feed = Feed((FEEDS / "rss2.xml").read_bytes())
    url = feed_server.serve("/feed.xml", feed)
    fetch_feed(engine, url, SETTINGS)
    dates = {uid: row.published_at for uid, row in stored(engine).items()}
    second = fetch_feed(engine, url, SETTINGS)
    assert second.status == "not-modified"
    assert feed.requests[1] == {"If-None-Match": '"v1"', "If-Modified-Since": "Mon, 13 Apr 2026 07:00:00 GMT"}
    feed.etag = '"v2"'  # changed on the server: fetched in full, nothing duplicated, undated item keeps its date
    third = fetch_feed(engine, url, SETTINGS)
    assert (third.status, third.report.added, third.report.unchanged) == ("ok", 0, 2)
    assert {uid: row.published_at for uid, row in stored(engine).items()} == dates
    [state] = feed_states(engine)
    assert (state.url, state.etag, state.last_status, state.last_error) == (url, '"v2"', "ok", None)


def test_a_broken_feed_is_an_error_that_keeps_the_old_validators_and_stores_nothing(engine, feed_server) -> None:
    feed = Feed((FEEDS / "rss2.xml").read_bytes())
    url = feed_server.serve("/feed.xml", feed)
    fetch_feed(engine, url, SETTINGS)
    feed.body, feed.etag = (FEEDS / "broken.xml").read_bytes(), '"v3"'
    result = fetch_feed(engine, url, SETTINGS)
    assert result.status == "error" and "not a valid RSS or Atom feed" in result.error
    [state] = feed_states(engine)
    assert (state.etag, state.last_status) == ('"v1"', "error")  # not marked as seen: retried in full
    assert "not a valid RSS or Atom feed" in state.last_error
    assert len(stored(engine)) == 2
    feed.body = (FEEDS / "atom.xml").read_bytes()  # fixed on the server: the next poll picks it up
    assert fetch_feed(engine, url, SETTINGS).report.added == 1
    assert feed.requests[-1]["If-None-Match"] == '"v1"'


def test_http_errors_unreachable_servers_and_oversized_feeds_are_errors(engine, feed_server) -> None:
    missing = fetch_feed(engine, feed_server.base + "/nope.xml", SETTINGS)
    assert missing.status == "error" and "HTTP 404" in missing.error
    big = feed_server.serve("/big.xml", Feed((FEEDS / "rss2.xml").read_bytes()))
    too_big = fetch_feed(engine, big, IngestSection(max_bytes=1_000))
    assert too_big.status == "error" and "over the limit of 1,000" in too_big.error
    closed = fetch_feed(engine, "http://127.0.0.1:9/feed.xml", IngestSection(fetch_timeout_seconds=2))
    assert closed.status == "error" and "cannot be fetched" in closed.error
    assert stored(engine) == {}
    assert {s.last_status for s in feed_states(engine)} == {"error"}


def test_poll_feeds_fetches_every_configured_feed_and_reports_failures(engine, feed_server, tmp_path) -> None:
    good = feed_server.serve("/atom.xml", Feed((FEEDS / "atom.xml").read_bytes()))
    bad = feed_server.serve("/broken.xml", Feed((FEEDS / "broken.xml").read_bytes()))
    config = make_config(tmp_path, ingest={"feeds": [good, bad]})
    result = poll_feeds(engine, config)
    assert [r.status for r in result.feeds] == ["ok", "error"]
    assert [r.url for r in result.failed] == [bad]
    [peat] = stored(engine).values()
    assert peat.title == "Rewetted peatlands cut emissions faster than expected"  # <em> removed
    assert peat.summary.endswith("the drained fields had released.")  # long content: extractive summary


def test_feed_files_of_every_version_are_read_and_a_broken_one_is_rejected(engine) -> None:
    report = ingest_paths(engine, sorted(FEEDS.glob("*.xml")))
    assert report.added == 4  # rss2: 2, atom: 1, rss 0.91: 1
    [rejection] = report.rejected
    assert rejection.path.name == "broken.xml" and "not a valid RSS or Atom feed" in rejection.message
    assert stored(engine)["http://old.example.org/fibre.html"].source == "Old School Research"
    assert stored(engine)["http://old.example.org/fibre.html"].published_at is not None  # undated: ingest time


def test_a_feed_item_without_title_is_skipped_and_the_rest_go_in(engine, feed_server) -> None:
    body = (FEEDS / "rss2.xml").read_bytes().replace(
        b"<title>Sleep spindles and memory in older adults</title>", b""
    )
    result = fetch_feed(engine, feed_server.serve("/f.xml", Feed(body)), SETTINGS)
    assert (result.status, result.report.added) == ("ok", 1)
    assert "field 'title' is empty" in result.skipped[0]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"feeds": ["ftp://example.org/feed.xml"]}, "ingest.feeds: 'ftp://example.org/feed.xml' must be"),
        ({"fedds": []}, "unknown key 'ingest.fedds'; allowed here: feeds, inbox, inbox_settle_seconds"),
    ],
)
def test_ingest_config_mistakes_name_the_key(tmp_path, section, message) -> None:
    from newsletter.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, ingest=section)
    assert message in str(caught.value)


XML_PARTS = st.sampled_from([
    b'<?xml version="1.0"?>', b'<rss version="2.0">', b"<channel>", b"<item>", b"<title>T</title>",
    b"<link>https://e.org/a</link>", b"<link>javascript:x</link>", b"<guid>g</guid>", b"<description>&lt;b&gt;x",
    b"</item>", b"</channel>", b"</rss>", b'<feed xmlns="http://www.w3.org/2005/Atom">', b"<entry>",
    b"</entry>", b"</feed>", b"<pubDate>not a date</pubDate>", b"<updated>2026-02-30T00:00:00Z</updated>",
])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(XML_PARTS, st.binary(max_size=20)), max_size=20))
def test_no_bytes_crash_the_feed_reader_with_anything_but_ingest_error(tmp_path_factory, parts) -> None:
    path = tmp_path_factory.mktemp("feeds") / "feed.xml"
    path.write_bytes(b"".join(parts))
    try:
        FeedReader().read(path)
    except IngestError:
        pass


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://example.org:abc/feed", "has 'abc' as its port, which must be a number"),
        ("https://localhost:abc/x", "has 'abc' as its port, which must be a number"),
        ("http://example.org:70000/feed", "has the port 70000, which does not exist"),
        ("http://[::1/feed", "has an unclosed '['"),
        ("", "is empty; write an absolute http(s) URL such as https://example.org/feed.xml"),
    ],
)
def test_an_invalid_feed_url_is_a_failed_fetch_saying_what_is_wrong(engine, url, problem) -> None:
    result = fetch_feed(engine, url, SETTINGS)
    assert result.status == "error" and result.error.startswith(problem)
    assert "percent-encode" not in result.error
    assert feed_states(engine) == []  # a typo is not remembered as a feed


def test_the_cli_reports_an_invalid_feed_url_in_one_line(tmp_path) -> None:
    import yaml
    from typer.testing import CliRunner

    from newsletter.cli import app
    from newsletter.demo import DEMO_SETTINGS

    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(DEMO_SETTINGS))
    result = CliRunner().invoke(app, ["ingest", "http://example.org:abc/feed", "--config", str(config_file)],
                                env={"NEWSLETTER_SECRET_KEY": "k", "COLUMNS": "200"})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # not a crash
    assert "failed: http://example.org:abc/feed: has 'abc' as its port, which must be a number" in result.output


def test_poll_feeds_records_an_invalid_url_and_fetches_the_other_feeds(engine, feed_server, tmp_path) -> None:
    good = feed_server.serve("/atom.xml", Feed((FEEDS / "atom.xml").read_bytes()))
    config = make_config(tmp_path, ingest={"feeds": [good]})
    # A config built in code skips validation; a bad entry must still not stop the feeds after it.
    config = config.model_copy(update={"ingest": config.ingest.model_copy(
        update={"feeds": ("http://example.org:abc/feed", good)})})
    result = poll_feeds(engine, config)
    assert [r.status for r in result.feeds] == ["error", "ok"]
    assert "'abc' as its port" in result.failed[0].error
    assert len(stored(engine)) == 1


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        ("http://example.org:abc/feed", "ingest.feeds: 'http://example.org:abc/feed' has 'abc' as its port"),
        ("https://example.org:0/feed.xml", "ingest.feeds: 'https://example.org:0/feed.xml' has the port 0"),
        ("https://:8080/feed.xml", "ingest.feeds: 'https://:8080/feed.xml' has no host name"),
    ],
)
def test_a_bad_feed_url_in_the_config_names_the_key_and_the_entry(tmp_path, feed, message) -> None:
    from newsletter.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, ingest={"feeds": ["https://example.org/good.xml", feed]})
    assert message in str(caught.value)


def rss(*items: str) -> bytes:
    return ('<?xml version="1.0"?><rss version="2.0"><channel><title>Feed</title><link>https://a.example.org/</link>'
            + "".join(items) + "</channel></rss>").encode()


def rss_item(title: str, guid: str | None = None, link: str | None = None, permalink: bool = False) -> str:
    flag = "" if permalink else ' isPermaLink="false"'
    return (f"<item><title>{title}</title><description>About {title}.</description>"
            + (f"<guid{flag}>{guid}</guid>" if guid else "") + (f"<link>{link}</link>" if link else "") + "</item>")


def test_the_same_local_guid_in_two_feeds_is_two_summaries(engine, feed_server) -> None:
    first = feed_server.serve("/one.xml", Feed(rss(rss_item("Peat bogs", "42", "https://one.example.org/peat"))))
    second = feed_server.serve("/two.xml", Feed(rss(rss_item("Sea grass", "42", "https://two.example.org/grass"))))
    assert fetch_feed(engine, first, SETTINGS).report.summary_line().startswith("added 1, updated 0")
    assert fetch_feed(engine, second, SETTINGS).report.summary_line().startswith("added 1, updated 0")
    assert sorted(row.title for row in stored(engine).values()) == ["Peat bogs", "Sea grass"]
    assert fetch_feed(engine, first, SETTINGS).status == "not-modified"
    assert len(stored(engine)) == 2


@pytest.mark.parametrize(
    "entry",
    [
        rss_item("Peat bogs", "https://site.example.org/peat", permalink=True),  # a permalink guid
        rss_item("Peat bogs", "https://site.example.org/?p=42"),  # WordPress: a URL, though not a permalink
        rss_item("Peat bogs", link="https://site.example.org/peat"),  # no guid: the link
        rss_item("Peat bogs", "tag:site.example.org,2026:peat"),  # a tag: URI names itself
    ],
)
def test_one_article_in_two_feeds_is_still_one_summary(engine, feed_server, entry) -> None:
    first = feed_server.serve("/science.xml", Feed(rss(entry)))
    second = feed_server.serve("/climate.xml", Feed(rss(entry)))
    assert fetch_feed(engine, first, SETTINGS).report.added == 1
    again = fetch_feed(engine, second, SETTINGS).report
    assert (again.added, again.unchanged) == (0, 1)


def test_a_feed_ingested_before_guids_were_scoped_keeps_its_rows(engine, feed_server) -> None:
    url = feed_server.serve("/one.xml", Feed(rss(rss_item("Peat bogs", "42", "https://one.example.org/peat"),
                                                 rss_item("Sea grass", "43", "https://one.example.org/grass"))))
    with session(engine) as db:  # as the old reader stored them: under the bare guid, origin the feed's URL
        db.add(Summary(uid="42", origin=url, title="Peat bogs", summary="About Peat bogs.", issue_id=None,
                       url="https://one.example.org/peat", source="Feed"))
        db.add(Summary(uid="43", origin="https://other.example.org/feed", title="Other", summary="Other."))
        db.commit()
        before = db.exec(select(Summary).where(Summary.uid == "42")).one()
    result = fetch_feed(engine, url, SETTINGS)
    assert (result.report.added, result.report.updated + result.report.unchanged) == (1, 1)
    rows = stored(engine)
    assert rows[f"{url}#guid=42"].id == before.id  # the same row, now under its scoped uid: not sent twice
    assert rows["43"].title == "Other"  # another feed's row under the same bare guid is left alone
    assert rows[f"{url}#guid=43"].title == "Sea grass"
    assert len(rows) == 3


# --- entities: feedparser's own test feeds as the judge ----------------------------------------------

ENTITY_FEEDS = sorted((FEEDS / "feedparser-entities").glob("*.xml"))
EXPECT = re.compile(r"^Expect:\s*(feed|entries\[0\])(?:\['(\w+)'\]|\.(\w+))\s*==\s*(.+?)\s*$", re.MULTILINE)


def test_html_named_entities_read_as_feedparsers_own_tests_expect() -> None:
    """Every entity test feed of feedparser's suite (tests/samples/feeds/feedparser-entities/README.md):
    what we parse equals the value its authors wrote in the file's ``Expect:`` line. A feed we refuse must
    also be refused by a second XML parser (libxml2, through lxml): not well-formed, or an entity that
    neither XML nor HTML defines (``&doesnotexist;``, which feedparser leaves as text)."""
    assert len(ENTITY_FEEDS) == 256
    accepted, refused, wrong = 0, [], []
    for path in ENTITY_FEEDS:
        where, key, attribute, literal = EXPECT.search(path.read_text(encoding="utf-8")).groups()
        try:
            parsed = parse_feed(path.read_bytes(), where=path.name)
        except IngestError as exc:
            refused.append(path.name)
            with pytest.raises(etree.XMLSyntaxError):
                etree.fromstring(path.read_bytes(), etree.XMLParser(resolve_entities=False, no_network=True))
            assert "\n" not in str(exc)
            continue
        value = (parsed.feed if where == "feed" else parsed.entries[0]).get(key or attribute)
        if value != ast.literal_eval(literal):
            wrong.append(f"{path.name}: {value!r} != {literal}")
        accepted += 1
    assert wrong == []
    # 12 end without the closing ">" or hold a bare "&" or "&#X41;"; then &doesnotexist;. Before: 244 more
    # refused as "undefined entity", one of them for U+2666 after an HTML entity had already been refused.
    assert accepted == 243 and len(refused) == 13, refused


def test_an_rss2_feed_with_html_entities_is_stored_with_the_characters(engine, tmp_path) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_text(
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Revista Cient&iacute;fica</title>'
        "<item><title>Caf&eacute; y sue&ntilde;o &mdash; un estudio</title><link>https://example.org/cafe</link>"
        "<description>Los participantes durmieron 40&nbsp;minutos menos &hellip; &copy; &amp; m&aacute;s.</description>"
        "</item></channel></rss>",
        encoding="utf-8",
    )
    report = ingest_paths(engine, [feed])
    assert (report.added, report.rejected) == (1, [])
    [summary] = stored(engine).values()
    assert summary.title == "Café y sueño — un estudio" and summary.source == "Revista Científica"
    assert summary.summary == "Los participantes durmieron 40\xa0minutos menos … © & más."


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE rss [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rss version="2.0"><channel><title>Laughs</title><item><title>&lol9; &aacute;</title>
<description>A summary.</description><link>https://example.org/lol</link></item></channel></rss>
"""


@pytest.mark.parametrize("layout", ["a-line-each", "all-on-one-line"])
def test_a_billion_laughs_feed_is_refused_without_expanding_anything(engine, tmp_path, layout) -> None:
    feed = tmp_path / "laughs.xml"
    feed.write_text(BILLION_LAUGHS if layout == "a-line-each" else BILLION_LAUGHS.replace("\n ", " "), encoding="utf-8")
    [rejection] = ingest_paths(engine, [feed]).rejected
    assert rejection.message == (
        f"{feed}: not read: the feed declares &lol2; in terms of other entities, which could expand to "
        f"gigabytes (a 'billion laughs'); remove the DOCTYPE"
    )
    assert stored(engine) == {}


def test_a_parameter_entity_is_refused(engine, tmp_path) -> None:
    feed = tmp_path / "param.xml"
    feed.write_text(
        '<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY % lat1 PUBLIC "-//W3C//ENTITIES Latin 1//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml-lat1.ent"> %lat1;]><rss version="2.0"><channel><title>T</title>'
        "</channel></rss>", encoding="utf-8")
    [rejection] = ingest_paths(engine, [feed]).rejected
    assert "declares the parameter entity %lat1; which would be read from elsewhere" in rejection.message


def test_an_external_entity_is_never_read(engine, tmp_path) -> None:
    # Declared on the DOCTYPE's line, feedparser (which removes declarations at the start of a line) would
    # hand it to the XML parser, which leaves it out silently; refused, it cannot go unnoticed.
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE", encoding="utf-8")
    for declaration in (f'<!ENTITY xxe SYSTEM "{secret.as_uri()}">', f'<!ENTITY xxe SYSTEM "{secret}">'):
        feed = tmp_path / "xxe.xml"
        feed.write_text(
            f'<?xml version="1.0"?><!DOCTYPE rss [{declaration}]><rss version="2.0"><channel><title>T</title>'
            "<item><title>Leak &xxe; here</title><description>A summary &xxe;.</description>"
            "<link>https://example.org/xxe</link></item></channel></rss>",
            encoding="utf-8",
        )
        [rejection] = ingest_paths(engine, [feed]).rejected
        assert rejection.message == (
            f"{feed}: not read: the feed declares &xxe; as an external entity (SYSTEM), whose content would be "
            f"read from a file or URL; remove the DOCTYPE"
        )
    assert stored(engine) == {}


NESTED = '<!ENTITY b "bbbbbbbbbb"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">'
HIDING = {  # what stands in the DOCTYPE before the declarations, hiding them from a scan that ends at "<a"
    "comment": "<!-- see <a> -->",
    "processing-instruction": "<?note see <a> ?>",
    "entity-value": '<!ENTITY link "see <a href=\'x\'>">',
    "comment-and-line-breaks": "\n<!-- see <a> -->\n",
}


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "cp037"])
@pytest.mark.parametrize("hiding", sorted(HIDING))
def test_no_markup_before_a_declaration_hides_it_from_the_check(engine, tmp_path, hiding, encoding) -> None:
    # cp037 (EBCDIC), which feedparser recognises by the first bytes and reads like any other encoding
    feed = tmp_path / "hidden.xml"
    document = (
        f'<?xml version="1.0" encoding="{encoding}"?>\n<!DOCTYPE rss [\n{HIDING[hiding]}\n{NESTED}\n]>\n'
        '<rss version="2.0"><channel><title>T</title><item><title>Laugh &c;</title>'
        "<description>A summary.</description><link>https://example.org/c</link></item></channel></rss>\n"
    )
    feed.write_bytes(document.encode(encoding))
    [rejection] = ingest_paths(engine, [feed]).rejected
    assert rejection.message == (
        f"{feed}: not read: the feed declares &c; in terms of other entities, which could expand to "
        f"gigabytes (a 'billion laughs'); remove the DOCTYPE"
    )
    assert stored(engine) == {}


@pytest.mark.parametrize("declaration", [
    '<!ENTITY xxe SYSTEM "file:///etc/passwd">', '<!ENTITY % p "x">',
])
def test_external_and_parameter_entities_behind_a_comment_are_refused(engine, tmp_path, declaration) -> None:
    feed = tmp_path / "hidden.xml"
    feed.write_text(
        f'<?xml version="1.0"?><!DOCTYPE rss [<!-- <a> -->{declaration}]><rss version="2.0"><channel>'
        "<title>T</title><item><title>X</title><description>A summary.</description>"
        "<link>https://example.org/x</link></item></channel></rss>", encoding="utf-8")
    [rejection] = ingest_paths(engine, [feed]).rejected
    assert "remove the DOCTYPE" in rejection.message
    assert stored(engine) == {}


def test_a_declaration_that_is_only_text_is_not_a_declaration(engine, tmp_path) -> None:
    # A security blog quotes an external entity in an item and in a comment: the feed declares nothing.
    feed = tmp_path / "blog.xml"
    feed.write_text(
        '<?xml version="1.0"?><!DOCTYPE rss [<!-- not used: <!ENTITY xxe SYSTEM "file:///etc/passwd"> -->'
        '<!ENTITY copy "&#169;">]><rss version="2.0"><channel><title>Sec &copy;</title><item><title>XXE</title>'
        '<description><![CDATA[Never accept <!ENTITY xxe SYSTEM "file:///etc/passwd"> from a stranger.]]>'
        "</description><link>https://example.org/xxe</link></item></channel></rss>", encoding="utf-8")
    report = ingest_paths(engine, [feed])
    assert (report.added, report.rejected) == (1, [])
    [summary] = stored(engine).values()
    assert summary.source == "Sec ©" and summary.summary.startswith("Never accept")  # the HTML cleaned as ever


def test_an_unsafe_declaration_after_a_malformed_part_of_the_doctype_is_refused(engine, tmp_path) -> None:
    # expat stops at "<!BOGUS>" before it reads the declarations: the whole document is scanned instead.
    feed = tmp_path / "malformed.xml"
    feed.write_text(
        f'<?xml version="1.0"?><!DOCTYPE rss [<!BOGUS> <!-- <a> -->{NESTED}]><rss version="2.0"><channel>'
        "<title>T</title><item><title>&c;</title><description>A summary.</description>"
        "<link>https://example.org/x</link></item></channel></rss>", encoding="utf-8")
    [rejection] = ingest_paths(engine, [feed]).rejected
    assert "declares &c; in terms of other entities" in rejection.message
    assert stored(engine) == {}
