"""``kdflow config``, ``models``, ``methods`` and ``digits``: what kdflow offers, without running anything."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--config", "config_path", metavar="FILE", help="Validate and print this file, resolved.")
@click.option("--digits", is_flag=True, help="Print the embedded default (digits) config instead of the "
                                             "generic defaults.")
@click.option("--schema", is_flag=True, help="Print the JSON Schema of the config instead, for editors "
                                             "(e.g. a YAML language server: completion, hover docs and "
                                             "checks as you type).")
def config(config_path: str | None, digits: bool, schema: bool) -> None:
    """Print a config with every default filled in: a starting point for your own."""
    if schema:
        import json

        from kdflow.config.schema import config_schema

        click.echo(json.dumps(config_schema(), indent=2))
        return
    from kdflow.config import load_config

    click.echo(load_config(config_path, embedded=digits).to_yaml(), nl=False)


@click.command()
@click.option("--layers", "arch", metavar="ARCH",
              help="List ARCH's layers (names for hint pairs) with their output shapes instead.")
@click.option("--image-size", default=32, show_default=True, help="Input size for the shapes listed by --layers.")
@click.option("--classes", default=10, show_default=True, help="Class count for the shapes listed by --layers.")
def models(arch: str | None, image_size: int, classes: int) -> None:
    """List the model architectures (for student.arch and teacher.arch), or one's layers."""
    from kdflow.models import create_model, list_models

    if not arch:
        click.echo("\n".join(list_models()))
        return
    import torch

    from kdflow.models.features import layer_table

    rows = layer_table(create_model(arch, classes), torch.zeros(2, 3, image_size, image_size))
    width = max(len(name) for name, _, _ in rows)
    click.echo(f"# {arch}: layers a hint pair can name (output shape for {image_size}x{image_size} input)")
    for name, kind, shape in rows:
        click.echo(f"{name:{width}s}  {kind:12s}  {list(shape)}")


@click.command()
def methods() -> None:
    """List the distillation methods (for distill.method), each with a one-line description."""
    from kdflow.distillers import describe_distillers

    described = describe_distillers()
    width = max(map(len, described))
    click.echo("\n".join(f"{name:{width}s}  {text}" for name, text in described.items()))


@click.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
def digits(output: Path) -> None:
    """Write scikit-learn's handwritten digits to OUTPUT as an image folder."""
    from kdflow.data.digits import write_digits

    click.echo(write_digits(output))
