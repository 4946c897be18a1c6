"""The DIMSE front over TCP with pynetdicom as the SCU: echo, store, find, move, get,
allow-list, TLS, error statuses, TCP_NODELAY and the association log line."""

from __future__ import annotations

import datetime as dt
import io
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

import dimse_scp
from dicomweb_server.archive import Archive, Origin
from dicomweb_server.config import DuplicatePolicy, Settings

from .dimse_fixtures import (
    QR_CLASSES,
    UNCOMPRESSED,
    StorageSCP,
    associate,
    require_search,
    with_dimse,
)
from .factory import make_instance, make_series, to_bytes


def _store(port: int, datasets: list[Dataset], **kwargs: object) -> list[Dataset]:
    classes = sorted({str(ds.SOPClassUID) for ds in datasets})
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets})
    assoc = associate(port, classes, syntaxes=syntaxes, **kwargs)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def _stored(archive: Archive, ds: Dataset) -> Dataset:
    instance = archive.instances(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)[0]
    return dcmread(archive.path(instance))


# -- C-ECHO and the socket -------------------------------------------------------------


def test_echo_and_tcp_nodelay(dimse_server: dimse_scp.ServerHandle) -> None:
    assoc = associate(dimse_server.port)
    assert assoc.is_established
    # Our side of the association is the acceptor in the server's AE.
    server_side = [a for a in dimse_server.ae.active_associations if a.is_acceptor]
    assert len(server_side) == 1
    sock = server_side[0].dul.socket.socket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    for _ in range(3):
        assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_association_log_line(
    dimse_server: dimse_scp.ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dimse_scp.activity")
    _store(dimse_server.port, make_series(2), ae_title="MODALITY1")
    deadline = time.monotonic() + 5
    while not [r for r in caplog.records if r.getMessage() == "association"]:
        assert time.monotonic() < deadline, "no association log line"
        time.sleep(0.02)
    record = next(r for r in caplog.records if r.getMessage() == "association")
    assert record.calling_ae == "MODALITY1"
    assert record.address.startswith("127.0.0.1:")
    assert record.operations == {"C-STORE": 2}
    assert record.stored == 2 and record.outcome == "released"


# -- C-STORE ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        DeflatedExplicitVRLittleEndian,
    ],
)
def test_store_keeps_the_sent_dataset(
    dimse_server: dimse_scp.ServerHandle, archive: Archive, transfer_syntax: str
) -> None:
    ds = make_instance(transfer_syntax=transfer_syntax)
    (result,) = _store(dimse_server.port, [ds], ae_title="CT01")
    assert result.Status == 0x0000
    stored = _stored(archive, ds)
    assert stored.file_meta.TransferSyntaxUID == transfer_syntax
    assert stored == ds  # every element of the data set, pixel data bytes included
    assert archive.instances(ds.StudyInstanceUID)[0].transfer_syntax_uid == transfer_syntax


@pytest.mark.parametrize(
    "name", ["MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm"]
)
def test_store_compressed_test_files(
    dimse_server: dimse_scp.ServerHandle, archive: Archive, name: str
) -> None:
    ds = dcmread(get_testdata_file(name, download=False))
    (result,) = _store(dimse_server.port, [ds])
    assert result.Status == 0x0000
    stored = _stored(archive, ds)
    assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert stored.PixelData == ds.PixelData
    assert stored == ds


def test_store_records_origin(dimse_server: dimse_scp.ServerHandle, archive: Archive) -> None:
    ds = make_instance()
    _store(dimse_server.port, [ds], ae_title="ORIGIN_AE")
    from sqlalchemy import select

    from dicomweb_server.archive.index import Instance

    with archive.reader() as session:
        row = session.execute(
            select(Instance.origin_protocol, Instance.origin_ae, Instance.origin_address).where(
                Instance.sop_uid == ds.SOPInstanceUID
            )
        ).one()
    assert row.origin_protocol == "DIMSE" and row.origin_ae == "ORIGIN_AE"
    assert row.origin_address.startswith("127.0.0.1:")


def test_store_invalid_instance_gets_error_and_server_keeps_serving(
    dimse_server: dimse_scp.ServerHandle, archive: Archive
) -> None:
    bad = make_instance()
    bad.SOPInstanceUID = "1.2.3.abc"  # PS3.5 9.1: digits and dots only
    bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
    no_study = make_instance()
    del no_study.StudyInstanceUID
    good = make_instance()
    results = _store(dimse_server.port, [bad, no_study, good])
    assert [r.Status for r in results] == [0xC000, 0xC000, 0x0000]
    assert "SOPInstanceUID" in results[0].ErrorComment
    assert len(results[0].ErrorComment) <= 64
    assert "StudyInstanceUID" in results[1].ErrorComment
    # A new association is served as usual.
    assoc = associate(dimse_server.port)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert archive.count_instances() == 1


