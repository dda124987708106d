"""One run's lifecycle, the same for every job (``features``, ``top``, ``explain``).

A job's ``run(request, events)`` is these steps, in this order; the torch-free ones are here:

1. **Check** the options that need no model (colour map, memory: ``core/memory``), so that a
   run that cannot work is refused before torch loads.
2. **Plan** the inputs (:func:`plan`): discovery of files and folders (never inside the output
   folder), the shard this run does, and what was passed over. :func:`report` tells it.
3. **Prepare** the output folder (:func:`prepare_output`): created, proved writable, and owned by
   one job (two jobs would write over each other's ``index.html``).
4. **Load** the model: ``vggviz.model.loading.load(spec)`` (a job module; torch).
5. **Identify** what the run is made of, for fingerprints that decide what can be reused:
   the weights by file identity (:func:`weights_identity`: real path, size and mtime, never
   a file name alone) and each input by :func:`identity`.
6. **Claim** what the run writes: a per-image job claims its manifest name and each image
   folder (``core/folders``); a job whose outputs are global claims the folder
   (:func:`claim_outputs`): a second live run is refused in one line naming its pid.
7. **Work**, polling ``events.should_stop()`` between steps: a stop is a flag, never an
   exception thrown into the middle of a step, so whatever is under way is finished or
   removed. Per-image jobs hand this step to ``core/per_image``.
8. **Summarise**: the :class:`Summary` the command line turns into a closing line and an exit
   code.

Progress goes out through :class:`Events`, the one channel from a run to its caller.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Generic, Protocol, TypeVar

from vggviz.core import files, folders, inputs, interrupts, values
from vggviz.core.errors import OutputError, UsageError
from vggviz.core.folders import Identity
from vggviz.core.inputs import Discovery, InputItem
from vggviz.core.text import display, write_error
from vggviz.core.vocabulary import IMAGENET_FILES, JOB_FILES, ModelSpec

JOB_MARKER = ".vggviz-job"  # names the job whose outputs a folder holds
M = TypeVar("M")  # the job's loaded model


class Events:
    """What a run tells its caller while it goes, and the one thing it asks: whether to stop.
    The default ignores everything and never stops; the command line's progress display
    overrides what it shows."""

    def start(self, total: int) -> None:
        """The model is loaded and ``total`` inputs are to go: the run is under way (from now
        on a signal is a request to stop, polled through :meth:`should_stop`)."""

    def phase(self, name: str, total: int, done: int = 0) -> None:
        """A phase of ``total`` steps begins, ``done`` of them already done (a resumed scan):
        ``images``, ``scan`` (inputs), ``crops`` (inputs run again), ``pictures``."""

    def advance(self, count: int = 1) -> None:
        """``count`` more steps of the current phase are finished."""

    def record(self, record: Mapping[str, Any]) -> None:
        """One input's outcome (per-image jobs), in input order; it counts as one step."""

    def note(self, message: str) -> None:
        """Something worth a line: resuming, starting over, what was passed over."""

    def failed(self, message: str) -> None:
        """One input or folder could not be used (the run goes on)."""

    def should_stop(self) -> bool:
        """Polled between steps: True ends the run early and cleanly."""
        return False


@dataclass
class Summary:
    """How a run went, for the closing line and the exit code."""

    total: int  # inputs this run (or shard) had to do
    ok: int = 0  # inputs done (drawn, scanned)
    error: int = 0  # inputs that failed
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # folders that could not be listed
    complete: bool = True  # False: stopped early (a signal, a full disk, stdout gone)
    disk_full: str | None = None  # the message of the write that found the disk full
    outputs: dict[str, Path] = field(default_factory=dict)  # what the run wrote, by role
    unit: str = "image(s)"  # what ``total`` counts
    done_word: str = "done"  # how the line calls what ``ok`` counts
    skips: bool = True  # whether the job can skip inputs (the line counts them)
    resume: str | None = None  # after a stop: how to go on, when the job can resume

    @property
    def finished(self) -> int:
        return self.ok + self.error + self.skipped

    @property
    def failed(self) -> int:
        return self.error + len(self.problems)

    @property
    def index(self) -> Path | None:
        return self.outputs.get("index")

    def line(self) -> str:
        skipped = f", {self.skipped} skipped" if self.skips else ""
        return f"{self.ok} {self.done_word}, {self.error} failed{skipped}"


