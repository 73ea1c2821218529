"""``kdflow registry NAME``: every version of a registered model with its metrics and verdicts.

Rows carry raw values (fractions, milliseconds, bytes; None when not measured) so ``--json`` gives
machines numbers; ``format_table`` turns them into text for people, "-" for what is missing. The
metrics come from each version's MLflow run, the verdicts from the version's own tags (copied from
the run at registration, then updated by promotion).
"""

from __future__ import annotations

import datetime as dt
import re

from kdflow.registry.promotion import VersionTag, connect, registered_model
from kdflow.registry.tags import Tag

# Run metrics shown, by row key (names as the evaluation step logs them).
METRICS = {
    "top1": "test_student_accuracy",
    "top1_ci_low": "test_student_accuracy_ci_low",
    "top1_ci_high": "test_student_accuracy_ci_high",
    "agreement": "test_agreement",
    "latency_p95_ms": "student_latency_p95_ms",
    "size_bytes": "student_size_bytes",
    "mia_auc": "mia_auc",
}
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
COLUMNS = ("version", "created", "aliases", "top-1 [CI]", "agree", "p95 ms", "MB", "MIA AUC", "gate", "promotable",
           "promotion", "run")


def _created(ms: int | None) -> str | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _metrics(client, run_id: str | None) -> dict[str, float | None]:
    """The shown metrics of ``run_id``; all None when the run is gone (deleted, another store)."""
    from mlflow.exceptions import MlflowException

    found = {}
    if run_id:
        try:
            found = client.get_run(run_id).data.metrics
        except MlflowException:
            found = {}
    return {key: found.get(metric) for key, metric in METRICS.items()}


def _flag(value: str | None) -> bool | None:
    return None if value is None else value == "true"


def registry_rows(name: str, tracking_uri: str | None) -> list[dict]:
    """One dict per version of ``name``, newest first (keys: version, created, aliases, the METRICS
    keys, gate, promotable, promotion, rolled_back, run_id)."""
    client = connect(tracking_uri)
    model = registered_model(client, name)
    # Versions from a search carry no aliases in MLflow 3: the registered model has the map.
    aliases: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        aliases.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(f"name='{name}'", max_results=10_000)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        rows.append({
            "version": str(v.version),
            "created": _created(v.creation_timestamp),
            "aliases": aliases.get(str(v.version), []),
            **_metrics(client, v.run_id),
            "gate": tags.get(Tag.GATE_PASSED) and ("passed" if tags[Tag.GATE_PASSED] == "true" else "failed"),
            "gate_summary": tags.get(Tag.GATE),
            "promotable": _flag(tags.get(Tag.PROMOTABLE)),
            "promotion": tags.get(VersionTag.PROMOTION),
            "rolled_back": tags.get(VersionTag.ROLLED_BACK),
            "run_id": v.run_id or None,
        })
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _top1(row: dict) -> str:
    if row["top1"] is None:
        return "-"
    if row["top1_ci_low"] is None or row["top1_ci_high"] is None:
        return _pct(row["top1"])
    return f"{_pct(row['top1'])} [{100 * row['top1_ci_low']:.1f}, {100 * row['top1_ci_high']:.1f}]"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def short_note(row: dict) -> str:
    """The latest of the version's promotion note and rollback, cut to what and when (both tags
    hold an ISO UTC time, whose text sorts in time order)."""
    promotion = row.get("promotion") or ""
    # "promoted 2025-01-31T12:00:00Z (auto) by alice, ..." -> "promoted 2025-01-31T12:00:00Z (auto)"
    short = promotion.split(": ", 1)[0].split(" by ", 1)[0]
    rolled = row.get("rolled_back")
    if rolled:
        at = rolled.split(": ", 1)[0]
        promoted_at = _ISO_TIME.search(promotion)
        if promoted_at is None or at >= promoted_at.group(0):
            short = f"rolled back {at}"
    return short or "-"


def format_table(rows: list[dict]) -> str:
    """``rows`` (from registry_rows) as aligned text columns."""
    cells = [COLUMNS] + [(
        row["version"],
        row["created"] or "-",
        ",".join(row["aliases"]) or "-",
        _top1(row),
        _pct(row["agreement"]),
        _num(row["latency_p95_ms"], ".2f"),
        _num(None if row["size_bytes"] is None else row["size_bytes"] / 1e6, ".2f"),
        _num(row["mia_auc"], ".3f"),
        row["gate"] or "-",
        "-" if row["promotable"] is None else ("yes" if row["promotable"] else "no"),
        short_note(row),
        (row["run_id"] or "-")[:8],
    ) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)
