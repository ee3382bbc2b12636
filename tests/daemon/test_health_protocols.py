"""Health protocol detectors: HL7 v2, DICOM, DICOMweb, FHIR and HPRIM on a direction's first bytes.

Positive streams come from real implementations where one exists: a pynetdicom association against a
pynetdicom SCP, HL7 messages parsed, acknowledged and sent over MLLP by the `hl7` package, FHIR
resources serialised by `fhir.resources` and served by the standard library's HTTP server and client.
Each conversation runs on 127.0.0.1 through `Recorder`, a loopback TCP proxy that keeps the bytes of
each direction, which is what douane's reassembly hands the detectors. The corpus's HL7 capture is
checked against its expectations.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import corpus_payloads
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from douane.daemon.dissect import MalformedPacket
from douane.daemon.health_protocols import (
    FHIR_CLINICAL,
    FHIR_RESOURCES,
    SOP_CLASSES,
    Detection,
    could_be_health,
    detect,
)

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
DATA = Path(__file__).resolve().parent / "data"
BOUND = 16 * 1024  # what the inspector hands a detector at most, per direction
PROTOCOLS = {"hl7v2", "dicom", "dicomweb", "fhir", "hprim"}
# Patient data put into the test messages: it must never reach a detail.
PATIENT = ("DUPONT", "MARIE", "1850575123456", "19850512")


def outcome(stream: bytes) -> Detection | None:
    """detect with its contract enforced: a Detection, None, or MalformedPacket (returned as None)."""
    try:
        found = detect(stream, True)
    except MalformedPacket as exc:
        assert exc.reason == "malformed"
        return None
    assert found is None or isinstance(found, Detection)
    if found is not None:
        assert found.protocol in PROTOCOLS
        assert found.category == "health"
        if found.detail is not None:
            assert 0 < len(found.detail) <= 128
            assert all(0x20 <= ord(c) <= 0x7E for c in found.detail)
            assert not any(p.lower() in found.detail.lower() for p in PATIENT)
    return found


# --- loopback capture -------------------------------------------------------------------------------
class Recorder:
    """A TCP proxy on 127.0.0.1 for one connection to `target`, keeping each direction's bytes."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.up = bytearray()  # client to server
        self.down = bytearray()  # server to client
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.listener.settimeout(20)
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        route = {client: (server, self.up), server: (client, self.down)}
        live = {client, server}
        try:
            while live:
                ready, _, _ = select.select(list(live), [], [], 20)
                if not ready:
                    break
                for sock in ready:
                    peer, kept = route[sock]
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        live.discard(sock)
                        with contextlib.suppress(OSError):
                            peer.shutdown(socket.SHUT_WR)
                        continue
                    kept += data
                    peer.sendall(data)
        finally:
            client.close()
            server.close()
            self.listener.close()

    def streams(self) -> tuple[bytes, bytes]:
        """(client to server, server to client) once the connection has closed."""
        self.thread.join(20)
        assert not self.thread.is_alive(), "the recorded connection did not close"
        return bytes(self.up), bytes(self.down)


# --- DICOM: pynetdicom -------------------------------------------------------------------------------
def dicom_dataset() -> Any:
    """A small CT instance whose patient module carries the test patient."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "DUPONT^MARIE"
    ds.PatientID = "1850575123456"
    ds.PatientBirthDate = "19850512"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x00\x01" * 4
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def dicom_conversation(kind: str) -> tuple[bytes, bytes]:
    """A pynetdicom SCU talking to a pynetdicom SCP through the recorder: "echo", "store" (one CT
    context) or "storage-scu" (all of pynetdicom's storage contexts, then a C-STORE)."""
    pytest.importorskip("pynetdicom")
    from pynetdicom import AE, StoragePresentationContexts, evt
    from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

    scp = AE(ae_title="PACS")
    scp.add_supported_context(Verification)
    scp.supported_contexts = [*scp.supported_contexts, *StoragePresentationContexts]
    server = scp.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
    )
    try:
        recorder = Recorder(server.server_address[1])
        scu = AE(ae_title="MODALITY")
        if kind == "echo":
            scu.add_requested_context(Verification)
        elif kind == "store":
            scu.add_requested_context(CTImageStorage)
        else:
            scu.requested_contexts = StoragePresentationContexts
        assoc = scu.associate("127.0.0.1", recorder.port, ae_title="PACS")
        assert assoc.is_established
        if kind == "echo":
            assert assoc.send_c_echo().Status == 0x0000
        else:
            assert assoc.send_c_store(dicom_dataset()).Status == 0x0000
        assoc.release()
        return recorder.streams()
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def dicom_echo() -> tuple[bytes, bytes]:
    return dicom_conversation("echo")


