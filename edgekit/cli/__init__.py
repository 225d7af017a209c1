"""The `edgekit` command: a thin typer layer that parses options and calls one library function each.

Results go to stdout (`--json` for machines), progress and warnings to stderr. A user mistake is an
`EdgekitError`: one line on stderr, exit code 1, no traceback unless `--debug`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from edgekit.errors import EdgekitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train, compress, measure and deploy image classifiers for edge devices.",
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C would be: the same cleanup then runs for all three (a runner
    child's process group killed by `transport.ssh.run_process`, `.part` files removed, no results written)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def stop_on_signals() -> None:
    """What systemd (SIGTERM), CI timeouts (SIGTERM) and a closed terminal (SIGHUP) send must stop edgekit the
    way Ctrl-C does; by default they end Python at once and leave children in their own sessions running.
    A signal the caller chose to ignore (`nohup` ignores SIGHUP) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread (CliRunner may call us from another)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise_stopped)


def _print_version(value: bool) -> None:
    if value:
        from edgekit import __version__

        typer.echo(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the edgekit version and exit.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Decode images every time: no scan or pixel "
                                                              "cache under $EDGEKIT_HOME/cache (EDGEKIT_CACHE=off).")]
    = False,
    cache_limit: Annotated[str | None, typer.Option(help="Largest size of the pixel cache, e.g. 20G (default; "
                                                         "EDGEKIT_CACHE_LIMIT); least recently used entries go.")]
    = None,
) -> None:
    """edgekit: train → compress → bench → deploy → feedback, one artifact directory at a time.

    $ edgekit --no-cache eval runs/photos-20260101-120000
    $ edgekit --cache-limit 50G train --data photos/
    """
    _state["debug"] = debug
    if debug:  # TensorFlow's C++ ERROR lines, kept quiet by edgekit.compat otherwise (unless you set it)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
    stop_on_signals()
    if no_cache:  # the environment carries it to the library, subprocesses and tests alike
        os.environ["EDGEKIT_CACHE"] = "off"
    if cache_limit is not None:
        from edgekit.data.filecache import parse_size

        try:
            parse_size(cache_limit, "--cache-limit")
        except EdgekitError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        os.environ["EDGEKIT_CACHE_LIMIT"] = cache_limit
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s: %(message)s", force=True)
    for noisy in ("absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def user_errors(func):
    """Turn EdgekitError into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EdgekitError as exc:
            if _state["debug"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except Exception as exc:  # a damaged pixel-cache shard found mid-epoch arrives wrapped by TensorFlow
            line = None if _state["debug"] else _damaged_cache_line(exc)
            if line is None:
                raise
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                typer.echo(f"interrupted ({signal.Signals(signum).name})", err=True)
            raise typer.Exit(128 + signum) from None

    return wrapper


def _damaged_cache_line(exc: Exception) -> str | None:
    if "pixel cache entry" not in str(exc):  # cheap: most errors never load the data layer
        return None
    from edgekit.data.pixelcache import damage_line

    return damage_line(exc)


def emit(payload: dict, as_json: bool, human: str) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else human)


JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
WideOption = Annotated[bool, typer.Option("--wide", help="Print every table column (the default fits 100 "
                                                        "columns; files always have them all).")]
TrustModelOption = Annotated[bool, typer.Option(
    "--trust-model", help="Load a legacy .h5 / SavedModel (or a .keras without safe mode): Keras models run code "
    "on load, so only for files you trust.")]


def given(ctx: typer.Context, *names: str) -> list[str]:
    """The options among `names` (parameter names) that the user typed, as they typed them (`--uint8-io`).

    A default and an explicit value can be equal; only the source tells whether a user asked for an
    option that another one makes meaningless, which is then refused rather than silently ignored.
    """
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    typed = []
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            flag = flags.get(name, name)
            typed.append(flag if flag.startswith("-") else flag.upper())  # an argument reads as MODELS
    return typed


def refuse(ctx: typer.Context, names: tuple[str, ...], why: str) -> None:
    """One line naming the typed options among `names`, when the rest of the command makes them meaningless."""
    clash = given(ctx, *names)
    if clash:
        raise EdgekitError(f"{', '.join(clash)}: {why}")


def resolve_run_dir(run_dir: Path | None) -> Path:
    from edgekit.artifacts import latest_run

    return run_dir if run_dir is not None else latest_run()


DeviceOption = Annotated[str, typer.Option("--device", "-d", help="Device profile name (desktop, pi, rpi5, coral, "
                                                                  "...) or a profile .yaml file.")]
RuntimeOption = Annotated[str | None, typer.Option(
    help="Interpreter on the device: litert, tflite_runtime or tf.lite (default: the profile's runtime).")]
AcceptKeyOption = Annotated[bool, typer.Option("--accept-new-host-key",
                                               help="Trust an SSH host key seen for the first time.")]


def parse_threads(value: str | None) -> tuple[int | None, ...]:
    if not value:
        return (None,)
    try:
        threads = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise EdgekitError(f"--threads {value!r}: expected numbers separated by commas, e.g. 1,2,4") from None
    from edgekit.config import THREADS

    if any(t not in THREADS for t in threads) or len(threads) > 16:
        raise EdgekitError(f"--threads {value!r}: thread counts must be {THREADS.text}, at most 16 of them")
    return threads


def check_runtime(runtime: str | None) -> None:
    from edgekit.devices import RUNTIMES

    if runtime is not None and runtime not in RUNTIMES:
        raise EdgekitError(f"--runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")


# Importing the command modules registers their commands on `app`, in the order `--help` lists them.
for _module in ("training", "compression", "devices", "feedback", "fleet", "fleet_data", "data", "tune", "info"):
    importlib.import_module(f"edgekit.cli.{_module}")
