"""Dates in the newsletter's language (``newsletter.locale``, Babel): in the email, its subject line's span, the
preview and the archive. The judge is Babel's own CLDR data (a locale's month names and long date format),
never a month name written here."""

from __future__ import annotations

from datetime import date

import pytest
from babel import Locale
from babel.dates import format_date as babel_format_date
from hypothesis import given
from hypothesis import strategies as st

from newsletter.dates import format_day, format_span
from newsletter.errors import ConfigError
from newsletter.render import RecipientValues, render_issue
from tests.conftest import make_config
from tests.helpers import make_issue, make_summaries

LOCALES = ["en", "en_GB", "de", "fr", "es", "pt_BR", "ru", "ja", "sv", "pl"]
days = st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31))


@given(day=days, locale=st.sampled_from(LOCALES))
def test_a_day_is_the_locales_long_date(day: date, locale: str) -> None:
    assert format_day(day, locale) == babel_format_date(day, "long", locale=locale)


@given(start=days, length=st.integers(1, 400), locale=st.sampled_from(LOCALES))
def test_a_span_names_both_ends_with_the_locales_full_month_names(start: date, length: int, locale: str) -> None:
    end = date.fromordinal(start.toordinal() + length)
    span = format_span(start, end, locale)
    months = Locale.parse(locale).months
    wide = [months[context]["wide"] for context in ("format", "stand-alone")]
    abbreviated = set(months["format"]["abbreviated"].values()) - {name for names in wide for name in names.values()}
    for day in (start, end):
        assert str(day.day) in span
        assert any(names[day.month] in span for names in wide), (span, day)
    assert str(end.year) in span
    if start.year != end.year:
        assert str(start.year) in span
    assert not any(f" {short} " in f" {span} " for short in abbreviated if short.rstrip(".")), span
    assert format_span(start, start, locale) == format_day(start, locale)


@pytest.mark.parametrize(("locale", "expected"), [
    ("en", "November 16\u2009–\u200922, 2026"),
    ("en_GB", "16\u2009–\u200922 November 2026"),
    ("de", "16.–22. November 2026"),
    ("fr", "16–22 novembre 2026"),
])  # fmt: skip
def test_a_week_in_november_as_each_locale_writes_it(locale: str, expected: str) -> None:
    assert format_span(date(2026, 11, 16), date(2026, 11, 22), locale) == expected


def test_the_email_shows_its_dates_in_the_configured_language(tmp_path) -> None:
    settings = {"name": "Research Weekly", "sender": "Research Weekly <digest@example.org>",
                "postal_address": "1 Example Street, Example City", "site_url": "https://news.example.org",
                "locale": "de"}
    config = make_config(tmp_path, newsletter=settings)
    rendered = render_issue(config, make_issue(), make_summaries())
    html, text = rendered.personalise(RecipientValues("a@example.org", "", "https://x.example/u", "https://x.example/p"))
    for part in (html, text):
        assert "16.–22. November 2026" in part  # the issue's span
        assert "17. November 2026" in part  # a summary's date
    assert "November 16" not in text


def test_an_unknown_locale_is_a_one_line_config_error_naming_the_key(tmp_path) -> None:
    settings = {"name": "Research Weekly", "sender": "Research Weekly <digest@example.org>",
                "postal_address": "1 Example Street, Example City", "site_url": "https://news.example.org",
                "locale": "xx_NOWHERE"}
    with pytest.raises(ConfigError) as refused:
        make_config(tmp_path, newsletter=settings)
    message = str(refused.value)
    assert "newsletter.locale" in message and "'xx_NOWHERE'" in message and "\n" not in message