@pytest.fixture(scope="module")
def dicom_store() -> tuple[bytes, bytes]:
    return dicom_conversation("store")


@pytest.fixture(scope="module")
def dicom_storage_scu() -> tuple[bytes, bytes]:
    return dicom_conversation("storage-scu")


def pdu_end(stream: bytes) -> int:
    """Where the first PDU of a DICOM stream ends (PS3.8 9.3.1: type, reserved, 4-byte length)."""
    return 6 + int(struct.unpack_from("!I", stream, 2)[0])


class TestDicom:
    def test_echo_association(self, dicom_echo: tuple[bytes, bytes]) -> None:
        """A C-ECHO association: the RQ names the Verification SOP class, the AC is an association."""
        up, down = dicom_echo
        assert up[0] == 0x01 and down[0] == 0x02
        assert outcome(up[:BOUND]) == Detection("dicom", "Verification SOP Class")
        assert outcome(down[:BOUND]) == Detection("dicom", "association")

    def test_store_association(self, dicom_store: tuple[bytes, bytes]) -> None:
        """A C-STORE of a CT image: the RQ names CT Image Storage and no patient data."""
        up, down = dicom_store
        assert outcome(up[:BOUND]) == Detection("dicom", "CT Image Storage")
        assert outcome(down[:BOUND]) == Detection("dicom", "association")
        assert b"DUPONT" in up  # the patient crossed the wire; the detail says nothing of it

    def test_p_data_without_association(self, dicom_store: tuple[bytes, bytes]) -> None:
        """A stream caught after its association starts with the C-STORE-RQ command's P-DATA-TF."""
        up, _ = dicom_store
        rest = up[pdu_end(up):]
        assert rest[0] == 0x04
        assert outcome(rest) == Detection("dicom", "CT Image Storage")

    def test_p_data_response(self, dicom_store: tuple[bytes, bytes]) -> None:
        """The SCP's C-STORE-RSP after its AC names the SOP class it answered for."""
        _, down = dicom_store
        rest = down[pdu_end(down):]
        assert rest[0] == 0x04
        assert outcome(rest) == Detection("dicom", "CT Image Storage")

    def test_large_association(self, dicom_storage_scu: tuple[bytes, bytes]) -> None:
        """A storage SCU proposing every storage class is an association, found before its end."""
        up, down = dicom_storage_scu
        assert pdu_end(up) > 4096
        assert outcome(up[:BOUND]) == Detection("dicom", "association")
        assert outcome(up[:2048]) == Detection("dicom", "association")
        assert outcome(down[:BOUND]) == Detection("dicom", "association")

    def test_prefixes(self, dicom_echo: tuple[bytes, bytes]) -> None:
        """Every prefix of a small RQ waits (None) until the PDU is whole; none raises."""
        up, _ = dicom_echo
        end = pdu_end(up)
        for cut in range(end):
            assert detect(up[:cut], True) is None, cut
        assert outcome(up[:end]) == Detection("dicom", "Verification SOP Class")

    def test_sop_class_names_match_pydicom(self) -> None:
        """Every SOP class name in the table is PS3.6's, as pydicom's UID dictionary spells it."""
        from pydicom.uid import UID_dictionary

        for uid, name in SOP_CLASSES.items():
            assert UID_dictionary[uid][0] == name, uid

    @pytest.mark.parametrize(("offset", "value", "why"), [
        (1, 0x01, "reserved byte set"),
        (7, 0x02, "protocol version 2"),
        (10, 0x00, "called AE title with a control byte"),
        (74, 0x11, "first item is not an application context"),
        (94, ord("2"), "another application context name"),
    ])
    def test_header_mismatch_is_not_dicom(
        self, dicom_echo: tuple[bytes, bytes], offset: int, value: int, why: str
    ) -> None:
        """Before the application context matches, a wrong field means another protocol (None)."""
        up = bytearray(dicom_echo[0])
        up[offset] = value
        assert detect(bytes(up), True) is None, why

    def test_item_past_pdu_is_malformed(self, dicom_echo: tuple[bytes, bytes]) -> None:
        """Once committed, a presentation context item longer than its PDU is malformed."""
        up = bytearray(dicom_echo[0][: pdu_end(dicom_echo[0])])
        pos = 74 + 4 + 21  # after the application context item
        assert up[pos] == 0x20
        struct.pack_into("!H", up, pos + 2, 0xFFF0)
        with pytest.raises(MalformedPacket):
            detect(bytes(up), True)

    def test_bad_abstract_syntax_is_malformed(self, dicom_echo: tuple[bytes, bytes]) -> None:
        """An abstract syntax that is not a UID (PS3.5 9.1) is malformed."""
        up = bytearray(dicom_echo[0][: pdu_end(dicom_echo[0])])
        pos = up.index(b"1.2.840.10008.1.1")
        up[pos] = ord("x")
        with pytest.raises(MalformedPacket):
            detect(bytes(up), True)


