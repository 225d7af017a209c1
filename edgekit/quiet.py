"""Keep native libraries' start-up chatter off the user's terminal, and nothing else.

TensorFlow and LiteRT write straight to file descriptor 2 from C++ (absl's "All log messages before
absl::InitializeLog()", oneDNN notices, `failed call to cuInit` on a machine without a GPU, "Created
TensorFlow Lite XNNPACK delegate"), below Python's logging and regardless of `-q`. Around the calls that
print them, fd 2 goes to a scratch file; lines that are known noise are dropped, the rest are replayed.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\]"  # absl/glog INFO and WARNING lines
    r"|E\d{4} [\d:.]+ +\d+ \S+:\d+\] (failed call to cuInit|Unable to register cu\w+ factory)"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r"|INFO: Initialized TensorFlow Lite runtime\."
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|oneDNN custom operations are on"
    r"|Attempting to register factory for plugin cu\w+"
    r"|Could not find cuda drivers on your machine)"
)


def is_noise(line: str) -> bool:
    return bool(NOISE.match(line.strip()))


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Capture fd 2 for the duration; on exit write back every line that is not known library noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters): stay as is
        yield
        return
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            scratch.seek(0)
            kept = [line for line in scratch.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if line.strip() and not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
