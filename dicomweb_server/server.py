"""Starting the listeners: gunicorn for HTTP, a child process for DIMSE under ``serve``.

The index schema is brought up to date once, in the parent, before any worker forks;
each worker then opens its own Archive (database connections must not cross a fork).

Metrics: the workers and the DIMSE child are separate processes, so prometheus-client
runs in multiprocess mode (:func:`_metrics_dir`): ``PROMETHEUS_MULTIPROC_DIR`` names a
fresh temporary folder before anything forks, every process writes its values there,
``/metrics`` sums them, and the folder is removed on exit.  An operator who set the
variable (to share one folder between separately started ``web`` and ``dimse``
processes) keeps that folder; clearing it between runs is then theirs to do.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers import gthread

from . import logs, malloc, metrics
from .archive import index
from .config import Settings

log = logging.getLogger(__name__)


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):  # type: ignore[no-untyped-def]
        from .web import create_app

        return create_app(self.settings)


def _prepare(settings: Settings) -> None:
    from .web.auth import open_access_warning

    malloc.tune()  # before gunicorn forks its workers, which inherit it

    warning = open_access_warning(settings)  # auth.mode = "none" off loopback
    if warning:
        log.warning(warning)
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    _reader, writer = index.make_engines(settings.database_url)
    index.upgrade(writer, settings.storage.data_dir)
    writer.dispose()
    # Every process of the server is forked from this one, which has imported what they
    # all run: frozen, the objects it built stay out of the children's collections, which
    # would otherwise write to every page holding one and unshare it (Python's gc docs).
    gc.freeze()


_SHM = "/dev/shm"


def default_workers() -> int:
    """Two gunicorn workers per core, as gunicorn's own docs advise (2n + 1) for a
    start.  A worker runs Python one thread at a time; with one per core, four uploads
    landed three on one worker as often as not, which then held the interpreter lock
    while the other core idled (four-client STOW-RS: idle 14% -> 9%, +11% instances/s)."""
    return 2 * (os.cpu_count() or 1)


def gunicorn_options(settings: Settings, **extra: Any) -> dict[str, Any]:
    http = settings.http
    base = http.public_url or f"http://{http.host}:{{port}}{http.base_path}"

    def when_ready(server: Any) -> None:
        for listener in server.LISTENERS:
            port = listener.sock.getsockname()[1]
            print(f"DICOMweb listening on {base.format(port=port)}", flush=True)

    return {
        "bind": f"{http.host}:{http.port}",
        "workers": http.workers or default_workers(),
        # Threads keep a worker responsive while others stream multi-gigabyte bodies.
        "worker_class": ThreadWorker,
        "threads": http.threads,
        "timeout": http.timeout,
        "graceful_timeout": http.timeout,
        "keepalive": 75,
        # gunicorn's runtime control socket sits at one path per user: a second server
        # (a `web` beside `serve`, a test) would take it over.  We manage no workers by it.
        "control_socket_disable": True,
        # Each worker touches a heartbeat file on every turn of its loop; on a disk-backed
        # folder that can block it (gunicorn's own docs); it showed in profiles of small
        # QIDO-RS requests here.  /dev/shm is memory.
        "worker_tmp_dir": _SHM if os.access(_SHM, os.W_OK) else None,
        "accesslog": None,
        "when_ready": when_ready,
        "post_worker_init": _post_worker_init,
        "child_exit": _child_exit,
        **extra,
    }


def _post_worker_init(_worker: Any) -> None:
    """What loading the app built (modules, the pydicom dictionary, SQLAlchemy's
    tables: ~100k objects) goes out of the garbage collector's sight for the worker's
    life.  Every full collection walked it, ~30 ms with the GIL held, stalling all the
    worker's threads: the 60-70 ms outliers among 5 ms QIDO-RS responses."""
    gc.freeze()


class ThreadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, stopped by the master alone, and never inside a lock.

    Ctrl-C in a terminal signals the whole process group.  The master answers SIGINT
    by sending each worker SIGQUIT, so the worker ignores SIGINT itself.  gthread's
    SIGQUIT handler shuts its thread pool down and exits from inside the signal
    handler, which then waits on the lock held by whatever the signal interrupted: the
    pool's ``submit`` (the first request of a fresh worker holds it while a thread
    starts), or an earlier quit.  The worker hung until the master killed it after its
    graceful timeout (300 s).  Here the quit runs on the worker's loop instead, between
    two events, as gthread's own SIGTERM handler defers its work.
    """

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def handle_quit(self, sig: int, frame: Any) -> None:
        self.method_queue.defer(super().handle_quit, sig, frame)


def _child_exit(_server: Any, worker: Any) -> None:
    metrics.mark_process_dead(worker.pid)


@contextmanager
def _metrics_dir() -> Iterator[None]:
    """``PROMETHEUS_MULTIPROC_DIR`` for this run: a fresh folder unless already set.

    Must run before any process that records metrics starts (prometheus-client reads
    the variable when a process first imports it; see :mod:`dicomweb_server.metrics`).
    """
    if metrics.multiprocess_dir():
        yield
        return
    folder = tempfile.mkdtemp(prefix="dicomweb-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = folder
    owner = os.getpid()
    try:
        yield
    finally:
        # gunicorn forks its workers inside this block, and a worker that stops leaves
        # through it too: only the process that made the folder removes it.
        if os.getpid() == owner:
            os.environ.pop(metrics.MULTIPROC_ENV, None)
            shutil.rmtree(folder, ignore_errors=True)


def run_web(settings: Settings) -> None:
    """Serve DICOMweb under gunicorn until interrupted."""
    _prepare(settings)
    with _metrics_dir():
        _Gunicorn(settings, gunicorn_options(settings)).run()


def _dimse_child(settings: Settings) -> None:
    logs.configure(settings.log)
    from dimse_scp import serve_forever

    serve_forever(settings)


def run_serve(settings: Settings) -> None:
    """Serve DICOMweb and DIMSE together until interrupted."""
    _prepare(settings)
    with _metrics_dir():
        _serve(settings)


def _serve(settings: Settings) -> None:
    parent = os.getpid()
    child = _fork(_dimse_child, settings) if settings.dimse.enabled else None

    def on_exit(_server: Any) -> None:
        # gunicorn's workers are forked inside run() below and leave through this frame
        # too when they stop: only the process that started the listener stops it.
        if os.getpid() != parent or child is None:
            return
        _stop(child)
        metrics.mark_process_dead(child)

    try:
        _Gunicorn(settings, gunicorn_options(settings, on_exit=on_exit)).run()
    finally:
        on_exit(None)


def _fork(target: Callable[[Settings], None], settings: Settings) -> int:
    """Run ``target(settings)`` in a forked child; its pid.

    Forked, not spawned: the child shares the libraries this process loaded (~60 MB a
    DIMSE listener), and nothing here runs a thread yet that a fork could cut in two.
    A bare fork rather than multiprocessing's: gunicorn's workers, forked later from
    this process, would inherit multiprocessing's record of the child and try to join
    it when they exit.  The child leaves with ``os._exit``, never through the frames
    it shares with this process.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        target(settings)
    except KeyboardInterrupt:
        pass  # Ctrl-C before the listener took it over: a stop, not an error
    except BaseException:
        code = 1
        log.exception("the DIMSE listener stopped on an error")
    finally:
        logging.shutdown()
        os._exit(code)


def _stop(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; reaps the child (unless
    gunicorn's SIGCHLD handler, which reaps every child of its master, did)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.05)
