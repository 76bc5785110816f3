"""Dates as readers see them, in the newsletter's language (``newsletter.locale``, Babel's CLDR data).

``16 November 2026`` in ``en_GB``, ``November 16, 2026`` in ``en``, ``16. November 2026`` in ``de``: the
long date format of the locale. A span of days (an issue's "Issue 12 · 16–22 November 2026") is the
locale's interval format with the month written out, as CLDR's interval algorithm asks (Babel finds the
closest interval pattern, ``yMMMd``, but leaves its month abbreviated; the width is adjusted here).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from functools import lru_cache

from babel import Locale, UnknownLocaleError
from babel.dates import (
    PATTERN_CHAR_ORDER,
    DateTimeFormat,
    format_time,
    get_datetime_format,
    match_skeleton,
    parse_pattern,
)
from babel.dates import format_date as babel_format_date

DEFAULT_LOCALE = "en"
_SKELETON = "yMMMMd"  # year, month written out, day
_ABBREVIATED_MONTH = re.compile(r"(?<![ML])([ML])\1\1(?!\1)")  # MMM or LLL, not MMMM


def locale_problem(name: str) -> str | None:
    """Why ``name`` is not a locale Babel can format dates in, or None."""
    try:
        Locale.parse(name.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return f"{name!r} is not a locale Babel knows; use a code such as en, en_GB, de or pt_BR"
    return None


@lru_cache(maxsize=32)
def _locale(name: str) -> Locale:
    return Locale.parse(name.replace("-", "_"))


def format_day(day: date, locale: str = DEFAULT_LOCALE) -> str:
    """``day`` in the locale's long format: ``16 November 2026`` (en_GB), ``November 16, 2026`` (en)."""
    return babel_format_date(day, "long", locale=_locale(locale))


def format_span(start: date, end: date, locale: str = DEFAULT_LOCALE) -> str:
    """The days ``start``..``end`` (both included) as the locale writes a span: ``16–22 November 2026``
    (en_GB), ``November 16 – 22, 2026`` (en), one day as :func:`format_day`."""
    if start == end:
        return format_day(start, locale)
    chosen = _locale(locale)
    formats = chosen.interval_formats
    skeleton = match_skeleton(_SKELETON, formats)
    if not skeleton:  # a locale without interval data: the locale's fallback pattern around two long dates
        return str(formats.get(None, "{0} – {1}")).format(format_day(start, locale), format_day(end, locale))
    patterns = formats[skeleton]
    first, last = DateTimeFormat(start, locale=chosen), DateTimeFormat(end, locale=chosen)
    # the largest field that differs picks the pattern, as Babel's format_interval does
    field = next(f for f in PATTERN_CHAR_ORDER if f in patterns and first.extract(f) != last.extract(f))
    return "".join(
        parse_pattern(_ABBREVIATED_MONTH.sub(r"\1\1\1\1", pattern)).apply(day, chosen)
        for pattern, day in zip(patterns[field], (start, end), strict=True)
    )


def format_moment(moment: datetime, locale: str = DEFAULT_LOCALE) -> str:
    """``moment`` (in its own timezone) as the locale writes a day and a time of day: ``Monday, November 23,
    2026, 8:00 AM`` (en), ``Montag, 23. November 2026, 08:00`` (de)."""
    chosen = _locale(locale)
    day = babel_format_date(moment.date(), "full", locale=chosen)
    time_of_day = format_time(moment, "short", locale=chosen)
    # as Babel's format_datetime glues them, without the seconds and the zone its long formats add
    glue = str(get_datetime_format("long", locale=chosen)).replace("'", "")
    return glue.replace("{0}", time_of_day).replace("{1}", day)
