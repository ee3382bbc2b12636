"""Identifier detectors: NIR, INS, RPPS, INE and UAI counted in plaintext, never revealed.

Vectors come from their sources: python-stdnum's NIR doctests (stdnum/fr/nir.py), the ANS CI-SIS
teleradiology HL7 example (PID-3 with the INS-NIR test OID), RPPS numbers ANS publishes in its
FHIR examples, and UAI codes of two Paris lycées. Other valid numbers are built here with the key
rule written out again, independently of the module.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from douane.daemon.identifiers import CONTEXT_WINDOW, DETECTORS, scan_identifiers

HL7_PCAP = Path("/work/shared/corpus/pcap/hl7.pcap")

# --- builders (independent of the module) -------------------------------------------------------


def nir_key(body: str) -> str:
    """The 2-digit key of a 13-character NIR body: 97 - (n mod 97), 2A read as 19, 2B as 18."""
    dept = {"2A": "19", "2B": "18"}.get(body[5:7], body[5:7])
    return f"{97 - int(body[:5] + dept + body[7:]) % 97:02d}"


def nir(body: str) -> str:
    """A 13-character body with its valid key appended."""
    return body + nir_key(body)


def bad_key(body: str) -> str:
    """A 13-character body with a wrong key appended."""
    return body + f"{(int(nir_key(body)) % 97) + 1:02d}"


def spaced(n: str) -> str:
    """The printed form "1 84 12 75 123 456 78" (metropolitan grouping)."""
    return " ".join((n[0], n[1:3], n[3:5], n[5:7], n[7:10], n[10:13], n[13:]))


def luhn_complete(digits: str) -> str:
    """Append the Luhn check digit to a string of digits."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2 == 0:  # doubled: the check digit will be at index 0 from the right
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


UAI_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


def uai(seven: str) -> str:
    """A UAI: 7 digits and the letter indexed by their value mod 23."""
    return seven + UAI_LETTERS[int(seven) % 23]


MAN_PARIS = nir("1841275123456")  # man, Dec 1984, Paris (75), commune 123, order 456
STDNUM_VALID = ("295109912611193", "253072B07300470", "253072A07300443")  # stdnum doctests
ANS_TLR_INS = "279035121518989"  # ANS CI-SIS TLR HL7 example, INS-NIR test OID
RPPS_ANS = ("10000001916", "99700218896", "01234567897")  # Luhn-valid values in ANS examples
UAI_PARIS = ("0750654D", "0750699C")  # lycée Louis-le-Grand, lycée Henri-IV

# --- strategies ---------------------------------------------------------------------------------

SEXES = "123478"
MONTHS = [f"{m:02d}" for m in (*range(1, 13), *range(20, 43), *range(50, 100))]
SEPARATORS = b'\n\t,;|^"<>=&/'  # never glued to an identifier, never a space (spaces join groups)


@st.composite
def nir_bodies(draw: st.DrawFn) -> str:
    """13-character NIR bodies that follow every structural rule."""
    sex = draw(st.sampled_from(SEXES))
    year = f"{draw(st.integers(0, 99)):02d}"
    month = draw(st.sampled_from(MONTHS))
    kind = draw(st.sampled_from(("metro", "corsica", "overseas", "abroad")))
    if kind == "metro":
        place = f"{draw(st.integers(1, 96)):02d}{draw(st.integers(1, 999)):03d}"
    elif kind == "corsica":
        place = draw(st.sampled_from(("2A", "2B"))) + f"{draw(st.integers(1, 999)):03d}"
    elif kind == "overseas":
        place = f"{draw(st.integers(970, 989))}{draw(st.integers(1, 99)):02d}"
    else:
        place = f"99{draw(st.integers(1, 999)):03d}"
    order = f"{draw(st.integers(1, 999)):03d}"
    return sex + year + month + place + order


def printed(n: str, form: int) -> str:
    """One of the printed forms: unspaced, fully spaced, or only the key apart."""
    if form == 0:
        return n
    if form == 1:
        return spaced(n)
    return n[:13] + " " + n[13:]


# --- DETECTORS -----------------------------------------------------------------------------------


