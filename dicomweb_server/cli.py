"""The ``dicomweb-server`` command: one entry point for every process of the archive.

Option names are a public interface (scripts and operators rely on them): keep them.
Every option can also be set in the configuration file or as an environment variable;
the command line wins.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__, logs
from .config import Settings, load_settings

log = logging.getLogger(__name__)


def _remote_ae(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict:
    peers: dict[str, dict[str, Any]] = {}
    for value in values:
        aet, sep, address = value.partition("=")
        host, colon, port = address.rpartition(":")
        if not (sep and colon and aet and host and port.isdigit()):
            raise click.BadParameter(f"{value!r} is not AET=HOST:PORT")
        peers[aet] = {"host": host, "port": int(port)}
    return peers


def _option(*names: str, **kwargs: Any) -> Callable:
    return click.option(*names, show_default=False, **kwargs)


config_option = _option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML configuration file (default: $DICOMWEB_CONFIG).",
)
data_dir_option = _option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Storage folder; the SQLite index lives there unless database.url is set. [./data]",
)
host_option = _option("--host", help="Address to listen on (HTTP and DIMSE). [127.0.0.1]")
http_port_option = _option("--http-port", type=int, help="DICOMweb HTTP port. [8042]")
dimse_port_option = _option("--dimse-port", type=int, help="DIMSE port. [11112]")
aet_option = _option("--aet", help="Our DICOM Application Entity title. [DICOMWEB]")
workers_option = _option("--workers", type=int, help="gunicorn worker processes (0: two per core).")
remote_ae_option = _option(
    "--remote-ae",
    multiple=True,
    callback=_remote_ae,
    metavar="AET=HOST:PORT",
    help="A known peer (C-MOVE destination); repeatable. Adds to dimse.remote_aes.",
)


def build_settings(
    config_file: Path | None = None,
    *,
    data_dir: Path | None = None,
    host: str | None = None,
    http_port: int | None = None,
    dimse_port: int | None = None,
    aet: str | None = None,
    workers: int | None = None,
    remote_ae: dict | None = None,
) -> Settings:
    """Settings from file and environment, with command-line values on top."""
    base = load_settings(config_file)
    overrides: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            overrides.setdefault(section, getattr(base, section).model_dump())[key] = value

    put("storage", "data_dir", data_dir)
    put("http", "host", host)
    put("dimse", "host", host)
    put("http", "port", http_port)
    put("dimse", "port", dimse_port)
    put("dimse", "aet", aet)
    put("http", "workers", workers)
    if remote_ae:
        put("dimse", "remote_aes", {**base.dimse.model_dump()["remote_aes"], **remote_ae})
    if not overrides:
        return base
    return load_settings(config_file, **overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__)
def main() -> None:
    """A DICOMweb (QIDO-RS, WADO-RS, STOW-RS) and DIMSE archive.

    Start with `dicomweb-server serve`: both listeners on the embedded default
    (SQLite and a local folder under ./data).
    """


@main.command()
@host_option
@http_port_option
@dimse_port_option
@aet_option
@data_dir_option
@config_option
@remote_ae_option
@workers_option
def serve(config_file: Path | None, **options: Any) -> None:
    """Run the DICOMweb and DIMSE listeners together.

    HTTP is served by gunicorn workers, DIMSE by one listener process; all share the
    index and storage folder.  Stop with Ctrl-C.
    """
    settings = build_settings(config_file, **options)
    logs.configure(settings.log)
    from .server import run_serve

    run_serve(settings)


@main.command()
@host_option
@http_port_option
@data_dir_option
@config_option
@workers_option
def web(config_file: Path | None, **options: Any) -> None:
    """Run only the DICOMweb listener, under gunicorn (production).

    Run as many as needed on one PostgreSQL index and shared storage.
    """
    settings = build_settings(config_file, **options)
    logs.configure(settings.log)
    from .server import run_web

    run_web(settings)


@main.command()
@host_option
@dimse_port_option
@aet_option
@data_dir_option
@config_option
@remote_ae_option
def dimse(config_file: Path | None, **options: Any) -> None:
    """Run only the DIMSE listener (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET)."""
    settings = build_settings(config_file, **options)
    logs.configure(settings.log)
    from dimse_scp import serve_forever

    serve_forever(settings)


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@data_dir_option
@config_option
@_option("--jobs", "-j", type=int, default=1, help="Parallel worker processes.")
def import_(
    paths: tuple[Path, ...], config_file: Path | None, data_dir: Path | None, jobs: int
) -> None:
    """Load DICOM files and folders (recursively) through the ingest path.

    Prints a progress bar, then how many files were stored, already present, or
    rejected (with the reason for each rejection).
    """
    settings = build_settings(config_file, data_dir=data_dir)
    logs.configure(settings.log)
    from .bulk import import_paths

    summary = import_paths(settings, paths, jobs=jobs)
    click.echo(summary.report())
    sys.exit(1 if summary.rejected and not summary.stored and not summary.duplicates else 0)


def _with_progress(total: int, desc: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="instance", desc=desc, disable=None)


@main.command()
@data_dir_option
@config_option
def verify(config_file: Path | None, data_dir: Path | None) -> None:
    """Check every indexed instance against its file (present, size, SHA-256 at ingest).

    Also lists stored files that no index row points to.  Changes nothing; exits 1 when
    an instance is missing or corrupt.
    """
    settings = build_settings(config_file, data_dir=data_dir)
    logs.configure(settings.log)
    from .archive import Archive
    from .archive.maintenance import verify as run_verify

    archive = Archive(settings)
    with _with_progress(archive.count_instances(), "verify") as bar:
        report = run_verify(archive, bar.update)
    click.echo(report.report())
    sys.exit(0 if report.ok else 1)


@main.command()
@data_dir_option
@config_option
def reindex(config_file: Path | None, data_dir: Path | None) -> None:
    """Index the stored files that the index does not know (after restoring a backup)."""
    settings = build_settings(config_file, data_dir=data_dir)
    logs.configure(settings.log)
    from .archive import Archive
    from .archive.maintenance import reindex as run_reindex

    archive = Archive(settings)
    with _with_progress(sum(1 for _ in archive.storage.iter_keys()), "reindex") as bar:
        report = run_reindex(archive, bar.update)
    click.echo(report.report())


@main.group()
def db() -> None:
    """Index maintenance."""


@db.command()
@data_dir_option
@config_option
def upgrade(config_file: Path | None, data_dir: Path | None) -> None:
    """Create the index or upgrade its schema to this version (idempotent)."""
    settings = build_settings(config_file, data_dir=data_dir)
    logs.configure(settings.log)
    from .archive import index

    _reader, writer = index.make_engines(settings.database_url)
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    index.upgrade(writer, settings.storage.data_dir)
    click.echo(f"index at {writer.url.render_as_string(hide_password=True)} is up to date")


@main.command()
@click.argument("name")
@_option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice(["read", "write", "delete", "admin"]),
    help="Role of the key; repeatable.",
)
def apikey(name: str, roles: tuple[str, ...]) -> None:
    """Mint an API key for NAME and print the configuration line that admits it.

    The key is printed once and stored nowhere: give it to the script's owner.  The
    configuration keeps only its SHA-256 (add the printed line under [auth.api_keys]
    and include "apikey" in auth.mode).
    """
    from .web.auth import hash_api_key, mint_api_key

    key = mint_api_key()
    roles_toml = ", ".join(f'"{r}"' for r in dict.fromkeys(roles))
    click.echo(f"key:  {key}")
    click.echo("add under [auth.api_keys]:")
    click.echo(f'"{name}" = {{ hash = "{hash_api_key(key)}", roles = [{roles_toml}] }}')


# -- deid (begin): de-identification commands; the logic is in archive/deid/ ------------


@main.command()
@click.argument("study_uids", nargs=-1, required=True)
@_option("--profile", "profile_name", required=True, help="A profile of [deid.profiles].")
@data_dir_option
@config_option
def deidentify(
    study_uids: tuple[str, ...], profile_name: str, config_file: Path | None, data_dir: Path | None
) -> None:
    """Store a de-identified copy of each study (PS3.15 Annex E, profile from [deid]).

    The originals stay; the copies get keyed pseudonymous UIDs and identities, so running
    this again, or on another part of the study, adds to the same de-identified study.
    """
    settings = build_settings(config_file, data_dir=data_dir)
    logs.configure(settings.log)
    from .archive import Archive
    from .archive.deid.batch import deidentify_studies

    archive = Archive(settings)
    result = deidentify_studies(archive, study_uids, profile_name)
    for uid in sorted({r.study_uid for r in result.stored}):
        click.echo(f"de-identified study {uid}")
    click.echo(f"{len(result.stored)} stored, {len(result.quarantined)} quarantined")


@main.group()
def quarantine() -> None:
    """De-identified instances held back for possible burned-in text ([deid] quarantine_*)."""


@quarantine.command("list")
@data_dir_option
@config_option
def quarantine_list(config_file: Path | None, data_dir: Path | None) -> None:
    """List quarantined instances: SOP Instance UID, study, reason, file."""
    from .archive import Archive
    from .archive.deid import quarantine as held

    archive = Archive(build_settings(config_file, data_dir=data_dir))
    for item in held.listing(archive):
        click.echo(f"{item.sop_uid}\t{item.study_uid}\t{item.reason}\t{item.path}")


@quarantine.command("release")
@click.argument("sop_uids", nargs=-1, required=True)
@data_dir_option
@config_option
def quarantine_release(
    sop_uids: tuple[str, ...], config_file: Path | None, data_dir: Path | None
) -> None:
    """Publish quarantined instances into the archive (after checking their pixels)."""
    from .archive import Archive
    from .archive.deid import quarantine as held

    archive = Archive(build_settings(config_file, data_dir=data_dir))
    for uid in sop_uids:
        result = held.release(archive, uid)
        click.echo(f"released {uid} into study {result.study_uid}")


@quarantine.command("reject")
@click.argument("sop_uids", nargs=-1, required=True)
@data_dir_option
@config_option
def quarantine_reject(
    sop_uids: tuple[str, ...], config_file: Path | None, data_dir: Path | None
) -> None:
    """Delete quarantined instances for good."""
    from .archive import Archive
    from .archive.deid import quarantine as held

    archive = Archive(build_settings(config_file, data_dir=data_dir))
    for uid in sop_uids:
        held.reject(archive, uid)
        click.echo(f"rejected {uid}")


# -- deid (end) ---------------------------------------------------------------------------

# -- install-viewer (viewer_install.py) ------------------------------------------------------


@main.command("install-viewer")
@_option("--version", "ohif_version", help="@ohif/app version to fetch from npm. [3.13.2]")
@_option(
    "--target",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to install into. [http.viewer_dir, else <data_dir>/ohif]",
)
@_option("--package", help="npm pack spec instead of @ohif/app@VERSION (tarball, folder, URL).")
@_option("--force", is_flag=True, help="Reinstall even when the same package is installed.")
@data_dir_option
@config_option
def install_viewer(
    ohif_version: str | None,
    target: Path | None,
    package: str | None,
    force: bool,
    config_file: Path | None,
    data_dir: Path | None,
) -> None:
    """Install the OHIF Viewer (npm's prebuilt @ohif/app) to be served under /ohif/."""
    from . import viewer_install

    settings = build_settings(config_file, data_dir=data_dir)
    folder = target or viewer_install.default_target(settings)
    try:
        done = viewer_install.install(
            folder,
            ohif_version or viewer_install.DEFAULT_VERSION,
            package=package,
            force=force,
        )
    except viewer_install.InstallError as exc:
        raise click.ClickException(str(exc)) from exc
    spec = viewer_install.installed(folder)
    click.echo(f"{'installed' if done else 'already installed'}: {spec} in {folder}")
    if folder != viewer_install.default_target(settings):
        click.echo(f"set http.viewer_dir = {str(target)!r} for the server to serve it")


# -- install-viewer (end) ---------------------------------------------------------------------

# -- export (begin) ------------------------------------------------------------------------


@main.command()
@_option("--study", "study_uid", help="Study Instance UID to export.")
@_option("--series", "series_uid", help="Only this series of --study.")
@_option(
    "--query",
    help="Export every study matching a QIDO-RS style query, e.g. 'PatientID=X&StudyDate=2024'.",
)
@_option(
    "--to",
    "destination",
    required=True,
    type=click.Path(path_type=Path),
    help="Destination folder, or a file ending in .zip (entries stored uncompressed).",
)
@data_dir_option
@config_option
def export(
    study_uid: str | None,
    series_uid: str | None,
    query: str | None,
    destination: Path,
    config_file: Path | None,
    data_dir: Path | None,
) -> None:
    """Copy stored instances out as received, with a manifest.json (UIDs, sizes, SHA-256,
    transfer syntaxes), laid out as <PatientID>/<study>/<series>/<sop>.dcm.
    """
    if (study_uid is None) == (query is None):
        raise click.UsageError("give either --study (with optional --series) or --query")
    if series_uid is not None and study_uid is None:
        raise click.UsageError("--series needs --study")
    settings = build_settings(config_file, data_dir=data_dir)
    logs.configure(settings.log)
    from .archive import Archive, ArchiveError
    from .export import count, select_query, select_study
    from .export import export as run_export

    archive = Archive(settings, upgrade=False)
    try:
        if study_uid is not None:
            selection = select_study(archive, study_uid, series_uid)
        else:
            selection = select_query(archive, query or "")
        with _with_progress(count(archive, selection), "export") as bar:
            summary = run_export(archive, selection, destination, bar.update)
    except ArchiveError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        archive.close()
    click.echo(f"{summary.report()} to {destination}")


# -- export (end) --------------------------------------------------------------------------

if __name__ == "__main__":  # pragma: no cover
    main()