def test_store_sop_class_mismatch_is_a_warning(
    dimse_server: dimse_scp.ServerHandle, archive: Archive, tmp_path: Path
) -> None:
    from pynetdicom import _config
    from pynetdicom.sop_class import MRImageStorage

    # The request names MR Image Storage (taken from the File Meta when pynetdicom sends
    # a file as is) while the data set is a CT image.
    ds = make_instance()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    path = tmp_path / "mismatch.dcm"
    ds.preamble = b"\0" * 128
    ds.save_as(path, enforce_file_format=False)  # keeps the File Meta as set
    assert dcmread(path).file_meta.MediaStorageSOPClassUID == MRImageStorage
    assoc = associate(dimse_server.port, [MRImageStorage])
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        result = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    assert result.Status == 0xB007  # PS3.4 B.2.3: stored, Data Set does not match SOP Class
    assert CTImageStorage in result.ErrorComment
    assert _stored(archive, ds).SOPClassUID == CTImageStorage


def test_store_duplicate_policies(tmp_path: Path, settings: Settings) -> None:
    ingest = settings.ingest.model_copy(update={"duplicate_policy": DuplicatePolicy.REJECT})
    reject = settings.model_copy(update={"ingest": ingest})
    archive = Archive(reject)
    handle = dimse_scp.start(reject, archive)
    try:
        ds = make_instance()
        first, second = _store(handle.port, [ds, ds])
        assert first.Status == 0x0000
        assert second.Status == 0x0111  # PS3.7 C: Duplicate SOP Instance
        assert second.ErrorComment.startswith("SOP Instance 1.2.826.")  # cut to 64 chars
    finally:
        handle.shutdown()
        archive.close()


def test_store_disk_full_is_out_of_resources(settings: Settings) -> None:
    limited = settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"max_instance_size": 100})}
    )
    archive = Archive(limited)
    handle = dimse_scp.start(limited, archive)
    try:
        (result,) = _store(handle.port, [make_instance()])
        assert result.Status == 0xA700  # PS3.4 B.2.3: Refused, Out of Resources
        assert result.ErrorComment
    finally:
        handle.shutdown()
        archive.close()


# -- allow-list and TLS ----------------------------------------------------------------


def test_allow_list_refuses_unknown_calling_ae(settings: Settings, archive: Archive) -> None:
    allowed = with_dimse(settings, allowed_aets=["GOOD"])
    handle = dimse_scp.start(allowed, archive)
    try:
        refused = associate(handle.port, ae_title="BAD")
        assert refused.is_rejected
        rj = refused.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
        accepted = associate(handle.port, ae_title="GOOD")
        assert accepted.is_established
        accepted.release()
    finally:
        handle.shutdown()


def test_allow_list_refuses_unknown_host(settings: Settings, archive: Archive) -> None:
    handle = dimse_scp.start(with_dimse(settings, allowed_hosts=["192.0.2.1"]), archive)
    try:
        assert associate(handle.port).is_rejected
    finally:
        handle.shutdown()
    handle = dimse_scp.start(with_dimse(settings, allowed_hosts=["127.0.0.1"]), archive)
    try:
        assoc = associate(handle.port)
        assert assoc.is_established
        assoc.release()
    finally:
        handle.shutdown()


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_with_client_certificates(tmp_path: Path, settings: Settings, archive: Archive) -> None:
    server_cert, server_key = _self_signed(tmp_path, "server")
    client_cert, client_key = _self_signed(tmp_path, "client")
    tls = with_dimse(settings, tls_cert=server_cert, tls_key=server_key, tls_ca=client_cert)
    handle = dimse_scp.start(tls, archive)
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
        client.load_cert_chain(client_cert, client_key)
        assoc = associate(handle.port, tls_args=(client, "127.0.0.1"))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        # A peer that connects and never starts its handshake stalls nobody else.
        with socket.create_connection(("127.0.0.1", handle.port)):
            started = time.monotonic()
            assoc = associate(handle.port, tls_args=(client, "127.0.0.1"), acse_timeout=5)
            assert assoc.is_established
            assert time.monotonic() - started < 5
            assoc.release()
        # Plain TCP is not a DICOM TLS peer.
        assert not associate(handle.port).is_established
        # Neither is a TLS peer without a client certificate.
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
        assert not associate(handle.port, tls_args=(anonymous, "127.0.0.1")).is_established
    finally:
        handle.shutdown()


# -- C-FIND, C-MOVE, C-GET over one small archive ---------------------------------------


