"""One typed settings object for every process of the archive.

Settings come, from lowest to highest precedence, from the defaults below, a TOML file
(``config/dicomweb-server.toml`` documents every option), environment variables named
``DICOMWEB_<SECTION>__<OPTION>`` (``DICOMWEB_HTTP__PORT=8080``), and finally the command
line.  The object is built once at start-up and passed down explicitly; nothing else in
the code base reads ``os.environ``.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "DICOMWEB_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"


class DuplicatePolicy(enum.StrEnum):
    """What ingest does with a second copy of a SOP Instance UID already stored."""

    KEEP = "keep"  #: keep the first copy; the second is acknowledged but not stored
    REPLACE = "replace"  #: store the new copy and drop the old one
    REJECT = "reject"  #: refuse the new copy with an error


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StorageSettings(_Section):
    #: Folder holding the stored instances and, unless ``database.url`` is set, the
    #: SQLite index.
    data_dir: Path = Path("./data")
    #: fsync each file (and its folder) before the index commit.  Turning it off trades
    #: durability on power loss for speed; never do that for a clinical archive.
    fsync: bool = True


class DatabaseSettings(_Section):
    #: SQLAlchemy URL.  Empty means SQLite at ``<data_dir>/index.sqlite``.
    url: str = ""
    #: SQLite ``synchronous`` pragma in WAL mode: FULL syncs the WAL at every commit.
    sqlite_synchronous: str = "FULL"
    #: Connection pool size per process (PostgreSQL).
    pool_size: int = 10
    #: Seconds a writer waits for a lock before giving up (SQLite busy timeout).
    lock_timeout: float = 30.0


class IngestSettings(_Section):
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP
    #: Binary values (OB, OW, OF, OD, OL, OV, UN) longer than this many bytes are not
    #: inlined in the metadata but served as bulk data.
    bulk_data_threshold: int = Field(default=1024, ge=0)
    #: Largest instance accepted, in bytes (0: no limit).
    max_instance_size: int = Field(default=0, ge=0)


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8042, ge=0, le=65535)
    #: Path under which the DICOMweb resources are served.
    base_path: str = "/dicom-web"
    #: Absolute URL clients reach the DICOMweb root at (``https://pacs.example.org/dicom-web``),
    #: used for RetrieveURL and BulkDataURI.  Empty: derived from each request.
    public_url: str = ""
    #: Trust ``Forwarded`` / ``X-Forwarded-*`` headers from this many proxies in front.
    trusted_proxies: int = Field(default=0, ge=0)
    #: Origins allowed by CORS; ``["*"]`` lets a viewer on any origin call the server.
    cors_origins: list[str] = ["*"]
    #: gunicorn worker processes for ``web`` and ``serve`` (0: two per CPU core).
    workers: int = Field(default=0, ge=0)
    #: Threads per gunicorn worker.
    threads: int = Field(default=8, ge=1)
    #: Seconds a worker may stay silent before gunicorn restarts it.
    timeout: int = Field(default=300, ge=1)
    # -- limits (hostile or mistaken clients; see docs/reliability.md) --
    #: Largest STOW-RS request body in bytes (0: no limit).  Bodies are streamed to disk
    #: one instance at a time, so size costs no memory; the limit is a policy knob.
    max_request_size: int = Field(default=0, ge=0)
    #: Most parts in one STOW-RS request (0: no limit); bounds the per-request response.
    max_parts: int = Field(default=10_000, ge=0)
    #: Most matches one QIDO-RS response returns ("maxResults", PS3.18 8.3.4.4.1).
    qido_max_limit: int = Field(default=10_000, ge=1)

    @field_validator("base_path")
    @classmethod
    def _normalise_base_path(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value

    # -- viewer (the built-in web page and OHIF; see web/viewer.py) --
    #: Serve the built-in study browser at ``/`` (and an installed OHIF under ``/ohif/``).
    viewer: bool = True
    #: Folder of an OHIF Viewer build (``index.html`` at its top) served under ``/ohif/``.
    #: Empty: ``<data_dir>/ohif`` when it exists (``dicomweb-server install-viewer``).
    viewer_dir: str = ""
    # -- viewer (end) --


class RemoteAE(_Section):
    host: str
    port: int = Field(ge=1, le=65535)


class DimseSettings(_Section):
    enabled: bool = True
    aet: str = Field(default="DICOMWEB", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    max_associations: int = Field(default=16, ge=1)
    #: Listener processes sharing the port (SO_REUSEPORT, Linux): pynetdicom keeps all of
    #: one process's associations on one core, so concurrent senders need several.
    #: Each process accepts its share of max_associations.
    processes: int = Field(default=2, ge=1)
    #: Largest PDU we accept, in bytes (0: unlimited).
    max_pdu_size: int = Field(default=4_194_304, ge=0)
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    #: Calling AE titles allowed to associate; empty allows any.
    allowed_aets: list[str] = []
    #: Hosts allowed to associate; empty allows any.
    allowed_hosts: list[str] = []
    #: Known peers, for C-MOVE destinations: ``{"PACS" = {host = "10.0.0.5", port = 104}}``.
    remote_aes: dict[str, RemoteAE] = {}
    #: DICOM TLS: all three empty means plain TCP.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None


class LogSettings(_Section):
    level: str = "INFO"
    #: ``text`` for people, ``json`` for log collectors.
    format: str = "text"


# -- auth (access control and audit trail; see web/auth.py) ---------------------------


class Role(enum.StrEnum):
    """What a caller may do; ``admin`` implies the other three."""

    READ = "read"  #: QIDO-RS and WADO-RS (GET)
    WRITE = "write"  #: STOW-RS (POST)
    DELETE = "delete"  #: DELETE of studies, series, instances
    ADMIN = "admin"  #: the audit trail, and everything else


class AuthMethod(enum.StrEnum):
    JWT = "jwt"  #: OAuth2 / OpenID Connect bearer tokens (signed JWTs)
    API_KEY = "apikey"  #: static keys, stored only as hashes


#: Token signature algorithms that may be allowed: asymmetric only, so a key from the
#: issuer's JWKS can never be used as an HMAC secret (algorithm confusion), and never "none".
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class ApiKey(_Section):
    #: ``sha256:<64 hex digits>``: SHA-256 of the key; ``dicomweb-server apikey`` mints one.
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    roles: list[Role] = []


class AuthSettings(_Section):
    #: ``none`` (every caller may do everything), or ``jwt``, ``apikey``, ``jwt,apikey``.
    mode: str = "none"
    #: Realm named in ``WWW-Authenticate`` challenges (RFC 6750 3).
    realm: str = "dicomweb"
    #: JWT: the issuer's JWKS, by URL (fetched and cached) or as a local file.
    jwks_url: str = ""
    jwks_file: Path | None = None
    #: Seconds the keys fetched from ``jwks_url`` are cached.
    jwks_cache_seconds: int = Field(default=300, ge=0)
    #: JWT: required ``iss`` and ``aud`` values.
    issuer: str = ""
    audience: str = ""
    algorithms: list[str] = ["RS256", "ES256"]
    #: Seconds of clock skew allowed when checking ``exp`` and ``nbf``.
    leeway: float = Field(default=30.0, ge=0)
    #: Claim naming the user in logs and the audit trail.
    user_claim: str = "sub"
    #: Claim holding the caller's roles; dots walk into objects (``realm_access.roles``).
    roles_claim: str = "roles"
    #: Claim value -> our roles.  Values not listed grant nothing.
    role_map: dict[str, list[Role]] = {
        "read": [Role.READ],
        "write": [Role.WRITE],
        "delete": [Role.DELETE],
        "admin": [Role.ADMIN],
    }
    #: API keys by name: ``{name = {hash = "sha256:...", roles = ["read"]}}``.
    api_keys: dict[str, ApiKey] = {}
    #: Record DICOMweb requests and DIMSE operations in the audit table (the log gets
    #: them regardless).
    audit: bool = True

    @field_validator("mode")
    @classmethod
    def _parse_mode(cls, value: str) -> str:
        words = {w.strip().lower() for w in value.replace("+", ",").split(",") if w.strip()}
        if words in ({"none"}, set()):
            return "none"
        unknown = words - {m.value for m in AuthMethod}
        if unknown:
            raise ValueError(f"auth.mode: unknown {sorted(unknown)}; use none, jwt, apikey")
        return ",".join(sorted(words, key=[m.value for m in AuthMethod].index))

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(
                f"auth.algorithms: {bad} not allowed; choose from {sorted(ASYMMETRIC_ALGORITHMS)}"
            )
        return value

    @model_validator(mode="after")
    def _complete(self) -> AuthSettings:
        if AuthMethod.JWT in self.methods:
            missing = [
                name
                for name, ok in (
                    ("jwks_url or jwks_file", self.jwks_url or self.jwks_file),
                    ("issuer", self.issuer),
                    ("audience", self.audience),
                )
                if not ok
            ]
            if missing:
                raise ValueError(f"auth.mode includes jwt but {', '.join(missing)} is not set")
        return self

    @property
    def methods(self) -> frozenset[AuthMethod]:
        """The enabled methods; empty when ``mode`` is ``none``."""
        if self.mode == "none":
            return frozenset()
        return frozenset(AuthMethod(m) for m in self.mode.split(","))


# -- deid: de-identification on ingest (PS3.15 Annex E); see archive/deid/ ---------------


class DeidPixelRegionSettings(_Section):
    #: Attribute keyword -> value an instance must have (all of them; compared as text),
    #: e.g. {Manufacturer = "ACME", ManufacturerModelName = "Scope 9", Rows = 480}.
    match: dict[str, str | int] = {}
    #: Rectangles to blank, [column, row, width, height] in pixels from the top left.
    regions: list[list[int]] = []


class DeidProfileSettings(_Section):
    #: PS3.15 E.3 options, by name: clean_graphics, clean_structured_content,
    #: clean_descriptors, retain_longitudinal_full_dates, retain_longitudinal_modified_dates,
    #: retain_patient_characteristics, retain_device_identity, retain_uids,
    #: retain_safe_private, retain_institution_identity.
    options: list[str] = []
    #: Private attributes kept by retain_safe_private besides those of PS3.15 Table
    #: E.3.10-1 (built in), as "CREATOR,gggg,ee" (ee: the element's last two hex digits,
    #: any block), e.g. "GEMS_PARM_01,0043,39".
    safe_private: list[str] = []
    #: Clean Pixel Data Option (PS3.15 E.3.1): an instance that would be quarantined for
    #: burned-in text and matches one of these device signatures has the regions blanked
    #: (native pixel data only) and is published; others stay quarantined.
    clean_pixel_data: list[DeidPixelRegionSettings] = []


class DeidSettings(_Section):
    #: De-identify incoming instances whose source selects a profile.
    enabled: bool = False
    #: HMAC key of every pseudonym; required when enabled; keep it stable and secret.
    secret: str = ""
    #: Root of replacement UIDs; "2.25" gives UUID-derived UIDs (PS3.5 B.2).
    uid_root: str = "2.25"
    #: Prefix of pseudonymous Patient IDs and names.
    id_prefix: str = "ANON-"
    #: Modified dates move back by 1 to this many days, one offset per patient.
    max_date_shift: int = Field(default=3650, ge=1)
    #: X/Z, X/D, Z/D, X/Z/D, X/Z/U*: "iod" (by the attribute's type in the instance's IOD,
    #: PS3.15 E.3.1), "conform" (keep every IOD valid) or "remove" (first action).
    compound_actions: str = "iod"
    #: Profile for sources not listed in ``sources``; "" means store unchanged.
    default_profile: str = ""
    #: Named profiles: ``[deid.profiles.research] options = ["retain_uids"]``.
    profiles: dict[str, DeidProfileSettings] = {}
    #: Calling AE title or STOW-RS source name -> profile name ("" for none).
    sources: dict[str, str] = {}
    #: "none" keeps no link back; "encrypted" seals the original identity with the
    #: admin's RSA public key (crosswalk_public_key) in the deid_crosswalk table.
    crosswalk: str = "none"
    crosswalk_public_key: Path | None = None
    #: Quarantine instances that may carry burned-in identifying text instead of
    #: publishing them: Burned In Annotation YES, these modalities, these SOP classes.
    quarantine_burned_in: bool = True
    quarantine_modalities: list[str] = ["US"]
    quarantine_sop_classes: list[str] = [
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    ]


# -- end deid ----------------------------------------------------------------------------


class Settings(BaseSettings):
    """Every option of the archive; see ``config/dicomweb-server.toml``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    storage: StorageSettings = StorageSettings()
    database: DatabaseSettings = DatabaseSettings()
    ingest: IngestSettings = IngestSettings()
    http: HttpSettings = HttpSettings()
    dimse: DimseSettings = DimseSettings()
    log: LogSettings = LogSettings()
    auth: AuthSettings = AuthSettings()
    deid: DeidSettings = DeidSettings()

    # The TOML file is chosen at load time, so it travels in a class attribute that
    # ``load_settings`` sets for the duration of one construction.
    _toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)

    @property
    def database_url(self) -> str:
        """The index URL: the configured one, else SQLite inside the data folder."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.storage.data_dir / 'index.sqlite').resolve()}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from a TOML file, the environment and ``overrides``.

    Parameters
    ----------
    config_file
        TOML file to read; defaults to ``$DICOMWEB_CONFIG`` when that is set.
    overrides
        Sections as nested mappings, e.g. ``http={"port": 0}``; they win over everything.
    """
    path = config_file or os.environ.get(CONFIG_ENV) or None
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"configuration file {path} does not exist")
    Settings._toml_file = Path(path) if path else None
    try:
        return Settings(**overrides)
    finally:
        Settings._toml_file = None
