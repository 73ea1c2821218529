"""Cron expressions for Kubeflow Pipelines recurring runs: six fields, seconds first, in UTC.

KFP's scheduler parses schedules with robfig/cron v1, whose fields are

    second  minute  hour  day-of-month  month  day-of-week

It also accepts *five* fields, but reads them as second..month: the crontab line "0 3 * * *"
("03:00 every day") would run at minute 3 of every hour. So a five-field expression is refused
with its six-field equivalent rather than passed on. Everything else robfig/cron would refuse (or
accept and never fire) is refused here too, naming the field, before anything reaches a cluster.

Pure Python, no kfp: the CLI checks a schedule before it connects to anything.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from kdflow.util.errors import KdflowError

FIELD_ORDER = "second minute hour day-of-month month day-of-week"
EXAMPLE = '"0 0 3 * * *" (03:00:00 UTC every day) or "0 30 2 * * 1" (02:30 UTC on Mondays)'
_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_WEEKDAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
# robfig/cron's descriptors, as the six fields they stand for.
DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *", "@annually": "0 0 0 1 1 *", "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0", "@daily": "0 0 0 * * *", "@midnight": "0 0 0 * * *", "@hourly": "0 0 * * * *",
}
_GO_DURATION = re.compile(r"((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
# robfig/cron gives up looking for the next time after five years; a leap-day schedule pinned to a
# weekday can need 28, so search a little longer than that before calling a schedule one that never fires.
_SEARCH_YEARS = 30


class CronError(KdflowError):
    """A cron expression KFP would refuse, misread, or never fire."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict | None = None
    hint: str = ""


FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS, " (or jan-dec)"),
    _Field("day-of-week", 0, 6, _WEEKDAYS, " (0 = Sunday, or sun-sat; 7 is not accepted)"),
)


@dataclass(frozen=True)
class _Parsed:
    """The values each field allows; ``star`` as robfig/cron marks it (the field begins with * or ?),
    which decides whether day-of-month and day-of-week must both match or either may."""

    values: tuple[frozenset, ...]
    star: tuple[bool, ...]


def validate(expression: str) -> str:
    """The expression with its whitespace normalised, when KFP reads it as meant; else CronError
    saying which field is wrong and how to write it."""
    text = " ".join(expression.split())
    if not text:
        raise CronError("the cron expression is empty", f"give six fields ({FIELD_ORDER}), e.g. {EXAMPLE}")
    if text.startswith("@"):
        _descriptor(text)
        return text
    fields = text.split(" ")
    if len(fields) == 5:
        # Check the fields as the user meant them (minute..day-of-week) first, so a bad hour is
        # reported as the hour; then explain the missing seconds field.
        six = "0 " + text
        _never_fires(six, _parse(six.split(" ")))
        named = ", ".join(f"{f.name} {v}" for f, v in zip(FIELDS, fields))
        raise CronError(
            f'cron "{text}" has five fields; KFP\'s cron has six, seconds first ({FIELD_ORDER}), and would read '
            f"these five as {named} (day-of-week *): not the crontab schedule you meant",
            f'write it with a seconds field first: "{six}"')
    if len(fields) != 6:
        raise CronError(f'cron "{text}" has {len(fields)} fields; KFP\'s cron has six, seconds first ({FIELD_ORDER}), '
                        "with no year field",
                        f"give exactly six fields, e.g. {EXAMPLE}")
    _never_fires(text, _parse(fields))
    return text


def next_times(expression: str, after: dt.datetime, count: int = 3) -> list[dt.datetime]:
    """The next ``count`` times (UTC, after ``after``) a valid expression fires, as KFP's scheduler
    computes them."""
    text = validate(expression)
    after = _utc(after).replace(microsecond=0)
    if text.startswith("@every "):
        step = max(1, int(_descriptor(text)))  # robfig/cron rounds to whole seconds, at least one
        return [after + dt.timedelta(seconds=step * (i + 1)) for i in range(count)]
    return _search(_parse(DESCRIPTORS.get(text, text).split(" ")), after, count)


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)


