"""Health protocols on the first bytes of one direction of a flow, on any port.

`detect` looks at a direction's reassembled first bytes (bounded by the caller, e.g. 16 KiB) and says
whether they carry HL7 v2 (MLLP-framed or bare), the DICOM upper layer, DICOMweb or FHIR over plain
HTTP/1.x, or HPRIM (Santé or Médecins). It follows the contract of STYLE.md:

- a `Detection` (the protocol and a bounded, validated detail: never patient data);
- None when these bytes are not (or not yet) a health protocol: more bytes could change the answer;
- `MalformedPacket` (reason "malformed") only where a parser is committed, that is once a signature
  no other protocol shares has matched (an MLLP start block followed by ``MSH``, a DICOM A-ASSOCIATE
  PDU whose application context is the DICOM one, a P-DATA-TF whose first fragment is a DICOM command)
  and what follows contradicts its specification. Nothing else escapes.

`could_be_health` answers, from the first bytes alone, whether any detector can still match, so that
an inspector can stop looking at a TLS or SSH direction after its first segment.

The detectors try first-byte checks before anything else: most of a gateway's flows are TLS, whose
first byte (0x16) no detector accepts, and they cost one comparison.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from itertools import permutations

from douane.daemon.http import MAX_HEADERS, METHODS, looks_like_http
from douane.daemon.wire import malformed


@dataclass(frozen=True, slots=True)
class Detection:
    """A health protocol seen on a direction of a flow.

    `detail` is bounded text validated against a strict character set, never a payload fragment nor
    patient data: an HL7 message type and version ("ADT^A01 2.5"), a DICOM SOP class name or
    "association", a DICOMweb service ("wado-rs"), a FHIR resource type ("Patient"), an HPRIM
    variant ("sante", "medecins"); None when the protocol is certain but the detail is not.
    """

    protocol: str  # "hl7v2", "dicom", "dicomweb", "fhir", "hprim"
    detail: str | None
    category: str = "health"


# --- HL7 v2 ----------------------------------------------------------------------------------------
# HL7 v2.x chapter 2 (Control), "Message framing" / "Minimal Lower Layer Protocol" (HL7 v2.5.1
# Appendix C.4; IHE ITI TF-2 Appendix C): a message travels as <VT=0x0B> message <FS=0x1C><CR=0x0D>.
MLLP_START = 0x0B
MLLP_END = 0x1C
# HL7 v2.5.1 2.15.9 (MSH): MSH-1 is the field separator, MSH-2 the encoding characters: component,
# repetition, escape, subcomponent (4 characters), plus truncation from v2.7 (5). The message header
# segment of a real message is a few hundred bytes; past this many without a segment terminator the
# detail is given up (the protocol is still certain).
MAX_MSH = 4096
# MSH-9 (message type, MSG): message code (table 0076) ^ trigger event (table 0003) ^ structure.
# Codes and events are three upper-case letters or digits ("ADT", "A01", "R01", site "Z01").
_HL7_CODE = re.compile(rb"[A-Z][A-Z0-9]{2}")
_HL7_EVENT = re.compile(rb"[A-Z0-9]{3}")
# MSH-12 (version ID, VID): its first component, table 0104 ("2.1" ... "2.5.1", "2.8.2", "2.9").
_HL7_VERSION = re.compile(rb"2\.[0-9]{1,2}(?:\.[0-9]{1,2})?")
_HL7_SEGMENT_END = re.compile(rb"[\r\n\x1c]")
_HL7_SEP = ord("|")


def _hl7(stream: bytes, start: int, committed: bool) -> Detection | None:
    """HL7 v2 from the ``MSH`` at `start`: message type (MSH-9) and version (MSH-12).

    Raises MalformedPacket only when `committed` (an MLLP start block preceded the MSH).
    """
    n = len(stream)
    if n < start + 4:
        return None
    if stream[start + 3] != _HL7_SEP:
        if committed:
            raise malformed("hl7 field separator")
        return None
    # MSH-2: 4 or 5 distinct printable, non-alphanumeric characters, then the field separator.
    bar = stream.find(b"|", start + 4, start + 10)
    if bar < 0:
        if n < start + 10:
            return None
        if committed:
            raise malformed("hl7 encoding characters")
        return None
    enc = stream[start + 4 : bar]
    if not (
        4 <= len(enc) <= 5
        and len(set(enc)) == len(enc)
        and all(0x21 <= c <= 0x7E and not chr(c).isalnum() for c in enc)
    ):
        if committed:
            raise malformed("hl7 encoding characters")
        return None
    found = _HL7_SEGMENT_END.search(stream, bar, start + MAX_MSH)
    if found is None:
        if n < start + MAX_MSH:
            return None  # the MSH segment continues in bytes not seen yet
        return Detection("hl7v2", None)
    fields = stream[start : found.start()].split(b"|")
    # fields[0] is "MSH" and fields[1] MSH-2, so MSH-n is fields[n - 1].
    comp = enc[0:1]
    detail = None
    if len(fields) > 8:
        parts = fields[8].split(comp)
        if _HL7_CODE.fullmatch(parts[0]):
            detail = parts[0].decode("ascii")
            if len(parts) > 1 and parts[1]:
                detail = f"{detail}^{parts[1].decode('ascii')}" if _HL7_EVENT.fullmatch(parts[1]) else None
    if detail is not None and len(fields) > 11:
        version = fields[11].split(comp)[0]
        if _HL7_VERSION.fullmatch(version):
            detail = f"{detail} {version.decode('ascii')}"
    return Detection("hl7v2", detail)


# --- DICOM upper layer (PS3.8 section 9.3) -------------------------------------------------------------
PDU_ASSOCIATE_RQ = 0x01
PDU_ASSOCIATE_AC = 0x02
PDU_P_DATA_TF = 0x04
# PS3.8 9.3.2 / 9.3.3: type, reserved, PDU length, protocol version, reserved (2), called AE title
# (16), calling AE title (16), reserved (32): 74 bytes, then the variable items.
ASSOCIATE_HEADER = struct.Struct("!BBIH")
ASSOCIATE_FIXED = 74
ITEM_HEADER = struct.Struct("!BBH")  # item type, reserved, item length
U32 = struct.Struct("!I")
U32LE = struct.Struct("<I")
ELEMENT_HEADER = struct.Struct("<HHI")  # implicit VR little endian: group, element, value length
# PS3.7 Annex A.2.1: the DICOM application context name.
DICOM_APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
# PS3.5 9.1: a UID is at most 64 characters, digits and dots; PS3.8 F.1 allows no padding in the upper
# layer, but some implementations pad to an even length with NUL as PS3.5 does for values: tolerated.
MAX_UID = 64
_UID = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
# PS3.8 9.3.2.2 / 9.3.3.2: presentation context IDs are odd integers 1-255, so at most 128 contexts.
MAX_CONTEXTS = 128
# An A-ASSOCIATE-RQ of at most this size is read whole, to name the one abstract syntax it proposes;
# a larger one (a storage SCU proposing a hundred classes) is reported as soon as its first presentation
# context is read, so the detector never waits for more than the caller's bound.
WHOLE_ASSOCIATE = 4096
# PS3.7 E.1: a command set starts with (0000,0000) CommandGroupLength, UL, length 4.
COMMAND_GROUP_LENGTH = b"\x00\x00\x00\x00\x04\x00\x00\x00"
MAX_COMMAND_ELEMENTS = 32
TAG_AFFECTED_SOP_CLASS = 0x0002  # (0000,0002)
TAG_REQUESTED_SOP_CLASS = 0x0003  # (0000,0003), N-services

# PS3.6 Table A-1 names (as pydicom spells them; the tests check each against its dictionary) of the
# SOP classes a hospital's gateway is likely to carry. Other UIDs are reported as the UID itself.
SOP_CLASSES = {
    "1.2.840.10008.1.1": "Verification SOP Class",
    "1.2.840.10008.1.20.1": "Storage Commitment Push Model SOP Class",
    "1.2.840.10008.3.1.2.3.3": "Modality Performed Procedure Step SOP Class",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State Storage",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.6": "VL Whole Slide Microscopy Image Storage",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection Document Storage",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.481.1": "RT Image Storage",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose Storage",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan Storage",
    "1.2.840.10008.5.1.4.1.2.1.1": "Patient Root Query/Retrieve Information Model - FIND",
    "1.2.840.10008.5.1.4.1.2.1.2": "Patient Root Query/Retrieve Information Model - MOVE",
    "1.2.840.10008.5.1.4.1.2.1.3": "Patient Root Query/Retrieve Information Model - GET",
    "1.2.840.10008.5.1.4.1.2.2.1": "Study Root Query/Retrieve Information Model - FIND",
    "1.2.840.10008.5.1.4.1.2.2.2": "Study Root Query/Retrieve Information Model - MOVE",
    "1.2.840.10008.5.1.4.1.2.2.3": "Study Root Query/Retrieve Information Model - GET",
    "1.2.840.10008.5.1.4.31": "Modality Worklist Information Model - FIND",
}


def _uid(value: bytes) -> str | None:
    """A UID's text (PS3.5 9.1), one trailing NUL pad removed, or None when it is not one."""
    if value.endswith(b"\x00"):
        value = value[:-1]
    if len(value) > MAX_UID or _UID.fullmatch(value) is None:
        return None
    return value.decode("ascii")