# --- plan -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """The inputs of a run: all of them in order (an input's number is its position, which
    every shard agrees on), and the numbers this run (or shard) does."""

    items: list[InputItem]
    mine: list[int]
    shard: tuple[int, int] | None
    found: Discovery

    def work(self) -> list[tuple[int, InputItem]]:
        return [(n, self.items[n]) for n in self.mine]


def plan(
    images: Sequence[str],
    out_dir: Path,
    shard: str | None = None,
    stdin: BinaryIO | None = None,
) -> Plan:
    """Find the inputs (never inside ``out_dir``) and the part ``shard`` (``K/N``) does."""
    part = inputs.parse_shard(shard) if shard else None
    found = inputs.find_images(images, stdin=stdin, exclude=out_dir)
    numbers = list(range(len(found.items)))
    if part:
        chosen = {id(item) for item in inputs.shard(found.items, *part)}
        numbers = [n for n in numbers if id(found.items[n]) in chosen]
    return Plan(found.items, numbers, part, found)


@dataclass
class Started(Generic[M]):
    """A run under way: its inputs, the summary it fills in, and its model."""

    plan: Plan
    summary: Summary
    model: M


class Request(Protocol):
    """What every job's request has: its inputs, its output folder and its shard (K/N)."""

    images: Sequence[str]
    out_dir: Path
    shard: str | None


def begin(
    request: Request,
    job: str,
    events: Events,
    load: Callable[[], tuple[M, str | None]],
    stdin: BinaryIO | None = None,
) -> Started[M]:
    """Steps 2 to 4 of every run: plan the inputs, prepare the output folder for ``job``,
    report what discovery passed over, then ``load()`` the model (the job's call into torch;
    its note, such as emulated bf16, goes to ``events``)."""
    planned = plan(request.images, request.out_dir, request.shard, stdin)
    prepare_output(request.out_dir, job)
    summary = report(planned, events)
    _stop_point(events)  # a signal during the imports: torch is loaded whole, then we stop
    model, note = load()
    _stop_point(events)  # ... during the loading: the same
    if note:
        events.note(note)
    return Started(planned, summary, model)


def _stop_point(events: Events) -> None:
    """A safe point before the work: a stop asked for by now ends the run (Stopped)."""
    if events.should_stop():
        raise interrupts.Stopped


def report(plan: Plan, events: Events) -> Summary:
    """Tell what discovery passed over and which folders could not be listed; the summary
    the run fills in."""
    if passed := inputs.passed_over(plan.found):
        events.note(passed)
    for problem in plan.found.problems:
        events.failed(str(problem))
    return Summary(total=len(plan.mine), problems=[str(p) for p in plan.found.problems])


# --- the output folder ----------------------------------------------------------------------


def prepare_output(out_dir: Path, job: str) -> None:
    """Create ``out_dir``, prove it writable now (before any model is loaded), and make it
    ``job``'s: a folder that holds another job's outputs, or an ``index.html`` vggviz did not
    write, is refused (UsageError), since the run would replace it; so are an empty name and
    the root folder (``values.check_output_dir``)."""
    values.check_output_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir, prefix=".vggviz-probe"):
            pass
    except OSError as err:
        raise OutputError(write_error(err.filename or out_dir, err)) from None
    owner = _owner(out_dir, job)
    if owner != job:
        raise UsageError(
            f"{display(str(out_dir))} holds the outputs of vggviz {owner}; "
            f"give vggviz {job} a folder of its own",
            param="output_dir",
        )


def _owner(out_dir: Path, job: str) -> str:
    """The job whose outputs ``out_dir`` holds: the marker's, else the one whose files are
    there (folders written before the marker), else ``job``, which the marker then names."""
    marker = out_dir / JOB_MARKER
    try:
        return _read_marker(marker) or job
    except FileNotFoundError:
        pass
    for other, patterns in JOB_FILES.items():
        if other != job and _holds(out_dir, patterns):
            return other
    if os.path.lexists(out_dir / "index.html") and not _holds(out_dir, JOB_FILES.get(job, ())):
        raise UsageError(  # a web site, or the current folder given as ``-o "$UNSET"``
            f"{display(str(out_dir))} holds an index.html that vggviz did not write; "
            "give vggviz a folder of its own",
            param="output_dir",
        )
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except FileExistsError:  # another run made it first: its word counts
        return _read_marker(marker) or job
    except OSError as err:
        raise OutputError(write_error(marker, err)) from None
    try:
        os.write(fd, f"{job}\n".encode())
    except OSError as err:
        raise OutputError(write_error(marker, err)) from None
    finally:
        os.close(fd)
    return job


