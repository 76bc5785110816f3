"""schedule.cron read as Debian's cron reads a crontab, checked against cronsim, an independent
implementation of Debian's rules (weekday numbers, names, ranges, steps, the day-of-month/day-of-week rule
and daylight-saving changes). croniter is not the judge: it reads ``8-8`` in the month field as every
month, and differs from Debian on ``*``-prefixed day fields.

The oracle test draws expressions from a seeded generator whose fields vary independently, and compares
the next 20 fire times from a start that is random or just before a DST change, in UTC and three zones
with DST (Lord Howe's changes are half an hour). Ours follows Debian's DST rules too (docs/scheduler.md),
so the two lists must be equal, with one difference set aside, cronsim's and not Debian's: cronsim steps
hours in real time, so across Lord Howe's half-hour change it steps from hh:30 (or to hh:30) and passes
over matching minutes of a "*"-prefixed expression that Debian's cron, which looks at every minute, fires
(``58 * * * *`` at 02:58 on the spring day, the repeated 01:39 of ``39 * * * *`` in autumn).
:func:`unexplained` allows exactly those: times of ours that cronsim lacks, in Lord Howe, of such an
expression, within a day after a change, and matching cronsim's own reading of the fields; nothing
cronsim fires may be missing from ours.
"""

from __future__ import annotations

import inspect
import random
import tomllib
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from cronsim import CronSim, CronSimError
from packaging.requirements import Requirement
from packaging.version import Version

from newsletter import cron
from newsletter.cron import CronError, cron_trigger, parse_cron
from tests.conftest import ROOT

ZONES = [ZoneInfo(name) for name in ("UTC", "Europe/London", "America/New_York", "Australia/Lord_Howe")]
EXPRESSIONS = 2_000
FIRES = 20
SEED = 20_261_123


def ours(expression: str, zone: ZoneInfo, start: datetime, count: int = FIRES) -> list[datetime]:
    trigger, found = cron_trigger(parse_cron(expression), zone), []
    fire = trigger.get_next_fire_time(None, start.astimezone(zone))
    while fire is not None and len(found) < count:
        found.append(fire.astimezone(UTC))
        fire = trigger.get_next_fire_time(fire, fire)
    return found


def oracle(expression: str, zone: ZoneInfo, start: datetime, count: int = FIRES) -> list[datetime]:
    # CronSim returns times strictly after its start; ours may return the start itself, so both start at
    # a moment between whole minutes (no cron time falls on it).
    it = CronSim(expression, start.astimezone(zone))
    found = []
    for _ in range(count):
        try:
            found.append(next(it).astimezone(UTC))
        except StopIteration:
            break
    return found


# --- the generator ------------------------------------------------------------------------------------

# (low, high, names, number of the first name); day of month mostly up to 28 so that most expressions
# fire often enough for 20 fire times to stay within a few years (cronsim walks day by day).
FIELD_SPECS = [
    (0, 59, None, 0),
    (0, 23, None, 0),
    (1, 31, None, 1),
    (1, 12, ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1),
    (0, 7, ["sun", "mon", "tue", "wed", "thu", "fri", "sat"], 0),
]


def _value(rng: random.Random, low: int, high: int, names, first) -> tuple[int, str]:
    value = rng.randint(low, high)
    if names and value - first < len(names) and rng.random() < 0.4:
        name = names[value - first]
        return value, rng.choice([name, name.upper(), name.capitalize()])
    return value, str(value)


def random_field(rng: random.Random, index: int) -> str:
    low, high, names, first = FIELD_SPECS[index]
    if index == 2 and rng.random() < 0.85:
        high = 28
    shape = rng.choices(["*", "*/n", "list"], weights=[4, 2, 5])[0]
    if shape == "*":
        return "*"
    if shape == "*/n":
        return f"*/{rng.randint(1, high - low + 2)}"
    items = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        kind = rng.choices(["value", "range", "range/step", "*/n"], weights=[5, 3, 2, 1])[0]
        if kind == "value":
            items.append(_value(rng, low, high, names, first)[1])
        elif kind == "*/n":
            items.append(f"*/{rng.randint(1, high - low + 1)}")
        else:
            (a, a_text), (b, b_text) = sorted(
                [_value(rng, low, high, names, first) for _ in range(2)], key=lambda pair: pair[0]
            )
            step = f"/{rng.randint(1, max(1, b - a + 1))}" if kind == "range/step" else ""
            items.append(f"{a_text}-{b_text}{step}")
    return ",".join(items)


