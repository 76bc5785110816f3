"""``schedule.cron`` read as Debian's cron reads a crontab, fired by APScheduler 3 triggers.

One place for the dialect: config validation (:func:`parse_cron`), ``newsletter status`` and the scheduler
(:func:`cron_trigger`) all go through here. APScheduler stays the engine; only the reading is ours,
because ``CronTrigger.from_crontab`` numbers weekdays from Monday = 0 (so ``1`` would be Tuesday) and
refuses ``7``.

The dialect (crontab(5) on Debian):

- five fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or ``jan``-``dec``), day of
  week (0-7 or ``sun``-``sat``; 0 and 7 are both Sunday); names in any case;
- each field a comma-separated list of ``*``, a number or name, or a range ``a-b``; ``*`` and a range
  may take a step (``*/15``, ``1-5/2``, ``mon-fri/2``): every step-th value of it, from its first;
- when both day fields are restricted and neither starts with ``*``, a day matching *either* fires
  (``0 8 1 * mon`` is the 1st of every month and every Monday); otherwise a day must match both;
- the nicknames ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and
  ``@hourly``; ``@reboot`` means nothing to a scheduler that runs for months and is refused.

Daylight saving time, as Debian's cron: a job at a fixed time (neither the minute nor the hour field
starts with ``*``) whose local time the spring change skips fires once, at the first minute after the gap;
one whose local time the autumn change repeats fires once, the first time. A job whose minute or hour field
starts with ``*`` runs by the clock: skipped times do not fire, repeated ones fire twice.
tests/test_cron.py compares all of this with cronsim, an independent implementation of Debian's rules.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

EXAMPLE = "'0 8 * * mon' (Mondays 08:00)"
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron numbering: Sunday = 0 (and 7)
_NICKNAMES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    first_name: int = 0  # the number of names[0]


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    _Field("day of week", 0, 7, _DAYS, 0),
)


class CronError(ValueError):
    """A ``schedule.cron`` expression that Debian's cron would not accept (or that never fires)."""


