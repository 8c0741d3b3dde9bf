"""``adk-cancel models``: prepare and list the local models ``MlxLlm`` can run offline."""

from __future__ import annotations

from pathlib import Path

import click

from . import _catalog

_CACHE_HELP = f"Where models go (default: ${_catalog.CACHE_ENV} or ~/.cache/adk-cancel/models)."


@click.group("models")
def models() -> None:
    """Local MLX models for mlx/... agents (prepared once, never downloaded)."""


@models.command("prepare")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option(
    "--cache_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=_CACHE_HELP,
)
@click.option("--force", is_flag=True, help="Prepare again even if already prepared.")
@click.option(
    "--quiet", is_flag=True, help="Print no directory (a conversion still shows its progress)."
)
def prepare(names: tuple[str, ...], cache_dir: Path | None, force: bool, quiet: bool) -> None:
    """Convert NAME (default: smollm2-135m) into an mlx-lm model directory.

    Prints the directory of each model (unless --quiet); agents then use model="mlx/NAME".
    """
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            f"Preparing models needs MLX ({exc}); install it with: pip install 'adk-cancel[mlx]'"
        ) from exc
    for name in names or (_catalog.DEFAULT_MODEL,):
        try:
            path = _catalog.prepare(
                name, root=cache_dir, force=force, progress=_catalog.progress_bar(name)
            )
        except _catalog.ModelNotFoundError as exc:
            raise click.ClickException(str(exc)) from exc
        if not quiet:
            click.echo(str(path))


@models.command("list")
@click.option(
    "--cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=_CACHE_HELP
)
def list_models(cache_dir: Path | None) -> None:
    """Show the known model names and whether each is prepared."""
    for name, known in sorted(_catalog.KNOWN_MODELS.items()):
        path = _catalog.prepared_path(name, cache_dir)
        if path.is_dir():
            state = f"prepared: {path}"
        else:
            where = f" --cache_dir {cache_dir}" if cache_dir else ""
            state = f"not prepared: adk-cancel models prepare {name}{where}"
        click.echo(f"mlx/{name}\n  {known.description}\n  {state}")


if __name__ == "__main__":
    models()
