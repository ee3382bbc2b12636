"""Identifier detectors: French NIR, INS, RPPS, INE and UAI numbers in plaintext payload.

`scan_identifiers` counts, per detector name, the identifiers found in a bounded window of a flow's
plaintext (the first bytes of one direction). It returns names and counts only, never a value or an
offset, so that douane does not become the leak it watches for. It never raises on bytes of any
kind, and its work is linear in the input: every pattern below is a fixed-length sequence of
character classes with a few optional single spaces, so no input can make the engine backtrack
more than a constant number of steps per position (tests run 1 MiB adversarial inputs).

How each detector decides (sources in the comments next to each rule):

- ``nir``: a French social security number (NIR, or the NIA of a person awaiting one): 13
  characters of structure and a 2-digit key, unspaced or spaced at its group boundaries, with no
  letter or digit glued before or after. Only a valid key counts. Needs no context: the structure
  and the key leave about 1 random 15-digit string in 200, and ordinary text measured zero
  (bench/identifiers.py). A number labelled IMEI or IMSI just before it is not a NIR: about 0.8%
  of IMEIs and French IMSIs pass the NIR rules.
- ``ins``: the INS (Identifiant National de Santé): a valid NIR within `CONTEXT_WINDOW` bytes of an
  INS assigning-authority OID (HL7 v2 PID-3, FHIR ``system``, CDA ``root``) or of an INS identifier
  type code. Such a NIR counts under ``nir`` too.
- ``rpps``: an 11-digit RPPS number whose Luhn check digit is valid, alone or as the 12-digit
  national health professional identifier (``8`` + RPPS), within `CONTEXT_WINDOW` bytes of a
  keyword (``RPPS``, ``idNatPs``, ``IDNPS``, the OID 1.2.250.1.71.4.2.1, "identifiant national
  PS").
- ``ine``: a pupil or student national identifier in one of its three published shapes, within
  `CONTEXT_WINDOW` bytes of a keyword (``INE``, ``INE_RNIE``, ``ID_NATIONAL``, "identifiant
  national élève/étudiant"). No check-letter algorithm could be sourced for it, so the shape is all
  that is checked and the context is what keeps it rare.
- ``uai``: a school or establishment code (7 characters and a check letter) whose letter is valid,
  within `CONTEXT_WINDOW` bytes of a keyword (``UAI``, ``RNE``, "code établissement"). Context is
  required because the check letter keeps only 1 in 23: upper-case hex dumps would otherwise
  yield a false school code every 13,000 words or so (measured: 152 in 2 million random 8-digit
  hex words), and half-digit random text 84 in 100 MB (bench/identifiers.py).
"""

from __future__ import annotations

import re
from bisect import bisect_left

DETECTORS: tuple[str, ...] = ("nir", "ins", "rpps", "ine", "uai")

# How far (in bytes, between the end of one and the start of the other, either order) a keyword may
# stand from the value it vouches for. Enough for the layouts that carry these identifiers: HL7 v2
# puts the value a few components before its assigning authority (`279035121518989^^^ASIP-SANTE-
# INS-NIR&1.2.250.1.213.1.4.10&ISO`), FHIR JSON puts `"system"` next to `"value"`, CDA puts `root`
# next to `extension`; short enough that one keyword does not vouch for a whole document.
CONTEXT_WINDOW = 128

# No letter or digit may touch a value: "with word boundaries" for identifiers that are themselves
# made of digits and letters. Lookarounds are single-character, so they cost nothing per position.
_B = rb"(?<![0-9A-Za-z])"
_E = rb"(?![0-9A-Za-z])"

