"""Install the OHIF Viewer's prebuilt files for ``web/viewer.py`` to serve under ``/ohif/``.

The npm package ``@ohif/app`` ships its production build in ``dist/`` (``index.html``,
bundles, wasm codecs; about 200 MB).  Only those static files are needed, so the
package is fetched with ``npm pack`` (the tarball as published, no dependencies, no
install scripts run) and ``package/dist/`` is unpacked from it; ``npm install`` would
also pull in some forty build-time dependencies the files never use.

The new copy is unpacked next to the target and swapped in with two renames, so a
server reading the old copy never sees half of the new one.  ``.ohif-version`` in the
folder records what was installed; installing the same package again does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path, PurePosixPath

from .config import Settings

log = logging.getLogger(__name__)

#: The OHIF release tested with this server (tests/test_viewer_browser.py).
DEFAULT_VERSION = "3.13.2"
PACKAGE = "@ohif/app"
#: File in the installed folder naming the package it came from.
MARKER = ".ohif-version"
_DIST = PurePosixPath("package/dist")


class InstallError(Exception):
    """The viewer could not be installed; the message says why and what to do."""


def default_target(settings: Settings) -> Path:
    """Where ``web/viewer.py`` looks: ``http.viewer_dir``, else ``<data_dir>/ohif``."""
    if settings.http.viewer_dir:
        return Path(settings.http.viewer_dir)
    return settings.storage.data_dir / "ohif"


def installed(target: Path) -> str | None:
    """The package spec installed in ``target``, or ``None``."""
    try:
        return (target / MARKER).read_text().strip() or None
    except OSError:
        return None


def install(
    target: Path,
    version: str = DEFAULT_VERSION,
    *,
    package: str | None = None,
    npm: str = "npm",
    force: bool = False,
) -> bool:
    """Install OHIF's ``dist/`` into ``target``; ``False`` when it was already there.

    Parameters
    ----------
    target
        Folder to hold the viewer (``index.html`` at its top); replaced as a whole.
    version
        ``@ohif/app`` version to fetch from the npm registry.
    package
        Any ``npm pack`` spec instead of ``@ohif/app@version``: a tarball, a folder, a
        URL, or a name on a mirror configured in ``.npmrc``.
    npm
        The npm executable.
    force
        Install even when ``target`` already holds the same package.

    Raises
    ------
    InstallError
        npm is missing or failed, or the package has no ``dist/index.html``.
    """
    spec = package or f"{PACKAGE}@{version}"
    if not force and installed(target) == spec and (target / "index.html").is_file():
        return False
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Work beside the target: same file system, so the final move is a rename.
    with tempfile.TemporaryDirectory(prefix=".ohif-install-", dir=target.parent) as work:
        tarball = _pack(spec, Path(work), npm)
        staged = Path(work) / "dist"
        _unpack_dist(tarball, staged, spec)
        (staged / MARKER).write_text(spec + "\n")
        _swap(staged, target)
    log.info("installed %s into %s", spec, target)
    return True


def _pack(spec: str, folder: Path, npm: str) -> Path:
    """``npm pack`` ``spec`` into ``folder``; the tarball's path."""
    executable = shutil.which(npm)
    if executable is None:
        raise InstallError(
            f"{npm!r} was not found: install Node.js (20 or later) with npm, or download "
            f"the {PACKAGE} tarball elsewhere and pass it with --package FILE.tgz"
        )
    command = [executable, "pack", "--silent", "--pack-destination", str(folder), spec]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"`npm pack {spec}` took more than 15 minutes") from exc
    names = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not names:
        detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise InstallError(
            f"`npm pack {spec}` failed (exit status {result.returncode}): {detail}\n"
            "Check the version exists (npm view @ohif/app versions) and that the npm "
            "registry is reachable (npm config get registry)."
        )
    tarball = folder / names[-1]
    if not tarball.is_file():
        raise InstallError(f"`npm pack {spec}` reported {names[-1]!r} but wrote no such file")
    return tarball


def _unpack_dist(tarball: Path, staged: Path, spec: str) -> None:
    """Extract ``package/dist/`` of ``tarball`` into ``staged``, one file at a time.

    tarfile's ``data`` filter refuses absolute paths, links leaving the folder and
    device files, so a hostile tarball cannot write outside ``staged``.
    """
    staged.mkdir()
    found = False
    with tarfile.open(tarball, "r:*") as archive:
        for member in archive:
            path = PurePosixPath(member.name)
            if path == _DIST or _DIST not in path.parents:
                continue
            member.name = str(path.relative_to(_DIST))
            if member.name == "index.html":
                found = True
            archive.extract(member, staged, filter="data")
    if not found:
        raise InstallError(f"{spec} has no dist/index.html: it is not an OHIF Viewer build")


def _swap(staged: Path, target: Path) -> None:
    """Put ``staged`` at ``target``, the old copy removed once the new one is in place."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    try:
        os.rename(staged, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