def random_expressions(rng: random.Random, count: int) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        expression = " ".join(random_field(rng, index) for index in range(5))
        try:
            parse_cron(expression)
        except CronError:  # e.g. "0 0 30 feb *": never fires, refused by both (checked below)
            continue
        found.append(expression)
    return found


def dst_changes(zone: ZoneInfo, years: range) -> list[datetime]:
    """The UTC instants at which ``zone``'s offset changes, found day by day and then to the minute."""
    changes = []
    moment = datetime(years.start, 1, 1, tzinfo=UTC)
    end = datetime(years.stop, 1, 1, tzinfo=UTC)
    while moment < end:
        following = moment + timedelta(days=1)
        if moment.astimezone(zone).utcoffset() != following.astimezone(zone).utcoffset():
            low, high = moment, following
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            changes.append(high.replace(second=0, microsecond=0))
        moment = following
    return changes


def start_times(rng: random.Random, zone: ZoneInfo, changes: list[datetime]) -> datetime:
    """Half the time just before a DST change (up to two days), else anywhere in 2024-2031."""
    if changes and rng.random() < 0.5:
        start = rng.choice(changes) - timedelta(minutes=rng.randint(1, 48 * 60))
    else:
        start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(0, 8 * 365 * 24 * 60))
    return start + timedelta(seconds=30)


def describe(expression: str, zone: ZoneInfo, start: datetime, mine: list[datetime], theirs: list[datetime]) -> str:
    index = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs)))
    local = lambda moment: moment.astimezone(zone).isoformat() if moment else "-"  # noqa: E731
    rows = [
        f"  #{i}: ours {local(mine[i] if i < len(mine) else None):32} cronsim {local(theirs[i] if i < len(theirs) else None)}"
        for i in range(max(0, index - 2), min(max(len(mine), len(theirs)), index + 3))
    ]
    return f"{expression!r} in {zone.key} from {start.isoformat()}: first divergence at fire #{index}\n" + "\n".join(rows)


def unexplained(expression: str, zone: ZoneInfo, mine: list[datetime], theirs: list[datetime]) -> list[datetime]:
    """The fire times, up to where both lists reach, that the one documented difference does not explain."""
    horizon = min(mine[-1], theirs[-1]) if mine and theirs else None
    if horizon is None:
        return mine + theirs
    missing = [t for t in theirs if t <= horizon and t not in mine]
    extra = [t for t in mine if t <= horizon and t not in theirs]
    fields = expression.split()
    by_the_clock = fields[0].startswith("*") or fields[1].startswith("*")

    def skipped_by_cronsims_hour_step(moment: datetime) -> bool:
        local = moment.astimezone(zone)
        sim = CronSim(expression, local)
        return (
            zone.key == "Australia/Lord_Howe" and by_the_clock
            and (moment - timedelta(days=1)).astimezone(zone).utcoffset() != local.utcoffset()
            and local.minute in sim.minutes and local.hour in sim.hours and local.month in sim.months
            and sim.match_day(local.date())
        )

    return missing + [t for t in extra if not skipped_by_cronsims_hour_step(t)]


# --- the oracle test ----------------------------------------------------------------------------------


def test_next_20_fire_times_equal_cronsims_for_2000_random_expressions_in_four_zones() -> None:
    rng = random.Random(SEED)
    expressions = random_expressions(rng, EXPRESSIONS)
    changes = {zone.key: dst_changes(zone, range(2024, 2032)) for zone in ZONES}
    mismatches, compared, set_aside = [], 0, 0
    for expression in expressions:
        for zone in ZONES:
            start = start_times(rng, zone, changes[zone.key])
            mine, theirs = ours(expression, zone, start), oracle(expression, zone, start)
            compared += 1
            if mine != theirs:
                if unexplained(expression, zone, mine, theirs):
                    mismatches.append(describe(expression, zone, start, mine, theirs))
                else:
                    set_aside += 1
    assert compared == EXPRESSIONS * len(ZONES)
    assert set_aside < compared // 100  # the set-aside difference stays the rare case it is
    assert not mismatches, f"{len(mismatches)} of {compared} differ from cronsim:\n" + "\n".join(mismatches[:10])