class Archive3:
    """Two patients, two studies, three series, four instances, stored over C-STORE."""

    def __init__(self, port: int) -> None:
        self.a_study = make_instance().StudyInstanceUID
        self.b_study = make_instance().StudyInstanceUID
        self.a_series1 = make_series(
            2,
            study_uid=self.a_study,
            PatientName="Müller^Jürgen",
            PatientID="PIDA",
            SpecificCharacterSet="ISO_IR 192",
        )
        self.a_series2 = [
            make_instance(
                study_uid=self.a_study,
                PatientName="Müller^Jürgen",
                PatientID="PIDA",
                SpecificCharacterSet="ISO_IR 192",
                SeriesNumber=2,
                rows=64,
                columns=64,
                transfer_syntax=JPEG2000Lossless,
            )
        ]
        self.b_series = [
            make_instance(
                study_uid=self.b_study, PatientID="PIDB", StudyDate="20230301", Modality="MR"
            )
        ]
        self.all = self.a_series1 + self.a_series2 + self.b_series
        statuses = _store(port, self.all)
        assert [s.Status for s in statuses] == [0] * 4


@pytest.fixture
def stored(dimse_server: dimse_scp.ServerHandle, archive: Archive) -> Archive3:
    require_search(archive)
    return Archive3(dimse_server.port)


def _identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _find(
    port: int, model: str, identifier: Dataset, **kwargs: Any
) -> tuple[list[int], list[Dataset]]:
    """Statuses and Pending matches of one C-FIND; ``kwargs`` go to :func:`associate`."""
    assoc = associate(port, QR_CLASSES, **kwargs)
    statuses, found = [], []
    try:
        for status, match in assoc.send_c_find(identifier, model):
            statuses.append(status.Status)
            if match is not None and status.Status == 0xFF00:
                found.append(match)
    finally:
        assoc.release()
    return statuses, found


def test_find_study_root_study_level_wildcard_utf8(
    dimse_server: dimse_scp.ServerHandle, stored: Archive3
) -> None:
    query = _identifier(
        "STUDY",
        SpecificCharacterSet="ISO_IR 192",
        PatientName="Mü*",
        StudyInstanceUID="",
        StudyDate="",
        PatientID="",
    )
    statuses, found = _find(dimse_server.port, StudyRootQueryRetrieveInformationModelFind, query)
    assert statuses == [0xFF00, 0x0000]
    (match,) = found
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert str(match.PatientName) == "Müller^Jürgen"
    assert match.StudyInstanceUID == stored.a_study
    assert match.PatientID == "PIDA" and match.StudyDate == "20240115"
    assert match.QueryRetrieveLevel == "STUDY"
    # exactly the requested keys
    assert {e.keyword for e in match} == {
        "SpecificCharacterSet",
        "QueryRetrieveLevel",
        "PatientName",
        "StudyInstanceUID",
        "StudyDate",
        "PatientID",
    }


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_find_response_in_each_transfer_syntax(
    dimse_server: dimse_scp.ServerHandle, stored: Archive3, syntax: str
) -> None:
    """Response values are sent pre-encoded (datasets.to_response): in either syntax of
    the context they decode to the stored values, non-ASCII names included."""
    query = _identifier(
        "STUDY",
        StudyInstanceUID=stored.a_study,
        PatientName="",
        PatientID="",
        StudyDate="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedInstances="",
        NumberOfStudyRelatedSeries="",
        StudyDescription="",
        ReferringPhysicianName="",
        IssuerOfPatientID="",
        RetrieveAETitle="",
        InstanceAvailability="",
    )
    assoc = associate(dimse_server.port, QR_CLASSES, syntaxes=[syntax])
    try:
        replies = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        (context,) = {c.transfer_syntax[0] for c in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert context == syntax
    assert [status.Status for status, _ in replies] == [0xFF00, 0x0000]
    match = replies[0][1]
    assert match.SpecificCharacterSet == "ISO_IR 192"
    assert str(match.PatientName) == "Müller^Jürgen"
    assert match.StudyInstanceUID == stored.a_study
    assert (match.PatientID, match.StudyDate) == ("PIDA", "20240115")
    assert match.ModalitiesInStudy == "CT"
    assert match.NumberOfStudyRelatedInstances == 3
    assert match.NumberOfStudyRelatedSeries == 2
    assert match.StudyDescription == "CT chest"
    assert str(match.ReferringPhysicianName) == "Smith^Anna"
    assert match.IssuerOfPatientID == ""  # a return key the match lacks: zero length
    assert (match.RetrieveAETitle, match.InstanceAvailability) == ("DICOMWEB", "ONLINE")
    assert match.QueryRetrieveLevel == "STUDY"


def test_find_streams_many_matches_in_order(
    dimse_server: dimse_scp.ServerHandle, archive: Archive
) -> None:
    """A C-FIND has no paging: 450 matching studies (more than one fetch of the index
    and more than dimse_scp.pending holds queued) all arrive, once each, in the index's
    order (the one QIDO-RS pages through), then Success."""
    require_search(archive)
    from dicomweb_server.archive import Level, Prepared, Query
    from dimse_scp.pending import QUEUED

    count = 450
    assert count > max(QUEUED, 200)
    instances = [make_instance(PatientID="MANY", rows=8, columns=8) for _ in range(count)]
    ready = [archive.prepare(io.BytesIO(to_bytes(ds)), Origin("IMPORT")) for ds in instances]
    archive.index([r for r in ready if isinstance(r, Prepared)])
    query = _identifier("STUDY", PatientID="MANY", StudyInstanceUID="", StudyDate="")
    statuses, found = _find(dimse_server.port, StudyRootQueryRetrieveInformationModelFind, query)
    assert statuses == [0xFF00] * count + [0x0000]
    uids = [m.StudyInstanceUID for m in found]
    assert sorted(uids) == sorted(ds.StudyInstanceUID for ds in instances)
    listed = archive.search(Query(level=Level.STUDY, filters={"PatientID": "MANY"}))
    assert uids == [m["0020000D"]["Value"][0] for m in listed]


def _context_id(assoc: Any, model: str) -> int:
    return next(c.context_id for c in assoc.accepted_contexts if c.abstract_syntax == model)


def test_find_cancel_ends_matching(dimse_server: dimse_scp.ServerHandle, archive: Archive) -> None:
    """A C-CANCEL-FIND-RQ (PS3.7) during a C-FIND: the SCP stops sending matches and ends
    with Cancel, FE00 "Matching terminated due to Cancel request" (PS3.4 Table C.4-1)."""
    require_search(archive)
    from dicomweb_server.archive import Prepared

    count = 1000
    instances = [make_instance(PatientID="CANCELME", rows=8, columns=8) for _ in range(count)]
    ready = [archive.prepare(io.BytesIO(to_bytes(ds)), Origin("IMPORT")) for ds in instances]
    archive.index([r for r in ready if isinstance(r, Prepared)])
    model = StudyRootQueryRetrieveInformationModelFind
    query = _identifier("STUDY", PatientID="CANCELME", StudyInstanceUID="")
    assoc = associate(dimse_server.port, QR_CLASSES)
    statuses = []
    try:
        for status, _ in assoc.send_c_find(query, model, msg_id=7):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, _context_id(assoc, model))
        # The association is still usable afterwards.
        assert [s.Status for s, _ in assoc.send_c_find(query, model, msg_id=8)][-1] == 0
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00
    assert set(statuses[:-1]) == {0xFF00}
    assert len(statuses) - 1 < count


