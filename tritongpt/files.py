"""Writing outputs without losing anything: atomic replacement, the umask's file modes, writability probes,
one writer per folder, strict JSON, OS errors as one line, standard output that fails loudly, and Ctrl-C that
lets the work in hand finish.

    atomic_write("runs/x/ckpt-00000010.pt", lambda f: torch.save(state, f))   # temp name, fsync, rename
    write_text_atomic("results/x/command.txt", "gpt bench --quick\n")
    check_output_dir("runs/x", "train.out_dir")    # OutputError now, rather than after an hour of training
    with signals_deferred():                       # Ctrl-C / SIGTERM wait until a group of renames is done
        ...
    with StopRequest("saving after this step", log) as stop:   # 1st Ctrl-C: stop.requested; 2nd: quit
        ...
    with folder_lock("runs/x", "gpt train"):       # OutputError naming the other writer if one holds it
        ...
    os_error_message(e)                            # "runs/x/metrics.jsonl: no space left on the device"
    with name_os_errors(path): f.write(data)       # an OSError without a file name gets `path`
    json.dumps(strict_json(record), allow_nan=False)   # NaN and Infinity written as null
    parse_json(raw)                                # json.loads; too deep or not UTF-8: json.JSONDecodeError

Every file is first written under a hidden temporary name in its final folder (`.NAME.PID.RANDOM.tmp`), flushed
and fsync'd, then renamed over the target: a crash, a full disk or Ctrl-C leaves the previous file whole and
no half-written file under the real name. New files get the mode the umask gives (0644 under the usual 022),
like any other output, not the 0600 of `tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import errno
import io
import json
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


@contextlib.contextmanager
def name_os_errors(path: str | Path) -> Iterator[None]:
    """Re-raise an OSError that carries no file name (ENOSPC from a write, say) with `path` as its name."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def parse_json(text: str | bytes) -> Any:
    """`json.loads`, where nesting too deep for the parser (RecursionError) and, for bytes, text that is not
    UTF-8 are a `json.JSONDecodeError` too: a reader's one `except json.JSONDecodeError` names every bad file."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise json.JSONDecodeError(f"not UTF-8 text (bad byte at offset {e.start})", "", 0) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


def json_bytes(obj: Any, indent: int | None = 1) -> bytes:
    """`obj` as UTF-8 JSON text with a final newline, characters written as themselves. A string that is no
    Unicode text (a file name of undecodable bytes, read as lone surrogates) is written as its escape
    (`\\udcff`), which reads back as the same string, instead of failing."""
    try:
        return (json.dumps(obj, ensure_ascii=False, indent=indent) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(obj, ensure_ascii=True, indent=indent) + "\n").encode("ascii")


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
    temporary file is removed and `path` (if it existed) is untouched. An OSError names `path`, never the
    temporary name.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`atomic_write` of UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_csv_atomic(path: str | Path, columns: list[str] | tuple[str, ...], rows) -> Path:
    """`atomic_write` of a CSV: a header of `columns`, then `rows` (dicts, formatted by the caller; keys outside
    `columns` are left out)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, text.getvalue())


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


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM are held back while the block runs and delivered after it, so a group of renames
    (setting an earlier run aside) is never left half done. Outside the main thread: no effect.

    The signals are caught by handlers that only note them, then raised again once the previous handlers are
    back. (A thread's signal mask would not do: a signal sent to the process, as Ctrl-C is, goes to any thread
    that does not block it, a tokenizer worker say, and Python then runs its handler in the main thread.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):  # each once, in the order they came
            signal.raise_signal(sig)


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


def new_folder_problem(out: Path, flag: str = "--out") -> str | None:
    """Why `out` cannot take a run's files, or None: it must be a new folder or one holding nothing but a folder
    lock (a run never mixes its files with another's, nor replaces them), in a place where files can be made."""
    if out.exists() and not out.is_dir():
        return f"{flag} {out} is a file, not a folder"
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
        return f"{flag} {out} is not empty; choose a new or empty folder (nothing in it was changed)"
    try:
        check_output_dir(out, flag)
    except OutputError as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------------------------------
# One writer per folder

LOCK_NAME = ".gpt.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str, flag: str = "--out") -> Iterator[None]:
    """Hold the lock of `folder` (which must exist) while the block runs: one writer per folder.

    The lock is flock(2) on `FOLDER/.gpt.lock`, which the kernel releases when the process ends, however it
    ends: a lock file left by a killed run blocks nothing. The file names its holder (pid, command, start time)
    and is removed when the block ends. A second writer gets an OutputError naming the folder and the holder;
    `flag` is the option that chooses another folder.
    """
    import fcntl

    path = Path(folder) / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)  # never a link's target
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise OutputError(
                f"{folder} is in use by {holder}: a folder has one writer at a time; wait for it to end, or "
                f"choose another {flag}"
            ) from None
        try:  # the holder before us may have removed the file after we opened it: then lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        started = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
        with contextlib.suppress(OSError):  # who holds it is for messages; a full disk loses only that
            os.ftruncate(fd, 0)
            os.write(fd, json_bytes({"pid": os.getpid(), "command": command, "started": started}, indent=None))
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still locked by us: nobody else holds this file
        os.close(fd)


def _lock_holder(fd: int) -> str:
    """Who holds a lock file, from what it says: "gpt train (pid 123, since 2026-01-02 10:11:12)"."""
    try:
        rec = parse_json(os.pread(fd, 4096, 0))
        return f"{rec['command']} (pid {int(rec['pid'])}, since {rec['started']})"
    except (OSError, ValueError, TypeError, KeyError):  # being written, or not ours
        return "another process"


# ---------------------------------------------------------------------------------------------------------
# Standard output


class StdoutError(Exception):
    """Standard output cannot take what a command writes: a full disk (`gpt eval ... > /dev/full`), an I/O
    error. Not an OSError, so that a command's handlers for its own files never take it for one of theirs; not
    a reader that went away (that is BrokenPipeError, which ends output quietly)."""


class GuardedStdout:
    """`sys.stdout` while a command runs (`tritongpt.cli`): a write or flush that fails for any reason but a
    closed pipe raises StdoutError, once, naming standard output and the reason; then the stream is pointed at
    /dev/null and later writes are dropped, so that no flush (at exit, say) fails again."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.error: StdoutError | None = None

    def write(self, text: str) -> int:
        if self.error is None:
            with self._guard():
                return self.stream.write(text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.error is None:
            with self._guard():
                self.stream.flush()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as e:
            named = OSError(e.errno, e.strerror, "standard output") if e.strerror else e
            self.error = StdoutError(os_error_message(named) if e.strerror else f"standard output: {e}")
            with contextlib.suppress(OSError, ValueError, AttributeError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stream.fileno())
                os.close(devnull)
            raise self.error from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