@dataclass(frozen=True)
class CronSchedule:
    """A parsed expression: the values each field allows (weekdays 0-6, Sunday = 0) and the two rules
    that depend on how the fields were written."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    either_day: bool  # both day fields restricted and neither starts with "*": a day matching either fires
    by_the_clock: bool  # the minute or hour field starts with "*": no special handling of DST changes


def parse_cron(text: str) -> CronSchedule:
    """``text`` read as Debian's cron reads the time fields of a crontab line; CronError saying which
    field is wrong and how, or that the expression never fires (``0 8 30 2 *``)."""
    expression = " ".join(str(text).split())
    fields = _NICKNAMES.get(expression.lower(), expression).split()
    if expression.lower() == "@reboot":
        raise CronError(f"{text!r}: @reboot has no meaning for a schedule; use e.g. {EXAMPLE}")
    if len(fields) != 5:
        raise CronError(
            f"{text!r} is not a 5-field cron expression (minute hour day-of-month month day-of-week) "
            f"such as {EXAMPLE}"
        )
    values = [_parse_field(value, spec, text) for value, spec in zip(fields, _FIELDS, strict=True)]
    minutes, hours, days, months, weekdays = values
    weekdays = frozenset(day % 7 for day in weekdays)
    schedule = CronSchedule(
        text=expression,
        minutes=minutes,
        hours=hours,
        days=days,
        months=months,
        weekdays=weekdays,
        either_day=not fields[2].startswith("*") and not fields[4].startswith("*"),
        by_the_clock=fields[0].startswith("*") or fields[1].startswith("*"),
    )
    if not schedule.either_day and not _some_date(days, months):
        raise CronError(f"{text!r} never fires (no such date); use e.g. {EXAMPLE}")
    return schedule


def _some_date(days: frozenset[int], months: frozenset[int]) -> bool:
    """Some month of ``months`` has a day of ``days`` (29 February counts: leap years have it)."""
    return any(day <= calendar.monthrange(2024, month)[1] for month in months for day in days)  # 2024: leap


def _parse_field(text: str, spec: _Field, expression: str) -> frozenset[int]:
    found: set[int] = set()
    for item in text.split(","):
        found.update(_parse_item(item, spec, expression))
    return frozenset(found)


def _parse_item(item: str, spec: _Field, expression: str) -> range:
    def bad(problem: str) -> CronError:
        return CronError(f"{expression!r}: {spec.name} {item!r}: {problem}; use e.g. {EXAMPLE}")

    span, slash, step_text = item.partition("/")
    if span == "*":
        low, high = spec.low, spec.high
    elif "-" in span:
        start, _, end = span.partition("-")
        low, high = _value(start, spec, bad), _value(end, spec, bad)
        if high < low:
            raise bad(f"the range runs backwards ({low} > {high})")
    elif slash:
        raise bad("a step goes after '*' or a range, such as */15 or 0-30/5")
    else:
        low = high = _value(span, spec, bad)
    step = 1
    if slash:
        if not step_text.isdigit() or not step_text.isascii() or int(step_text) == 0:
            raise bad("the step after '/' must be a whole number from 1")
        step = int(step_text)
    return range(low, high + 1, step)


def _value(text: str, spec: _Field, bad: Callable[[str], CronError]) -> int:
    if text.lower() in spec.names:
        return spec.names.index(text.lower()) + spec.first_name
    if not text.isascii() or not text.isdigit():
        names = f" or a name ({', '.join(spec.names)})" if spec.names else ""
        raise bad(f"expected a number {spec.low}-{spec.high}{names}")
    value = int(text)
    if not spec.low <= value <= spec.high:
        sunday = " (0 and 7 are Sunday)" if spec.names == _DAYS else ""
        raise bad(f"{value} is out of range {spec.low}-{spec.high}{sunday}")
    return value


def cron_trigger(schedule: CronSchedule, zone: tzinfo) -> BaseTrigger:
    """An APScheduler trigger firing ``schedule`` in ``zone`` as Debian's cron would (see the module doc)."""
    def crontrigger(days: frozenset[int] | None, weekdays: frozenset[int] | None) -> CronTrigger:
        return _LocalCronTrigger(
            minute=_listed(schedule.minutes),
            hour=_listed(schedule.hours),
            day=_listed(days) if days is not None else "*",
            month=_listed(schedule.months),
            # by name: APScheduler numbers weekdays from Monday
            day_of_week=",".join(_DAYS[d] for d in sorted(weekdays)) if weekdays is not None else "*",
            timezone=zone,
        )

    if schedule.either_day and _some_date(schedule.days, schedule.months):
        inner: BaseTrigger = OrTrigger([crontrigger(schedule.days, None), crontrigger(None, schedule.weekdays)])
    elif schedule.either_day:  # "0 0 31 2 mon": only the weekdays can match (APScheduler would look for a
        inner = crontrigger(None, schedule.weekdays)  # 31 February up to the year 9999 for every fire time)
    else:
        inner = crontrigger(schedule.days, schedule.weekdays)
    return DebianCronTrigger(inner, zone, by_the_clock=schedule.by_the_clock)


def _listed(values: frozenset[int]) -> str:
    """The values as APScheduler expressions, runs with one step as ``a-b/step`` (``0-55/5``): the same set,
    but APScheduler looks each expression up in turn, and sixty single values are slow."""
    rest, parts = sorted(values), []
    while rest:
        step = rest[1] - rest[0] if len(rest) > 1 else 1
        length = 1
        while length < len(rest) and rest[length] - rest[length - 1] == step:
            length += 1
        if length < 3:
            parts.append(str(rest[0]))
            rest = rest[1:]
            continue
        parts.append(f"{rest[0]}-{rest[length - 1]}" + (f"/{step}" if step > 1 else ""))
        rest = rest[length:]
    return ",".join(parts)