# --- NIR -----------------------------------------------------------------------------------------
# Layout (INSEE; service-public.fr "Que signifie le numéro de sécurité sociale ?"; python-stdnum
# stdnum/fr/nir.py): sex (1), year (2), month (2), place (5: department 2 + commune 3, or an
# overseas department 3 + commune 2, or 99 + country 3), order (3), key (2). Printed spaced at
# those boundaries ("1 84 12 75 123 456 78"), or unspaced, or with only the key apart. The
# place's optional space may follow its 2nd or 3rd digit (overseas departments have 3 digits).
# The boundary look-behind comes after the first character, not before it: a pattern that opens
# with a character class lets the engine skip every other byte at C speed (measured: 47 -> 120 MB/s
# on random bytes, 61 -> 96 MB/s on text; the \d{15} baseline runs at 80).
_NIR = re.compile(
    rb"[1-478](?<![0-9A-Za-z][1-478])"
    rb" ?[0-9]{2} ?[0-9]{2} ?(?:[0-9]{2}|2[AB]) ?[0-9] ?[0-9]{2} ?[0-9]{3} ?[0-9]{2}" + _E
)
# A 15-digit number labelled as a mobile equipment or subscriber identity (IMEI: TAC, serial and a
# Luhn digit; IMSI: a French one starts 208 + network, reading as sex 2, year 08, month 01/10/20;
# 3GPP TS 23.003 sections 6.2.1 and 2.2) passes the NIR rules about once in 100 to 200: telemetry
# JSON measured 35 false NIRs in 10 MB before this rule. Such a label just before the number
# (within `_NOT_NIR_WINDOW` bytes: "imei": "35...", IMEI=35...) vetoes it.
_NOT_NIR = re.compile(rb"(?i:imei|imsi)")
_NOT_NIR_WINDOW = 32

# --- INS -----------------------------------------------------------------------------------------
# INS assigning authorities (ANS, "Référentiel INS, liste des OID des autorités d'affectation des
# INS"; Interop'Santé FR Core profile fr-core-patient-ins, slices INS-NIR, INS-NIA, INS-NIR-TEST,
# INS-NIR-DEMO): 1.2.250.1.213.1.4.8 NIR, .9 NIA, .10 NIR of test patients, .11 NIR of
# demonstration patients. A longer OID under one of them (1.2.250.1.213.1.4.8.99999.201, a
# document id) is not the authority, hence the look-ahead. The FR Core identifier type codes
# INS-NIR / INS-NIA (also in HL7 v2 assigning authority names, ASIP-SANTE-INS-NIR) count as well.
_INS_KEYWORDS = rb"1\.2\.250\.1\.213\.1\.4\.(?:8|9|1[01])(?![0-9]|\.[0-9])|INS-NI[RA]"

# --- RPPS ----------------------------------------------------------------------------------------
# 11 digits, the last a Luhn check digit over all 11 (ANS FAQ "Comprendre la différence entre
# identifiants RPPS, ADELI et AM": "11 caractères numériques (le dernier étant la clé de Luhn)";
# checked against values ANS publishes: 10000001916, 99700218896, 01234567897). The national
# health professional identifier (idNatPs, OID 1.2.250.1.71.4.2.1, FR Core type IDNPS) is "8"
# followed by the RPPS number, 12 digits.
_RPPS = re.compile(_B + rb"8?[0-9]{11}" + _E)
_RPPS_KEYWORDS = (
    rb"(?i:rpps|idnat_?ps|idnps|identifiant[ _]national[ _](?:de[ _]|du[ _])?(?:ps|professionnel))"
    rb"|1\.2\.250\.1\.71\.4\.2\.1(?![0-9]|\.[0-9])"
)

# --- INE -----------------------------------------------------------------------------------------
# 11 characters (Wikipedia FR "Numéro BEA"; mission-apprentissage ineApprenant.js): INE-BEA 10
# digits + 1 letter, INE-RNIE 9 digits + 2 letters (since the 2018 school year), INE of
# apprentices 4 digits + "A" + 5 digits + 1 letter. SIECLE exports carry it as INE_RNIE and
# ID_NATIONAL. No public check-letter algorithm could be sourced, so none is verified.
_INE = re.compile(_B + rb"(?:[0-9]{9}(?:[0-9][A-Za-z]|[A-Za-z]{2})|[0-9]{4}A[0-9]{5}[A-Za-z])" + _E)


def _acronym(word: bytes) -> bytes:
    """A short keyword in its lower, Capitalised and UPPER forms, as a word or a camelCase part.

    "ine" must not match inside "line", "online" or "MACHINE", but must match "ine", "INE_RNIE",
    "ineEleve", "numeroINE" and "codeIne".
    """
    low, cap, up = word.lower(), word.capitalize(), word.upper()
    return (
        rb"(?<![A-Za-z])" + low + rb"(?![a-z])"
        rb"|(?<![A-Z])" + cap + rb"(?![a-z])"
        rb"|(?<![A-Z])" + up + rb"(?![A-Za-z])"
    )


