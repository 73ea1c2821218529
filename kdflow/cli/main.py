"""The ``kdflow`` command line: one group, one module per command group.

Importing it does not import kfp: only ``run``, ``sweep``, ``compile``, ``submit`` and ``schedule``
reach into pipelines/, and only when they are invoked.
"""

from __future__ import annotations

import sys

import click

from kdflow import __version__
from kdflow.cli import bench, cluster, info, registry, run
from kdflow.util.errors import KdflowError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdflow")
def main() -> None:
    """kdflow: knowledge-distillation pipelines for Kubeflow."""


for command in (run.run, run.sweep, cluster.compile_cmd, cluster.submit, cluster.schedule, info.config, info.models,
                info.methods, info.digits, bench.bench, registry.promote, registry.rollback, registry.registry):
    main.add_command(command)


def entrypoint() -> None:
    from kdflow.util.logs import install_excepthook

    # Any other exception is a bug, and its traceback quotes what it was given (URIs, a library's
    # error text naming the tracking URL): it propagates (exit status 1; a caller in-process still
    # gets it) and the interpreter prints it through this redacting hook.
    install_excepthook()
    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        from kdflow.util.redact import redact_text

        exc.message = redact_text(exc.message)
        exc.show()
        sys.exit(exc.exit_code)
    except KdflowError as exc:
        from kdflow.util.redact import redact_text  # a message may quote a URI or a library's error text

        click.echo(f"error: {redact_text(exc.problem)}", err=True)
        if exc.fix:
            click.echo(f"  fix: {redact_text(exc.fix)}", err=True)
        sys.exit(2)