# --- HL7 v2: the hl7 package over MLLP ------------------------------------------------------------------
HL7_MESSAGES = [
    ("ADT^A01^ADT_A01", "2.5", "ADT^A01 2.5"),
    ("ORU^R01^ORU_R01", "2.5.1", "ORU^R01 2.5.1"),
    ("ORM^O01", "2.3", "ORM^O01 2.3"),
    ("SIU^S12", "2.4", "SIU^S12 2.4"),
    ("MDM^T02", "2.6", "MDM^T02 2.6"),
    ("ADT^A28^ADT_A05", "2.5^FRA^2.10", "ADT^A28 2.5"),  # IHE PAM France: VID with country code
]


def hl7_message(msh9: str, msh12: str) -> Any:
    """An HL7 v2 message, parsed and checked by the `hl7` package."""
    hl7 = pytest.importorskip("hl7")
    text = "\r".join([
        f"MSH|^~\\&|LAB|HOPITAL|DPI|HOPITAL|20251128100000||{msh9}|MSG0001|P|{msh12}",
        "EVN|A01|20251128100000",
        "PID|1||1850575123456^^^HOPITAL^NH||DUPONT^MARIE||19850512|F",
        "PV1|1|I|CARDIO^101^1",
    ])
    message = hl7.parse(text)
    assert str(message.segment("MSH")[9]) == msh9
    return message


def mllp_exchange(messages: list[Any]) -> tuple[bytes, bytes]:
    """Send messages with hl7.client.MLLPClient to an MLLP listener that answers each with the
    `hl7` package's ACK, through the recorder."""
    hl7 = pytest.importorskip("hl7")
    from hl7.client import MLLPClient

    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        buf = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\x1c\r" in buf:
                    frame, buf = buf.split(b"\x1c\r", 1)
                    ack = hl7.parse(frame.lstrip(b"\x0b").decode()).create_ack()
                    conn.sendall(b"\x0b" + str(ack).encode() + b"\x1c\r")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    recorder = Recorder(listener.getsockname()[1])
    with MLLPClient("127.0.0.1", recorder.port) as client:
        for message in messages:
            client.send_message(message)
    up, down = recorder.streams()
    thread.join(5)
    listener.close()
    return up, down


