"""The ``didae-xai`` command line (Typer). Thin: it parses, calls the library, prints."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from didae_xai import __version__, registry

app = typer.Typer(
    name="didae-xai",
    help="Gradient-free counterfactual explanation and correction of image classifiers (DiDAE).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"didae-xai {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Gradient-free counterfactual explanation and correction of image classifiers (DiDAE)."""


@app.command("list")
def list_registered(
    kind: Optional[str] = typer.Argument(
        None, help=f"Only this kind: one of {', '.join(registry.KINDS)}. Default: all kinds."
    ),
) -> None:
    """List the registered backbones, datasets, explainers and correctors (plugins included)."""
    if kind is not None and kind not in registry.KINDS:
        console.print(f"[red]Unknown kind {kind!r}.[/red] Choose one of: {', '.join(registry.KINDS)}.")
        raise typer.Exit(code=2)
    table = Table(title="didae-xai registry")
    table.add_column("kind")
    table.add_column("name", style="bold")
    table.add_column("from")
    table.add_column("description")
    for entry in registry.entries(kind):
        table.add_row(entry.kind, entry.name, entry.source, entry.description)
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    app()
