"""Where instance files live: a folder now, object storage later, behind one protocol.

Files are written to a private temporary folder first and linked to their final name only
once complete, so a reader (or a killed process) never sees a partial instance.  They are
made durable by :meth:`Storage.sync`, which ingest calls for a whole batch just before the
index commit that makes them visible.  Each file's fsync starts in a background thread as
soon as the file is written, so the disk works while the request's next part is read and
parsed; ``sync`` adds one fsync of each folder of the batch and waits for them all.  (An
fsync interleaved with each write cost ~1.9 ms per 525 KB slice here, ~0.35 ms batched.)
Files that will be synced are written around the page cache (:mod:`.filewriter`), so the
fsync has little left to do and a backlog does not evict what readers need.
Final names are derived from UIDs that :mod:`.uids` has validated, never from raw input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from .errors import InstanceTooLarge, NotFound, OutOfResources, StorageFull
from .filewriter import BufferPool, FileWriter

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Bytes of each received file kept in memory for :meth:`Received.open`: enough for the
#: header of nearly every image, so that ingest parses it without reading the file back.
HEAD = 64 << 10
_TMP = ".tmp"
#: Temporary files older than this are removed at start-up even when their writer's
#: process cannot be checked (it may run on another host sharing the folder).
STALE_AFTER = 24 * 3600


@dataclass(frozen=True)
class Received:
    """A complete copy of an incoming instance, in the storage's temporary folder."""

    path: Path
    size: int
    sha256: str
    #: The file's fsync under way in the background (None: not started, or not wanted).
    synced: Future[None] | None = field(default=None, compare=False, repr=False)
    #: The file's first bytes (up to :data:`HEAD`), kept from the copy; see :meth:`open`.
    head: bytes = field(default=b"", compare=False, repr=False)
    #: The write of the file's last bytes, under way in the background (see :meth:`ready`).
    written: Future[None] | None = field(default=None, compare=False, repr=False)

    def ready(self) -> Path:
        """The file's path, once every byte is in the file.

        The last megabyte of a durable file is written in the background while ingest
        parses its header from :attr:`head`: whatever reads the file itself, moves it or
        names it waits here first.  Raises :class:`OutOfResources` if that write failed
        for want of space.
        """
        if self.written is not None:
            try:
                self.written.result()
            except OSError as exc:
                if mapped := _out_of_resources(exc):
                    raise mapped from exc
                raise
        return self.path

    def open(self) -> BinaryIO:
        """The file for reading, its first bytes served from :attr:`head`.

        Parsing a header reads it in dozens of small pieces and asks for the position
        after each element; from memory that costs no system calls, which on a loaded
        server each let another thread take the interpreter lock.  Reads past the head
        go to the file, opened only then (and only once it is :meth:`ready`).
        """
        if not self.head:
            return open(self.ready(), "rb")
        return io.BufferedReader(_HeadThenFile(self.head, self.path, self.size, self.ready))

    def without_head(self) -> Received:
        """This copy without its head in memory (once parsed, a batch need not hold it)."""
        return dataclasses.replace(self, head=b"")


class Storage(Protocol):
    """What the archive needs from a blob store."""

    def receive(self, source: BinaryIO, limit: int = 0) -> Received: ...

    def discard(self, received: Received) -> None: ...

    def commit(self, received: Received, key: str) -> None:
        """Raises FileExistsError when ``key`` is taken."""
        ...

    def sync(self, batch: Iterable[tuple[Received, str]]) -> None:
        """Make committed files durable; called before their index rows are committed."""
        ...

    def path(self, key: str) -> Path: ...

    def open(self, key: str) -> BinaryIO: ...

    def remove(self, key: str) -> None: ...

    def clean_temporary(self) -> int: ...

    def check(self) -> None: ...


def instance_key(study_uid: str, series_uid: str, sop_uid: str, variant: str = "") -> str:
    """Storage key of an instance; the arguments must be validated UIDs.

    ``variant`` distinguishes a replacement copy from the one it replaces, so the index
    can switch from one to the other in a single commit.
    """
    name = f"{sop_uid}.{variant}.dcm" if variant else f"{sop_uid}.dcm"
    return f"{study_uid}/{series_uid}/{name}"


