"""Orthanc as a subprocess, from Debian's ``orthanc`` and ``orthanc-dicomweb`` packages.

The configuration is generated for each run: free ports, storage and index in a
temporary folder, the DICOMweb plugin at ``/dicom-web/``, no authentication, and the
benchmark's own AE title declared so that C-FIND is allowed.  Everything else keeps
Orthanc's defaults, which is what a site installing the package gets.  Orthanc 1.10
has no listen-address option (it binds every interface); :mod:`benchmarks.run` runs it
in a private network namespace holding only a loopback interface (see ``isolate``).
A system Orthanc service, if any, is never started, stopped or read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from . import process
from .process import LOOPBACK, Server, StartError

AET = "ORTHANC"
CLIENT_AET = "BENCH"
PACKAGES = ["orthanc", "orthanc-dicomweb"]


def ensure_installed() -> None:
    """Install the Debian packages when ``Orthanc`` is missing (we run as root)."""
    if shutil.which("Orthanc") and plugin_path():
        return
    subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def plugin_path() -> str:
    """The DICOMweb plugin's shared library, as listed by ``dpkg -L``."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return ""
    candidates = [p for p in listing if p.endswith(".so") and "DicomWeb" in p]
    return candidates[0] if candidates else ""


class Orthanc(Server):
    name = "orthanc"

    def __init__(self, *args, http_root: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.http_root = http_root
        self.session = requests.Session()

    def load(self, blobs: list[bytes]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def post(blob: bytes) -> None:
            # Orthanc 1.10 answers a rare 500 under four concurrent posters (its SQLite
            # index busy); the instance is simply sent again.
            for attempt in range(3):
                response = self.session.post(
                    f"{self.http_root}/instances",
                    data=blob,
                    headers={"Content-Type": "application/dicom"},
                    timeout=120,
                )
                if response.status_code < 500 or attempt == 2:
                    break
                time.sleep(0.5)
            response.raise_for_status()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(post, blobs))

    def count(self) -> int:
        stats = self.session.get(f"{self.http_root}/statistics", timeout=30).json()
        return int(stats["CountInstances"])

    def version(self) -> str:
        system = self.session.get(f"{self.http_root}/system", timeout=10).json()
        plugins = self.session.get(f"{self.http_root}/plugins/dicom-web", timeout=10)
        plugin = plugins.json().get("Version", "?") if plugins.ok else "?"
        return f"{system.get('Version', '?')} (DICOMweb plugin {plugin})"

    def stop(self) -> None:
        self.session.close()
        super().stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def configuration(workdir: Path, http_port: int, dimse_port: int, client_port: int) -> dict:
    return {
        "Name": "benchmark",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dimse_port,
        "DicomAet": AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [plugin_path()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "DicomModalities": {CLIENT_AET: [CLIENT_AET, LOOPBACK, client_port]},
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "TcpNoDelay": True,
        "KeepAlive": True,
        "SaveJobs": False,
    }


def start_orthanc() -> Orthanc:
    """Start Orthanc on free ports; raise :class:`StartError` if it does not come up."""
    if not process.isolated():
        raise StartError(
            "Orthanc binds every interface: start it only inside a private "
            "network namespace (python -m benchmarks.run does that)"
        )
    if not shutil.which("Orthanc") or not plugin_path():
        raise StartError("Orthanc or its DICOMweb plugin is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="bench-orthanc-"))
    http_port, dimse_port = process.free_port(), process.free_port()
    config = workdir / "orthanc.json"
    config.write_text(
        json.dumps(configuration(workdir, http_port, dimse_port, process.free_port()), indent=2)
    )
    log = workdir / "orthanc.log"
    child = process.start(["Orthanc", "--no-jobs", str(config)], log)
    http_root = f"http://{LOOPBACK}:{http_port}"
    server = Orthanc(child, f"{http_root}/dicom-web", None, AET, workdir, http_root=http_root)
    try:
        process.wait_http(f"{http_root}/system", child, log)
    except StartError:
        server.stop()
        raise
    if process.wait_tcp(dimse_port, 10):
        server.dimse_port = dimse_port
    return server