def _read_marker(marker: Path) -> str:
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):
            return ""  # a planted link: no job's word
        raise
    try:
        name = os.read(fd, 64).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return name if name in JOB_FILES else ""


def _holds(folder: Path, patterns: Sequence[str]) -> bool:
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return any(fnmatch.fnmatch(name, p) for name in names for p in patterns)


def real_folder(path: Path, out_dir: Path) -> Path:
    """``path``, a folder inside ``out_dir``, made if missing: every part of it from
    ``out_dir`` down a real folder, never a symbolic link, so that nothing is written (or
    removed) outside ``out_dir`` through a link planted there. Raises OutputError."""
    parts = path.relative_to(out_dir).parts
    current = out_dir
    for part in parts:
        current = current / part
        try:
            current.mkdir(exist_ok=True)
            st = os.lstat(current)
        except FileExistsError:
            st = os.lstat(current)
        except OSError as err:
            raise OutputError(write_error(err.filename or current, err)) from None
        if stat.S_ISLNK(st.st_mode):
            raise OutputError(
                f"{display(str(current))}: is a symbolic link; vggviz writes only into real "
                "folders inside the output folder (remove the link)"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{display(str(current))}: is not a folder")
    return path


@contextlib.contextmanager
def os_errors(out_dir: Path) -> Iterator[None]:
    """Any OS error of the block as an OutputError of one line naming the path (the file it
    concerns, else ``out_dir``) and the reason, never "cannot write to standard output"."""
    try:
        yield
    except OSError as err:
        where = err.filename2 or err.filename or out_dir  # os.replace: the final name
        raise OutputError(write_error(where, err)) from None


class OutputClaim:
    """This run's hold on outputs no other live run may write at the same time."""

    def __init__(self, lock: Path, fd: int) -> None:
        self.lock = lock
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.lock.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputClaim:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def claim_outputs(out_dir: Path, name: str, what: str) -> OutputClaim:
    """Hold ``out_dir/.vggviz-<name>.lock`` for this run; a live holder means ``what`` is
    being written by another run, which is refused in one line naming its pid. The kernel
    drops the hold of a run that dies, so a killed run never blocks the next."""
    lock = out_dir / f".vggviz-{name}.lock"
    try:
        return OutputClaim(lock, files.hold(lock))
    except files.Held as held:
        who = files.another_run(held.pid)
        raise OutputError(
            f"{display(str(out_dir))}: {who} is writing {what} here; wait for it to end or "
            "choose another output folder"
        ) from None
    except OSError as err:
        raise OutputError(write_error(err.filename or lock, err)) from None


# --- identity -------------------------------------------------------------------------------


def weights_identity(spec: ModelSpec, arch: str) -> str:
    """What the weights are, for a fingerprint: ``random:<seed>``, torchvision's ImageNet
    file of ``arch``, or a file by real path, size and mtime (two files of one name are told
    apart, and a file replaced in place is seen)."""
    if spec.weights == "random":
        return f"random:{spec.seed}"
    if spec.weights == "imagenet":
        return f"imagenet:{IMAGENET_FILES[arch]}"
    try:
        st = os.stat(spec.weights)
    except OSError:
        return f"file:{spec.weights}"
    return f"file:{os.path.realpath(spec.weights)}:{st.st_size}:{st.st_mtime_ns}"


def model_identity(spec: ModelSpec, arch: str) -> dict[str, str]:
    """The model's part of any fingerprint: what changes every number it computes. ``arch``
    is the loaded model's (found from a weights file when none was asked for)."""
    return {"arch": arch, "weights": weights_identity(spec, arch), "precision": spec.precision}


def identity(path: Path) -> Identity | None:
    """An input file by real path, size and mtime: a file replaced or edited is another
    input. None when it cannot be read (its decoding says why)."""
    try:
        return folders.identity(path)
    except (OSError, ValueError):
        return None