def _out_of_resources(exc: OSError) -> OutOfResources | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"storage is full: {exc.strerror}")
    if exc.errno in (errno.EROFS, errno.EMFILE, errno.ENFILE):
        return OutOfResources(f"storage cannot be written: {exc.strerror}")
    return None


class FolderStorage:
    """Instances as files under one root folder: ``<study>/<series>/<sop>.dcm``."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        self._tmp = self.root / _TMP
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._host = socket.gethostname()
        self._syncer: ThreadPoolExecutor | None = None
        self._syncer_pid = 0
        #: Durable files are written around the page cache (see .filewriter).
        self._direct = fsync
        self._buffers = BufferPool(CHUNK)

    # -- writing -------------------------------------------------------------------

    def receive(self, source: BinaryIO, limit: int = 0) -> Received:
        """Copy ``source`` to a new temporary file, hashing it on the way.

        ``source`` is read with ``readinto`` where it has one.  Memory stays at one
        buffer whatever the size.  Raises :class:`InstanceTooLarge`
        past ``limit`` bytes (0: unlimited) and :class:`OutOfResources` when the disk is
        full; the temporary file is gone in both cases.
        """
        # The writer's host and PID in the name let clean_temporary tell a dead
        # writer's leftovers from a live one's (gunicorn forks after start-up).
        path = self._tmp / f"{self._host}-{os.getpid()}-{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        head = b""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        out = FileWriter(fd, self._buffers, direct=self._direct)
        try:
            while data := out.readfrom(source):
                size += len(data)
                if limit and size > limit:
                    raise InstanceTooLarge(f"instance exceeds the limit of {limit} bytes")
                digest.update(data)
                if len(head) < HEAD:
                    head += data[: HEAD - len(head)]
            if not self.fsync:
                out.finish()
        except BaseException as exc:
            out.abandon()
            os.close(fd)
            path.unlink(missing_ok=True)
            if isinstance(exc, OSError) and (mapped := _out_of_resources(exc)):
                raise mapped from exc
            raise
        if not self.fsync:
            os.close(fd)
            return Received(path, size, digest.hexdigest(), head=head)
        # The last bytes are written, then synced, in the background: the disk works
        # while the caller parses the header (from ``head``) and reads the next part.
        written: Future[None] = Future()
        synced = self._sync_pool().submit(self._finish, out, fd, written)
        return Received(path, size, digest.hexdigest(), synced, head, written)

    def _finish(self, out: FileWriter, fd: int, written: Future[None]) -> None:
        try:
            out.finish()
        except BaseException as exc:
            os.close(fd)
            written.set_exception(exc)
            raise
        written.set_result(None)
        if out.refused and self._direct:
            self._direct = False
            log.info("%s does not take O_DIRECT: files are written through the cache", self.root)
        _fsync_fd(fd)

    def _sync_pool(self) -> ThreadPoolExecutor:
        # Created in the process that uses it: gunicorn forks workers after start-up,
        # and a forked pool's threads do not exist in the child.
        if self._syncer is None or self._syncer_pid != os.getpid():
            self._syncer = ThreadPoolExecutor(4, thread_name_prefix="fsync")
            self._syncer_pid = os.getpid()
        return self._syncer

    def discard(self, received: Received) -> None:
        received.path.unlink(missing_ok=True)

    def commit(self, received: Received, key: str) -> None:
        """Give a received file its final name, atomically (durably only after :meth:`sync`).

        Never overwrites: raises :class:`FileExistsError` when ``key`` is taken, so two
        writers of one SOP Instance UID cannot clobber each other's file.
        """
        target = self.path(key)
        try:
            received.ready()
            self._make_folder(target.parent)
            try:
                os.link(received.path, target)  # fails if the target exists
            except FileExistsError:
                raise
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                if target.exists():  # a file system without hard links
                    raise FileExistsError(errno.EEXIST, "exists", str(target)) from exc
                os.replace(received.path, target)
            received.path.unlink(missing_ok=True)
        except FileExistsError:
            raise
        except OSError as exc:
            received.path.unlink(missing_ok=True)
            if mapped := _out_of_resources(exc):
                raise mapped from exc
            raise

    def _make_folder(self, folder: Path) -> None:
        """Create a series folder (and its study folder) durably, if missing.

        A new folder's entry in its parent must survive a power cut like the file in it:
        the parents are fsynced here, once per new series, so :meth:`sync` need only
        fsync the folders that hold the files.
        """
        if folder.is_dir():
            return
        new = [f for f in (folder.parent, folder) if not f.is_dir()]
        folder.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            for created in new:
                _fsync_fd(os.open(created.parent, os.O_RDONLY | os.O_DIRECTORY))

    def sync(self, batch: Iterable[tuple[Received, str]]) -> None:
        """Fsync each folder holding the files once, while waiting for the files' fsyncs.

        The files are linked under their final names already, so the folders' fsyncs
        need not follow the files' and run beside them.  A power cut before this leaves
        at worst an unindexed file under its final name, which ``verify`` reports; the
        index never names a file that was not synced.
        """
        if not self.fsync:
            return
        paths = [(received, self.path(key)) for received, key in batch]
        try:
            folders = [
                self._sync_pool().submit(_fsync_fd, os.open(f, os.O_RDONLY | os.O_DIRECTORY))
                for f in {path.parent for _received, path in paths}
            ]
            for received, path in paths:
                if received.synced is not None:
                    received.synced.result()
                else:
                    _fsync_fd(os.open(path, os.O_RDONLY))
            for folder in folders:
                folder.result()
        except OSError as exc:
            if mapped := _out_of_resources(exc):
                raise mapped from exc
            raise

    # -- reading and removing ------------------------------------------------------

    def path(self, key: str) -> Path:
        return self.root / key

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"stored file {key} is missing") from exc

    def remove(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        # Drop folders left empty, up to the root; another writer may race us, which
        # is harmless: rmdir fails on a folder that is not empty.
        for parent in (path.parent, path.parent.parent):
            with contextlib.suppress(OSError):
                parent.rmdir()

    def iter_keys(self) -> Iterator[str]:
        """Every stored file's key (for ``verify`` and ``reindex``)."""
        for path in sorted(self.root.glob("*/*/*.dcm")):
            yield path.relative_to(self.root).as_posix()

    # -- housekeeping --------------------------------------------------------------

    def clean_temporary(self) -> int:
        """Remove temporary files left by writers that died; returns how many.

        A file is removed when its writer ran on this host and is gone, or when it is
        older than :data:`STALE_AFTER`; files of live writers are left alone, since
        several processes share the folder.
        """
        host = self._host
        removed = 0
        now = time.time()
        for path in self._tmp.glob("*.part"):
            parts = path.name.rsplit("-", 2)
            dead = False
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                dead = not _pid_alive(int(parts[1]))
            try:
                old = now - path.stat().st_mtime > STALE_AFTER
            except FileNotFoundError:
                continue
            if dead or old:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d temporary files left by interrupted writes", removed)
        return removed

    def check(self) -> None:
        """Raise :class:`OutOfResources` unless the folder is writable (readiness)."""
        if not os.access(self._tmp, os.W_OK):
            raise OutOfResources(f"storage folder {self._tmp} is not writable")