class TestHl7:
    @pytest.mark.parametrize(("msh9", "msh12", "detail"), HL7_MESSAGES)
    def test_mllp_message_and_ack(self, msh9: str, msh12: str, detail: str) -> None:
        """An MLLP conversation: the message type and version, and the ACK's, on each direction."""
        up, down = mllp_exchange([hl7_message(msh9, msh12)])
        assert up.startswith(b"\x0bMSH|^~\\&|")
        assert outcome(up) == Detection("hl7v2", detail)
        trigger = msh9.split("^")[1]
        assert outcome(down) == Detection("hl7v2", f"ACK^{trigger} {detail.split(' ')[1]}")

    def test_several_messages(self) -> None:
        """The first message of a connection names the stream."""
        up, _ = mllp_exchange([hl7_message("ADT^A01", "2.5"), hl7_message("ADT^A08", "2.5")])
        assert outcome(up) == Detection("hl7v2", "ADT^A01 2.5")

    def test_bare_message(self) -> None:
        """HL7 without MLLP framing (a file copy, a raw socket) is found from its MSH segment."""
        text = str(hl7_message("ORU^R01", "2.5")).encode()
        assert outcome(text) == Detection("hl7v2", "ORU^R01 2.5")
        assert outcome(text.replace(b"\r", b"\r\n")) == Detection("hl7v2", "ORU^R01 2.5")

    def test_prefixes(self) -> None:
        """Prefixes of an MLLP message wait until the MSH segment ends, then agree."""
        up, _ = mllp_exchange([hl7_message("ADT^A01", "2.5")])
        end = up.index(b"\r")
        for cut in range(end):
            assert detect(up[:cut], True) is None, cut
        assert outcome(up[: end + 1]) == Detection("hl7v2", "ADT^A01 2.5")

    @pytest.mark.parametrize(("stream", "detail"), [
        (b"\x0bMSH|^~\\&|A|B|C|D|20250101||adt^a01|1|P|2.5\r", None),  # lower case: not a code
        (b"\x0bMSH|^~\\&|A|B|C|D|20250101||ADT^A01|1|P|v2.5\r", "ADT^A01"),  # bad version dropped
        (b"\x0bMSH|^~\\&|A|B|C|D|20250101||ADT^A01\r", "ADT^A01"),  # no MSH-12
        (b"\x0bMSH|^~\\&#|A|B|C|D|20250101||ADT^A01|1|P|2.7\r", "ADT^A01 2.7"),  # truncation char
        (b"\x0bMSH|^~\\&|A|B|C|D|20250101||ADT^A01^<script>|1|P|2.5\r", "ADT^A01 2.5"),
        (b"\x0bMSH|^~\\&|A|B|C|D|20250101||ADT^A0'|1|P|2.5\r", None),
    ])
    def test_detail_charset(self, stream: bytes, detail: str | None) -> None:
        """MSH-9 and MSH-12 reach the detail only through their strict patterns."""
        assert outcome(stream) == Detection("hl7v2", detail)

    @pytest.mark.parametrize("stream", [
        b"\x0bMSH^~\\&|", b"\x0bMSH|ab12|", b"\x0bMSH|^^\\&|", b"\x0bMSH|^~\\&xyz|",
    ])
    def test_committed_mllp_is_malformed(self, stream: bytes) -> None:
        """An MLLP block opening with MSH whose separators are impossible is malformed."""
        with pytest.raises(MalformedPacket):
            detect(stream, True)

    def test_overlong_msh(self) -> None:
        """An MSH segment longer than 4 KiB is HL7 without a detail, not a wait forever."""
        stream = b"\x0bMSH|^~\\&|" + b"A" * 5000
        assert outcome(stream) == Detection("hl7v2", None)
        assert outcome(stream[:3000]) is None

    @pytest.mark.skipif(not (CORPUS / "expected.jsonl").is_file(), reason=f"no corpus at {CORPUS}")
    def test_corpus_capture(self) -> None:
        """hl7.pcap: each direction's message type and version are the corpus's hl7_messages."""
        payloads = corpus_payloads
        with (CORPUS / "expected.jsonl").open(encoding="utf-8") as fh:
            records = [r for r in map(json.loads, fh) if r["pcap"] == "hl7.pcap"]
        assert records
        for rec in records:
            forward, backward = payloads.directions(rec)
            for expected in rec["hl7_messages"]:
                key = forward if expected["direction"] == "src2dst" else backward
                stream = payloads.tcp_stream("hl7.pcap", key)[:BOUND]
                detail = f"{expected['msh_9']} {expected['msh_12']}"
                assert outcome(stream) == Detection("hl7v2", detail)




