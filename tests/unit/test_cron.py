"""kdflow.cluster.cron: KFP's six-field cron (robfig/cron v1, seconds first, UTC), checked before a schedule is sent."""

import datetime as dt

import pytest

from kdflow.cluster.cron import CronError, next_times, validate

T0 = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)  # a Wednesday


@pytest.mark.parametrize("expr", [
    "0 0 3 * * *", "*/30 * * * * *", "0 0 9 ? * 1-5", "0 15,45 8-18/2 1 jan-jun MON", "@daily",
    "@every 1h30m", "@hourly", "0 5/15 * * * *",
])
def test_valid_six_field_expressions_and_descriptors_pass(expr):
    assert validate(expr) == expr


def test_whitespace_is_normalised():
    assert validate("  0  0 3 * *   * ") == "0 0 3 * * *"


def test_a_five_field_crontab_line_is_refused_with_its_six_field_equivalent():
    with pytest.raises(CronError) as e:
        validate("0 3 * * *")
    assert "five fields" in e.value.problem and "second 0, minute 3, hour *" in e.value.problem
    assert '"0 0 3 * * *"' in e.value.fix


def test_a_five_field_line_with_a_bad_field_names_the_field_as_the_user_meant_it():
    with pytest.raises(CronError, match="hour field"):
        validate("0 25 * * *")


@pytest.mark.parametrize("expr, words", [
    ("", "empty"),
    ("1 2 3", "3 fields"),
    ("0 0 3 * * * 2030", "7 fields"),
    ("60 * * * * *", "second field"),
    ("0 60 * * * *", "minute field"),
    ("0 0 24 * * *", "hour field"),
    ("0 0 0 0 * *", "day-of-month field"),
    ("0 0 0 32 * *", "day-of-month field"),
    ("0 0 0 * 13 *", "month field"),
    ("0 0 0 * * 7", "day-of-week field"),
    ("0 0 0 * foo *", "not a number or a name"),
    ("0 0 -1 * * *", "not a number"),
    ("0 0 5-1 * * *", "runs backwards"),
    ("*/0 * * * * *", "step"),
    ("*/x * * * * *", "step"),
    ("1/2/3 * * * * *", "more than one /"),
    ("1-2-3 * * * * *", "not a value or a range"),
    ("0,,5 * * * * *", "empty list item"),
    ("0 0 0 30 2 *", "never fires"),
    ("@fortnightly", "unknown cron descriptor"),
    ("@every soon", "Go duration"),
    ("@every 0s", "Go duration"),
])
def test_bad_expressions_are_refused_naming_the_problem_and_a_fix(expr, words):
    with pytest.raises(CronError) as e:
        validate(expr)
    assert words in e.value.problem and e.value.fix


def test_day_of_week_7_is_explained():
    with pytest.raises(CronError) as e:
        validate("0 0 0 * * 7")
    assert "0 = Sunday" in e.value.fix


def test_next_times_daily_at_three():
    assert next_times("0 0 3 * * *", T0, 2) == [dt.datetime(2025, 1, 2, 3, tzinfo=dt.timezone.utc),
                                                dt.datetime(2025, 1, 3, 3, tzinfo=dt.timezone.utc)]


def test_next_times_weekdays_by_name_and_seconds():
    times = next_times("30 0 9 * * mon-fri", dt.datetime(2025, 1, 3, 10, 0), 2)  # a Friday, naive means UTC
    assert times == [dt.datetime(2025, 1, 6, 9, 0, 30, tzinfo=dt.timezone.utc),
                     dt.datetime(2025, 1, 7, 9, 0, 30, tzinfo=dt.timezone.utc)]


def test_a_single_value_with_a_step_runs_to_the_end_of_the_range():
    # robfig/cron reads "5/15" as 5-59/15.
    assert [t.minute for t in next_times("0 5/15 12 * * *", T0, 4)] == [5, 20, 35, 50]


def test_day_of_month_or_day_of_week_when_neither_is_a_star():
    # robfig/cron (like Vixie cron): both restricted -> either matches.
    times = next_times("0 0 0 15 * sun", T0, 3)
    assert [t.date() for t in times] == [dt.date(2025, 1, 5), dt.date(2025, 1, 12), dt.date(2025, 1, 15)]


def test_day_of_month_and_day_of_week_when_one_is_a_star():
    assert next_times("0 0 0 * * sun", T0, 1)[0].date() == dt.date(2025, 1, 5)
    assert next_times("0 0 0 29 2 *", T0, 1)[0].date() == dt.date(2028, 2, 29)


def test_descriptors_fire_as_their_six_fields_and_every_adds_its_duration():
    assert next_times("@daily", T0, 1) == [dt.datetime(2025, 1, 2, tzinfo=dt.timezone.utc)]
    assert next_times("@weekly", T0, 1)[0].date() == dt.date(2025, 1, 5)  # Sunday
    assert next_times("@every 1h30m", T0, 2) == [T0 + dt.timedelta(minutes=90), T0 + dt.timedelta(minutes=180)]
