"""A persistent XLA compilation cache for the commands (train, embed, evaluate).

A second run of the same job reads its compiled programs back instead of compiling them
again (a cold `embed` on CPU compiles ~25 programs). Where, in order:
`--compilation_cache_dir` (a path, or `off`), else $PROTTRANS_JAX_COMPILATION_CACHE (a path,
or `off` / empty to disable), else jax's own $JAX_COMPILATION_CACHE_DIR if set, else
`$XDG_CACHE_HOME/prottrans_jax/xla` (~/.cache/prottrans_jax/xla). A folder that cannot be
written is reported once on stderr and the command runs without a cache.

The cache is trusted: an entry is a compiled executable that is loaded and run, so do not point
it at a folder that others may write (jax's own warning, compilation_cache.set_cache_dir).

What jax 0.10.2 does, read in jax/_src/compilation_cache.py, lru_cache.py and compiler.py,
and why this module installs its own file store:
- `LRUCache.put` writes an entry straight to its final name (`<key>-cache`) with
  `Path.write_bytes`; it takes a file lock only when `jax_compilation_cache_max_size` is set
  (the default, -1, takes none). A process reading that entry while another writes it reads a
  torn file: jax catches the error, warns and compiles (`compiler._cache_read`). A process
  killed during the write leaves the torn file for good, since `put` skips keys that exist:
  every later run warns and recompiles that program. So writes are not atomic and not safe
  with several processes.
- `AtomicFileCache` below keeps jax's layout and key but writes each entry to a temporary
  file in the same folder and renames it over the final name (`os.replace`, atomic on POSIX):
  a reader sees a whole entry or none, two writers of one key both leave a whole (identical)
  entry, and a kill leaves at most a `.tmp` file that is never read.
- The key covers the program, devices, compile options, XLA flags and jax/jaxlib versions
  (cache_key.py), so a changed model, shape or flag compiles anew; only process 0 writes
  (the other processes of a job read what it wrote, except on CPU: below); programs that
  compile faster than `jax_persistent_cache_min_compile_time_secs` are not written (jax's default 1 s;
  MIN_COMPILE_SECONDS here unless that jax variable is set in the environment).
- On CPU the key of a multi-process program differs per process (its "accelerator_config",
  the CPU topology fingerprint, differs; measured with 2 gloo processes): process 0 reads its
  own entries back and the others never do. A restarted 2-process ProtTXL job's process 0
  loaded its train step in 1 s while process 1 compiled it (14 s at load 5); at load ~11 the
  first step's gloo rendezvous timed out waiting for process 1 (tests/test_multihost.py). So
  a multi-process CPU job runs without the cache: every process compiles, and they reach the
  first collective together.
- jax builds its cache object once per process, at the first compilation, and never looks at
  `jax_compilation_cache_dir` again: `enable` resets it and installs ours.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
# jax has no public API to choose the cache's store: its private module, as of jax 0.10.2.
from jax._src import compilation_cache as jax_cache
from jax._src.compilation_cache_interface import CacheInterface

ENV = "PROTTRANS_JAX_COMPILATION_CACHE"
OFF = ("", "off")
# Every program is written, however quick to compile: with jax's default (1 s) or even 0.1 s,
# which programs of a tiny embed were written varied from run to run with the machine's load,
# so a second run still compiled some; reading an entry back costs milliseconds.
MIN_COMPILE_SECONDS = 0.0
_SUFFIX = "-cache"  # jax's entry name: <key>-cache (lru_cache._CACHE_SUFFIX)
_warned: set[str] = set()


def default_dir() -> str:
    """The user cache folder: $XDG_CACHE_HOME/prottrans_jax/xla, else ~/.cache/prottrans_jax/xla."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "prottrans_jax", "xla")


def resolve_dir(flag: str | None = None) -> str | None:
    """The folder to use (None: no cache): the flag, the env variable, jax's own, the default."""
    if flag is not None:
        value = flag
    elif ENV in os.environ:
        value = os.environ[ENV]
    else:
        value = os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir()
    value = value.strip()
    return None if value.lower() in OFF else os.path.abspath(os.path.expanduser(value))


def add_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compilation_cache_dir", default=None,
                        help=f"persistent XLA compilation cache folder, or 'off' (default: ${ENV}, "
                             f"else {default_dir()})")


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


class AtomicFileCache(CacheInterface):
    """jax's file layout, written atomically (see the module docstring); a failed write (disk
    full, permissions changed) is reported once and later writes are skipped."""

    def __init__(self, path: str):
        import pathlib

        self._path = pathlib.Path(path)
        self.writable = True

    def get(self, key: str) -> bytes | None:
        try:
            return (self._path / f"{key}{_SUFFIX}").read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            _warn_once(f"compilation cache {self._path}: cannot read an entry ({error.strerror}); compiling")
            return None

    def put(self, key: str, value: bytes) -> None:
        final = self._path / f"{key}{_SUFFIX}"
        if not self.writable or final.exists():
            return
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self._path, prefix=f".{key}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(value)
            os.replace(tmp, final)
        except OSError as error:
            self.writable = False
            _warn_once(f"compilation cache {self._path}: cannot write ({error.strerror}); "
                       "continuing without saving compiled programs")
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)

    def clear(self) -> None:
        for entry in self._path.glob(f"*{_SUFFIX}"):
            entry.unlink(missing_ok=True)


def _check_writable(directory: str) -> str | None:
    """None if `directory` can be created and written, else why not (one phrase)."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe."):
            pass
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def _multi_process_cpu() -> bool:
    """True in a jax.distributed job on CPU (asked only once joined: it starts the backend)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1 and jax.default_backend() == "cpu"


def enable(flag: str | None = None) -> str | None:
    """Points jax's persistent compilation cache at `resolve_dir(flag)` for this process (call
    before the first compilation; a later call switches folders). Returns the folder, or None
    when the cache is off or its folder is not writable (warned once, not an error)."""
    directory = resolve_dir(flag)
    if directory is not None and _multi_process_cpu():
        _warn_once("compilation cache off: in a multi-process CPU job only process 0 would read "
                   "its entries back (jax keys CPU programs per process)")
        directory = None
    problem = None if directory is None else _check_writable(directory)
    if problem:
        _warn_once(f"compilation cache {directory} is not writable ({problem}); continuing without it")
        directory = None
    jax_cache.reset_cache()
    if directory is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: no size threshold
    with jax_cache._cache_initialized_mutex:
        jax_cache._cache = AtomicFileCache(directory)
        jax_cache._cache_initialized = True
    return directory
