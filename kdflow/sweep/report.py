"""A sweep's results as a table and a plot: pure functions of the trials' validation numbers
(no MLflow), so they are tested on their own and the select step only logs what they return."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrialResult:
    index: int
    name: str
    run_id: str
    values: dict[str, Any]  # swept key -> the value in this trial's config (None: the config has no such key)
    metric: float  # the final (last epoch's) validation metric: the saved model's
    agreement: float | None = None  # final val_agreement with the teacher, when logged
    seconds: float | None = None  # the trial run's wall time, when known


def ranked(results: list[TrialResult]) -> list[TrialResult]:
    """Best first: the highest metric; a tie goes to the lower trial index (deterministic)."""
    return sorted(results, key=lambda r: (-r.metric, r.index))


def _column(cells: list[Any]) -> list[Any]:
    """Numbers when every cell is one, else text ("n/a" where missing): MLflow's table format wants
    one type per column."""
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in cells):
        return cells
    return ["n/a" if c is None else str(c) for c in cells]


def trial_table(results: list[TrialResult], swept: tuple[str, ...] | list[str], metric: str) -> dict[str, list]:
    """Columns (as ``mlflow.log_table`` takes them) of every trial, best first, with its rank."""
    rows = ranked(results)
    table: dict[str, list] = {"rank": list(range(1, len(rows) + 1)), "trial": [r.name for r in rows],
                              "run_id": [r.run_id for r in rows]}
    for key in swept:
        table[key] = _column([r.values.get(key) for r in rows])
    table[metric] = [r.metric for r in rows]
    if metric != "val_agreement" and any(r.agreement is not None for r in rows):
        table["val_agreement"] = _column([r.agreement for r in rows])
    if any(r.seconds is not None for r in rows):
        table["train_seconds"] = _column([None if r.seconds is None else round(r.seconds, 1) for r in rows])
    return table


def table_markdown(table: dict[str, list]) -> str:
    """The table as Markdown: fractions (accuracies) to 4 decimals, other numbers as they are."""
    def text(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) and 0 <= v <= 1 else f"{v:g}" if isinstance(v, float) else str(v)

    columns = list(table)
    n = len(next(iter(table.values()))) if table else 0
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(table[c][i]) for c in columns) + " |" for i in range(n)]
    return "\n".join(lines) + "\n"


def _numeric(values: list[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def plot_trials(results: list[TrialResult], swept: tuple[str, ...] | list[str], metric: str, path: str | Path):
    """One subplot per swept key: the metric of every trial against that key's value (numbers on a
    numeric axis, anything else as categories; a trial whose config has no such key appears as "n/a"
    among categories and is left out of a numeric axis). The winner is starred. Writes a PNG to
    ``path`` and returns the figure."""
    # Imported here: only the select step draws, and the Agg canvas keeps it off any display and
    # out of pyplot's global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(swept) or ["trial"]
    fig = Figure(figsize=(4.2 * len(keys), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    best = ranked(results)[0] if results else None
    for ax, key in zip(axes, keys):
        values = [r.name if key == "trial" else r.values.get(key) for r in results]
        if _numeric(values):
            points = [(v, r) for v, r in zip(values, results) if v is not None]
            xs = [float(v) for v, _ in points]
            missing = len(results) - len(points)
            ax.set_xlabel(key + (f" ({missing} trial(s) n/a)" if missing else ""))
            if len(set(xs)) > 2 and min(xs) > 0 and max(xs) / min(xs) >= 100:
                ax.set_xscale("log")  # learning rates and the like span decades
        else:
            labels = list(dict.fromkeys("n/a" if v is None else str(v) for v in values))
            points = [(labels.index("n/a" if v is None else str(v)), r) for v, r in zip(values, results)]
            xs = [float(x) for x, _ in points]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.set_xlabel(key)
        ax.scatter(xs, [r.metric for _, r in points], color="tab:blue", alpha=0.8)
        won = [(x, r) for x, (_, r) in zip(xs, points) if best is not None and r.index == best.index]
        if won:
            ax.scatter([won[0][0]], [won[0][1].metric], marker="*", s=220, color="tab:orange", zorder=3,
                       label=f"best: {best.name}")
            ax.legend(loc="lower right", fontsize="small")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"sweep: {len(results)} trial(s)")
    fig.savefig(str(path), format="png", dpi=100)
    return fig