def _sop_name(uid: str) -> str:
    return SOP_CLASSES.get(uid, uid)


def _ae_title(value: bytes) -> bool:
    """PS3.5 6.2 (AE): 16 bytes of the default repertoire without backslash or controls, space padded,
    not all spaces. Trailing NUL padding, which some implementations send, is tolerated."""
    value = value.rstrip(b"\x00")
    if not value.strip(b" "):
        return False
    return all(0x20 <= c <= 0x7E and c != 0x5C for c in value)


def _sub_items(data: bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    """The (type, start, end) of the sub-items in data[pos:end]; lengths must tile the item exactly."""
    out = []
    while pos < end:
        if pos + 4 > end:
            raise malformed("dicom sub-item header past item")
        stype, _, slen = ITEM_HEADER.unpack_from(data, pos)
        if pos + 4 + slen > end:
            raise malformed("dicom sub-item length past item")
        out.append((stype, pos + 4, pos + 4 + slen))
        pos += 4 + slen
    return out


def _presentation_context_rq(data: bytes, pos: int, end: int) -> str:
    """PS3.8 9.3.2.2: ID (odd), three reserved bytes, one abstract syntax, transfer syntaxes."""
    if end - pos < 4 or data[pos] % 2 == 0:
        raise malformed("dicom presentation context id")
    subs = _sub_items(data, pos + 4, end)
    if not subs or subs[0][0] != 0x30:
        raise malformed("dicom abstract syntax")
    if len(subs) < 2 or any(s[0] != 0x40 for s in subs[1:]):
        raise malformed("dicom transfer syntax")
    uids = [_uid(data[s:e]) for _, s, e in subs]
    abstract = uids[0]
    if abstract is None or None in uids:
        raise malformed("dicom uid")
    return abstract


def _presentation_context_ac(data: bytes, pos: int, end: int) -> None:
    """PS3.8 9.3.3.2: ID (odd), reserved, result/reason 0-4, reserved, one transfer syntax."""
    if end - pos < 4 or data[pos] % 2 == 0:
        raise malformed("dicom presentation context id")
    if data[pos + 2] > 4:
        raise malformed("dicom presentation context result")
    subs = _sub_items(data, pos + 4, end)
    if len(subs) != 1 or subs[0][0] != 0x40:
        raise malformed("dicom transfer syntax")
    # A rejected context's transfer syntax "shall not be tested" (9.3.3.2): checked only if accepted.
    if data[pos + 2] == 0 and _uid(data[subs[0][1] : subs[0][2]]) is None:
        raise malformed("dicom uid")


def _user_information(data: bytes, pos: int, end: int) -> None:
    """PS3.8 9.3.2.3 and PS3.7 Annex D.3.3: sub-items; maximum length is 4 bytes, UIDs are UIDs."""
    for stype, s, e in _sub_items(data, pos, end):
        if stype == 0x51 and e - s != 4:
            raise malformed("dicom maximum length")
        if stype == 0x52 and _uid(data[s:e]) is None:
            raise malformed("dicom implementation class uid")
        if stype == 0x55 and not 1 <= e - s <= 16:
            raise malformed("dicom implementation version name")


def _associate(stream: bytes) -> Detection | None:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) or A-ASSOCIATE-AC (9.3.3) at the start of `stream`."""
    n = len(stream)
    rq = stream[0] == PDU_ASSOCIATE_RQ
    if n >= 2 and stream[1] != 0:
        return None  # reserved, sent as 00H
    if n < 8:
        return None
    _, _, length, version = ASSOCIATE_HEADER.unpack_from(stream)
    # 9.3.2: protocol version bit 0 is version 1; the fixed fields take 68 bytes of the PDU length,
    # the application context item at least 4 + the DICOM name.
    if version != 1 or length < ASSOCIATE_FIXED - 6 + 4 + len(DICOM_APPLICATION_CONTEXT):
        return None
    if n < ASSOCIATE_FIXED + 4:
        return None
    if rq and not (_ae_title(stream[10:26]) and _ae_title(stream[26:42])):
        return None  # the AC echoes these fields "not tested" (9.3.3): checked on the RQ only
    itype, _, ilen = ITEM_HEADER.unpack_from(stream, ASSOCIATE_FIXED)
    if itype != 0x10 or not 1 <= ilen <= MAX_UID + 1:
        return None
    pos = ASSOCIATE_FIXED + 4
    if n < pos + ilen:
        return None
    name = stream[pos : pos + ilen]
    if name.rstrip(b"\x00") != DICOM_APPLICATION_CONTEXT:
        return None
    # Committed: a DICOM association. From here a contradiction is malformed.
    end = 6 + length
    pos += ilen
    if pos > end:
        raise malformed("dicom application context past pdu")
    abstracts: list[str] = []
    user_info = False
    contexts = 0
    while pos < end and pos + 4 <= n:
        itype, _, ilen = ITEM_HEADER.unpack_from(stream, pos)
        body, item_end = pos + 4, pos + 4 + ilen
        if item_end > end:
            raise malformed("dicom item length past pdu")
        if itype == (0x20 if rq else 0x21):
            contexts += 1
            if contexts > MAX_CONTEXTS:
                raise malformed("dicom too many presentation contexts")
        elif itype != 0x50:
            raise malformed("dicom item type")
        if item_end > n:
            break  # this item continues in bytes not seen yet
        if itype == 0x50:
            if user_info:
                raise malformed("dicom second user information item")
            _user_information(stream, body, item_end)
            user_info = True
        elif rq:
            abstracts.append(_presentation_context_rq(stream, body, item_end))
        else:
            _presentation_context_ac(stream, body, item_end)
        pos = item_end
        if end > WHOLE_ASSOCIATE and contexts:
            # A large PDU names no single class: one valid presentation context is enough, and the
            # walk of a hundred more would cost a millisecond on every such association.
            return Detection("dicom", "association")
    if pos >= end:
        # The whole PDU is here: PS3.8 9.3.2 asks for presentation contexts and user information.
        if not contexts or not user_info:
            raise malformed("dicom associate items missing")
        if rq and len(set(abstracts)) == 1:
            return Detection("dicom", _sop_name(abstracts[0]))
        return Detection("dicom", "association")
    return None


def _p_data(stream: bytes) -> Detection | None:
    """A P-DATA-TF (PS3.8 9.3.5) opening a stream whose association started before the capture.

    Only a first fragment that is a command is recognised: its command set starts with the
    CommandGroupLength element (PS3.7 E.1), which a data fragment's arbitrary bytes cannot promise.
    """
    n = len(stream)
    if n >= 2 and stream[1] != 0:
        return None
    if n < 12 + len(COMMAND_GROUP_LENGTH) + 4:
        return None
    length = U32.unpack_from(stream, 2)[0]
    pdv_length = U32.unpack_from(stream, 6)[0]
    # 9.3.5.1: each PDV item is a 4-byte length, a context ID (odd) and a message control header
    # (bit 0 command, bit 1 last fragment, other bits 0), so at least 2 bytes, within the PDU.
    if pdv_length < 2 + 12 or pdv_length + 4 > length:
        return None
    if stream[10] % 2 == 0 or stream[11] & 0xFC or not stream[11] & 0x01:
        return None
    if stream[12 : 12 + len(COMMAND_GROUP_LENGTH)] != COMMAND_GROUP_LENGTH:
        return None
    # Committed: a DICOM command. Walk its group 0000 elements (implicit VR little endian, PS3.7 6.3.1)
    # within the PDV and the bytes at hand, looking for the SOP class it acts on.
    group_length = U32LE.unpack_from(stream, 20)[0]
    command_end = 12 + pdv_length - 2
    if stream[11] & 0x02 and 24 + group_length > command_end:
        # The last fragment of a command holds the rest of its group (PS3.8 E.2).
        raise malformed("dicom command group length")
    pos = 24
    limit = min(command_end, 24 + group_length, n)
    for _ in range(MAX_COMMAND_ELEMENTS):
        if pos + 8 > limit:
            break
        group, element, vlen = ELEMENT_HEADER.unpack_from(stream, pos)
        if group != 0:
            raise malformed("dicom command element group")
        if pos + 8 + vlen > command_end and stream[11] & 0x02:
            raise malformed("dicom command element length")
        if element in (TAG_AFFECTED_SOP_CLASS, TAG_REQUESTED_SOP_CLASS) and pos + 8 + vlen <= n:
            uid = _uid(stream[pos + 8 : pos + 8 + vlen])
            if uid is None:
                raise malformed("dicom command sop class uid")
            return Detection("dicom", _sop_name(uid))
        pos += 8 + vlen
    return Detection("dicom", None)


# --- HTTP: DICOMweb (PS3.18) and FHIR REST (HL7 FHIR R4, http.html) ---------------------------------------
# PS3.18 8.7.3 and 10.x: DICOMweb media types; STOW-RS and WADO-RS multipart payloads name them in the
# multipart/related "type" parameter (RFC 2387).
DICOM_MEDIA = frozenset({b"application/dicom", b"application/dicom+json", b"application/dicom+xml"})
# FHIR R4 http.html 3.1.0.1.7 (Content Types and encodings): application/fhir+json|xml; the DSTU2
# forms application/json+fhir and application/xml+fhir are still sent by older clients.
FHIR_MEDIA = frozenset({
    b"application/fhir+json", b"application/fhir+xml", b"application/json+fhir", b"application/xml+fhir",
})
# FHIR R4 http.html 3.1.0.1.7: the _format parameter's values besides the media types.
FHIR_FORMAT_SHORT = frozenset({b"json", b"xml", b"ttl", b"turtle", b"html"})

# FHIR R4 (4.0.1) resourcelist.html: every resource type.
FHIR_RESOURCES = frozenset({
    "Account", "ActivityDefinition", "AdverseEvent", "AllergyIntolerance", "Appointment",
    "AppointmentResponse", "AuditEvent", "Basic", "Binary", "BiologicallyDerivedProduct",
    "BodyStructure", "Bundle", "CapabilityStatement", "CarePlan", "CareTeam", "CatalogEntry",
    "ChargeItem", "ChargeItemDefinition", "Claim", "ClaimResponse", "ClinicalImpression", "CodeSystem",
    "Communication", "CommunicationRequest", "CompartmentDefinition", "Composition", "ConceptMap",
    "Condition", "Consent", "Contract", "Coverage", "CoverageEligibilityRequest",
    "CoverageEligibilityResponse", "DetectedIssue", "Device", "DeviceDefinition", "DeviceMetric",
    "DeviceRequest", "DeviceUseStatement", "DiagnosticReport", "DocumentManifest", "DocumentReference",
    "EffectEvidenceSynthesis", "Encounter", "Endpoint", "EnrollmentRequest", "EnrollmentResponse",
    "EpisodeOfCare", "EventDefinition", "Evidence", "EvidenceVariable", "ExampleScenario",
    "ExplanationOfBenefit", "FamilyMemberHistory", "Flag", "Goal", "GraphDefinition", "Group",
    "GuidanceResponse", "HealthcareService", "ImagingStudy", "Immunization", "ImmunizationEvaluation",
    "ImmunizationRecommendation", "ImplementationGuide", "InsurancePlan", "Invoice", "Library",
    "Linkage", "List", "Location", "Measure", "MeasureReport", "Media", "Medication",
    "MedicationAdministration", "MedicationDispense", "MedicationKnowledge", "MedicationRequest",
    "MedicationStatement", "MedicinalProduct", "MedicinalProductAuthorization",
    "MedicinalProductContraindication", "MedicinalProductIndication", "MedicinalProductIngredient",
    "MedicinalProductInteraction", "MedicinalProductManufactured", "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical", "MedicinalProductUndesirableEffect", "MessageDefinition",
    "MessageHeader", "MolecularSequence", "NamingSystem", "NutritionOrder", "Observation",
    "ObservationDefinition", "OperationDefinition", "OperationOutcome", "Organization",
    "OrganizationAffiliation", "Parameters", "Patient", "PaymentNotice", "PaymentReconciliation",
    "Person", "PlanDefinition", "Practitioner", "PractitionerRole", "Procedure", "Provenance",
    "Questionnaire", "QuestionnaireResponse", "RelatedPerson", "RequestGroup", "ResearchDefinition",
    "ResearchElementDefinition", "ResearchStudy", "ResearchSubject", "RiskAssessment",
    "RiskEvidenceSynthesis", "Schedule", "SearchParameter", "ServiceRequest", "Slot", "Specimen",
    "SpecimenDefinition", "StructureDefinition", "StructureMap", "Subscription", "Substance",
    "SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation",
    "SubstanceSourceMaterial", "SubstanceSpecification", "SupplyDelivery", "SupplyRequest", "Task",
    "TerminologyCapabilities", "TestReport", "TestScript", "ValueSet", "VerificationResult",
    "VisionPrescription",
})
# The clinical resources (FHIR R4 module pages "Clinical", "Diagnostics", "Medications", "Workflow"
# and "Documents", restricted to those that carry a patient's record): a URL path naming one of them
# is evidence by itself. Generic names (Account, Group, List, Task, Location...) are too common in
# ordinary web routes to be.
FHIR_CLINICAL = frozenset({
    "AllergyIntolerance", "AdverseEvent", "BodyStructure", "CarePlan", "CareTeam", "ClinicalImpression",
    "Composition", "Condition", "DetectedIssue", "DiagnosticReport", "DocumentReference", "Encounter",
    "EpisodeOfCare", "FamilyMemberHistory", "Goal", "ImagingStudy", "Immunization",
    "MedicationAdministration", "MedicationDispense", "MedicationRequest", "MedicationStatement",
    "MolecularSequence", "NutritionOrder", "Observation", "Patient", "Procedure",
    "QuestionnaireResponse", "RelatedPerson", "RiskAssessment", "ServiceRequest", "Specimen",
})
_FHIR_RESOURCES_B = frozenset(r.encode() for r in FHIR_RESOURCES)
_FHIR_CLINICAL_B = frozenset(r.encode() for r in FHIR_CLINICAL)
# FHIR R4 datatypes.html#id: a logical id is 1-64 of [A-Za-z0-9\-\.]. A path id counts as FHIR only
# if it holds a digit: "/Patient/Details" is an MVC route, "/Patient/123" and UUIDs are ids.
_FHIR_ID = re.compile(rb"[A-Za-z0-9.-]{0,63}[0-9][A-Za-z0-9.-]{0,63}")
# FHIR R4 json.html: "resourceType" names the resource; xml.html: the root element in the FHIR namespace.
_FHIR_JSON_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]{1,64})"')
_FHIR_XML_TYPE = re.compile(rb'<([A-Za-z]{1,64})\s+xmlns\s*=\s*"http://hl7\.org/fhir"')
# How far into a body the detectors look for a resource type.
BODY_SCAN = 4096

_FIELD_INITIALS = frozenset({b"a", b"A", b"c", b"C", b"t", b"T"})
_REQUEST_LINE = re.compile(rb"([A-Z][A-Z-]*) (\S+) HTTP/1\.[0-9]\r?")
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] [1-5][0-9]{2}(?: [^\r\n]*)?\r?")
# PS3.18 10.6 (QIDO-RS) search keys besides attribute tags (8 hex digits) and keywords.
_QIDO_KEYS = frozenset({
    b"includefield", b"fuzzymatching", b"PatientID", b"PatientName", b"PatientBirthDate",
    b"StudyInstanceUID", b"SeriesInstanceUID", b"SOPInstanceUID", b"StudyDate", b"StudyTime",
    b"AccessionNumber", b"ModalitiesInStudy", b"Modality", b"ReferringPhysicianName", b"StudyID",
    b"StudyDescription", b"SeriesNumber", b"InstanceNumber",
})
_TAG_KEY = re.compile(rb"[0-9A-Fa-f]{8}")


def _media_types(value: bytes) -> list[tuple[bytes, bytes]]:
    """(type/subtype lower-cased, parameters lower-cased) of each media range in a header value."""
    out = []
    for part in value.split(b",")[:16]:
        base, _, params = part.partition(b";")
        out.append((base.strip(b" \t").lower(), params.lower()))
    return out


def _dicom_media(media: list[tuple[bytes, bytes]]) -> bool:
    for base, params in media:
        if base in DICOM_MEDIA:
            return True
        # RFC 2387 3.1: multipart/related names its root's type; PS3.18 8.7.3.3 uses application/dicom*.
        if base == b"multipart/related" and b"application/dicom" in params:
            return True
    return False


def _target(target: bytes) -> tuple[bytes, bytes]:
    """The path and the query of a request target (origin or absolute form, RFC 9112 3.2)."""
    path, _, query = target.partition(b"?")
    query = query.partition(b"#")[0]
    scheme = path.find(b"://")
    if scheme >= 0:
        slash = path.find(b"/", scheme + 3)
        path = path[slash:] if slash >= 0 else b"/"
    return path, query


def _params(query: bytes) -> dict[bytes, bytes]:
    """The first 32 parameters of a query, first value of each name. Parsed only when a path or a
    parameter name makes them matter: most requests never pay for it."""
    params: dict[bytes, bytes] = {}
    for pair in query.split(b"&", 32)[:32]:
        key, _, value = pair.partition(b"=")
        if key and key not in params:
            params[key] = value
    return params


def _qido_search(query: bytes) -> bool:
    """Whether a query holds a QIDO-RS search key (PS3.18 10.6.1.2: attribute tag or keyword,
    includefield, fuzzymatching)."""
    return bool(query) and any(k in _QIDO_KEYS or _TAG_KEY.fullmatch(k) for k in _params(query))


def _dicomweb_path(method: bytes, segments: list[bytes], query: bytes) -> str | None:
    """The DICOMweb service a request path names (PS3.18 10.4 WADO-RS, 10.5 STOW-RS, 10.6 QIDO-RS,
    and the WADO-URI query of PS3.18 9), or None."""
    if b"requestType=" in query and _params(query).get(b"requestType", b"").upper() == b"WADO":
        return "wado-uri"  # PS3.18 9.1.2: requestType=WADO is required on every WADO-URI request
    for i, seg in enumerate(segments):
        if seg != b"studies":
            continue
        rest = segments[i + 1 :]
        if rest and len(rest[0]) <= MAX_UID and _UID.fullmatch(rest[0]):
            if method in (b"POST", b"PUT"):
                return "stow-rs"
            if rest[-1] in (b"series", b"instances"):
                return "qido-rs"  # PS3.18 10.6.1: series or instances of one study
            return "wado-rs"
        if not rest or rest == [b""]:
            if method == b"POST":
                return None  # a POST to /studies is STOW only with a DICOM media type (checked apart)
            if _qido_search(query):
                return "qido-rs"
        return None
    if segments and segments[-1] in (b"series", b"instances") and _qido_search(query):
        return "qido-rs"
    return None


def _fhir_path(segments: list[bytes], clinical_only: bool) -> str | None:
    """The resource type a FHIR REST path names (R4 http.html 3.1.0: [base]/[type], /[type]/[id],
    /[type]/[id]/_history/[vid], /[type]/_search, /[type]/$[op]), scanning from the right."""
    names = _FHIR_CLINICAL_B if clinical_only else _FHIR_RESOURCES_B
    for i in range(len(segments) - 1, -1, -1):
        seg = segments[i]
        if seg not in names:
            continue
        rest = segments[i + 1 :]
        if rest and rest[-1] == b"":
            rest = rest[:-1]
        if not rest or rest[0] == b"_search" or rest[0].startswith(b"$"):
            ok = len(rest) <= 1
        else:
            ok = _FHIR_ID.fullmatch(rest[0]) is not None and (
                len(rest) == 1
                or (len(rest) == 2 and rest[1].startswith(b"$"))
                or (rest[1] == b"_history" and len(rest) <= 3)
            )
        if ok:
            return seg.decode("ascii")
        return None
    return None


def _body_detection(body: bytes) -> Detection | None:
    """A FHIR resource (JSON or XML), an HL7 v2 message or a DICOM file at the start of a body."""
    if body.startswith(b"MSH|"):
        return _hl7(body, 0, committed=False)
    # PS3.10 7.1: a DICOM file is a 128-byte preamble, then "DICM".
    if body[128:132] == b"DICM":
        return Detection("dicom", "file")
    window = body[:BODY_SCAN]
    found = _FHIR_JSON_TYPE.search(window)
    if found is not None and found.group(1) in _FHIR_RESOURCES_B:
        kind = found.group(1).decode("ascii")
        if kind == "Bundle":
            # FHIR R4 bundle.html: entries carry their resources; name the first one's type.
            entry = _FHIR_JSON_TYPE.search(window, found.end())
            if entry is not None and entry.group(1) in _FHIR_RESOURCES_B:
                kind = f"Bundle({entry.group(1).decode('ascii')})"
        return Detection("fhir", kind)
    if b"http://hl7.org/fhir" in window:
        found = _FHIR_XML_TYPE.search(window)
        if found is not None and found.group(1) in _FHIR_RESOURCES_B:
            return Detection("fhir", found.group(1).decode("ascii"))
    return None


def _http(stream: bytes) -> Detection | None:
    """DICOMweb or FHIR in an HTTP/1.x request or response: media types, paths, body."""
    end = stream.find(b"\r\n\r\n", 0, MAX_HEADERS)
    skip = 4
    if end < 0:
        end = stream.find(b"\n\n", 0, MAX_HEADERS)
        skip = 2
        if end < 0:
            return None  # the header section is not complete (or too long to be ours)
    first, _, fields = stream[:end].partition(b"\n")
    request = _REQUEST_LINE.fullmatch(first)
    method = target = b""
    if request is not None:
        method, target = request.group(1), request.group(2)
        if method not in METHODS:
            return None
    elif _STATUS_LINE.fullmatch(first) is None:
        return None
    media: list[tuple[bytes, bytes]] = []
    encoded = chunked = False
    for raw in fields.split(b"\n"):
        # Only Content-Type, Accept, Content-Encoding and Transfer-Encoding matter: a first-letter
        # test skips the other lines for a fraction of what parsing them costs.
        if raw[:1] not in _FIELD_INITIALS:
            continue
        name, colon, value = raw.partition(b":")
        if not colon:
            continue
        name = name.strip(b" \t").lower()
        if name in (b"content-type", b"accept"):
            media += _media_types(value.strip(b" \t\r"))
        elif name == b"content-encoding":
            encoded = value.strip(b" \t\r").lower() not in (b"", b"identity")
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    segments: list[bytes] = []
    query = b""
    service = None
    if target:
        path, query = _target(target)
        segments = path.split(b"/")
        service = _dicomweb_path(method, segments, query)
    if _dicom_media(media):
        if service is None and method == b"POST":
            service = "stow-rs"  # PS3.18 10.5: STOW-RS posts DICOM media to [base]/studies[/uid]
        return Detection("dicomweb", service)
    if service is not None:
        return Detection("dicomweb", service)
    fhir_media = any(base in FHIR_MEDIA for base, _ in media)
    body = b""
    if not encoded:
        body = stream[end + skip :]
        if chunked:
            # RFC 9112 7.1: chunk-size [ext] CRLF, then the chunk's bytes.
            line_end = body.find(b"\n", 0, 256)
            body = body[line_end + 1 :] if line_end >= 0 else b""
        found = _body_detection(body)
        if found is not None:
            return found
    fmt = b""
    if b"_format=" in query:
        fmt = _params(query).get(b"_format", b"").lower().replace(b"%2b", b"+").replace(b"%2f", b"/")
        fmt = fmt.partition(b";")[0]
    if fhir_media or fmt in FHIR_MEDIA:
        return Detection("fhir", _fhir_path(segments, clinical_only=False))
    if fmt in FHIR_FORMAT_SHORT:
        kind = _fhir_path(segments, clinical_only=False)
        if kind is not None or (segments and segments[-1] == b"metadata"):
            return Detection("fhir", kind)
    kind = _fhir_path(segments, clinical_only=True)
    if kind is not None:
        return Detection("fhir", kind)
    # FHIR R4 http.html 3.1.0.11: [base]/metadata, counted when the base names FHIR.
    if len(segments) > 1 and segments[-1] == b"metadata" and any(b"fhir" in s.lower() for s in segments):
        return Detection("fhir", None)
    return None


# --- HPRIM --------------------------------------------------------------------------------------------
# HPRIM Santé 2.x (H.PR.I.M. recommendation, after ASTM E1238/E1394): the first record is the header
# "H|" then four delimiters (repetition, component, escape, sub-component; "~^\&" in the examples of
# version 2.2, other orders seen in the field), then fields: file name, password, sender, address,
# message type (ORU, ADM, FAC, REG, ERR...), ..., processing ID, version ("H2.2^C", "H2.0"), date.
# Records follow as "P|", "OBR|", "OBX|", "C|", "A|" (continuation) and end with "L|".
_HPRIM_DELIMITERS = frozenset(bytes(p) for p in permutations(b"~^\\&"))
_HPRIM_VERSION = re.compile(rb"H[0-9]\.[0-9]")
_HPRIM_TYPES = frozenset({b"ORU", b"ORM", b"ADM", b"FAC", b"REG", b"ERR", b"ACK", b"INF"})
# HPRIM Médecins 3.0 (H.PR.I.M., March 1997) and HPRIM Net: a 12-line header, free text, an optional
# "****LAB****" line opening coded results (RES|, TEX| lines), "****FIN****" closing a report and
# "****FINFICHIER****" closing the file; each marker stands alone on its line.
_HPRIM_MARKER = re.compile(rb"\*\*\*\*(?:FIN|LAB|FINFICHIER)\*\*\*\*[ \t]*\r?\n")
MAX_HITS = 64  # occurrences of each needle examined per stream (markdown rules are made of stars)


def _hprim_sante(stream: bytes, start: int) -> Detection | None:
    """An HPRIM Santé header record at `start` (which holds "H|")."""
    if stream[start + 2 : start + 6] not in _HPRIM_DELIMITERS or stream[start + 6 : start + 7] != b"|":
        return None
    line_end = _HL7_SEGMENT_END.search(stream, start, start + 1024)
    if line_end is None:
        return None
    fields = stream[start : line_end.start()].split(b"|")
    if len(fields) > 12 and _HPRIM_VERSION.match(fields[12]):
        return Detection("hprim", "sante")
    if len(fields) > 6 and fields[6] in _HPRIM_TYPES:
        return Detection("hprim", "sante")
    return None


def _text(stream: bytes) -> Detection | None:
    """Health messages at a line start anywhere in a text stream (an HTTP or SMTP body, a file copy):
    HL7 "MSH|", an HPRIM Santé header, an HPRIM Médecins marker line. Not committed: never raises.

    Each needle is looked for at most `MAX_HITS` times. A one-byte memchr ("|", "*") comes first: it
    costs about 0.2 µs per 16 KiB where a multi-byte search costs about 8, and most text has no pipe.
    """
    if b"|" in stream:
        pos = stream.find(b"MSH|")
        for _ in range(MAX_HITS):
            if pos < 0:
                break
            if pos == 0 or stream[pos - 1] in b"\r\n":
                found = _hl7(stream, pos, committed=False)
                if found is not None:
                    return found
            pos = stream.find(b"MSH|", pos + 4)
        pos = stream.find(b"|~^\\&|")
        for _ in range(MAX_HITS):
            if pos < 0:
                break
            if pos >= 1 and stream[pos - 1] == 0x48 and (pos == 1 or stream[pos - 2] in b"\r\n"):  # "H"
                found = _hprim_sante(stream, pos - 1)
                if found is not None:
                    return found
            pos = stream.find(b"|~^\\&|", pos + 6)
    if b"*" in stream:
        pos = stream.find(b"****")
        for _ in range(MAX_HITS):
            if pos < 0:
                break
            if (pos == 0 or stream[pos - 1] in b"\r\n") and _HPRIM_MARKER.match(stream, pos):
                return Detection("hprim", "medecins")
            pos = stream.find(b"****", pos + 4)
    return None


# --- entry points -------------------------------------------------------------------------------------
# First bytes no detector accepts: controls other than TAB/LF/CR and the binary PDU types. A TLS record
# (0x14-0x17), an SSH binary packet, a QUIC or DNS message stop here for one comparison.
_BINARY_STARTS = frozenset(range(0x20)) - {0x09, 0x0A, 0x0D, MLLP_START} - {
    PDU_ASSOCIATE_RQ, PDU_ASSOCIATE_AC, PDU_P_DATA_TF,
} | {0x7F}


def could_be_health(stream: bytes) -> bool:
    """Whether `detect` may still find a health protocol in this stream once more bytes arrive.

    False only on a first byte that no detector accepts, or a DICOM PDU header that already fails.
    """
    if not stream:
        return True
    first = stream[0]
    if first in _BINARY_STARTS:
        return False
    if first in (PDU_ASSOCIATE_RQ, PDU_ASSOCIATE_AC, PDU_P_DATA_TF):
        if len(stream) >= 2 and stream[1] != 0:
            return False
        return not (first != PDU_P_DATA_TF and len(stream) >= 8 and stream[6:8] != b"\x00\x01")
    if first == MLLP_START:
        return b"MSH|".startswith(stream[1:5])
    return True


def detect(stream: bytes, outward: bool) -> Detection | None:
    """The health protocol that the first bytes of one direction of a flow carry.

    Args:
        stream: the direction's bytes from its start, reassembled and bounded by the caller.
        outward: whether the direction is the flow opener's. Accepted for the inspector's sake, it does
            not change the answer: a flow's opener is a guess when its SYN was not captured, and every
            detector reads requests and answers alike.

    Returns:
        A `Detection`, or None when the bytes are not (or not yet) a health protocol.

    Raises:
        MalformedPacket: a committed parser (MLLP + MSH, DICOM association or command) met bytes that
            contradict its specification.
    """
    del outward  # see the docstring: the answer must not depend on a guess
    if not stream:
        return None
    first = stream[0]
    if first in _BINARY_STARTS:
        return None
    if first == MLLP_START:
        if not b"MSH".startswith(stream[1:4]) or len(stream) < 4:
            return None  # not HL7 in MLLP, or not yet
        return _hl7(stream, 1, committed=True)
    if first in (PDU_ASSOCIATE_RQ, PDU_ASSOCIATE_AC):
        return _associate(stream)
    if first == PDU_P_DATA_TF:
        return _p_data(stream)
    if first == 0x48 and stream.startswith(b"H|"):  # "H"
        found = _hprim_sante(stream, 0)
        if found is not None:
            return found
    elif (first == 0x48 and stream.startswith(b"HTTP/1.")) or looks_like_http(stream[:24]):
        found = _http(stream)
        if found is not None:
            return found
    return _text(stream)