def test_the_generator_varies_every_feature_it_claims() -> None:
    expressions = random_expressions(random.Random(SEED), EXPRESSIONS)
    fields = [expression.split() for expression in expressions]
    assert any("7" in f[4].replace("/", " ").replace("-", " ").replace(",", " ").split() for f in fields)
    assert any(f[4].split(",")[0].split("-")[0].split("/")[0].lower() in ("sun", "mon", "tue") for f in fields)
    assert any(f[3][:3].lower() in ("jan", "feb", "mar", "apr") for f in fields)
    assert sum(not f[2].startswith("*") and not f[4].startswith("*") for f in fields) > 200  # either day fires
    assert sum(f[2].startswith("*/") or f[4].startswith("*/") for f in fields) > 100  # "*"-prefixed, restricted
    assert any("-" in f[0] and "/" in f[0] for f in fields)


# --- the dialect, case by case ------------------------------------------------------------------------

MONDAY = datetime(2026, 11, 23, 12, 0, 30, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize(
    ("expression", "weekdays"),
    [
        ("0 8 * * 1", {"Mon"}),  # APScheduler's from_crontab would say Tuesday
        ("0 8 * * 0", {"Sun"}),
        ("0 8 * * 7", {"Sun"}),
        ("0 8 * * 1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0 8 * * mon-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0 8 * * 5-7", {"Fri", "Sat", "Sun"}),
        ("0 8 * * */2", {"Sun", "Tue", "Thu", "Sat"}),
        ("@weekly", {"Sun"}),
    ],
)
def test_weekday_numbers_are_crons_not_apschedulers(expression: str, weekdays: set[str]) -> None:
    fires = ours(expression, ZoneInfo("UTC"), MONDAY, count=14)
    assert {fire.strftime("%a") for fire in fires} == weekdays
    assert fires == oracle(expression.replace("@weekly", "0 0 * * 0"), ZoneInfo("UTC"), MONDAY, count=14)


def test_restricted_day_of_month_and_weekday_mean_either() -> None:
    fires = ours("0 8 1 * mon", ZoneInfo("UTC"), datetime(2026, 11, 25, tzinfo=UTC), count=3)
    assert [f.date().isoformat() for f in fires] == ["2026-11-30", "2026-12-01", "2026-12-07"]
    # A "*"-prefixed field, even restricted, keeps the rule "both": "*/1" is every day, so Mondays only;
    # "*/7" is Sunday (0 and 7), so the 1st of a month that is a Sunday.
    start = datetime(2026, 11, 25, tzinfo=UTC)
    both = ours("0 8 */1 * mon", ZoneInfo("UTC"), start, count=2)
    assert [f.date().isoformat() for f in both] == ["2026-11-30", "2026-12-07"]
    assert [f.date().isoformat() for f in ours("0 8 1 * */7", ZoneInfo("UTC"), start, count=2)] == [
        "2027-08-01", "2028-10-01"]
    for expression in ("0 8 1 * mon", "0 8 */1 * mon", "0 8 1 * */7"):
        assert ours(expression, ZoneInfo("UTC"), start) == oracle(expression, ZoneInfo("UTC"), start)


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("every monday", "is not a 5-field cron expression"),
        ("0 8 * *", "is not a 5-field cron expression"),
        ("0 8 * * 8", "day of week '8': 8 is out of range 0-7 (0 and 7 are Sunday)"),
        ("60 8 * * *", "minute '60': 60 is out of range 0-59"),
        ("0 8 0 * *", "day of month '0': 0 is out of range 1-31"),
        ("0 8 * 13 *", "month '13': 13 is out of range 1-12"),
        ("0 8 * * 5-1", "the range runs backwards (5 > 1)"),
        ("0 8 * * */0", "the step after '/' must be a whole number from 1"),
        ("0 8/2 * * *", "a step goes after '*' or a range"),
        ("0 8 * * monday", "expected a number 0-7 or a name (sun, mon"),
        ("0 8 L * *", "expected a number 1-31"),
        ("0 8 * * 1#2", "expected a number 0-7"),
        ("0 8 30 2 *", "never fires"),
        ("@reboot", "@reboot has no meaning"),
    ],
)
def test_what_debians_cron_refuses_is_refused_with_the_field(expression: str, problem: str) -> None:
    with pytest.raises(CronError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        parse_cron(expression)


def test_february_30_is_refused_by_cronsim_too_so_the_oracle_agrees_on_never() -> None:
    with pytest.raises(CronSimError):
        CronSim("0 8 30 2 *", MONDAY)


# --- daylight saving time -----------------------------------------------------------------------------

LONDON = ZoneInfo("Europe/London")


def local_times(expression: str, zone: ZoneInfo, start: datetime, count: int) -> list[str]:
    return [f.astimezone(zone).strftime("%d %H:%M %Z") for f in ours(expression, zone, start, count)]


def test_a_fixed_time_the_spring_change_skips_fires_once_at_the_end_of_the_gap() -> None:
    # 29 March 2026: London's clocks jump from 01:00 GMT to 02:00 BST.
    start = datetime(2026, 3, 28, 12, 0, 30, tzinfo=UTC)
    assert local_times("30 1 * * *", LONDON, start, 3) == ["29 02:00 BST", "30 01:30 BST", "31 01:30 BST"]
    assert local_times("0,30 1 * * *", LONDON, start, 2) == ["29 02:00 BST", "30 01:00 BST"]
    # By the clock ("*" minute): the skipped times never happen.
    assert local_times("*/30 1,2 * * *", LONDON, start, 3) == ["29 02:00 BST", "29 02:30 BST", "30 01:00 BST"]
    for expression in ("30 1 * * *", "0,30 1 * * *", "*/30 1,2 * * *"):
        assert ours(expression, LONDON, start) == oracle(expression, LONDON, start)


def test_a_fixed_time_the_autumn_change_repeats_fires_once_and_a_clock_time_twice() -> None:
    # 25 October 2026: London's clocks go back from 02:00 BST to 01:00 GMT.
    start = datetime(2026, 10, 24, 12, 0, 30, tzinfo=UTC)
    assert local_times("30 1 * * *", LONDON, start, 2) == ["25 01:30 BST", "26 01:30 GMT"]
    assert local_times("30 * * * *", LONDON, start + timedelta(hours=12), 3) == [
        "25 01:30 BST", "25 01:30 GMT", "25 02:30 GMT"]
    for expression in ("30 1 * * *", "30 * * * *"):
        assert ours(expression, LONDON, start) == oracle(expression, LONDON, start)


def test_a_daily_time_after_the_spring_change_is_not_skipped() -> None:
    # APScheduler 3.11 alone steps to the next day by adding 24 h in UTC, so after New York's 23-hour day
    # (10 March 2030) it lands at 01:00 and skips 11 March; the oracle test found it.
    new_york = ZoneInfo("America/New_York")
    start = datetime(2030, 3, 9, 17, 0, 30, tzinfo=UTC)
    assert local_times("0,30 0 * * *", new_york, start, 4) == ["10 00:00 EST", "10 00:30 EST", "11 00:00 EDT", "11 00:30 EDT"]
    assert ours("0,30 0 * * *", new_york, start) == oracle("0,30 0 * * *", new_york, start)


# --- the engine underneath ------------------------------------------------------------------------------


def test_apscheduler_is_pinned_to_the_minor_version_our_override_was_tested_on() -> None:
    # newsletter/cron.py overrides CronTrigger._increment_field_value, which is private: another minor
    # release may change or drop it without notice, so pyproject admits only the installed minor version.
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    [pin] = [Requirement(d).specifier for d in dependencies if Requirement(d).name.lower() == "apscheduler"]
    installed = Version(version("apscheduler"))
    major, minor = installed.major, installed.minor
    assert installed in pin and Version(f"{major}.{minor}.0") in pin
    assert Version(f"{major}.{minor + 1}.0") not in pin and Version(f"{major}.{minor - 1}.99") not in pin
    assert list(inspect.signature(CronTrigger._increment_field_value).parameters) == ["self", "dateval", "fieldnum"]


@pytest.mark.parametrize("expression", ["0 0 31 2 mon", "0 0 30 2 1-5", "0 0 31 4,6,9,11 fri"])
def test_an_impossible_day_of_month_next_to_weekdays_costs_no_walk_through_the_years(
    monkeypatch, expression: str
) -> None:
    # Either day may match, and no month has that day: APScheduler looked for one until the year 9999
    # (~16,000 steps, a quarter of a second, for each fire time). Counted in steps, not timed.
    steps = 0
    increment = cron._LocalCronTrigger._increment_field_value

    def counted(self, dateval, fieldnum):
        nonlocal steps
        steps += 1
        return increment(self, dateval, fieldnum)

    monkeypatch.setattr(cron._LocalCronTrigger, "_increment_field_value", counted)
    start = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    fires = ours(expression, LONDON, start)
    assert fires == oracle(expression, LONDON, start) and len(fires) == FIRES
    assert steps < 20 * FIRES