class TestDetectors:
    def test_names(self) -> None:
        """The detector names are the five identifiers, each once."""
        assert DETECTORS == ("nir", "ins", "rpps", "ine", "uai")


# --- CONTEXT_WINDOW ------------------------------------------------------------------------------


class TestContextWindow:
    @pytest.mark.parametrize(
        ("keyword", "value", "name"),
        [
            (b"1.2.250.1.213.1.4.8", MAN_PARIS.encode(), "ins"),
            (b"RPPS", RPPS_ANS[0].encode(), "rpps"),
            (b"INE", b"1234567890A", "ine"),
            (b"UAI", UAI_PARIS[0].encode(), "uai"),
        ],
    )
    def test_gap_at_the_limit(self, keyword: bytes, value: bytes, name: str) -> None:
        """A keyword counts up to CONTEXT_WINDOW bytes before or after a value, not one byte more."""
        gap = b"." * CONTEXT_WINDOW
        far = b"." * (CONTEXT_WINDOW + 1)
        assert scan_identifiers(keyword + gap + value).get(name) == 1
        assert scan_identifiers(value + gap + keyword).get(name) == 1
        assert name not in scan_identifiers(keyword + far + value)
        assert name not in scan_identifiers(value + far + keyword)

    def test_one_keyword_vouches_for_several_values(self) -> None:
        """Every value inside the window of a keyword counts, not only the nearest."""
        data = b"rpps: " + b", ".join(v.encode() for v in RPPS_ANS)
        assert scan_identifiers(data) == {"rpps": 3}


# --- scan_identifiers ----------------------------------------------------------------------------