class _HeadThenFile(io.RawIOBase):
    """A file of ``size`` bytes whose first bytes are in memory: reads past them open it,
    once ``ready`` has returned (the file is complete).

    It has the file's ``name``, as a file opened by path has: pydicom reopens the file
    by that name to read a value it deferred.
    """

    def __init__(self, head: bytes, path: Path, size: int, ready: Callable[[], object]) -> None:
        super().__init__()
        self._head = head
        self._path = path
        self._size = size
        self._ready = ready
        self._file: io.FileIO | None = None
        self._position = 0

    @property
    def name(self) -> str:
        return str(self._path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence == io.SEEK_END:
            offset += self._size
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._position = offset
        return offset

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        start = self._position
        if start < len(self._head):
            count = min(len(buffer), len(self._head) - start)
            buffer[:count] = self._head[start : start + count]
        elif start >= self._size:
            count = 0
        else:
            if self._file is None:
                self._ready()
                self._file = io.FileIO(self._path, "rb")
            self._file.seek(start)
            count = self._file.readinto(buffer) or 0
        self._position += count
        return count

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed writer whose parent died too stays a zombie until init reaps it, which a
    # container's init may do late or never; signal 0 still reaches a zombie.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust the signal
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _fsync_fd(fd: int) -> None:
    """fsync and close ``fd``."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
