"""Writing output files so that a killed run never leaves a partial file under a final name.

Every file is written to a temporary name in its own folder and renamed into place; the
temporary names share one suffix so that the next run can sweep up what a kill left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from vggviz.core import png
from vggviz.core.text import dumps

TMP_SUFFIX = ".vggviz-tmp"
PNG_COMPRESS_LEVEL = 1  # what Pillow writes (modes png.encode does not take): 5x faster


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's 0600 would hide outputs


def _encoding(mode: str) -> str | None:
    return None if "b" in mode else "utf-8"  # never the locale's: names can be any unicode


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, with ordinary file permissions, locked by us for
    as long as it is open so that another run's sweep can tell it is alive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name[:200]}.", suffix=TMP_SUFFIX, dir=path.parent
        )
    except OSError as err:
        raise named(err, path) from None
    try:
        os.fchmod(fd, FILE_MODE)
        try_lock(fd, tmp)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def named(err: OSError, path: Path) -> OSError:
    """``err`` as about ``path``, the final name, not the hidden temporary it was met on: a
    message names the file the user knows."""
    if err.filename == str(path):
        return err
    return type(err)(err.errno, err.strerror or str(err), str(path))


# --- locks: one flock helper for temporaries, image folders and runs -------------------------

LOCKS_UNSUPPORTED = (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF)
_unguarded: list[str] = []


class Held(Exception):
    """Another live process holds the lock; ``pid`` is its process id when it wrote one."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def try_lock(fd: int, what: object = "") -> bool:
    """Take an exclusive flock on ``fd`` without waiting; False when someone else holds it.
    A file system without locks counts as held (there is nothing better to go on), and
    :func:`locks_supported` says so from then on."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno not in LOCKS_UNSUPPORTED:
            raise
        _unguarded.append(str(what))
    return True


def locks_supported() -> bool:
    """False once a lock had to go ahead unguarded (a file system without flock)."""
    return not _unguarded


def another_run(pid: int | None) -> str:
    """How messages name the run that holds a lock: by its pid when it wrote one."""
    return f"another vggviz run (pid {pid})" if pid else "another vggviz run"


def hold(lock: Path) -> int:
    """An open descriptor of ``lock`` (created if needed, never through a symlink) that holds
    its flock, with our pid written in it. Raises :class:`Held` when another live process
    holds it; the kernel drops the lock when its holder dies."""
    for _ in range(100):  # retried only while another run removes the lock file under us
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
        try:
            locked = try_lock(fd, lock)
        except OSError:
            os.close(fd)
            raise
        if not locked:
            pid = _read_pid(fd)
            for _ in range(20):  # the holder writes its pid just after it locks: wait a little
                if pid:
                    break
                time.sleep(0.005)
                pid = _read_pid(fd)
            os.close(fd)
            raise Held(f"{another_run(pid)} is writing it", pid)
        try:
            same = os.fstat(fd).st_ino == os.stat(lock, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):  # the pid only helps messages; a full disk
                os.ftruncate(fd, 0)  # must not stop the claim
                os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the holder released and removed it between our open and lock
    raise Held("its lock file keeps changing")


def _read_pid(fd: int) -> int | None:
    try:
        return _pid_of(os.pread(fd, 32, 0).decode("ascii", "replace"))
    except OSError:
        return None


def _pid_of(text: str) -> int | None:
    """The pid on the first line of a lock file (more lines may follow: see ``folders``)."""
    first = text.split("\n")[0].strip()
    return int(first) if first.isdigit() else None


def holder(lock: Path) -> tuple[int | None, str] | None:
    """Who holds ``lock`` now: (its pid, the lines it wrote after the pid), or None when no
    live process does (a killed run's file). Never waits; never follows a symbolic link."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if try_lock(fd, lock):
            return None  # ours for a moment: nobody's (closing the fd drops it again)
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    return _pid_of(text), text.partition("\n")[2].strip()


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it to ``path`` only if the block succeeds."""
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, mode, encoding=_encoding(mode)) as f:
            yield f
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise named(err, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(image: Image.Image) -> bytes:
    """``image`` (RGB, or palette "P") encoded as a PNG file's bytes."""
    if png.encodable(image):
        return png.encode(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path) -> Path:
    """``image`` (RGB, or palette "P") as a PNG at ``path``, written atomically."""
    return save_bytes(png_bytes(image), path)  # encoded first: the file exists for one write


def save_bytes(data: bytes, path: Path) -> Path:
    """``data`` (a file encoded elsewhere: a drawing process's PNG) at ``path``, atomically."""
    with atomic_file(path) as f:
        f.write(data)
    return path


def save_jpeg(image: Image.Image, path: Path, quality: int = 90) -> Path:
    """``image`` as a JPEG at ``path``, written atomically: for pictures made of photos
    (the crops of ``vggviz top``), where it is 10-20x faster and 5x smaller than PNG."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=0)
    with atomic_file(path) as f:
        f.write(buffer.getbuffer())
    return path


def save_json(obj: object, path: Path) -> Path:
    """JSON that stays valid whatever the names in it (see :func:`vggviz.core.text.dumps`)."""
    with atomic_file(path, "w") as f:
        f.write(dumps(obj, indent=1) + "\n")
    return path


def clean_temporaries(folder: Path, name: str = "") -> int:
    """Remove what killed runs left in ``folder`` (not recursive), only the temporaries of
    final names starting with ``name`` when given; returns how many. A temporary that a live
    writer still holds locked is left alone."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        ours = entry.name.startswith(f".{name}") and entry.name.endswith(TMP_SUFFIX)
        if not ours or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if try_lock(fd, entry.path):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


class _Staged:
    """A file filled piece by piece under a temporary name; ``close`` puts it in place,
    ``abort`` throws it away."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        fd, self._tmp = _temporary(path)
        self._file: IO[Any] = os.fdopen(fd, mode, encoding=_encoding(mode))

    def _finish(self) -> None:
        self._file.close()

    def close(self) -> Path:
        try:
            self._finish()
            os.replace(self._tmp, self.path)
        except OSError as err:
            raise named(err, self.path) from None
        return self.path

    def abort(self) -> None:
        """Throw the file away; after a failed write (a full disk) closing fails too."""
        try:
            self._finish()
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                self._file.close()
        finally:
            Path(self._tmp).unlink(missing_ok=True)


class NpzWriter(_Staged):
    """An ``.npz`` written one array at a time, so the maps of all layers are never held at
    once; readable with ``np.load`` like any ``np.savez`` file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "wb")
        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED)

    def add(self, name: str, array: np.ndarray) -> None:
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)

    def _finish(self) -> None:
        self._zip.close()
        self._file.close()


class JsonLines(_Staged):
    """A JSON Lines file filled record by record and put in place by ``close``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "w")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(dumps(record) + "\n")
        self._file.flush()  # a reader (or a kill) sees whole lines
