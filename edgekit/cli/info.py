"""`edgekit info`: what an artifact directory or any .tflite file is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import (
    JsonOption,
    app,
    emit,
    user_errors,
)


@app.command()
@user_errors
def info(
    path: Annotated[Path, typer.Argument(help="A run, variant or result directory, a file inside one, or any "
                                              ".tflite model.")],
    as_json: JsonOption = False,
) -> None:
    """Show what an artifact is, where it came from and how it measured; describe any .tflite model.

    $ edgekit info runs/digits-20260101-120000
    $ edgekit info face_detector.tflite
    $ edgekit info tunes/tune-20260101-120000
    """
    from edgekit.info import describe_path

    payload, text = describe_path(path)
    emit(payload, as_json, text)
