"""``kdflow promote``, ``kdflow rollback`` and ``kdflow registry``: the model registry's champion.

The work is in kdflow.registry (promotion, history, table); this module parses options, finds the
tracking URI and turns results into output and exit statuses.
"""

from __future__ import annotations

import json
import os
import sys

import click

from kdflow.cli.options import EXIT_GATE_FAILED
from kdflow.util.errors import KdflowError


def resolve_tracking_uri(given: str | None) -> str | None:
    """--tracking-uri, else $MLFLOW_TRACKING_URI (None: read where it is used, and it may carry
    credentials, which only the environment may), else the local store `kdflow run` writes by default
    (WORKDIR/mlflow.db) when it exists; never a new empty store, which would only say "no model"."""
    from kdflow.cli.inputs import default_workdir
    from kdflow.util.redact import refuse_credentials

    if given:
        # A command line is seen by every process list and shell history: credentials come from the
        # environment (MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN), never from the flag.
        refuse_credentials(given, "--tracking-uri")
        return given
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    db = default_workdir() / "mlflow.db"
    if db.is_file():
        return f"sqlite:///{db}"
    raise KdflowError(f"no MLflow tracking URI given and no local store at {db}",
                      "pass --tracking-uri URI, set MLFLOW_TRACKING_URI, or set KDFLOW_HOME to the work folder "
                      "of `kdflow run` (default ./.kdflow)")


_tracking_option = click.option(
    "--tracking-uri", metavar="URI",
    help="MLflow tracking URI (its registry is used too). Default: $MLFLOW_TRACKING_URI, else "
         "sqlite:///WORKDIR/mlflow.db when it exists (WORKDIR: $KDFLOW_HOME, else ./.kdflow).")


@click.command()
@click.argument("name")
@click.argument("version")
@click.option("--force", is_flag=True,
              help="Promote even if the version failed its gate or regresses against the champion "
                   "(needs --reason; recorded on the version and in the history).")
@click.option("--reason", default="", metavar="TEXT",
              help="Why: recorded in the champion history and on the version. Required with --force.")
@_tracking_option
def promote(name: str, version: str, force: bool, reason: str, tracking_uri: str | None) -> None:
    """Make NAME version VERSION the champion (the registry alias `champion`).

    The version must have passed its evaluation gate, and the champion check is redone against the
    CURRENT champion on the test images both were evaluated on (paired bootstrap, with the version's
    own gate settings): a version not shown to be at most gate.champion_tolerance worse is refused.
    --force --reason overrides both; the reason is recorded. Promoting the version that already
    holds champion changes nothing (or records the promotion an interrupted run left unrecorded).
    Promoting a version again is also how a rollback is undone.

    Exit status: 0 promoted (or already champion), 3 refused by the champion check (the reason is
    printed and recorded in the version tag kdflow.promotion), 2 bad input (unknown model or
    version, failed gate without --force, --force without --reason), 1 failed.
    """
    from kdflow.registry.promotion import promote as do_promote

    if force and not reason.strip():
        raise click.UsageError("--force needs --reason TEXT: a forced promotion records why")
    result = do_promote(name, version, resolve_tracking_uri(tracking_uri), force=force, reason=reason)
    if result.check is not None and not result.check.passed and not result.promoted:
        click.echo(f"kdflow: {name} version {version} not promoted, {result.message}\n"
                   f"  (recorded in its tag kdflow.promotion; to override: --force --reason TEXT)", err=True)
        sys.exit(EXIT_GATE_FAILED)
    click.echo(result.message)


@click.command()
@click.argument("name")
@click.option("--reason", default="", metavar="TEXT",
              help="Why: recorded in the champion history and on the version rolled back from.")
@_tracking_option
def rollback(name: str, reason: str, tracking_uri: str | None) -> None:
    """Return NAME's champion to the version that held it before.

    Works like a browser's back button over the champion history: a rollback of a rollback goes
    one further back, not forward again; to undo a rollback, promote that version again with
    `kdflow promote`. Versions deleted from the registry are skipped. If the alias was moved
    outside kdflow, the version holding it is taken as the current champion and the rollback
    returns to the one kdflow recorded before it.

    Exit status: 0 rolled back, 2 no previous champion (or unknown model), 1 failed.
    """
    from kdflow.registry.promotion import rollback as do_rollback

    click.echo(do_rollback(name, resolve_tracking_uri(tracking_uri), reason=reason).message)


@click.command("registry")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True,
              help="Print the rows as JSON (raw values: fractions, ms, bytes; null when not measured).")
@_tracking_option
def registry(name: str, as_json: bool, tracking_uri: str | None) -> None:
    """List NAME's versions, newest first: aliases, test metrics, gate verdicts and promotion notes."""
    from kdflow.registry.table import format_table, registry_rows

    rows = registry_rows(name, resolve_tracking_uri(tracking_uri))
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))
