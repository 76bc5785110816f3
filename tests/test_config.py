"""Configuration: the committed config.yaml is valid, and every mistake names the key and what is allowed."""

from pathlib import Path

import pytest
import yaml

from newsletter.backends import check_backend
from newsletter.config import _UniqueKeyLoader, load_config
from newsletter.demo import DEMO_SETTINGS
from newsletter.errors import ConfigError
from tests.conftest import ROOT, make_config


@pytest.fixture(autouse=True)
def _database_url_from_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read database.url from the file, also on the PostgreSQL pass of the suite."""
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


VALID = """
newsletter:
  name: Research Weekly
  sender: Research Weekly <digest@example.org>
  postal_address: 1 Example Street, Example City
  site_url: https://news.example.org/
"""


def test_committed_config_is_valid_and_resolves_paths_against_its_folder(monkeypatch):
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    config = load_config(ROOT / "config.yaml")
    assert config.database_url == f"sqlite:///{ROOT}/subscribers/newsletter.db"
    assert config.templates_dir == ROOT / "templates"
    assert config.schedule.cron == "0 8 * * mon"
    assert config.backend.name == "file"


def test_defaults_fill_everything_but_the_newsletter_section(tmp_path):
    config = load_config(write(tmp_path, VALID))
    assert config.newsletter.site_url == "https://news.example.org"
    assert config.newsletter.sender_address == "digest@example.org"
    assert config.newsletter.list_id == "research-weekly.example.org"
    assert config.newsletter.unsubscribe_address == "unsubscribe@example.org"
    assert config.database_url == f"sqlite:///{tmp_path}/subscribers/newsletter.db"
    assert (config.schedule.cron, config.backend.name) == ("0 8 * * mon", "file")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("  nmae: X\n", "unknown key 'newsletter.nmae'; allowed here: name, sender,"),
        ("schedule:\n  timezone: Mars/Olympus\n", "schedule.timezone: 'Mars/Olympus' is not an IANA timezone"),
        ("schedule:\n  cron: every monday\n", "schedule.cron: 'every monday' is not a 5-field cron expression"),
        ("backend:\n  name: pigeon\n", "backend.name: no backend called 'pigeon'; installed backends: console, file, smtp"),
        ("backend:\n  name: file\n  options:\n    outbx: x\n", "unknown key 'backend.options.outbx'; the file backend allows: outbox"),
        ("database:\n  url: mysql://x\n", "database.url: 'mysql://x' must start with sqlite:/// or postgresql"),
        ("schedule:\n  cadence: fortnightly\n", "schedule.cadence: Input should be 'weekly', 'daily' or 'monthly'"),
        ("schedule:\n  grace_hours: -1\n", "schedule.grace_hours: Input should be greater than or equal to 0"),
        ("schedule:\n  quiet_note: '  '\n", "schedule.quiet_note: must be the note's text, or left out"),
        ("schedule:\n  log_format: xml\n", "schedule.log_format: Input should be 'plain' or 'json'"),
        ("schedule:\n  intervals:\n    feed: 5\n", "unknown key 'schedule.intervals.feed'; allowed here: send_due, feeds, inbox, bounces"),
        ("colour: blue\n", "unknown key 'colour'; allowed here: newsletter, database, templates, schedule, backend"),
        ("web:\n  confirm_expiry: 3\n", "unknown key 'web.confirm_expiry'; allowed here: confirm_expiry_days,"),
        ("web:\n  subscribe_limit_per_ip: 0\n", "web.subscribe_limit_per_ip: Input should be greater than or equal to 1"),
        ("delivery:\n  retry_schedule: [5m, soon]\n", "delivery.retry_schedule: 'soon' is not a duration such as 30s"),
        ("delivery:\n  lease: 0m\n", "delivery.lease: '0m' is not a duration"),
        ("database:\n  outage_limit: forever\n", "database.outage_limit: 'forever' is not a duration such as 30s"),
        ("delivery:\n  pause_error_rate: 2\n", "delivery.pause_error_rate: Input should be less than or equal to 1"),
        ("bounces:\n  mailbox:\n    type: pop3\n", "bounces.mailbox.type: Input should be 'maildir', 'mbox' or 'imap'"),
        ("bounces:\n  mailbox:\n    type: imap\n", "bounces.mailbox: an imap mailbox needs host and username"),
        ("bounces:\n  mailbox:\n    type: mbox\n", "bounces.mailbox: a mbox mailbox needs a path"),
    ],
)
def test_a_wrong_key_or_value_names_the_file_the_key_and_what_is_allowed(tmp_path, extra, expected):
    path = write(tmp_path, VALID + extra)
    with pytest.raises(ConfigError) as caught:
        check_backend(load_config(path))  # what every command does at start
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)
    assert caught.value.exit_code == 2


def test_bad_addresses_and_urls_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="newsletter.sender: 'nobody' is not a valid address"):
        load_config(write(tmp_path, VALID.replace("Research Weekly <digest@example.org>", "nobody")))
    for bad in ("news.example.org", "https://news.example.org/my news", "https://", "ftp://example.org"):
        with pytest.raises(ConfigError, match=f"newsletter.site_url: '{bad}' must be an absolute http"):
            load_config(write(tmp_path, VALID.replace("https://news.example.org/", f"'{bad}'")))
    with pytest.raises(ConfigError, match="newsletter.site_url: 'https://news.example.org:abc' has 'abc' as its port"):
        load_config(write(tmp_path, VALID.replace("https://news.example.org/", "https://news.example.org:abc")))
    assert load_config(write(tmp_path, VALID.replace(".org/", ".org/letters/"))).newsletter.site_url == (
        "https://news.example.org/letters"
    )


def test_a_missing_required_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'newsletter.postal_address'"):
        load_config(write(tmp_path, VALID.replace("  postal_address: 1 Example Street, Example City\n", "")))


def test_yaml_syntax_errors_give_the_line(tmp_path):
    path = write(tmp_path, VALID + "schedule:\n  cron: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_config(path)


def test_missing_file_says_how_to_fix_it(tmp_path):
    with pytest.raises(ConfigError, match="config file not found; pass --config PATH"):
        load_config(tmp_path / "nope.yaml")


def test_environment_overrides_the_database_url(tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{tmp_path}/other.db")
    assert load_config(write(tmp_path, VALID)).database_url == f"sqlite:///{tmp_path}/other.db"


def test_addresses_are_kept_in_the_ascii_form_mail_headers_need(tmp_path):
    text = VALID.replace("Research Weekly <digest@example.org>", "'\"Forschung, Wöchentlich\" <digest@Bücher.example>'")
    newsletter = load_config(write(tmp_path, text)).newsletter
    assert newsletter.sender == '"Forschung, Wöchentlich" <digest@xn--bcher-kva.example>'
    assert newsletter.sender_domain == "xn--bcher-kva.example"
    with pytest.raises(ConfigError, match="newsletter.sender: .* is not a valid address"):
        load_config(write(tmp_path, VALID.replace("Research Weekly <digest@example.org>", "R <jörg@example.org>")))
    with pytest.raises(ConfigError, match="newsletter.site_url: .*in its xn-- form"):
        load_config(write(tmp_path, VALID.replace("https://news.example.org/", "https://bücher.example")))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID + "schedule:\n  cron: '0 8 31 2 *'\n", r"schedule.cron: '0 8 31 2 \*' never fires"),
        (VALID + "database:\n  url: 'sqlite://'\n", "is an in-memory database that forgets everything"),
        (VALID.replace("name: Research Weekly", "name: 2026-13-01"), "a value cannot be read"),
    ],
    ids=["cron-never-fires", "in-memory-database", "impossible-date"],
)
def test_values_that_would_fail_later_are_refused_at_start(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_the_database_variable_works_whatever_the_file_has_under_database(tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    assert load_config(write(tmp_path, VALID + "database: oops\n")).database_url == f"sqlite:///{tmp_path}/env.db"


def test_the_bounce_return_path_must_be_a_bare_address(tmp_path):
    with pytest.raises(ConfigError, match=r"bounces.return_path: 'not an address' is not a valid address"):
        make_config(tmp_path, bounces={"return_path": "not an address"})
    assert make_config(tmp_path, bounces={"return_path": "Bounces@Example.org"}).bounces.return_path == (
        "Bounces@example.org"
    )


def test_the_reference_config_works_when_copied_anywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)
    copy = tmp_path / "config.yaml"
    copy.write_text((ROOT / "config.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    assert load_config(copy).newsletter.name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID + "schedule:\n  cron: '0 8 * * mon'\n  cron: '0 9 * * fri'\n",
         ":9: the key 'cron' is there twice (first on line 8); keep one"),
        (VALID + "schedule:\n  cadence: daily\nschedule:\n  cadence: weekly\n",
         ":9: the key 'schedule' is there twice (first on line 7)"),
        (VALID.replace("  site_url:", "  name: Other\n  site_url:"), ":6: the key 'name' is there twice (first on line 3)"),
        (VALID + "backend: {name: smtp, name: file}\n", ":7: the key 'name' is there twice on this line"),
        (VALID + "schedule: {cadence: daily,\n  cadence: weekly}\n", ":8: the key 'cadence' is there twice (first on line 7)"),
        (VALID + "delivery:\n  <<: {batch_size: 5}\n  lease: 5m\n  lease: 7m\n", ":10: the key 'lease' is there twice (first on line 9)"),
    ],
    ids=["in-a-section", "a-section", "top-of-newsletter", "one-line", "flow-over-two-lines", "beside-a-merge"],
)
def test_a_key_given_twice_is_refused_with_its_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}{expected}")


@pytest.mark.parametrize(
    "merged",
    ["delivery:\n  <<: {batch_size: 5, lease: 5m}\n  lease: 7m\n",
     "delivery: {<<: {batch_size: 5, lease: 5m}, lease: 7m}\n"],  # all on one line
    ids=["block", "one-line"],
)
def test_keys_brought_in_by_a_yaml_merge_may_be_overridden(tmp_path, merged):
    text = VALID + merged
    delivery = load_config(write(tmp_path, text)).delivery
    assert (delivery.batch_size, delivery.lease) == (5, "7m")


def test_a_merged_mapping_used_again_by_its_anchor_keeps_its_overrides() -> None:
    # Merging flattens &base in place (its merged keys and its own override side by side) before &base is
    # read again through *base: the override is not taken for a key given twice.
    text = "delivery: {<<: &base {<<: {batch_size: 5, lease: 5m}, lease: 6m}, lease: 7m}\nagain: *base\n"
    data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    assert data == {"delivery": {"batch_size": 5, "lease": "7m"}, "again": {"batch_size": 5, "lease": "6m"}}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("delivery:\n  lease: 99999999999d\n", "delivery.lease: '99999999999d' is longer than a year (365d)"),
        ("delivery:\n  lease: 366d\n", "delivery.lease: '366d' is longer than a year"),
        ("delivery:\n  lease: '" + "9" * 5000 + "s'\n", "is longer than a year"),
        ("delivery:\n  retry_schedule: [5m, 99999999999d]\n", "delivery.retry_schedule: '99999999999d' is longer than"),
        ("bounces:\n  soft_days: 99999999999\n", "bounces.soft_days: Input should be less than or equal to 3650"),
        ("schedule:\n  grace_hours: 1e308\n", "schedule.grace_hours: Input should be less than or equal to 744"),
        ("schedule:\n  grace_hours: .nan\n", "schedule.grace_hours: Input should be"),
    ],
)
def test_huge_durations_are_one_line_errors_not_overflows(tmp_path, extra, expected):
    from tests.test_cli import invoke

    path = write(tmp_path, VALID + extra)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)
    result = invoke("status", "--config", path)
    assert result.exit_code == 2 and "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_year_is_the_longest_duration(tmp_path):
    delivery = load_config(write(tmp_path, VALID + "delivery:\n  lease: 365d\n  retry_schedule: [8760h]\n")).delivery
    assert delivery.lease_time.days == delivery.retry_delays[0].days == 365


@pytest.mark.parametrize(("tracking", "message"), [
    ({"per_subscriber": True}, "tracking: per_subscriber: true needs clicks: true (nothing is counted without it); "
                               "set both or neither"),
    ({"clicks": "sometimes"}, "tracking.clicks: Input should be a valid boolean, unable to interpret input"),
    ({"scanner_agents": ["Gateway (v2"]},
     "tracking.scanner_agents: 'Gateway (v2' is not a regular expression (missing ), unterminated subpattern at "
     "position 8); escape . ( ) [ ] with \\"),
    ({"scanner_agents": [" "]}, "tracking.scanner_agents: an empty pattern would match every browser; remove it"),
    ({"pixel": True}, "unknown key 'tracking.pixel'; allowed here: clicks, per_subscriber, scanner_agents"),
], ids=["per-subscriber-alone", "not-a-boolean", "bad-pattern", "empty-pattern", "no-pixel"])
def test_a_tracking_mistake_is_one_line_naming_the_key(tmp_path, tracking, message):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**DEMO_SETTINGS, "tracking": tracking}), encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: {message}"