_E_ACUTE = rb"(?:e|\xc3\xa9|\xe9)"  # e, é in UTF-8, é in Latin-1
_E_GRAVE = rb"(?:e|\xc3\xa8|\xe8)"  # e, è in UTF-8, è in Latin-1
_INE_KEYWORDS = (
    _acronym(b"ine")
    + rb"|ID_NATIONAL"
    + rb"|(?i:identifiant[ _]national[ _](?:de[ _]l'|d'|de[ _])?"
    + _E_ACUTE + rb"(?:l" + _E_GRAVE + rb"ve|tudiant))"
)

# --- UAI -----------------------------------------------------------------------------------------
# 7 characters and a check letter (mission-apprentissage catalogue-apprentissage uaiUtils.js, after
# blog.juliendelmas.fr "Qu'est-ce que le code RNE ou UAI"; checked on 0750654D, 0750699C): the
# letter is "ABCDEFGHJKLMNPRSTUVWXYZ" (23 letters, no I, O, Q) indexed by the 7-digit number mod
# 23. The first three digits are the department: 001-095, 620 for 2A and 720 for 2B (the same
# source), 97x and 98x overseas.
_UAI = re.compile(
    _B + rb"(?:0(?:0[1-9]|[1-8][0-9]|9[0-5])|620|720|9[78][0-9])[0-9]{4}[A-HJ-NP-Za-hj-np-z]" + _E
)
_UAI_LETTERS = b"ABCDEFGHJKLMNPRSTUVWXYZ"
_UAI_KEYWORDS = (
    _acronym(b"uai") + b"|" + _acronym(b"rne")
    + rb"|(?i:code[ _]?" + _E_ACUTE + rb"tablissement)"
)

# Every keyword, anchored where a prefilter hit says one may start; the group name says which
# detector it vouches for. Its alternatives open with look-behinds and case variants, which would
# make the engine try each of them at every position of a search (measured: 3 MB/s), so it is only
# ever `match`ed, at the candidates of `_PREFILTER`.
_KEYWORDS = re.compile(
    rb"(?P<ins>" + _INS_KEYWORDS + rb")"
    rb"|(?P<rpps>" + _RPPS_KEYWORDS + rb")"
    rb"|(?P<ine>" + _INE_KEYWORDS + rb")"
    rb"|(?P<uai>" + _UAI_KEYWORDS + rb")"
)
# Where a keyword may start, searched in the lower-cased payload: plain literals, which the engine
# scans for at C speed (measured: 100-180 MB/s on text and random bytes). Each keyword above
# starts with one of these, lower-cased ("code" only when "établissement" follows: source code
# says "code" often).
_PREFILTER = re.compile(
    rb"1\.2\.250\.1\.|ins-ni|rpps|idn|identifiant|ine|id_national|uai|rne|code[ _]?" + _E_ACUTE + b"t"
)

_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # 2d, minus 9 when above 9
_ZERO = 48  # ord("0")


def _nir_valid(s: bytes) -> bool:
    """Whether 15 unspaced NIR characters have a valid structure and key.

    Structure (the rules of gip-inclusion/les-emplois itou/utils/france_standards.py,
    NIR.FORMAT_RE, which cites Wikipedia FR "Numéro de sécurité sociale en France"): sex 1/2,
    3/4, 7/8 (7 and 8 are the provisional numbers and NIA); month 01-12, or 20-42 and 50-99 for
    a civil record without a usable month (also comptavoo.com's NIR table: "20 à 30 ou 50");
    department 01-96 or 2A/2B with commune 001-999, 97x/98x with commune 01-99, or 99 with
    country 001-999; order 001-999.
    Key: 97 - (the 13 digits mod 97), Corsica's 2A read as 19 and 2B as 18 (python-stdnum
    stdnum/fr/nir.py calc_check_digits; comptavoo.com NIR table).
    """
    month = int(s[3:5])
    if not (1 <= month <= 12 or 20 <= month <= 42 or month >= 50):
        return False
    dept = s[5:7]
    if dept == b"2A":
        body = s[:5] + b"19" + s[7:13]
    elif dept == b"2B":
        body = s[:5] + b"18" + s[7:13]
    else:
        body = s[:13]
        if dept == b"00":
            return False
    if dept in (b"97", b"98"):
        if s[8:10] == b"00":
            return False
    elif s[7:10] == b"000":
        return False
    if s[10:13] == b"000":
        return False
    return int(s[13:15]) == 97 - int(body) % 97