class _LocalCronTrigger(CronTrigger):
    """CronTrigger whose step to the next hour, day or month lands on that local time.

    APScheduler 3.11 adds the wall-clock difference in UTC, so across a day the spring change shortens it
    lands an hour late and misses the day (``0 0 * * *`` in New York skips 11 March 2030). This takes the
    wall-clock time it meant, at its first occurrence after the current one; when the clock goes back on
    the way, it stops where the repeated times begin so that they are looked at again.
    """

    __slots__ = ()

    def _increment_field_value(self, dateval: datetime, fieldnum: int) -> tuple[datetime, int]:
        moved, fieldnum = super()._increment_field_value(dateval, fieldnum)
        if fieldnum < 0:
            return moved, fieldnum
        wall = dateval.replace(tzinfo=None, fold=0) + (moved.astimezone(UTC) - dateval.astimezone(UTC))
        return _next_at_wall(wall, dateval, self.timezone), fieldnum


def _next_at_wall(wall: datetime, after: datetime, zone: tzinfo) -> datetime:
    """The first moment after ``after`` whose local time is ``wall`` (``wall`` itself when the spring change
    skips it), or the moment the clock goes back, if it does before then."""
    first, second = wall.replace(tzinfo=zone, fold=0), wall.replace(tzinfo=zone, fold=1)
    if _skipped(first):
        return first
    start = after.astimezone(UTC)
    target = first if first.astimezone(UTC) > start else second
    end = target.astimezone(UTC)
    if end.astimezone(zone).utcoffset() < start.astimezone(zone).utcoffset():  # type: ignore[operator]
        low, high = start, end  # the clock went back in between: find when, to the minute
        while high - low > timedelta(minutes=1):
            middle = low + (high - low) / 2
            if middle.astimezone(zone).utcoffset() == start.astimezone(zone).utcoffset():
                low = middle
            else:
                high = middle
        change = high.replace(second=0, microsecond=0).astimezone(zone)
        if change.astimezone(UTC) > start:
            return change
    return target


class DebianCronTrigger(BaseTrigger):
    """APScheduler's fire times with Debian cron's handling of daylight-saving changes.

    APScheduler alone fires a local time that the autumn change repeats twice, and a time the spring change
    skips at the instant the old offset gives it (02:30 becomes 03:30). Debian's cron fires a fixed-time
    job once in both cases, the skipped one at the first minute after the gap; ``*`` jobs follow the clock.
    """

    __slots__ = ("by_the_clock", "inner", "zone")

    def __init__(self, inner: BaseTrigger, zone: tzinfo, *, by_the_clock: bool) -> None:
        self.inner, self.zone, self.by_the_clock = inner, zone, by_the_clock

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire = self.inner.get_next_fire_time(previous_fire_time, now)
        while fire is not None:
            if _skipped(fire):
                gap_end = _after_gap(fire)
                if not self.by_the_clock:
                    return gap_end  # a later skipped time of the same gap is not after it: it fires once
                fire = self.inner.get_next_fire_time(None, gap_end)  # the gap's times never happened
            elif not self.by_the_clock and _second_occurrence(fire):
                fire = self.inner.get_next_fire_time(fire, fire)
            else:
                return fire
        return None

    def __str__(self) -> str:
        return f"debian-cron[{self.inner}]"


def _skipped(moment: datetime) -> bool:
    """True when ``moment``'s local wall time does not exist (the spring change jumps over it)."""
    wall = moment.replace(tzinfo=None, fold=0)
    return moment.astimezone(UTC).astimezone(moment.tzinfo).replace(tzinfo=None, fold=0) != wall


def _after_gap(moment: datetime) -> datetime:
    """The first whole minute of local time after the gap ``moment``'s wall time falls into."""
    wall = moment.replace(second=0, microsecond=0, fold=0)
    while _skipped(wall):
        wall = (wall.replace(tzinfo=None) + timedelta(minutes=1)).replace(tzinfo=moment.tzinfo)
    return wall


def _second_occurrence(moment: datetime) -> bool:
    """True when ``moment``'s local wall time happened once already that day (the repeated hour)."""
    return moment.replace(fold=0).astimezone(UTC) != moment.astimezone(UTC)