class TestScanIdentifiers:
    # NIR: keys and structure

    @pytest.mark.parametrize("value", [*STDNUM_VALID, ANS_TLR_INS, MAN_PARIS])
    def test_nir_valid_key(self, value: str) -> None:
        """A NIR with a valid key counts once, with no context needed."""
        assert scan_identifiers(f"assure: {value}\n".encode()) == {"nir": 1}

    @pytest.mark.parametrize(
        "value", ["295109912611199", bad_key("1841275123456"), bad_key("253072A073004")]
    )
    def test_nir_invalid_key(self, value: str) -> None:
        """A well-formed NIR with a wrong key does not count."""
        assert scan_identifiers(value.encode()) == {}

    def test_nir_key_97(self) -> None:
        """A body that is a multiple of 97 has key 97 (never 00)."""
        n = next(b for b in (f"18412751{i:05d}" for i in range(100_000)) if int(b) % 97 == 0)
        assert nir_key(n) == "97"
        assert scan_identifiers((n + "97").encode()) == {"nir": 1}
        assert scan_identifiers((n + "00").encode()) == {}

    def test_corsica(self) -> None:
        """2A and 2B count with the key computed as if they were 19 and 18, and with no other key."""
        for dept, as_digits in (("2A", "19"), ("2B", "18")):
            body = "2850" + "5" + dept + "004123"
            assert scan_identifiers(nir(body).encode()) == {"nir": 1}
            assert nir_key(body) == nir_key(body.replace(dept, as_digits))
            assert scan_identifiers(bad_key(body).encode()) == {}
        # 2A and 2B have different keys for the same digits otherwise.
        assert nir_key("185052A004123") != nir_key("185052B004123")

    @pytest.mark.parametrize(
        ("body", "why"),
        [
            ("5841275123456", "sex 5"),
            ("0841275123456", "sex 0"),
            ("9841275123456", "sex 9"),
            ("1840075123456", "month 00"),
            ("1841375123456", "month 13"),
            ("1841975123456", "month 19"),
            ("1844375123456", "month 43"),
            ("1844975123456", "month 49"),
            ("1841200123456", "department 00"),
            ("1841275000456", "commune 000"),
            ("1841275123000", "order 000"),
            ("1841297100456", "overseas commune 00"),
            ("1841299000456", "country 000"),
            ("184122C123456", "department 2C"),
        ],
    )
    def test_nir_structure_refused(self, body: str, why: str) -> None:
        """A number that breaks a structural rule does not count, whatever its key."""
        candidates = [body + f"{k:02d}" for k in range(100)] if "C" not in body else [body + "00"]
        for value in candidates:
            assert scan_identifiers(value.encode()) == {}, why

    @pytest.mark.parametrize(
        "body",
        [
            "3841275123456",  # sex 3
            "4841275123456",  # sex 4
            "7841299123456",  # provisional number, born abroad
            "8841299123456",  # NIA
            "1842075123456",  # month 20
            "1844275123456",  # month 42
            "1845075123456",  # month 50
            "1849975123456",  # month 99
            "1841296123456",  # department 96 (Tunisia before 1964)
            "1841297112456",  # overseas: 971, commune 12
            "1841298812456",  # overseas: 988, commune 12
            "1841299352456",  # abroad: 99, country 352
        ],
    )
    def test_nir_structure_accepted(self, body: str) -> None:
        """Every documented range of sex, month and place counts with its key."""
        assert scan_identifiers(nir(body).encode()) == {"nir": 1}

    # NIR: printed forms and boundaries

    @pytest.mark.parametrize(
        "form",
        [
            "1 84 12 75 123 456 KK",
            "1841275123456 KK",
            "1841275123456KK",
            "1 84 12 75 123 456KK",
            "184 12 75123 456 KK",
        ],
    )
    def test_nir_spacing(self, form: str) -> None:
        """Spaced, unspaced and key-apart forms count (spaces only at group boundaries)."""
        value = form.replace("KK", nir_key("1841275123456"))
        assert scan_identifiers(f"NSS {value}.".encode()) == {"nir": 1}

    def test_nir_overseas_spacing(self) -> None:
        """An overseas place counts printed as its 3-digit department and 2-digit commune."""
        n = nir("2850597123456")
        value = " ".join((n[0], n[1:3], n[3:5], n[5:8], n[8:10], n[10:13], n[13:]))
        assert scan_identifiers(value.encode()) == {"nir": 1}

    @pytest.mark.parametrize(
        "value",
        [
            "1  84 12 75 123 456 40",  # two spaces
            "1-84-12-75-123-456-40",  # dashes are not a printed form we count
            "18 41 27 51 23 45 64 0",  # pairs, as a phone number is printed
        ],
    )
    def test_nir_other_separators(self, value: str) -> None:
        """Separators other than single spaces at group boundaries do not make a NIR."""
        assert MAN_PARIS == "184127512345640"
        assert scan_identifiers(value.encode()) == {}

    @pytest.mark.parametrize(
        ("before", "after"),
        [("1", ""), ("", "1"), ("a", ""), ("", "Z"), ("0", "0")],
    )
    def test_nir_glued(self, before: str, after: str) -> None:
        """A digit or letter glued before or after hides the NIR (it is part of a longer token)."""
        assert scan_identifiers(f"{before}{MAN_PARIS}{after}".encode()) == {}

    def test_nir_underscore_is_a_boundary(self) -> None:
        """An underscore is not a letter or digit: "nir_184..." still counts."""
        assert scan_identifiers(f"nir_{MAN_PARIS}".encode()) == {"nir": 1}

    def test_nir_spaced_glued(self) -> None:
        """A spaced NIR with a digit glued to its first or last group does not count."""
        s = spaced(MAN_PARIS)
        assert scan_identifiers(("9" + s).encode()) == {}
        assert scan_identifiers((s + "9").encode()) == {}

    @pytest.mark.parametrize("label", [b'"imei": "', b"IMEI=", b'"imsi":"', b"IMSI "])
    def test_nir_vetoed_by_imei_imsi(self, label: bytes) -> None:
        """A NIR-looking number labelled IMEI or IMSI just before it is not counted."""
        assert scan_identifiers(label + MAN_PARIS.encode()) == {}

    def test_nir_veto_window(self) -> None:
        """The IMEI/IMSI label vetoes only within 32 bytes before the number."""
        assert scan_identifiers(b"imei" + b"." * 28 + MAN_PARIS.encode()) == {}
        assert scan_identifiers(b"imei" + b"." * 29 + MAN_PARIS.encode()) == {"nir": 1}
        assert scan_identifiers(MAN_PARIS.encode() + b" imei") == {"nir": 1}

    def test_nir_several(self) -> None:
        """Each NIR in the window counts; the count is the number of occurrences."""
        data = "|".join([MAN_PARIS, *STDNUM_VALID, MAN_PARIS]).encode()
        assert scan_identifiers(data) == {"nir": 5}

    # INS

    def test_ins_hl7_pid3(self) -> None:
        """HL7 v2 PID-3 with the INS-NIR test OID as assigning authority (ANS CI-SIS TLR example)."""
        pid = (
            b"PID|||" + ANS_TLR_INS.encode() + b"^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
            b"^^20101207||PAT-TROIS^DOMINIQUE^DOMINIQUE^^^^L||19790328|F\r"
        )
        assert scan_identifiers(b"MSH|^~\\&|App|Fac|TLR|Fac|20260106||ORM^O01|1|P|2.5.1\r" + pid) == {
            "nir": 1,
            "ins": 1,
        }

    @pytest.mark.parametrize("oid", ["8", "9", "10", "11"])
    def test_ins_fhir(self, oid: str) -> None:
        """FHIR Patient.identifier with each INS system counts as ins."""
        resource = {
            "resourceType": "Patient",
            "identifier": [
                {
                    "use": "official",
                    "system": f"urn:oid:1.2.250.1.213.1.4.{oid}",
                    "value": MAN_PARIS,
                }
            ],
        }
        assert scan_identifiers(json.dumps(resource).encode()) == {"nir": 1, "ins": 1}

    @pytest.mark.parametrize("oid", ["8", "9", "10", "11"])
    def test_ins_cda(self, oid: str) -> None:
        """CDA patientRole/id with an INS root counts as ins, a NIA (sex 8) included."""
        nia = nir("8850599352123")
        xml = f'<patientRole><id root="1.2.250.1.213.1.4.{oid}" extension="{nia}"/></patientRole>'
        assert scan_identifiers(xml.encode()) == {"nir": 1, "ins": 1}

    def test_ins_type_code_without_oid(self) -> None:
        """The FR Core identifier type code INS-NIR vouches like the OID does."""
        data = b'"type":{"coding":[{"code":"INS-NIR"}]},"value":"' + MAN_PARIS.encode() + b'"'
        assert scan_identifiers(data) == {"nir": 1, "ins": 1}

    @pytest.mark.parametrize(
        "oid",
        [
            "1.2.250.1.213.1.4.8.99999.201",  # a document id under the authority, not the authority
            "1.2.250.1.213.1.4.80",
            "1.2.250.1.213.1.4.12",
            "1.2.250.1.213.1.4.2",
        ],
    )
    def test_ins_other_oids(self, oid: str) -> None:
        """An OID that is not an INS authority does not make a NIR an INS."""
        data = f'<id root="{oid}" extension="{MAN_PARIS}"/>'.encode()
        assert scan_identifiers(data) == {"nir": 1}

    def test_ins_needs_a_valid_nir(self) -> None:
        """An INS OID next to a number with a wrong key counts nothing."""
        data = f'<id root="1.2.250.1.213.1.4.8" extension="{bad_key("1841275123456")}"/>'.encode()
        assert scan_identifiers(data) == {}

    # RPPS

    @pytest.mark.parametrize("value", RPPS_ANS)
    def test_rpps_with_keyword(self, value: str) -> None:
        """An 11-digit number with a valid Luhn digit next to "RPPS" counts."""
        assert scan_identifiers(f"N° RPPS : {value}".encode()) == {"rpps": 1}

    @pytest.mark.parametrize(
        "data",
        [
            b'{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810000001916"}',
            b'<id root="1.2.250.1.71.4.2.1" extension="899700218896"/>',
            b"ORC|NW|1||||||||||810000001916^DUPONT^JEAN^^^DR^^^ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO",
            b'"idNatPs": "810000001916"',
            b'{"code": "IDNPS", "value": "810000001916"}',
            b"rppsNumber=10000001916",
            b"identifiant national de PS 810000001916",
        ],
    )
    def test_rpps_forms(self, data: bytes) -> None:
        """RPPS and "8" + RPPS (idNatPs) count in FHIR, CDA, HL7 v2 and plain keyword forms."""
        assert scan_identifiers(data) == {"rpps": 1}

    def test_rpps_without_context(self) -> None:
        """A Luhn-valid 11-digit number with no keyword nearby does not count."""
        assert scan_identifiers(f"order {RPPS_ANS[0]} shipped".encode()) == {}

    def test_rpps_bad_luhn(self) -> None:
        """A number next to "RPPS" whose Luhn digit is wrong does not count."""
        value = RPPS_ANS[0][:-1] + str((int(RPPS_ANS[0][-1]) + 1) % 10)
        assert scan_identifiers(f"RPPS {value}".encode()) == {}

    @pytest.mark.parametrize("value", ["1000000191", "100000019160", "7" + RPPS_ANS[0], "a10000001916"])
    def test_rpps_shape(self, value: str) -> None:
        """Ten or twelve digits (unless the prefix is 8), or a glued letter, are not an RPPS."""
        assert scan_identifiers(f"RPPS {value}".encode()) == {}

    # INE

    @pytest.mark.parametrize("value", ["1234567890A", "123456789AB", "1234A12345F", "0123456789z"])
    def test_ine_shapes(self, value: str) -> None:
        """The three published INE shapes count next to "INE"."""
        assert scan_identifiers(f"INE : {value}".encode()) == {"ine": 1}

    @pytest.mark.parametrize(
        "keyword",
        [
            b"ine",
            b"<INE_RNIE>",
            b"<ID_NATIONAL>",
            b'"ineEleve": ',
            b"numeroINE=",
            b'"codeIne": ',
            "Identifiant national élève :".encode(),
            "identifiant national de l'élève".encode("latin-1"),
            b"identifiant_national_etudiant",
        ],
    )
    def test_ine_keywords(self, keyword: bytes) -> None:
        """Each INE keyword form vouches for an INE next to it."""
        assert scan_identifiers(keyword + b" 1234567890A") == {"ine": 1}

    @pytest.mark.parametrize("word", [b"online", b"MACHINE", b"Ines", b"inert", b"routine", b"INEXACT"])
    def test_ine_not_keywords(self, word: bytes) -> None:
        """Words that contain "ine" are not the INE keyword."""
        assert scan_identifiers(word + b" 1234567890A") == {}

    @pytest.mark.parametrize("value", ["12345678901", "1234567890AB", "12345678AB1", "A1234567890"])
    def test_ine_wrong_shapes(self, value: str) -> None:
        """Other shapes of 11 or 12 characters are not an INE, even next to "INE"."""
        assert scan_identifiers(f"INE {value}".encode()) == {}

    def test_ine_without_context(self) -> None:
        """An INE shape with no keyword nearby does not count."""
        assert scan_identifiers(b"ref 1234567890A") == {}

    # UAI

    @pytest.mark.parametrize(
        "value", [*UAI_PARIS, "0750654d", uai("6200001"), uai("7200020"), uai("9710100")]
    )
    def test_uai_valid(self, value: str) -> None:
        """A UAI with a valid check letter counts next to "UAI", Corsica (620, 720) and overseas too."""
        assert scan_identifiers(f"UAI={value}".encode()) == {"uai": 1}

    @pytest.mark.parametrize(
        "keyword",
        [b"uai", b"RNE", b"rne:", b"<NUMERO_UAI>", b'"codeUai": ', "code établissement".encode()],
    )
    def test_uai_keywords(self, keyword: bytes) -> None:
        """Each UAI keyword form vouches for a UAI next to it."""
        assert scan_identifiers(keyword + b" 0750654D") == {"uai": 1}

    def test_uai_wrong_letter(self) -> None:
        """Every letter but the right one is refused."""
        for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            expected = {"uai": 1} if letter == "D" else {}
            assert scan_identifiers(f"UAI 0750654{letter}".encode()) == expected, letter

    @pytest.mark.parametrize("seven", ["0000001", "0960001", "1750654", "5000001", "6210001"])
    def test_uai_department(self, seven: str) -> None:
        """A UAI whose first three digits are no department code does not count."""
        assert scan_identifiers(f"UAI {uai(seven)}".encode()) == {}

    def test_uai_without_context(self) -> None:
        """A valid UAI with no keyword nearby does not count (see the module docstring: hex dumps)."""
        assert scan_identifiers(b"0750654D 0750699C") == {}

    def test_uai_quai(self) -> None:
        """"quai" (a French word) is not the UAI keyword."""
        assert scan_identifiers(b"12 quai 0750654D") == {}

    # all together, real captures, privacy

    def test_everything_at_once(self) -> None:
        """One payload with every kind of identifier counts each under its name."""
        note = "x" * CONTEXT_WINDOW  # keeps the INS OID away from the second NIR
        data = (
            f'{{"patient": {{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "{MAN_PARIS}"}},'
            f' "note": "{note}", "nss": "{spaced(STDNUM_VALID[0])}",'
            f' "prescriber": {{"rpps": "{RPPS_ANS[0]}"}},'
            f' "eleve": {{"ine": "1234567890A", "uai": "{UAI_PARIS[0]}"}}}}'
        ).encode()
        assert scan_identifiers(data) == {"nir": 2, "ins": 1, "rpps": 1, "ine": 1, "uai": 1}

    def test_ins_window_takes_every_nir(self) -> None:
        """Every valid NIR within the window of an INS OID counts as ins, not only the nearest."""
        data = f'"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "{MAN_PARIS}", "nss": "{ANS_TLR_INS}"'
        assert scan_identifiers(data.encode()) == {"nir": 2, "ins": 2}

    @pytest.mark.skipif(not HL7_PCAP.exists(), reason="shared corpus not mounted")
    def test_corpus_hl7_capture(self) -> None:
        """The corpus HL7 ADT^A01 (US test patient, no French identifier) counts nothing."""
        from scapy.packet import Raw
        from scapy.utils import rdpcap

        for pkt in rdpcap(str(HL7_PCAP)):
            if Raw in pkt:
                assert scan_identifiers(bytes(pkt[Raw].load)) == {}

    @pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
    def test_bytes_like(self, kind: type) -> None:
        """bytes, bytearray and memoryview give the same answer."""
        data = f"RPPS {RPPS_ANS[0]} {MAN_PARIS}".encode()
        assert scan_identifiers(kind(data)) == {"nir": 1, "rpps": 1}

    def test_empty(self) -> None:
        """Empty input counts nothing."""
        assert scan_identifiers(b"") == {}

    def test_privacy(self) -> None:
        """The result holds names and counts only: no digit run of any identifier it found."""
        values = [MAN_PARIS, ANS_TLR_INS, RPPS_ANS[0], "1234567890A", UAI_PARIS[0]]
        data = (
            f"INS 1.2.250.1.213.1.4.8 {MAN_PARIS} {ANS_TLR_INS} RPPS {RPPS_ANS[0]} "
            f"INE 1234567890A UAI {UAI_PARIS[0]}"
        ).encode()
        result = scan_identifiers(data)
        assert set(result) <= set(DETECTORS)
        assert all(type(v) is int for v in result.values())
        text = repr(result) + json.dumps(result)
        for value in values:
            for i in range(len(value) - 2):
                assert value[i : i + 3] not in text

    # properties

    @given(
        body=nir_bodies(),
        form=st.integers(0, 2),
        before=st.binary(max_size=200),
        after=st.binary(max_size=200),
        sep1=st.sampled_from(SEPARATORS),
        sep2=st.sampled_from(SEPARATORS),
    )
    def test_valid_nir_always_found(
        self, body: str, form: int, before: bytes, after: bytes, sep1: int, sep2: int
    ) -> None:
        """A generated valid NIR embedded in random bytes is always found (unless labelled IMEI/IMSI)."""
        assume(not re.search(rb"(?i)imei|imsi", before))
        value = printed(nir(body), form).encode()
        data = before + bytes([sep1]) + value + bytes([sep2]) + after
        assert scan_identifiers(data).get("nir", 0) >= 1

    @given(data=st.binary(max_size=2048))
    @example(data=b"1 84 12 75 123 456 7" * 10)
    @example(data=b"INE rpps UAI 1.2.250.1.213.1.4.8 " * 5)
    def test_never_raises_random_bytes(self, data: bytes) -> None:
        """Random bytes never raise and give only detector names with positive counts."""
        result = scan_identifiers(data)
        assert set(result) <= set(DETECTORS)
        assert all(type(v) is int and v > 0 for v in result.values())

    @given(
        parts=st.lists(
            st.one_of(
                st.sampled_from(
                    [b"INE", b"ine", b"RPPS", b"uai", b"RNE", b"1.2.250.1.213.1.4.8", b"INS-NIR",
                     b"1.2.250.1.71.4.2.1", b"2A", b"2B", b" ", b"8", b"^", b'"', b"A", b"D"]
                ),
                st.text(alphabet="0123456789 ", max_size=20).map(str.encode),
            ),
            max_size=60,
        )
    )
    def test_never_raises_keyword_soup(self, parts: list[bytes]) -> None:
        """Keywords, digits and spaces in any order never raise; counts never exceed the tokens."""
        data = b"".join(parts)
        result = scan_identifiers(data)
        assert set(result) <= set(DETECTORS)
        assert all(0 < v <= len(data) // 8 for v in result.values())

    def test_random_15_digits_rate(self) -> None:
        """Random 15-digit strings pass at the rate the rules predict, about 1 in 200, and no more.

        Theory for a uniform 15-digit string: sex 6/10 x month 85/100 x place (96 departments with a
        non-zero commune, 2 overseas prefixes with a non-zero 2-digit commune, 99 with a non-zero
        country; 00 refused) x order 999/1000 x key 1/100 (one right value of the 100 two-digit
        keys; 1/97 of the keys a structurally valid body can have). Context-only detectors count
        none of them.
        """
        p_place = (96 * 0.999 + 2 * 0.99 + 1 * 0.999) / 100
        p = 6 / 10 * 85 / 100 * p_place * 999 / 1000 / 100
        rng = random.Random(20260611)
        n = 100_000
        hits = 0
        for _ in range(n):
            result = scan_identifiers(f"{rng.randrange(10**15):015d}".encode())
            assert set(result) <= {"nir"}
            hits += result.get("nir", 0)
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(hits - n * p) <= 5 * sigma, (hits, n * p)
        assert hits / n <= 1.25 * p  # the bound with margin: about 1 in 200

    # bounded work

    @pytest.mark.parametrize(
        "unit",
        [
            b"1",
            b"1 ",
            b"1 84 12 75 123 456 7",
            b"18412751234567 ",
            b"2A",
            b"ine ",
            b"INE 1234567890A ",
            b"rpps 10000001916 ",
            b"UAI 0750654D ",
            b"1.2.250.1.213.1.4.8 " + MAN_PARIS.encode() + b" ",
            b"1.2.250.1.",
            b"identifiant national ",
        ],
    )
    def test_adversarial_mebibyte(self, unit: bytes) -> None:
        """1 MiB of a repeated adversarial unit is scanned to the end, counts only.

        No wall-clock bound here (speed is measured in bench/identifiers.py): linearity is what
        test_patterns_are_bounded checks on the patterns themselves; a catastrophic pattern would
        make this test hang and the run time out.
        """
        data = (unit * (1_048_576 // len(unit) + 1))[:1_048_576]
        found = scan_identifiers(data)
        assert set(found) <= set(DETECTORS)
        assert all(isinstance(count, int) and count > 0 for count in found.values())

    def test_patterns_are_bounded(self) -> None:
        """No compiled pattern has an unbounded repeat (`*`, `+`, `{n,}`): work per position is fixed."""
        from douane.daemon import identifiers

        for name in dir(identifiers):
            obj = getattr(identifiers, name)
            if isinstance(obj, re.Pattern):
                assert not re.search(rb"(?<!\\)[*+]|\{\d*,\}", obj.pattern), name
