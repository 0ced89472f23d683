"""When reminders fire: rules over DST changes, odd local times, limits, events and calendars.

Every expectation is an exact UTC instant, written out by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lmtpd.schedule import Rule, RuleError, check, events, every, occurrences, summary

from .helpers.club import DATA

ICS = (DATA / "reminders" / "training.ics").read_text()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def stamps(rule: Rule, n: int = 10, after: str = "2000-01-01 00:00") -> list[str]:
    return [datetime.fromtimestamp(o.due_at, UTC).strftime("%Y-%m-%d %H:%M") for o in occurrences(rule, utc(after), n)]


def test_weekly_rule_keeps_local_time_across_dst_in_berlin():
    rule = Rule("rrule", "FREQ=WEEKLY;BYDAY=MO;BYHOUR=18", "Europe/Berlin", anchor="2026-03-16T00:00")
    assert stamps(rule, 3) == ["2026-03-16 17:00", "2026-03-23 17:00", "2026-03-30 16:00"]  # CET, CET, CEST
    autumn = Rule("rrule", "FREQ=WEEKLY;BYDAY=MO;BYHOUR=18", "Europe/Berlin", anchor="2026-10-19T00:00")
    assert stamps(autumn, 2) == ["2026-10-19 16:00", "2026-10-26 17:00"]


def test_weekly_rule_keeps_local_time_across_dst_in_new_york():
    rule = Rule("rrule", "FREQ=WEEKLY;BYDAY=MO;BYHOUR=18", "America/New_York", anchor="2026-03-02T00:00")
    assert stamps(rule, 2) == ["2026-03-02 23:00", "2026-03-09 22:00"]  # EST, then EDT from 8 March
    autumn = Rule("cron", "0 18 * * 1", "America/New_York", anchor="2026-10-26T00:00")
    assert stamps(autumn, 2) == ["2026-10-26 22:00", "2026-11-02 23:00"]  # EDT, then EST from 1 November


def test_a_time_that_does_not_exist_runs_at_the_next_valid_minute():
    daily = Rule("cron", "30 2 * * *", "Europe/Berlin", anchor="2026-03-28T00:00")
    # 29 March 2026: 02:00 CET jumps to 03:00 CEST (01:00 UTC)
    assert stamps(daily, 3) == ["2026-03-28 01:30", "2026-03-29 01:00", "2026-03-30 00:30"]
    once = Rule("at", "2026-03-08 02:15", "America/New_York")
    assert stamps(once) == ["2026-03-08 07:00"]  # 03:00 EDT


def test_an_ambiguous_time_runs_once():
    daily = Rule("rrule", "FREQ=DAILY;BYHOUR=2;BYMINUTE=30", "Europe/Berlin", anchor="2026-10-24T00:00")
    # 25 October 2026: 02:30 happens twice (CEST, then CET); the first one, once
    assert stamps(daily, 3) == ["2026-10-24 00:30", "2026-10-25 00:30", "2026-10-26 01:30"]
    hourly = Rule("rrule", "FREQ=HOURLY;BYMINUTE=0", "America/New_York", anchor="2026-11-01T00:00")
    got = stamps(hourly, 4)
    assert got == ["2026-11-01 04:00", "2026-11-01 05:00", "2026-11-01 07:00", "2026-11-01 08:00"]
    assert len(set(got)) == len(got)


def test_until_count_and_skip():
    base = dict(kind="rrule", spec=every("monday 18:00"), timezone="Europe/Berlin", anchor="2026-12-01T00:00")
    assert stamps(Rule(**base, count=3)) == ["2026-12-07 17:00", "2026-12-14 17:00", "2026-12-21 17:00"]
    until = Rule(**base, until="2026-12-21T23:59:59")
    assert stamps(until) == ["2026-12-07 17:00", "2026-12-14 17:00", "2026-12-21 17:00"]
    holidays = Rule(**base, until="2027-01-11T23:59:59", skip=("2026-12-28", "2027-01-04"))
    assert stamps(holidays) == ["2026-12-07 17:00", "2026-12-14 17:00", "2026-12-21 17:00", "2027-01-11 17:00"]
    counted = Rule(**base, count=4, skip=("2026-12-14",))  # as with EXDATE, a skipped date counts
    assert stamps(counted) == ["2026-12-07 17:00", "2026-12-21 17:00", "2026-12-28 17:00"]
    cron = Rule("cron", "0 9 1 1 *", "Europe/Berlin", anchor="2026-06-01T00:00", count=2)
    assert stamps(cron) == ["2027-01-01 08:00", "2028-01-01 08:00"]  # fees due each January


def test_only_occurrences_after_the_last_one_recorded():
    rule = Rule("rrule", every("day 07:30"), "UTC", anchor="2027-01-01T00:00")
    assert stamps(rule, 2, after="2027-01-05 07:30") == ["2027-01-06 07:30", "2027-01-07 07:30"]
    assert occurrences(rule, utc("2027-01-05 07:30"), 10, until=utc("2027-01-06 07:30"))[0].due_at == utc(
        "2027-01-06 07:30"
    )


def test_event_reminders_before_the_event():
    rule = Rule("event", "2027-03-12 19:00", "Europe/Berlin", offsets=("7d", "1d", "2h"))
    got = occurrences(rule, 0, 10)
    assert [o.due_at for o in got] == [utc("2027-03-05 18:00"), utc("2027-03-11 18:00"), utc("2027-03-12 16:00")]
    assert {o.event_at for o in got} == {utc("2027-03-12 18:00")}
    # a week before the Berlin spring change: 19:00 stays 19:00 on the wall clock
    spring = Rule("event", "2027-04-02 19:00", "Europe/Berlin", offsets=("1w",))
    assert stamps(spring) == ["2027-03-26 18:00"]  # 19:00 CET; the event is at 17:00 UTC (CEST)


def test_calendar_recurring_event_with_exdate_cancelled_and_moved_occurrences():
    split = events(ICS)
    assert sorted(split) == ["agm-2027@myclub.org", "training-2027@myclub.org"]
    training = Rule("ics", split["training-2027@myclub.org"], "Europe/Berlin", offsets=("1d",))
    got = occurrences(training, 0, 10)
    # 1, 8 March; 15 March is an EXDATE; 22 March cancelled; 29 March moved to 19:00 (CEST); 5 April
    assert [o.event_at for o in got] == [
        utc("2027-03-01 17:00"), utc("2027-03-08 17:00"), utc("2027-03-29 17:00"), utc("2027-04-05 16:00"),
    ]  # fmt: skip
    assert [o.due_at for o in got][2] == utc("2027-03-28 17:00")  # the day before, 19:00 CEST
    assert summary(split["training-2027@myclub.org"]) == "Youth training"
    agm = Rule("ics", split["agm-2027@myclub.org"], "Europe/Berlin", offsets=("7d", "1d"))
    assert [o.due_at for o in occurrences(agm, 0, 5)] == [utc("2027-03-05 18:00"), utc("2027-03-11 18:00")]


@pytest.mark.parametrize(
    "rule",
    [
        Rule("rrule", "FREQ=SOMETIMES", "UTC", anchor="2027-01-01T00:00"),
        Rule("rrule", "FREQ=DAILY;COUNT=3", "UTC", anchor="2027-01-01T00:00"),
        Rule("cron", "61 * * * *", "UTC", anchor="2027-01-01T00:00"),
        Rule("at", "next tuesday", "UTC"),
        Rule("at", "2027-01-01 10:00", "Mars/Olympus"),
        Rule("event", "2027-01-01 10:00", "UTC", offsets=("3 fortnights",)),
    ],
)
def test_rules_that_cannot_work_are_refused(rule):
    with pytest.raises(RuleError):
        check(rule)


def test_readable_forms():
    assert every("Monday 18:00") == "FREQ=WEEKLY;BYDAY=MO;BYHOUR=18;BYMINUTE=0;BYSECOND=0"
    assert every("monday,thursday 18:30") == "FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=18;BYMINUTE=30;BYSECOND=0"
    assert every("month 1 09:00") == "FREQ=MONTHLY;BYMONTHDAY=1;BYHOUR=9;BYMINUTE=0;BYSECOND=0"
    assert every("year 01-15 09:00") == "FREQ=YEARLY;BYMONTH=1;BYMONTHDAY=15;BYHOUR=9;BYMINUTE=0;BYSECOND=0"
    with pytest.raises(RuleError):
        every("someday 25:00")


def test_a_frequent_series_years_old_still_fires_where_it_should():
    """Without a count the series is walked from just before 'now', not from its first day:
    a five-minute cron started two years ago once ran out of steps and never fired again."""
    now = datetime(2027, 1, 15, 9, 2, tzinfo=UTC).timestamp()
    cron = Rule("cron", "*/5 * * * *", "Europe/Berlin", anchor="2025-01-01T00:00")
    assert [o.due_at for o in occurrences(cron, now, 2)] == [now + 180, now + 480]
    weekly = Rule("rrule", "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO;BYHOUR=18", "Europe/Berlin", anchor="2025-01-06T00:00")
    first = datetime.fromtimestamp(occurrences(weekly, now)[0].due_at, UTC)
    assert first == datetime(2027, 1, 18, 17, 0, tzinfo=UTC)  # every other Monday, in the phase of 2025-01-06
