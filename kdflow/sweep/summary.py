"""What a finished sweep says about itself, read back from MLflow (the parent run and its trials)."""

from __future__ import annotations

from dataclasses import dataclass

from kdflow.registry.tags import SweepTag


@dataclass(frozen=True)
class TrialLine:
    name: str
    run_id: str
    rank: int | None
    value: float | None


@dataclass(frozen=True)
class SweepSummary:
    parent_run_id: str
    metric: str
    trials: tuple[TrialLine, ...]  # best first
    best_run_id: str

    def lines(self) -> list[str]:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.2f}%"

        width = max([len(t.name) for t in self.trials] + [5])
        out = ["kdflow sweep summary",
               f"  parent run            {self.parent_run_id}",
               f"  chosen by             {self.metric} (validation split; the test split only measures the winner)"]
        for t in self.trials:
            mark = "  <- winner" if t.run_id == self.best_run_id else ""
            out.append(f"    {t.rank or '-'}. {t.name.ljust(width)}  {pct(t.value):>7}  {t.run_id}{mark}")
        best = next((t for t in self.trials if t.run_id == self.best_run_id), None)
        out.append(f"  winner                {best.name if best else '?'} ({self.best_run_id})")
        return out


def read_sweep(winner_run_id: str, tracking_uri: str) -> SweepSummary:
    """The sweep the trial ``winner_run_id`` belongs to: its parent, every trial's metric and rank."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    winner = client.get_run(winner_run_id)
    parent_id = winner.data.tags.get(SweepTag.PARENT_RUN_ID, "")
    parent = client.get_run(parent_id)
    metric = parent.data.tags.get(SweepTag.METRIC, "val_accuracy")
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`{SweepTag.PARENT_RUN_ID}` = '{parent_id}'", max_results=1000)
    trials = [TrialLine(r.info.run_name, r.info.run_id,
                        int(r.data.tags[SweepTag.RANK]) if SweepTag.RANK in r.data.tags else None,
                        r.data.metrics.get(metric)) for r in runs]
    trials.sort(key=lambda t: (t.rank is None, t.rank or 0, t.name))
    return SweepSummary(parent_id, metric, tuple(trials), parent.data.tags.get(SweepTag.BEST_RUN_ID, winner_run_id))


def find_parent(sweep_id: str, tracking_uri: str | None = None):
    """The parent run of the sweep ``sweep_id`` (an MLflow Run), or None."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    quoted = sweep_id.replace("'", "\\'")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=2,
                              filter_string=f"tags.`{SweepTag.ID}` = '{quoted}'")
    if len(runs) > 1:
        raise RuntimeError(f"two MLflow runs claim to be the parent of sweep {sweep_id}")
    return runs[0] if runs else None
