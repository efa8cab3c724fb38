"""Writing outputs without losing anything: atomic replacement, the umask's file modes, writability probes,
strict JSON, OS errors as one line, and Ctrl-C that lets the work in hand finish.

    atomic_write("runs/x/ckpt-00000010.pt", lambda f: torch.save(state, f))   # temp name, fsync, rename
    check_output_dir("runs/x", "train.out_dir")    # OutputError now, rather than after an hour of training
    with signals_deferred():                       # Ctrl-C / SIGTERM wait until a group of renames is done
        ...
    with StopRequest("saving after this step", log) as stop:   # 1st Ctrl-C: stop.requested; 2nd: quit
        ...
    os_error_message(e)                            # "runs/x/metrics.jsonl: no space left on the device"
    json.dumps(strict_json(record), allow_nan=False)   # NaN and Infinity written as null

Every file is first written under a hidden temporary name in its final folder (`.NAME.PID.RANDOM.tmp`), flushed
and fsync'd, then renamed over the target: a crash, a full disk or Ctrl-C leaves the previous file whole and
no half-written file under the real name. New files get the mode the umask gives (0644 under the usual 022),
like any other output, not the 0600 of `tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import secrets
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


class OutputError(OSError):
    """An output place that cannot be written (a file where a folder belongs, no permission, a read-only
    file system); the message names the path. An OSError, so `os_error_message` and callers treat it alike."""


def os_error_message(e: OSError) -> str:
    """One line naming the file and the reason: `out/model.safetensors: no space left on the device`."""
    if isinstance(e, OutputError) or not e.strerror:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    reason = "no space left on the device" if e.errno == errno.ENOSPC else e.strerror
    return f"{e.filename}: {reason}" if e.filename else reason


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so `json.dumps(..., allow_nan=False)` writes
    strict JSON (bare NaN and Infinity are not JSON; strict parsers reject them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def default_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the umask (0o644 under the usual 022). For files that
    another library creates with a narrower mode (safetensors writes 0600)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(umask)
    return 0o666 & ~umask


def temp_name(path: str | Path) -> Path:
    """A hidden temporary name beside `path`, unique to this process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_dir(folder: str | Path) -> None:
    """Make renames and new names in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file through `write(f)` under a temporary name, then rename it to `path`.

    The file gets the umask's mode (created with 0666, as `open` does). On any failure, Ctrl-C included, the
    temporary file is removed and `path` (if it existed) is untouched.
    """
    path = Path(path)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def nearest_existing(path: str | Path) -> Path:
    """`path` itself if it exists, else its closest existing ancestor (where it would be created)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(path: str | Path, what: str) -> None:
    """OutputError, naming `what` and the path, unless files can be created in folder `path` -- or, when it
    does not exist yet, in the folder it would be created in. Nothing is created or left behind: the probe is
    an unnamed temporary file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise OutputError(f"{what} {path}: {p} is a file, not a folder")
        if p.exists():
            break
    folder = nearest_existing(path)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise OutputError(f"{what} {path}: cannot create files in {folder} ({reason})") from None


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM are held back while the block runs and delivered after it, so a group of renames
    (setting an earlier run aside) is never left half done. Outside the main thread: no effect."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class StopRequest:
    """Ctrl-C and SIGTERM while the block runs, in two stages: the first sets `requested` (and says, through
    `log`, "SIGINT: <what happens now> (again to quit at once)"), so the work in hand can finish and be saved;
    the second raises KeyboardInterrupt. The previous handlers come back when the block ends. Outside the main
    thread: no effect (`requested` stays as it is)."""

    def __init__(self, what: str, log: Callable[[str], None]) -> None:
        self.what, self.log = what, log
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log(f"{signal.Signals(signum).name}: {self.what} (again to quit at once)")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def silence_stdout() -> None:
    """After EPIPE (the reader went away): point stdout at /dev/null, so the flush at exit does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