def _descriptor(text: str) -> float:
    """Check an @ descriptor; the seconds between runs for @every."""
    if text in DESCRIPTORS:
        return 0.0
    if text.startswith("@every "):
        duration = text[len("@every "):].strip()
        if _GO_DURATION.fullmatch(duration):
            seconds = sum(float(n) * _UNIT_SECONDS[u]
                          for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)", duration))
            if seconds > 0:
                return seconds
        raise CronError(f'"{text}": "{duration}" is not a positive Go duration',
                        'write it like "@every 6h" or "@every 1h30m" (units h, m, s)')
    raise CronError(f'unknown cron descriptor "{text}"',
                    f"use one of {', '.join(DESCRIPTORS)}, \"@every 6h\", or six fields ({FIELD_ORDER})")


def _parse(fields: list[str]) -> _Parsed:
    values, stars = [], []
    for spec, text in zip(FIELDS, fields):
        allowed: set[int] = set()
        for part in text.split(","):
            allowed |= _part(spec, text, part)
        values.append(frozenset(allowed))
        stars.append(text[0] in "*?")
    return _Parsed(tuple(values), tuple(stars))


def _part(spec: _Field, field: str, part: str) -> set[int]:
    """The values one comma-separated part (``*``, ``?``, ``N``, ``A-B``, each with an optional
    ``/step``) allows, as robfig/cron reads it."""
    where = f'{spec.name} field "{field}"'
    bounds = f"{spec.name} is {spec.low}-{spec.high}{spec.hint}"
    if not part:
        raise CronError(f"{where} has an empty list item", "separate values with single commas, e.g. 1,15")
    span, _, step_text = part.partition("/")
    if "/" in step_text:
        raise CronError(f"{where}: more than one / in {part}", "write a single step, e.g. */15 or 0-30/5")
    step = 1
    if step_text or part.endswith("/"):
        if not step_text.isdigit() or int(step_text) < 1:
            raise CronError(f"{where}: step /{step_text} is not a whole number of 1 or more",
                            "write a positive step, e.g. */15")
        step = int(step_text)
    if span in ("*", "?"):
        low, high = spec.low, spec.high
    else:
        ends = span.split("-")
        if len(ends) > 2:
            raise CronError(f"{where}: {span} is not a value or a range", f"write N or A-B; {bounds}")
        low = _value(spec, where, bounds, ends[0])
        # "N/step" means N..max in robfig/cron, as in "5/15": 5, 20, 35, 50.
        high = _value(spec, where, bounds, ends[1]) if len(ends) == 2 else (spec.high if step_text else low)
        for v in (low, high):
            if not spec.low <= v <= spec.high:
                raise CronError(f"{where}: {v} is out of range", f"use values in range: {bounds}")
        if low > high:
            raise CronError(f"{where}: the range {span} runs backwards",
                            f"write the smaller value first ({high}-{low}), or list the values with commas")
    return set(range(low, high + 1, step))


def _value(spec: _Field, where: str, bounds: str, text: str) -> int:
    if spec.names and text.lower() in spec.names:
        return spec.names[text.lower()]
    if not text.isdigit():
        raise CronError(f'{where}: "{text}" is not a number' + (" or a name" if spec.names else ""),
                        f"use values in range: {bounds}")
    return int(text)


def _never_fires(text: str, parsed: _Parsed) -> None:
    if not _search(parsed, dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc), 1):
        raise CronError(f'cron "{text}" never fires (no such date in any year)',
                        "check the day-of-month against the month (e.g. there is no 30 February)")


def _day_matches(parsed: _Parsed, day: dt.date) -> bool:
    dom_ok = day.day in parsed.values[3]
    dow_ok = (day.isoweekday() % 7) in parsed.values[5]
    # robfig/cron: when either day field is a star both must match, otherwise either one may.
    if parsed.star[3] or parsed.star[5]:
        return dom_ok and dow_ok
    return dom_ok or dow_ok


def _search(parsed: _Parsed, after: dt.datetime, count: int) -> list[dt.datetime]:
    seconds, minutes, hours = (sorted(v) for v in parsed.values[:3])
    found: list[dt.datetime] = []
    day = after.date()
    for _ in range(366 * _SEARCH_YEARS):
        if day.month in parsed.values[4] and _day_matches(parsed, day):
            for h in hours:
                for m in minutes:
                    for s in seconds:
                        when = dt.datetime(day.year, day.month, day.day, h, m, s, tzinfo=dt.timezone.utc)
                        if when > after:
                            found.append(when)
                            if len(found) == count:
                                return found
        day += dt.timedelta(days=1)
    return found