def test_get_cancel_ends_sub_operations(
    dimse_server: dimse_scp.ServerHandle, archive: Archive
) -> None:
    """A C-CANCEL-GET-RQ (PS3.7) during a C-GET: no further C-STORE sub-operations; the
    final response is Cancel, FE00 "Sub-operations terminated due to Cancel Indication",
    with the sub-operation counts, the remaining ones among them (PS3.4 Table C.4-3)."""
    require_search(archive)
    count = 40
    series = make_series(count, rows=8, columns=8)
    assert [s.Status for s in _store(dimse_server.port, series)] == [0] * count
    model = StudyRootQueryRetrieveInformationModelGet
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.AffectedSOPInstanceUID)
        time.sleep(0.02)  # a slow storage SCP: the C-CANCEL arrives mid-transfer
        return 0x0000

    assoc = associate(
        dimse_server.port,
        QR_CLASSES,
        storage_roles=[(CTImageStorage, UNCOMPRESSED)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    query = _identifier("STUDY", StudyInstanceUID=series[0].StudyInstanceUID)
    responses = []
    try:
        for status, identifier in assoc.send_c_get(query, model, msg_id=9):
            responses.append((status, identifier))
            if len(responses) == 1:
                assoc.send_c_cancel(9, _context_id(assoc, model))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0xFE00
    assert [s.Status for s, _ in responses[:-1]] == [0xFF00] * (len(responses) - 1)
    done = final.NumberOfCompletedSuboperations
    assert 1 <= done < count and done == len(received)
    assert final.NumberOfRemainingSuboperations == count - done - final.get(
        "NumberOfFailedSuboperations", 0
    ) - final.get("NumberOfWarningSuboperations", 0)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_find_image_level_binary_multivalued_and_empty_keys(
    dimse_server: dimse_scp.ServerHandle, archive: Archive, syntax: str
) -> None:
    """Values that are not text (US), multi-valued text (CS), and empty return keys of
    other VRs (DS, SQ) are encoded in the context's syntax as their VR requires."""
    require_search(archive)
    sent = make_instance(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], InstanceNumber=7)
    assert [s.Status for s in _store(dimse_server.port, [sent])] == [0]
    query = _identifier(
        "IMAGE",
        StudyInstanceUID=sent.StudyInstanceUID,
        SeriesInstanceUID=sent.SeriesInstanceUID,
        SOPInstanceUID=sent.SOPInstanceUID,
        Rows="",
        Columns="",
        BitsAllocated="",
        InstanceNumber="",
        ImageType="",
        SliceThickness="",
        ReferencedImageSequence=[],
    )
    statuses, (match,) = _find(
        dimse_server.port, StudyRootQueryRetrieveInformationModelFind, query, syntaxes=[syntax]
    )
    assert statuses == [0xFF00, 0x0000]
    assert (match.Rows, match.Columns, match.BitsAllocated) == (
        sent.Rows,
        sent.Columns,
        sent.BitsAllocated,
    )
    assert match.InstanceNumber == 7
    assert list(match.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert match.SOPInstanceUID == sent.SOPInstanceUID
    assert match["SliceThickness"].VR == "DS" and match.SliceThickness is None
    assert match["ReferencedImageSequence"].VR == "SQ"
    assert len(match.ReferencedImageSequence) == 0
    assert "SpecificCharacterSet" not in match


@pytest.mark.parametrize("max_pdu", [0, 16382, 120])
def test_find_responses_respect_the_peers_maximum_pdu(
    dimse_server: dimse_scp.ServerHandle, stored: Archive3, max_pdu: int
) -> None:
    """Pending responses are framed by us (dimse_scp.pending): none of their P-DATA-TF
    PDUs exceeds the Maximum Length the requestor declared (PS3.8 D.1), a response
    longer than that is split into fragments, and every split decodes to the same
    matches as one sent whole."""
    pdus: list[int] = []

    def received(event: evt.Event) -> None:
        if type(event.pdu).__name__ == "P_DATA_TF":
            pdus.append(event.pdu.pdu_length)

    query = _identifier(
        "STUDY",
        StudyDate="19000101-20991231",
        StudyInstanceUID="",
        PatientName="",
        PatientID="",
        StudyDescription="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedInstances="",
    )
    statuses, matches = _find(
        dimse_server.port,
        StudyRootQueryRetrieveInformationModelFind,
        query,
        max_pdu=max_pdu,
        evt_handlers=[(evt.EVT_PDU_RECV, received)],
    )
    assert statuses == [0xFF00, 0xFF00, 0x0000]
    found = {m.StudyInstanceUID: m for m in matches}
    assert set(found) == {stored.a_study, stored.b_study}
    assert str(found[stored.a_study].PatientName) == "Müller^Jürgen"
    assert found[stored.a_study].StudyDescription == "CT chest"
    assert found[stored.a_study].NumberOfStudyRelatedInstances == 3
    if max_pdu:
        assert max(pdus) <= max_pdu
    # Whole, each Pending response is one PDU; at 120 bytes each takes several.
    assert (len(pdus) > 2 * 2 + 1) is (max_pdu == 120)


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_pynetdicom_message_logging_follows_its_logger(
    settings: Settings, archive: Archive, caplog: pytest.LogCaptureFixture, level: int
) -> None:
    """pynetdicom builds its per-message log lines only when its logger would show
    them: an operator who opens it to INFO sees every C-FIND Identifier."""
    require_search(archive)
    archive.store(io.BytesIO(to_bytes(make_instance(PatientID="LOGGED"))), Origin("IMPORT"))
    caplog.set_level(level, logger="pynetdicom")
    handle = dimse_scp.start(settings, archive)
    try:
        query = _identifier("STUDY", PatientID="LOGGED", StudyInstanceUID="")
        statuses, _ = _find(handle.port, StudyRootQueryRetrieveInformationModelFind, query)
    finally:
        handle.shutdown()
    assert statuses == [0xFF00, 0x0000]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("pynetdicom")]
    logged = any("Find SCP Request Identifier" in line for line in lines)
    assert logged is (level == logging.INFO)
    assert any("LOGGED" in line for line in lines) is (level == logging.INFO)


def test_find_study_level_date_range_and_uid_list(
    dimse_server: dimse_scp.ServerHandle, stored: Archive3
) -> None:
    model = StudyRootQueryRetrieveInformationModelFind
    _, found = _find(
        dimse_server.port,
        model,
        _identifier("STUDY", StudyDate="20240101-20241231", StudyInstanceUID=""),
    )
    assert [m.StudyInstanceUID for m in found] == [stored.a_study]
    _, found = _find(
        dimse_server.port, model, _identifier("STUDY", StudyDate="-20231231", StudyInstanceUID="")
    )
    assert [m.StudyInstanceUID for m in found] == [stored.b_study]
    uid_list = _identifier(
        "STUDY", StudyInstanceUID=[stored.a_study, stored.b_study], ModalitiesInStudy=""
    )
    _, found = _find(dimse_server.port, model, uid_list)
    assert sorted(m.StudyInstanceUID for m in found) == sorted([stored.a_study, stored.b_study])


def test_find_series_and_image_levels(
    dimse_server: dimse_scp.ServerHandle, stored: Archive3
) -> None:
    model = StudyRootQueryRetrieveInformationModelFind
    series = _identifier(
        "SERIES",
        StudyInstanceUID=stored.a_study,
        SeriesInstanceUID="",
        Modality="",
        SeriesNumber="",
    )
    statuses, found = _find(dimse_server.port, model, series)
    assert statuses[-1] == 0x0000
    assert sorted(m.SeriesInstanceUID for m in found) == sorted(
        [stored.a_series1[0].SeriesInstanceUID, stored.a_series2[0].SeriesInstanceUID]
    )
    assert all(m.StudyInstanceUID == stored.a_study and m.Modality == "CT" for m in found)
    first = stored.a_series1[0]
    images = _identifier(
        "IMAGE",
        StudyInstanceUID=stored.a_study,
        SeriesInstanceUID=first.SeriesInstanceUID,
        SOPInstanceUID="",
        InstanceNumber="",
        SOPClassUID="",
        RetrieveAETitle="",
        InstanceAvailability="",
    )
    _, found = _find(dimse_server.port, model, images)
    assert {(m.RetrieveAETitle, m.InstanceAvailability) for m in found} == {("DICOMWEB", "ONLINE")}
    assert sorted(m.SOPInstanceUID for m in found) == sorted(
        ds.SOPInstanceUID for ds in stored.a_series1
    )
    assert {m.SOPClassUID for m in found} == {CTImageStorage}


def test_find_patient_root_all_levels(
    dimse_server: dimse_scp.ServerHandle, stored: Archive3
) -> None:
    model = PatientRootQueryRetrieveInformationModelFind
    _, patients = _find(
        dimse_server.port, model, _identifier("PATIENT", PatientID="PID*", PatientName="")
    )
    assert sorted(p.PatientID for p in patients) == ["PIDA", "PIDB"]
    _, studies = _find(
        dimse_server.port, model, _identifier("STUDY", PatientID="PIDB", StudyInstanceUID="")
    )
    assert [s.StudyInstanceUID for s in studies] == [stored.b_study]
    _, series = _find(
        dimse_server.port,
        model,
        _identifier(
            "SERIES",
            PatientID="PIDB",
            StudyInstanceUID=stored.b_study,
            SeriesInstanceUID="",
            Modality="",
        ),
    )
    assert [s.Modality for s in series] == ["MR"]
    _, images = _find(
        dimse_server.port,
        model,
        _identifier(
            "IMAGE",
            PatientID="PIDA",
            StudyInstanceUID=stored.a_study,
            SeriesInstanceUID=stored.a_series2[0].SeriesInstanceUID,
            SOPInstanceUID="",
        ),
    )
    assert [i.SOPInstanceUID for i in images] == [stored.a_series2[0].SOPInstanceUID]


def test_find_invalid_identifier(dimse_server: dimse_scp.ServerHandle, stored: Archive3) -> None:
    # PS3.4 C.6.2.1: Study Root has no PATIENT level.
    statuses, _ = _find(
        dimse_server.port,
        StudyRootQueryRetrieveInformationModelFind,
        _identifier("PATIENT", PatientID=""),
    )
    assert statuses == [0xA900]
    statuses, _ = _find(
        dimse_server.port,
        StudyRootQueryRetrieveInformationModelFind,
        _identifier("STUDY", StudyDate="2024-garbage", StudyInstanceUID=""),
    )
    assert statuses == [0xA900]


def _move(port: int, model: str, identifier: Dataset, dest: str = "DEST") -> list[Dataset]:
    assoc = associate(port, QR_CLASSES)
    try:
        return [status for status, _ in assoc.send_c_move(identifier, dest, model)]
    finally:
        assoc.release()


def _same_instance(received: Dataset, sent: Dataset) -> None:
    assert received.SOPInstanceUID == sent.SOPInstanceUID
    assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert received.PixelData == sent.PixelData
    assert received == sent


def test_move_study_as_stored(
    mover: dimse_scp.ServerHandle, archive: Archive, destination: StorageSCP
) -> None:
    require_search(archive)
    study = Archive3(mover.port)
    nodelay: list[int] = []

    def check_outgoing_socket(_event: evt.Event) -> None:
        for assoc in mover.ae.active_associations:
            if assoc.is_requestor:
                nodelay.append(
                    assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                )

    destination.on_store.append(check_outgoing_socket)
    statuses = _move(
        mover.port,
        StudyRootQueryRetrieveInformationModelMove,
        _identifier("STUDY", StudyInstanceUID=study.a_study),
    )
    final = statuses[-1]
    assert [s.Status for s in statuses] == [0xFF00] * 3 + [0x0000]
    assert final.NumberOfCompletedSuboperations == 3
    assert final.NumberOfFailedSuboperations == 0
    sent = {ds.SOPInstanceUID: ds for ds in study.a_series1 + study.a_series2}
    assert len(destination.received.datasets) == 3
    for received in destination.received.datasets:
        _same_instance(received, sent[received.SOPInstanceUID])
    assert nodelay and all(nodelay)


def test_move_relational_and_patient_levels(
    mover: dimse_scp.ServerHandle, archive: Archive, destination: StorageSCP
) -> None:
    require_search(archive)
    study = Archive3(mover.port)
    # Only a SOP Instance UID: the archive finds its study and series.
    one = study.a_series1[1]
    statuses = _move(
        mover.port,
        StudyRootQueryRetrieveInformationModelMove,
        _identifier("IMAGE", SOPInstanceUID=one.SOPInstanceUID),
    )
    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == 1
    statuses = _move(
        mover.port,
        PatientRootQueryRetrieveInformationModelMove,
        _identifier("PATIENT", PatientID="PIDB"),
    )
    assert statuses[-1].Status == 0x0000
    assert [ds.SOPInstanceUID for ds in destination.received.datasets] == [
        one.SOPInstanceUID,
        study.b_series[0].SOPInstanceUID,
    ]


def test_move_converts_for_an_uncompressed_only_destination(
    settings: Settings, archive: Archive
) -> None:
    plain = StorageSCP("PLAIN", syntaxes=[ExplicitVRLittleEndian])
    remote = {"PLAIN": {"host": "127.0.0.1", "port": plain.port}}
    handle = dimse_scp.start(with_dimse(settings, remote_aes=remote), archive)
    try:
        j2k = make_instance(rows=64, columns=64, transfer_syntax=JPEG2000Lossless)
        native = make_instance(transfer_syntax=ImplicitVRLittleEndian)
        _store(handle.port, [j2k, native])
        for ds in (j2k, native):
            statuses = _move(
                handle.port,
                StudyRootQueryRetrieveInformationModelMove,
                _identifier("STUDY", StudyInstanceUID=ds.StudyInstanceUID),
                "PLAIN",
            )
            assert statuses[-1].Status == 0x0000
        got_j2k, got_native = plain.received.datasets
        assert plain.received.syntaxes == [ExplicitVRLittleEndian] * 2
        assert got_j2k.SOPInstanceUID == j2k.SOPInstanceUID
        np.testing.assert_array_equal(got_j2k.pixel_array, j2k.pixel_array)  # lossless
        assert got_native.PixelData == native.PixelData
    finally:
        handle.shutdown()
        plain.shutdown()


def test_move_unknown_destination(mover: dimse_scp.ServerHandle, archive: Archive) -> None:
    ds = make_instance()
    _store(mover.port, [ds])
    statuses = _move(
        mover.port,
        StudyRootQueryRetrieveInformationModelMove,
        _identifier("STUDY", StudyInstanceUID=ds.StudyInstanceUID),
        "NOWHERE",
    )
    assert [s.Status for s in statuses] == [0xA801]  # PS3.4 C.4.2.1.5


def test_move_nothing_matches_is_success(mover: dimse_scp.ServerHandle) -> None:
    statuses = _move(
        mover.port,
        StudyRootQueryRetrieveInformationModelMove,
        _identifier("STUDY", StudyInstanceUID="1.2.3.4.5.6"),
    )
    assert [s.Status for s in statuses] == [0x0000]
    assert statuses[0].NumberOfCompletedSuboperations == 0


def test_move_bad_identifier(mover: dimse_scp.ServerHandle) -> None:
    statuses = _move(
        mover.port,
        StudyRootQueryRetrieveInformationModelMove,
        _identifier("STUDY", StudyInstanceUID="not-a-uid"),
    )
    assert statuses[-1].Status == 0xA900
    assert "StudyInstanceUID" in statuses[-1].ErrorComment


def _get(
    port: int, model: str, identifier: Dataset, roles: list[tuple[str, list[str]]]
) -> tuple[list[Dataset], list[Dataset], Dataset | None]:
    """C-GET: the response statuses, the instances received, the final Identifier."""
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    assoc = associate(
        port, QR_CLASSES, storage_roles=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(identifier, model))
    finally:
        assoc.release()
    return [status for status, _ in responses], received, responses[-1][1]


def test_get_series(dimse_server: dimse_scp.ServerHandle, stored: Archive3) -> None:
    roles = [(CTImageStorage, [JPEG2000Lossless, ExplicitVRLittleEndian])]
    statuses, received, _ = _get(
        dimse_server.port,
        PatientRootQueryRetrieveInformationModelGet,
        _identifier("STUDY", PatientID="PIDA", StudyInstanceUID=stored.a_study),
        roles,
    )
    assert [s.Status for s in statuses] == [0xFF00] * 3 + [0x0000]
    assert statuses[-1].NumberOfCompletedSuboperations == 3
    sent = {ds.SOPInstanceUID: ds for ds in stored.a_series1 + stored.a_series2}
    assert len(received) == 3
    for ds in received:
        _same_instance(ds, sent[ds.SOPInstanceUID])


def test_get_without_storage_role_reports_failures(
    dimse_server: dimse_scp.ServerHandle, stored: Archive3
) -> None:
    from pynetdicom.sop_class import MRImageStorage

    statuses, received, final_identifier = _get(
        dimse_server.port,
        StudyRootQueryRetrieveInformationModelGet,
        _identifier(
            "SERIES",
            StudyInstanceUID=stored.b_study,
            SeriesInstanceUID=stored.b_series[0].SeriesInstanceUID,
        ),
        [(MRImageStorage, [ExplicitVRLittleEndian])],  # a CT is stored: no context for it
    )
    final = statuses[-1]
    # PS3.4 Table C.4-3: all sub-operations failed -> unable to perform sub-operations
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 1
    assert final_identifier.FailedSOPInstanceUIDList == stored.b_series[0].SOPInstanceUID
    assert received == []


# -- the real entry point and several listeners on one index ----------------------------


def test_dimse_command_serves_until_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMWEB_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomweb_server",
            "dimse",
            "--dimse-port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline()  # "DIMSE DICOMWEB listening on 127.0.0.1:PORT"
        assert "listening on 127.0.0.1:" in line, process.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        ds = make_instance()
        (result,) = _store(port, [ds])
        assert result.Status == 0x0000
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=20)
        errors = process.stderr.read()
        assert returncode == 0, errors
        assert "association" in errors  # the per-association log line
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_two_listeners_on_one_index(settings: Settings) -> None:
    import threading

    archives = [Archive(settings), Archive(settings)]
    handles = [dimse_scp.start(settings, a) for a in archives]
    try:
        study = make_instance().StudyInstanceUID
        batches = [make_series(5, study_uid=study) for _ in range(2)]
        errors: list[BaseException] = []

        def send(port: int, batch: list[Dataset]) -> None:
            try:
                statuses = _store(port, batch)
                assert [s.Status for s in statuses] == [0] * len(batch)
            except BaseException as exc:  # reported below, from the test thread
                errors.append(exc)

        threads = [
            threading.Thread(target=send, args=(h.port, b))
            for h, b in zip(handles, batches, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert len(archives[0].instances(study)) == 10
    finally:
        for handle in handles:
            handle.shutdown()
        for archive in archives:
            archive.close()


def test_pynetdicom_default_proposal_is_accepted_uncompressed(
    dimse_server: dimse_scp.ServerHandle,
) -> None:
    """pynetdicom proposes Explicit, Implicit, Deflated and Big Endian by default; taking
    Deflated would make such a sender deflate every data set."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE()
    ae.add_requested_context(CTImageStorage)  # the default transfer syntaxes
    assoc = ae.associate("127.0.0.1", dimse_server.port, ae_title="DICOMWEB")
    try:
        [context] = assoc.accepted_contexts
        assert context.transfer_syntax[0] == "1.2.840.10008.1.2.1"
    finally:
        assoc.release()


def test_association_with_128_presentation_contexts(dimse_server: dimse_scp.ServerHandle) -> None:
    """A PACS sending a mixed study proposes up to 128 contexts (PS3.8 9.3.2.2: odd IDs
    1-255); every storage one must be accepted."""
    from pynetdicom import AE, AllStoragePresentationContexts, StoragePresentationContexts

    # The retired classes pynetdicom lists only in StoragePresentationContexts, then
    # current ones, 128 distinct abstract syntaxes in all.
    syntaxes = list(
        dict.fromkeys(
            c.abstract_syntax
            for c in [*StoragePresentationContexts, *AllStoragePresentationContexts]
        )
    )[:128]
    assert len(syntaxes) == 128
    ae = AE(ae_title="BIGPACS")
    for syntax in syntaxes:
        ae.add_requested_context(syntax)
    assoc = ae.associate("127.0.0.1", dimse_server.port, ae_title="DICOMWEB")
    try:
        assert assoc.is_established
        assert len(assoc.accepted_contexts) == 128
        assert not assoc.rejected_contexts
    finally:
        assoc.release()


def test_find_returns_a_malformed_value_empty(
    dimse_server: dimse_scp.ServerHandle, archive: Archive
) -> None:
    """A DS of "abc" is stored as received; C-FIND answers the match with it empty."""
    ds = make_instance(PatientWeight="72.5")
    archive.store(io.BytesIO(to_bytes(ds).replace(b"72.5", b"abc ", 1)), Origin("IMPORT"))
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ds.StudyInstanceUID
    query.PatientWeight = None
    query.PatientName = ""
    assoc = associate(dimse_server.port, [StudyRootQueryRetrieveInformationModelFind])
    try:
        replies = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    matches = [i for s, i in replies if s and s.Status == 0xFF00]
    assert [s.Status for s, _ in replies][-1] == 0x0000
    assert len(matches) == 1
    assert matches[0].PatientName == "Doe^John"
    assert matches[0].PatientWeight in (None, "")