def _luhn_valid(digits: bytes) -> bool:
    """Luhn (ISO/IEC 7812-1 annex B) over ASCII digits, check digit included."""
    total = 0
    double = False
    for i in range(len(digits) - 1, -1, -1):
        d = digits[i] - _ZERO
        total += _LUHN_DOUBLED[d] if double else d
        double = not double
    return total % 10 == 0


def _uai_valid(s: bytes) -> bool:
    """Whether the check letter of an 8-character UAI matches its 7 digits (mod 23)."""
    return _UAI_LETTERS[int(s[:7]) % 23] == s[7] & 0xDF  # & 0xDF: ASCII upper case


def _near(spans: list[tuple[int, int]], starts: list[int], ends: list[int]) -> int:
    """How many value spans have a keyword (given by sorted starts and ends) within the window."""
    count = 0
    n = len(ends)
    for vs, ve in spans:
        # The first keyword that does not end too far before the value; keyword matches do not
        # overlap, so it is also the first to start, and the only one to test.
        i = bisect_left(ends, vs - CONTEXT_WINDOW)
        if i < n and starts[i] <= ve + CONTEXT_WINDOW:
            count += 1
    return count


def scan_identifiers(data: bytes | bytearray | memoryview) -> dict[str, int]:
    """Count the identifiers of each detector in a window of plaintext payload.

    Args:
        data: the bytes to scan (any bytes-like object): a flow's first bytes in one direction.
            The caller bounds its length; the work is linear in it.

    Returns:
        Detector name (one of `DETECTORS`) to the number of identifiers found, for the detectors
        that found at least one; an empty dict when none did. Never a value, never an offset.
        Never raises for bytes-like input.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    found: dict[str, int] = {}

    nir_spans = []
    for m in _NIR.finditer(data):
        if _nir_valid(m.group().replace(b" ", b"")):
            start = m.start()
            if _NOT_NIR.search(data, max(0, start - _NOT_NIR_WINDOW), start) is None:
                nir_spans.append(m.span())
    if nir_spans:
        found["nir"] = len(nir_spans)

    keywords: dict[str, tuple[list[int], list[int]]] = {}
    low = data.lower()  # ASCII only, so offsets are the same in both
    search = _PREFILTER.search
    match = _KEYWORDS.match
    pos = 0
    while (hit := search(low, pos)) is not None:
        # match() at a position still sees the bytes before it, so look-behinds work.
        k = match(data, hit.start())
        if k is None or k.lastgroup is None:  # every alternative is a named group
            pos = hit.start() + 1  # a hit may overlap the next keyword ("codeINE")
            continue
        pair = keywords.get(k.lastgroup)
        if pair is None:
            pair = keywords[k.lastgroup] = ([], [])
        pair[0].append(k.start())
        pair[1].append(k.end())
        pos = k.end()
    if not keywords:
        return found

    if "ins" in keywords and nir_spans:
        n = _near(nir_spans, *keywords["ins"])
        if n:
            found["ins"] = n
    if "rpps" in keywords:
        spans = [m.span() for m in _RPPS.finditer(data) if _luhn_valid(m.group()[-11:])]
        n = _near(spans, *keywords["rpps"])
        if n:
            found["rpps"] = n
    if "ine" in keywords:
        n = _near([m.span() for m in _INE.finditer(data)], *keywords["ine"])
        if n:
            found["ine"] = n
    if "uai" in keywords:
        spans = [m.span() for m in _UAI.finditer(data) if _uai_valid(m.group())]
        n = _near(spans, *keywords["uai"])
        if n:
            found["uai"] = n
    return found
