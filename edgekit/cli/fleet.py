"""`edgekit fleet ...`: many devices from one inventory file (the command group; see fleet_data.py)."""

from __future__ import annotations

import typer

from edgekit.cli import app

fleet_app = typer.Typer(no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")


@fleet_app.callback()
def fleet_group() -> None:
    """Operate a fleet of devices listed in one YAML inventory.

    $ edgekit fleet status fleet.yaml --group canary
    """