# --- FHIR: fhir.resources, served over HTTP/1.1 -------------------------------------------------------
def fhir_json(kind: str) -> bytes:
    """A FHIR R4B resource of `kind`, validated and serialised by fhir.resources."""
    pytest.importorskip("fhir.resources")
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.patient import Patient

    patient = Patient(
        id="123", gender="female", birthDate="1985-05-12",
        name=[{"family": "DUPONT", "given": ["MARIE"]}],
        identifier=[{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1850575123456"}],
    )
    if kind == "Patient":
        return patient.model_dump_json().encode()
    observation = Observation(
        status="final", code={"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        subject={"reference": "Patient/123"}, valueQuantity={"value": 5.4, "unit": "mmol/L"},
    )
    if kind == "Observation":
        return observation.model_dump_json().encode()
    bundle = Bundle(type="searchset", entry=[{"resource": patient}, {"resource": observation}])
    return bundle.model_dump_json().encode()


def request(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: fhir.example.org",
             *(f"{k}: {v}" for k, v in headers.items())]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def response(headers: dict[str, str], body: bytes) -> bytes:
    lines = ["HTTP/1.1 200 OK", *(f"{k}: {v}" for k, v in headers.items()), f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def http_exchange(path: str, accept: str, content_type: str, body: bytes) -> tuple[bytes, bytes]:
    """http.client asks http.server for `path`; the server answers `body`; through the recorder."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    recorder = Recorder(server.server_address[1])
    conn = HTTPConnection("127.0.0.1", recorder.port, timeout=10)
    conn.request("GET", path, headers={"Accept": accept})
    assert conn.getresponse().read() == body
    conn.close()
    thread.join(10)
    server.server_close()
    return recorder.streams()


class TestFhir:
    def test_read_over_http(self) -> None:
        """A FHIR read between http.client and http.server: Patient on both directions."""
        up, down = http_exchange("/fhir/r4/Patient/123", "application/fhir+json",
                                 "application/fhir+json; charset=utf-8", fhir_json("Patient"))
        assert outcome(up) == Detection("fhir", "Patient")
        assert outcome(down) == Detection("fhir", "Patient")

    def test_search_bundle_as_plain_json(self) -> None:
        """A searchset Bundle served as application/json is FHIR by its resourceType."""
        up, down = http_exchange("/api/Observation?patient=123", "application/json",
                                 "application/json", fhir_json("Bundle"))
        assert outcome(up) == Detection("fhir", "Observation")
        assert outcome(down) == Detection("fhir", "Bundle(Patient)")

    @pytest.mark.parametrize(("stream", "detail"), [
        (request("POST", "/fhir/Observation", {"Content-Type": "application/fhir+json"},
                 fhir_json("Observation")), "Observation"),
        (request("POST", "/fhir/Observation", {"Content-Type": "application/fhir+json"}), "Observation"),
        (request("GET", "/baseDstu2/Patient?name=x", {"Accept": "application/json+fhir"}), "Patient"),
        (request("GET", "/Patient/123", {"Accept": "application/xml+fhir"}), "Patient"),
        (request("GET", "/fhir/metadata", {"Accept": "application/fhir+xml;q=0.9, */*;q=0.1"}), None),
        (request("GET", "/fhir/metadata?_format=json", {}), None),
        (request("GET", "/r4/Account/7?_format=application%2Ffhir%2Bjson", {}), "Account"),
        (request("GET", "/r4/Group/7?_format=json", {}), "Group"),
        (request("GET", "/Observation/abc-123/_history/2", {}), "Observation"),
        (request("GET", "/Patient/123/$everything", {}), "Patient"),
        (request("POST", "/fhir/Patient/_search", {}), "Patient"),
        (request("PUT", "/fhir/Encounter/42", {"Content-Type": "application/json"}), "Encounter"),
        (response({"Content-Type": "application/fhir+xml"},
                  b'<?xml version="1.0"?><Patient xmlns="http://hl7.org/fhir"><id value="1"/></Patient>'),
         "Patient"),
        (response({"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                  b"3a\r\n" + fhir_json("Observation")), "Observation"),
        (response({"Content-Type": "application/fhir+json", "Content-Encoding": "gzip"}, b"\x1f\x8b"), None),
    ])
    def test_requests_and_responses(self, stream: bytes, detail: str | None) -> None:
        """Media types (R4 and DSTU2), _format, REST paths and bodies name FHIR and its resource."""
        assert outcome(stream) == Detection("fhir", detail)

    @pytest.mark.parametrize("stream", [
        request("GET", "/Account/Login", {}),  # an MVC route, and Account is not clinical
        request("GET", "/Patient/Details", {}),  # no digit: not a FHIR id
        request("GET", "/metadata/instance?api-version=2021-02-01", {"Metadata": "true"}),  # Azure IMDS
        request("GET", "/api/v1/items?_format=json", {}),
        response({"Content-Type": "application/json"}, b'{"resourceType": "microsoft.compute/vm"}'),
        response({"Content-Type": "application/json"}, b'{"resourceType": "Spaceship"}'),
    ])
    def test_not_fhir(self, stream: bytes) -> None:
        """Generic routes, cloud metadata and unknown resource types are not FHIR."""
        assert outcome(stream) is None

    def test_resource_lists(self) -> None:
        """Clinical resources are R4 resources; every R4 name is one fhir.resources' R4B knows, but
        for those R4B withdrew (R4B release notes: the medicinal product and substance families and
        the evidence syntheses were redesigned), so none is misspelt."""
        pytest.importorskip("fhir.resources")
        from fhir.resources.R4B import get_fhir_model_class

        assert FHIR_CLINICAL <= FHIR_RESOURCES
        withdrawn = set()
        for name in FHIR_RESOURCES:
            try:
                assert get_fhir_model_class(name).__name__ == name
            except ValueError:  # "not a valid FHIR Model"
                withdrawn.add(name)
        assert all(n.startswith(("MedicinalProduct", "Substance")) or n.endswith("EvidenceSynthesis")
                   for n in withdrawn), withdrawn
        assert not withdrawn & FHIR_CLINICAL

    def test_incomplete_headers_wait(self) -> None:
        """A request whose header section has not ended yet is not decided."""
        stream = request("GET", "/fhir/Patient/1", {"Accept": "application/fhir+json"})
        assert outcome(stream[:-4]) is None
        assert outcome(stream) == Detection("fhir", "Patient")


# --- DICOMweb ------------------------------------------------------------------------------------------
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
INSTANCE = "1.2.826.0.1.3680043.8.498.3"


def part10_file() -> bytes:
    """The test CT instance as a DICOM file (PS3.10), written by pydicom."""
    pytest.importorskip("pynetdicom")
    buf = io.BytesIO()
    dicom_dataset().save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class TestDicomweb:
    @pytest.mark.parametrize(("stream", "detail"), [
        (request("GET", f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{INSTANCE}",
                 {"Accept": 'multipart/related; type="application/dicom"'}), "wado-rs"),
        (request("GET", f"/dicomweb/studies/{STUDY}/metadata", {}), "wado-rs"),
        (request("GET", f"/studies/{STUDY}/series?Modality=CT", {}), "qido-rs"),
        (request("GET", "/dicom-web/studies?PatientID=123&includefield=all", {}), "qido-rs"),
        (request("GET", "/rs/instances?00080060=CT", {}), "qido-rs"),
        (request("GET", "/studies?limit=10", {"Accept": "application/dicom+json"}), None),
        (request("POST", "/dicom-web/studies",
                 {"Content-Type": 'multipart/related; type="application/dicom"; boundary=xyz'}), "stow-rs"),
        (request("POST", f"/studies/{STUDY}", {"Content-Type": "multipart/related; type=application/dicom"}),
         "stow-rs"),
        (request("GET", f"/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={INSTANCE}",
                 {}), "wado-uri"),
        (response({"Content-Type": "application/dicom+json"}, b"[]"), None),
        (response({"Content-Type": "application/dicom+xml"}, b"<NativeDicomModel/>"), None),
    ])
    def test_services(self, stream: bytes, detail: str | None) -> None:
        """PS3.18 media types and resource paths name DICOMweb and its service."""
        assert outcome(stream) == Detection("dicomweb", detail)

    def test_part10_file_over_http(self) -> None:
        """A DICOM file in an octet-stream body is DICOM (PS3.10 preamble and DICM)."""
        stream = request("POST", "/upload", {"Content-Type": "application/octet-stream"}, part10_file())
        assert outcome(stream) == Detection("dicom", "file")

    @pytest.mark.parametrize("stream", [
        request("GET", "/studies", {}),  # a university's page
        request("GET", "/studies/medicine/index.html", {}),
        request("GET", "/wado", {}),
        request("POST", "/studies", {"Content-Type": "application/json"}, b"{}"),
    ])
    def test_not_dicomweb(self, stream: bytes) -> None:
        """Paths that only look like DICOMweb words are not DICOMweb."""
        assert outcome(stream) is None


# --- HPRIM --------------------------------------------------------------------------------------------
# Synthetic messages after the structures of HPRIM Santé 2.2 and HPRIM Médecins 3.0; no real person.
HPRIM_SANTE = (
    b"H|~^\\&|RES0001.HPR||LAB01~LABORATOIRE||ORU|||DPI~HOPITAL||P|H2.2~C|20251128100000\r\n"
    b"P|1|123|||DUPONT~MARIE||19850512|F\r\n"
    b"OBR|1||0001|GLY~Glycemie~L|R||20251128080000\r\n"
    b"OBX|1|NM|GLY~Glycemie~L||5.4|mmol/l|||||F\r\n"
    b"L|1\r\n"
)
HPRIM_MEDECINS = (
    "0001234\r\nDUPONT\r\nMARIE\r\n12 rue des Lilas\r\n\r\n75012 PARIS\r\n12/05/1985\r\n"
    "1850575123456\r\n25A0001\r\n28/11/2025\r\nLAB01 Laboratoire\r\nDR0001 Docteur\r\n"
    "Glycémie à jeun : 5,4 mmol/l\r\n****LAB****\r\n"
    "RES|Glycémie|GLY|N|5.4|mmol/l|3.9|5.8|N|F|\r\n****FIN****\r\n****FINFICHIER****\r\n"
).encode("latin-1")


def smtp_session(body: bytes) -> bytes:
    """A client's SMTP stream carrying `body` as a text/plain mail built by the email package."""
    mail = EmailMessage()
    mail["From"] = "lab@labo.example"
    mail["To"] = "dr@cabinet.example"
    mail["Subject"] = "Resultats"
    mail.set_content(body.decode("latin-1"), charset="latin-1", cte="8bit")
    return (b"EHLO labo.example\r\nMAIL FROM:<lab@labo.example>\r\nRCPT TO:<dr@cabinet.example>\r\n"
            b"DATA\r\n" + mail.as_bytes().replace(b"\n", b"\r\n") + b"\r\n.\r\nQUIT\r\n")


class TestHprim:
    @pytest.mark.parametrize(("stream", "detail"), [
        (HPRIM_SANTE, "sante"),
        (HPRIM_SANTE.replace(b"\r\n", b"\r"), "sante"),
        (HPRIM_SANTE.replace(b"~^\\&", b"\\^&~"), "sante"),  # other delimiter order seen in the field
        (b"H|~^\\&|URG062.HPR||13300~LABO||ORU|||MAR~URG||P|H2.0|200410291528\r", "sante"),
        (HPRIM_MEDECINS, "medecins"),
        (HPRIM_MEDECINS.split(b"****LAB****")[0] + b"****FIN****\r\n", "medecins"),  # text report
        (request("POST", "/upload", {"Content-Type": "text/plain"}, HPRIM_MEDECINS), "medecins"),
        (request("POST", "/upload", {"Content-Type": "text/plain"}, HPRIM_SANTE), "sante"),
        (smtp_session(HPRIM_MEDECINS), "medecins"),
    ])
    def test_files_and_transports(self, stream: bytes, detail: str) -> None:
        """HPRIM Santé headers and HPRIM Médecins markers, alone, in HTTP and in SMTP."""
        assert outcome(stream) == Detection("hprim", detail)

    @pytest.mark.parametrize("stream", [
        b"H|\\^&|||cobas^1|||||host|TSREQ^REAL|P|1\r",  # ASTM E1394 (3 delimiters), not HPRIM
        b"H|~^\\&|\r",  # no version, no message type
        b"# Notes\n********lab********\nsome text\n",  # markdown rule
        b"see ****FIN**** in the text\n",  # not alone on its line
        b"****FINISHED****\n",
    ])
    def test_not_hprim(self, stream: bytes) -> None:
        """ASTM headers, markdown and markers inside a line are not HPRIM."""
        assert outcome(stream) is None


# --- negatives, contract and fuzzing ------------------------------------------------------------------
def tls_client_hello() -> bytes:
    """The first flight of Python's TLS client (OpenSSL), from a memory BIO."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="fhir.example.org")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


ORDINARY = [
    request("GET", "/index.html", {"User-Agent": "curl/8.5.0", "Accept": "*/*"}),
    request("POST", "/api/v1/login", {"Content-Type": "application/json"}, b'{"user": "a", "pass": "b"}'),
    response({"Content-Type": "text/html"}, b"<html><body>Hello</body></html>" * 30),
    response({"Content-Type": "application/json"}, json.dumps({"type": "Patient", "id": 1}).encode()),
    b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
    b"220 mail.example.org ESMTP Postfix\r\n",
    b"EHLO client.example.org\r\n",
]


class TestNegative:
    @pytest.mark.parametrize("stream", ORDINARY)
    def test_ordinary_text_protocols(self, stream: bytes) -> None:
        """Ordinary HTTP, SSH and SMTP first bytes are never health protocols."""
        assert outcome(stream) is None

    def test_tls(self) -> None:
        """A real TLS ClientHello is not health, and no byte after it can make it so."""
        hello = tls_client_hello()
        assert hello[0] == 0x16
        assert outcome(hello) is None
        assert not could_be_health(hello)

    @given(st.binary(min_size=1, max_size=2048))
    def test_random_bytes(self, stream: bytes) -> None:
        """Random bytes are not a health protocol."""
        assert outcome(stream) is None

    def test_urandom(self) -> None:
        """A thousand random 1 KiB streams (os.urandom) are not a health protocol."""
        for _ in range(1000):
            assert outcome(os.urandom(1024)) is None

    @pytest.mark.skipif(not (CORPUS / "expected.jsonl").is_file(), reason=f"no corpus at {CORPUS}")
    def test_corpus_streams(self) -> None:
        """In every corpus capture but hl7.pcap (TLS, QUIC, DNS, HTTP...), no stream is health."""
        payloads = corpus_payloads
        checked = 0
        for pcap in sorted((CORPUS / "pcap").iterdir()):
            if pcap.name == "hl7.pcap":
                continue
            tcp, udp = payloads._read(pcap.name)
            for key in tcp:
                stream = payloads.tcp_stream(pcap.name, key)
                if stream:
                    assert outcome(stream[:BOUND]) is None, (pcap.name, key)
                    checked += 1
            for key, datagrams in udp.items():
                for datagram in datagrams[:4]:
                    assert outcome(datagram) is None, (pcap.name, key)
        assert checked >= 150  # TCP directions with payload (200 at corpus commit 3b1286a)


def seeds() -> Iterator[bytes]:
    yield HPRIM_SANTE
    yield HPRIM_MEDECINS
    yield b"\x0bMSH|^~\\&|A|B|C|D|20250101||ADT^A01|1|P|2.5\rPID|1\r\x1c\r"
    yield request("GET", f"/studies/{STUDY}", {"Accept": "application/dicom+json"})
    yield request("POST", "/fhir/Patient", {"Content-Type": "application/fhir+json"},
                  b'{"resourceType": "Patient", "id": "1"}')


@pytest.fixture(scope="module")
def real_prefixes(dicom_store: tuple[bytes, bytes]) -> list[bytes]:
    """Real first bytes of each detector's protocol, the DICOM ones captured from pynetdicom."""
    up, down = dicom_store
    return [up[:BOUND], down[:BOUND], up[pdu_end(up):][:BOUND], *seeds()]


class TestContract:
    @given(data=st.data())
    def test_mutated_real_prefixes(self, real_prefixes: list[bytes], data: st.DataObject) -> None:
        """Real prefixes cut, with bytes flipped and random bytes appended: a Detection, None or
        MalformedPacket; the direction never matters; could_be_health never rules out a match."""
        base = bytearray(data.draw(st.sampled_from(real_prefixes)))
        cut = data.draw(st.integers(0, len(base)))
        del base[cut:]
        for _ in range(data.draw(st.integers(0, 4))):
            if base:
                base[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.integers(0, 255))
        stream = bytes(base) + data.draw(st.binary(max_size=64))
        found = outcome(stream)
        try:
            assert detect(stream, False) == found
        except MalformedPacket:
            assert found is None
        if found is not None:
            for i in range(len(stream) + 1):
                assert could_be_health(stream[:i]), i

    @given(st.binary(max_size=16), st.binary(max_size=256))
    @example(b"\x16\x03\x01", b"\x0bMSH|^~\\&|")
    @example(b"\x01\x01", b"")
    def test_could_be_health_is_final(self, head: bytes, tail: bytes) -> None:
        """A stream that could not be health never becomes health with more bytes."""
        if not could_be_health(head):
            assert outcome(head + tail) is None

    def test_detail_never_carries_patient_data(
        self, dicom_store: tuple[bytes, bytes], real_prefixes: list[bytes]
    ) -> None:
        """The messages above carry a name, a NIR and a birth date; no detail repeats them."""
        for stream in real_prefixes:
            outcome(stream)  # outcome asserts it

    def test_empty(self) -> None:
        """No bytes: nothing to say yet."""
        assert detect(b"", True) is None
        assert could_be_health(b"")

