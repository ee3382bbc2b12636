"""The policy engine: matching, most-severe-wins, exceptions and expiry, the default policy, errors."""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from structlog.testing import capture_logs

from douane.daemon.config import ConfigError
from douane.daemon.policy import (
    ALLOWED,
    Decision,
    Policy,
    PolicyError,
    PolicyException,
    policy_stage,
)
from douane.geo.jurisdiction import load_jurisdictions, make_jurisdiction_stage

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = ROOT / "config" / "policy.yaml"
SRC = "test.yaml"
DAY = date(2027, 6, 30)


def record(**fields: Any) -> dict[str, Any]:
    """A declared outbound flow to an EU-controlled French host, with no data category."""
    base: dict[str, Any] = {
        "direction": "outbound",
        "service": None,
        "location_country": "FR",
        "location_zone": "eea",
        "provider": "ovhcloud",
        "controller_country": "FR",
        "controller_zone": "eea",
        "exposure": [],
        "jurisdiction": "eu",
        "data_categories": {},
        "verdict": None,
        "rule": None,
    }
    base.update(fields)
    return base


def policy(rules: list[dict[str, Any]], exceptions: list[dict[str, Any]] | None = None,
           **kwargs: Any) -> Policy:
    data: dict[str, Any] = {"rules": rules}
    if exceptions is not None:
        data["exceptions"] = exceptions
    return Policy.parse(data, SRC, kwargs.pop("today", DAY), **kwargs)


def one(when: dict[str, Any], verdict: str = "warning") -> Policy:
    return policy([{"name": "r", "when": when, "verdict": verdict}])


def error(data: Any, **kwargs: Any) -> str:
    with pytest.raises(PolicyError) as caught:
        Policy.parse(data, SRC, DAY, **kwargs)
    return str(caught.value)


def rules_with(when: dict[str, Any]) -> dict[str, Any]:
    """Three valid rules, the third with `when` (so paths read rules[2])."""
    return {"rules": [
        {"name": "a", "when": {"data_category": "health"}, "verdict": "notice"},
        {"name": "b", "when": {"data_category": "school"}, "verdict": "notice"},
        {"name": "c", "when": when, "verdict": "critical"},
    ]}


HEALTH = {"health": ["zone:pacs", "protocol:dicom"]}
SCHOOL = {"school": ["zone:pupil-records", "identifier:ine"]}


class TestMatching:
    @pytest.mark.parametrize(("field", "value", "hit", "miss"), [
        ("jurisdiction", "us", {"jurisdiction": "us"}, {"jurisdiction": "eu"}),
        ("location_zone", "third", {"location_zone": "third"}, {"location_zone": "eea"}),
        ("location_country", "US", {"location_country": "US"}, {"location_country": "FR"}),
        ("controller_zone", "third", {"controller_zone": "third"}, {"controller_zone": "eea"}),
        ("controller_country", "CN", {"controller_country": "CN"}, {"controller_country": "FR"}),
        ("provider", "microsoft", {"provider": "microsoft"}, {"provider": "ovhcloud"}),
        ("service", "pronote", {"service": "pronote"}, {"service": None}),
        ("zone", "pacs", {"zone": "pacs"}, {"zone": "pupil-records"}),
        ("direction", "inbound", {"direction": "inbound"}, {"direction": "outbound"}),
        ("data_category", "health", {"data_categories": HEALTH}, {"data_categories": SCHOOL}),
        ("exposure", "us-fisa-702", {"exposure": ["us-cloud-act", "us-fisa-702"]}, {"exposure": []}),
    ])
    def test_each_field(self, field: str, value: str, hit: dict[str, Any],
                        miss: dict[str, Any]) -> None:
        """A single value matches the record's field when equal (any overlap for the many-valued)."""
        p = one({field: value})
        assert p.decide(record(**hit)) == Decision("warning", "r", None, ("r",))
        assert p.decide(record(**miss)) is ALLOWED

    def test_list_means_any(self) -> None:
        """A list of values matches when the record's value is any of them."""
        p = one({"jurisdiction": ["us", "cn"]})
        assert p.decide(record(jurisdiction="cn")).verdict == "warning"
        assert p.decide(record(jurisdiction="us")).verdict == "warning"
        assert p.decide(record(jurisdiction="third")).verdict == "allowed"

    def test_not_scalar(self) -> None:
        """`{not: values}` matches when the record's value is none of them, a missing one included."""
        p = one({"jurisdiction": {"not": ["eu", "unknown"]}})
        assert p.decide(record(jurisdiction="third")).verdict == "warning"
        assert p.decide(record(jurisdiction="eu")).verdict == "allowed"
        assert one({"zone": {"not": "pacs"}}).decide(record()).verdict == "warning"

    def test_not_many(self) -> None:
        """A negated many-valued condition holds when no value of the record's overlaps it."""
        p = one({"data_category": {"not": "health"}, "exposure": {"not": ["us-cloud-act"]}})
        assert p.decide(record(data_categories=SCHOOL)).verdict == "warning"
        assert p.decide(record(data_categories={**SCHOOL, **HEALTH})).verdict == "allowed"
        assert p.decide(record(exposure=["us-cloud-act"])).verdict == "allowed"

    def test_all_conditions_must_hold(self) -> None:
        """A rule with several conditions matches only when every one of them does."""
        p = one({"data_category": "health", "provider": "microsoft", "direction": "outbound"})
        assert p.decide(record(data_categories=HEALTH, provider="microsoft")).verdict == "warning"
        assert p.decide(record(data_categories=HEALTH)).verdict == "allowed"
        assert p.decide(record(provider="microsoft")).verdict == "allowed"

    def test_any_category_of_several(self) -> None:
        """A flow carrying several categories matches a rule naming any one of them."""
        p = one({"data_category": "school"})
        assert p.decide(record(data_categories={**HEALTH, **SCHOOL})).verdict == "warning"

    def test_no_category_is_unknown(self) -> None:
        """A flow with no data category (empty or missing) has the category `unknown`."""
        p = one({"data_category": "unknown"})
        assert p.decide(record()).verdict == "warning"
        bare = record()
        del bare["data_categories"]
        assert p.decide(bare).verdict == "warning"
        assert p.decide(record(data_categories=HEALTH)).verdict == "allowed"

    def test_missing_field_matches_no_value(self) -> None:
        """A record without the `zone` key (no zones stage yet) or with null matches no zone."""
        p = one({"zone": "pacs"})
        assert "zone" not in record()
        assert p.decide(record()).verdict == "allowed"
        assert p.decide(record(zone=None)).verdict == "allowed"
        assert one({"provider": "other"}).decide(record(provider=None)).verdict == "allowed"


class TestDecision:
    RULES: ClassVar[list[dict[str, Any]]] = [
        {"name": "n", "when": {"jurisdiction": "us"}, "verdict": "notice"},
        {"name": "c1", "when": {"data_category": "health", "jurisdiction": "us"}, "verdict": "critical"},
        {"name": "w", "when": {"data_category": "health"}, "verdict": "warning"},
        {"name": "c2", "when": {"provider": "microsoft"}, "verdict": "critical"},
        {"name": "ok", "when": {"provider": "ovhcloud"}, "verdict": "allowed"},
    ]

    def test_no_match_is_allowed_without_rule(self) -> None:
        """No matching rule gives `allowed` with no rule."""
        d = policy(self.RULES).decide(record(provider="scaleway"))
        assert d == Decision("allowed", None, None, (), ())

    def test_most_severe_wins_with_its_rule(self) -> None:
        """Every matching rule is listed; the most severe decides."""
        d = policy(self.RULES).decide(record(data_categories=HEALTH, jurisdiction="us",
                                             provider="scaleway"))
        assert d == Decision("critical", "c1", None, ("n", "c1", "w"))

    def test_tie_goes_to_first_in_file(self) -> None:
        """Two matching rules of the same severity: the first in file order decides."""
        p = policy(self.RULES)
        d = p.decide(record(data_categories=HEALTH, jurisdiction="us", provider="microsoft"))
        assert (d.rule, d.matched) == ("c1", ("n", "c1", "w", "c2"))
        reordered = policy([self.RULES[3], *self.RULES[:3]])
        d = reordered.decide(record(data_categories=HEALTH, jurisdiction="us", provider="microsoft"))
        assert d.rule == "c2"

    def test_allowed_rule_names_itself(self) -> None:
        """A matching rule whose verdict is `allowed` decides when nothing more severe matches."""
        d = policy(self.RULES).decide(record())
        assert d == Decision("allowed", "ok", None, ("ok",))

    def test_same_answer_for_category_order(self) -> None:
        """The per-category rule selection gives the same answer whatever the order of the keys."""
        p = policy(self.RULES)
        a = p.decide(record(data_categories={**HEALTH, **SCHOOL}, jurisdiction="us"))
        b = p.decide(record(data_categories={**SCHOOL, **HEALTH}, jurisdiction="us"))
        assert a == b
        assert a.rule == "c1"


class TestExceptions:
    RULES: ClassVar[list[dict[str, Any]]] = [
        {"name": "health-us", "when": {"data_category": "health", "jurisdiction": "us"},
         "verdict": "critical"},
        {"name": "health-any", "when": {"data_category": "health"}, "verdict": "notice"},
        {"name": "microsoft", "when": {"provider": "microsoft"}, "verdict": "critical"},
    ]
    EXC: ClassVar[dict[str, Any]] = {
        "id": "dpia-12", "rule": "health-us", "provider": "microsoft", "zone": "pacs",
        "justification": "DPIA 2026-04, transfer register entry 12", "expires": "2027-06-30",
    }
    HIT: ClassVar[dict[str, Any]] = {
        "data_categories": HEALTH, "jurisdiction": "us", "provider": "microsoft", "zone": "pacs"}

    def test_in_scope_lifts_the_rule(self) -> None:
        """In scope, the rule no longer counts: the next matching rule decides, the exception is named."""
        p = policy(self.RULES[:2], [dict(self.EXC)])
        d = p.decide(record(**self.HIT))
        assert d == Decision("notice", "health-any", "dpia-12", ("health-any",), ("health-us",))

    def test_out_of_scope_keeps_the_rule(self) -> None:
        """Every scope key given must match: another zone or provider keeps the rule."""
        p = policy(self.RULES[:2], [dict(self.EXC)])
        assert p.decide(record(**{**self.HIT, "zone": "lab"})).rule == "health-us"
        assert p.decide(record(**{**self.HIT, "provider": "amazon"})).rule == "health-us"
        no_zone = record(**self.HIT)
        del no_zone["zone"]
        assert p.decide(no_zone).rule == "health-us"

    def test_scope_lists(self) -> None:
        """A scope key may list several values; a service scope matches the record's service."""
        exc = {**self.EXC, "provider": ["amazon", "microsoft"], "service": ["azure-storage"]}
        del exc["zone"]
        p = policy(self.RULES[:2], [exc])
        assert p.decide(record(**self.HIT, service="azure-storage")).rule == "health-any"
        assert p.decide(record(**self.HIT, service="azure")).rule == "health-us"

    def test_only_match_lifted_is_allowed(self) -> None:
        """When the only matching rule is lifted, the flow is allowed and the exception named."""
        p = policy(self.RULES[:1], [dict(self.EXC)])
        assert p.decide(record(**self.HIT)) == Decision("allowed", None, "dpia-12", (), ("health-us",))

    def test_not_lowered_when_another_rule_is_as_severe(self) -> None:
        """A lifted rule tied by another critical rule lowers nothing: `exception` stays None."""
        p = policy(self.RULES, [dict(self.EXC)])
        d = p.decide(record(**self.HIT))
        assert d == Decision("critical", "microsoft", None, ("health-any", "microsoft"),
                             ("health-us",))

    def test_id_defaults_to_justification(self) -> None:
        """Without `id`, an exception is named by its justification."""
        exc = dict(self.EXC)
        del exc["id"]
        d = policy(self.RULES[:2], [exc]).decide(record(**self.HIT))
        assert d.exception == "DPIA 2026-04, transfer register entry 12"

    def test_expiry_boundary(self) -> None:
        """An exception applies on its `expires` date and stops the day after."""
        p = policy(self.RULES[:2], [dict(self.EXC)])
        assert p.decide(record(**self.HIT), today=date(2027, 6, 30)).rule == "health-any"
        assert p.decide(record(**self.HIT), today=date(2027, 7, 1)).rule == "health-us"

    def test_expired_are_reported(self) -> None:
        """Exceptions past their date are listed by `expired_exceptions`, the others are not."""
        later = {**self.EXC, "id": "later", "expires": "2027-07-01"}
        p = policy(self.RULES[:2], [dict(self.EXC), later], today=date(2027, 7, 1))
        assert [e.id for e in p.expired_exceptions] == ["dpia-12"]
        assert p.decide(record(**self.HIT)).rule == "health-any"  # `later` still applies
        assert policy(self.RULES[:2], [dict(self.EXC)], today=DAY).expired_exceptions == ()

    def test_day_turns_with_the_clock(self) -> None:
        """Without a fixed day, the policy follows the clock and re-evaluates exceptions at midnight."""
        now = [datetime(2027, 6, 30, 23, 59, 59).timestamp()]
        p = Policy.parse({"rules": self.RULES[:2], "exceptions": [dict(self.EXC)]}, SRC,
                         clock=lambda: now[0])
        assert p.decide(record(**self.HIT)).rule == "health-any"
        assert p.expired_exceptions == ()
        now[0] += 2
        assert p.decide(record(**self.HIT)).rule == "health-us"
        assert [e.id for e in p.expired_exceptions] == ["dpia-12"]
        assert p.today == date(2027, 7, 1)


class TestPolicyStage:
    def test_fills_verdict_rule_exception(self) -> None:
        """The stage writes verdict, rule and exception into the record and returns it."""
        stage = policy_stage(one({"provider": "microsoft"}, "critical"))
        out = stage(record(provider="microsoft"))
        assert (out["verdict"], out["rule"], out["exception"]) == ("critical", "r", None)
        out = stage(record())
        assert (out["verdict"], out["rule"], out["exception"]) == ("allowed", None, None)

    def test_expired_logged_and_counted(self) -> None:
        """Expired exceptions are logged once each and passed to `on_expired` (for the gauge)."""
        now = [datetime(2027, 6, 30, 12).timestamp()]
        exc = dict(TestExceptions.EXC)
        old = {**exc, "id": "old", "expires": "2026-01-31"}
        p = Policy.parse({"rules": TestExceptions.RULES, "exceptions": [old, exc]}, SRC,
                         clock=lambda: now[0])
        seen: list[tuple[PolicyException, ...]] = []
        with capture_logs() as logs:
            stage = policy_stage(p, seen.append)
            stage(record())
            assert [len(s) for s in seen] == [1]
            now[0] += 86400  # the next day: dpia-12 expires too
            stage(record())
            stage(record())
        assert [len(s) for s in seen] == [1, 2]
        warnings = [e for e in logs if e["event"] == "policy exception expired"]
        assert [(w["exception"], w["expires"], w["rule"]) for w in warnings] == [
            ("old", "2026-01-31", "health-us"), ("dpia-12", "2027-06-30", "health-us")]
        assert all(w["log_level"] == "warning" and w["key"].startswith("exceptions[")
                   for w in warnings)


@pytest.fixture(scope="module")
def default() -> Policy:
    return Policy.load(DEFAULT_POLICY, DAY, zones=["pacs", "pupil-records"])


@pytest.fixture(scope="module")
def declare() -> Any:
    """The real jurisdiction stage, so records carry what the registry says of each AS."""
    stage = make_jurisdiction_stage(load_jurisdictions())

    def declare(asn: int, country: str, categories: dict[str, list[str]], zone: str,
                hostname: str | None = None) -> dict[str, Any]:
        r = record(asn=asn, as_name=None, location_country=country, hostname=hostname,
                   src="10.20.0.15", dst="192.0.2.7", data_categories=categories, zone=zone)
        return dict(stage(r))

    return declare


class TestDefaultPolicy:
    def test_pacs_dicom_to_microsoft_is_critical(self, default: Policy, declare: Any) -> None:
        """The issue's case: the PACS sends DICOM to Azure in France → critical, health-outside-eu."""
        r = declare(8075, "FR", HEALTH, "pacs", "hdh.blob.core.windows.net")
        assert (r["provider"], r["jurisdiction"], r["location_zone"]) == ("microsoft", "us", "eea")
        d = default.decide(r)
        assert d == Decision("critical", "health-outside-eu", None,
                             ("health-outside-eu", "health-extraterritorial-exposure"))

    def test_pacs_dicom_to_ovhcloud_is_allowed(self, default: Policy, declare: Any) -> None:
        """The same to OVHcloud (French controller, no exposure, EEA) → allowed by the default."""
        r = declare(16276, "FR", HEALTH, "pacs")
        assert (r["provider"], r["jurisdiction"]) == ("ovhcloud", "eu")
        assert default.decide(r) is ALLOWED

    def test_school_ine_to_google(self, default: Policy, declare: Any) -> None:
        """An INE to Google in the EEA → warning (school-to-us-controlled); to a US site → critical."""
        school = {"school": ["zone:pupil-records", "identifier:ine"]}
        r = declare(15169, "FR", school, "pupil-records", "classroom.google.com")
        assert default.decide(r) == Decision("warning", "school-to-us-controlled", None,
                                             ("school-to-us-controlled",))
        r = declare(15169, "US", school, "pupil-records")
        d = default.decide(r)
        assert (d.verdict, d.rule) == ("critical", "school-stored-outside-eea")

    @pytest.mark.parametrize(("fields", "verdict", "rule"), [
        ({"data_categories": SCHOOL, "jurisdiction": "cn", "provider": "alibaba"},
         "critical", "school-outside-eu"),
        ({"data_categories": HEALTH, "jurisdiction": "eu", "provider": "other"},
         "notice", "health-controller-unverified"),
        ({"data_categories": HEALTH, "jurisdiction": "unknown", "provider": None},
         "warning", "sensitive-destination-unknown"),
        ({"data_categories": HEALTH, "jurisdiction": "unknown", "direction": "internal"},
         "allowed", None),
        ({"data_categories": {"personal": ["identifier:nir"]}, "jurisdiction": "us"},
         "notice", "personal-outside-eu"),
        ({"jurisdiction": "cn"}, "allowed", None),
    ])
    def test_other_cases(self, default: Policy, fields: dict[str, Any], verdict: str,
                         rule: str | None) -> None:
        """The default's other rules on hand-made records; internal and uncategorised flows pass."""
        d = default.decide(record(**fields))
        assert (d.verdict, d.rule) == (verdict, rule)

    def test_every_rule_is_commented(self) -> None:
        """Each rule of policy.yaml has a comment block just above it and comments on its lines."""
        lines = DEFAULT_POLICY.read_text(encoding="utf-8").splitlines()
        names = []
        for index, line in enumerate(lines):
            found = re.match(r"\s*- name: (\S+)", line)
            if found is None:
                continue
            names.append(found.group(1))
            assert lines[index - 1].lstrip().startswith("#"), f"no comment above {found.group(1)}"
            body = []
            for following in lines[index + 1:]:
                if not following.strip() or following.lstrip().startswith(("#", "- ")):
                    break
                body.append(following)
            assert body and all("#" in b for b in body if b.strip() != "when:"), found.group(1)
        assert names == [r.name for r in Policy.load(DEFAULT_POLICY).rules]

    def test_commented_exception_example_is_valid(self, tmp_path: Path) -> None:
        """The commented-out exception example parses when uncommented, with a config's zones."""
        text = DEFAULT_POLICY.read_text(encoding="utf-8")
        example = re.findall(r"^#  - id:.*(?:\n#    .*)+", text, flags=re.MULTILINE)
        assert len(example) == 1
        block = "\n".join(line[1:] for line in example[0].splitlines())
        assert "exceptions: []\n" in text
        path = tmp_path / "policy.yaml"
        path.write_text(text.replace("exceptions: []\n", "exceptions:\n" + block + "\n"),
                        encoding="utf-8")
        p = Policy.load(path, DAY, zones=["pacs", "pupil-records"])
        (exc,) = p.exceptions
        assert (exc.id, exc.rule, exc.expires) == ("ent-m365-transition", "school-to-us-controlled",
                                                  date(2027, 6, 30))
        r = record(data_categories=SCHOOL, provider="microsoft", service="microsoft-teams",
                   zone="pupil-records", exposure=["us-cloud-act", "us-fisa-702"], jurisdiction="us")
        assert p.decide(r) == Decision("allowed", None, "ent-m365-transition", (),
                                       ("school-to-us-controlled",))


class TestErrors:
    """One test per kind of error, with the message a sysadmin reads."""

    def test_is_a_config_error(self) -> None:
        """PolicyError is a ConfigError (and a ValueError): `douane check` reports both alike."""
        assert issubclass(PolicyError, ConfigError)
        assert issubclass(PolicyError, ValueError)

    def test_unknown_top_key(self) -> None:
        assert error({"rules": [], "rule": []}) == (
            "test.yaml: key 'rule': expected one of the known keys: version, rules, exceptions")

    def test_no_rules(self) -> None:
        assert error({"exceptions": []}) == (
            "test.yaml: key 'rules': expected a list of at least one rule")

    def test_not_a_mapping(self) -> None:
        assert error(["rules"]) == (
            "test.yaml: expected a mapping of keys to values, got ['rules']")

    def test_unknown_rule_key(self) -> None:
        data = rules_with({"jurisdiction": "us"})
        data["rules"][2]["severity"] = "critical"
        assert error(data) == (
            "test.yaml: key 'rules[2].severity': expected one of the known keys: name, description, "
            "when, verdict")

    def test_unknown_field(self) -> None:
        assert error(rules_with({"country": "US"})) == (
            "test.yaml: key 'rules[2].when.country': expected a field among: data_category, "
            "jurisdiction, exposure, location_zone, location_country, controller_zone, "
            "controller_country, provider, service, zone, direction")

    def test_bad_verdict(self) -> None:
        data = rules_with({"jurisdiction": "us"})
        data["rules"][2]["verdict"] = "fatal"
        assert error(data) == (
            "test.yaml: key 'rules[2].verdict': expected one of allowed, notice, warning, critical, "
            "got 'fatal'")

    def test_unknown_jurisdiction(self) -> None:
        assert error(rules_with({"jurisdiction": ["us", "usa"]})) == (
            "test.yaml: key 'rules[2].when.jurisdiction[1]': expected a jurisdiction, one of: cn, eu, "
            "ru, third, unknown, us, got 'usa'")

    def test_unknown_jurisdiction_under_not(self) -> None:
        assert error(rules_with({"jurisdiction": {"not": "EU"}})) == (
            "test.yaml: key 'rules[2].when.jurisdiction.not': expected a jurisdiction, one of: cn, "
            "eu, ru, third, unknown, us, got 'EU'")

    def test_unknown_legal_zone(self) -> None:
        assert error(rules_with({"location_zone": "eu"})) == (
            "test.yaml: key 'rules[2].when.location_zone': expected a legal zone, one of: adequate, "
            "eea, third, unknown, got 'eu'")

    def test_unknown_source_zone(self) -> None:
        assert error(rules_with({"zone": "pacs2"}), zones=["pacs"]) == (
            "test.yaml: key 'rules[2].when.zone': expected a zone of the configuration, one of: "
            "pacs, got 'pacs2'")

    def test_unknown_provider(self) -> None:
        message = error(rules_with({"provider": "msft"}))
        assert message.startswith("test.yaml: key 'rules[2].when.provider': expected a provider of "
                                  "geo/providers.yaml or other, one of: akamai, alibaba, amazon, ")
        assert message.endswith(", got 'msft'")

    def test_unknown_category(self) -> None:
        assert error(rules_with({"data_category": "medical"})) == (
            "test.yaml: key 'rules[2].when.data_category': expected a data category, one of: "
            "health, personal, school, unknown, got 'medical'")

    def test_country_no_read_as_false(self) -> None:
        assert error(rules_with({"location_country": False})) == (
            "test.yaml: key 'rules[2].when.location_country': expected an ISO 3166-1 alpha-2 "
            "country code in capitals (quote NO: YAML reads it as false), got False")

    def test_bad_not_form(self) -> None:
        assert error(rules_with({"jurisdiction": {"not": "us", "or": "cn"}})) == (
            "test.yaml: key 'rules[2].when.jurisdiction': expected a value, a list of values or "
            "{not: values}, got {'not': 'us', 'or': 'cn'}")

    def test_empty_list(self) -> None:
        assert error(rules_with({"jurisdiction": []})) == (
            "test.yaml: key 'rules[2].when.jurisdiction': expected at least one value, got []")

    def test_empty_when(self) -> None:
        assert error(rules_with({})) == (
            "test.yaml: key 'rules[2].when': expected a mapping of at least one condition, got {}")

    def test_duplicate_rule_name(self) -> None:
        data = rules_with({"jurisdiction": "us"})
        data["rules"][2]["name"] = "a"
        assert error(data) == (
            "test.yaml: key 'rules[2].name': expected a name no other rule has, got 'a'")

    def test_bad_rule_name(self) -> None:
        data = rules_with({"jurisdiction": "us"})
        data["rules"][2]["name"] = "Health Outside"
        assert error(data) == (
            "test.yaml: key 'rules[2].name': expected a rule name in lower case (letters, digits, "
            "-, _, .), got 'Health Outside'")

    EXC: ClassVar[dict[str, Any]] = {
        "rule": "c", "provider": "microsoft", "justification": "DPIA 12", "expires": "2027-06-30"}

    def exc_error(self, **changes: Any) -> str:
        exc = {**self.EXC, **changes}
        for name in [k for k, v in exc.items() if v is None]:
            del exc[name]
        data = rules_with({"jurisdiction": "us"})
        data["exceptions"] = [exc]
        return error(data)

    def test_exception_unknown_rule(self) -> None:
        assert self.exc_error(rule="health-us") == (
            "test.yaml: key 'exceptions[0].rule': expected the name of a rule of this policy, "
            "got 'health-us'")

    def test_exception_bad_date(self) -> None:
        assert self.exc_error(expires="2027-02-30") == (
            "test.yaml: key 'exceptions[0].expires': expected a date YYYY-MM-DD, got '2027-02-30'")

    def test_exception_date_form(self) -> None:
        assert self.exc_error(expires="2027-W26-3") == (
            "test.yaml: key 'exceptions[0].expires': expected a date YYYY-MM-DD, got '2027-W26-3'")

    def test_exception_missing_expiry(self) -> None:
        assert self.exc_error(expires=None) == (
            "test.yaml: key 'exceptions[0].expires': expected a date YYYY-MM-DD")

    def test_exception_missing_justification(self) -> None:
        assert self.exc_error(justification=None) == (
            "test.yaml: key 'exceptions[0].justification': expected a non-empty string")

    def test_exception_empty_justification(self) -> None:
        assert self.exc_error(justification="  ") == (
            "test.yaml: key 'exceptions[0].justification': expected a non-empty string, got '  '")

    def test_exception_without_scope(self) -> None:
        assert self.exc_error(provider=None) == (
            "test.yaml: key 'exceptions[0]': expected a scope: provider, service or zone (one or "
            "more)")

    def test_exception_unknown_service(self) -> None:
        message = self.exc_error(service="office365")
        assert message.startswith(
            "test.yaml: key 'exceptions[0].service': expected a service of geo/services.yaml")
        assert message.endswith(", got 'office365'")

    def test_exception_unknown_key(self) -> None:
        assert self.exc_error(until="2027-06-30") == (
            "test.yaml: key 'exceptions[0].until': expected one of the known keys: id, rule, "
            "provider, service, zone, justification, expires")

    def test_duplicate_exception_id(self) -> None:
        data = rules_with({"jurisdiction": "us"})
        data["exceptions"] = [dict(self.EXC), dict(self.EXC)]
        assert error(data) == (
            "test.yaml: key 'exceptions[1].id': expected an id no other exception has, "
            "got 'DPIA 12'")

    def test_bad_version(self) -> None:
        assert error({**rules_with({"jurisdiction": "us"}), "version": 2}) == (
            "test.yaml: key 'version': expected 1, got 2")


class TestLoad:
    def test_yaml_date_checked_with_its_key(self, tmp_path: Path) -> None:
        """An unquoted impossible date is reported at its key, not as a YAML crash."""
        path = tmp_path / "policy.yaml"
        path.write_text("rules:\n  - {name: a, when: {jurisdiction: us}, verdict: notice}\n"
                        "exceptions:\n  - {rule: a, zone: pacs, justification: x, expires: 2027-02-30}\n",
                        encoding="utf-8")
        with pytest.raises(PolicyError) as caught:
            Policy.load(path)
        assert str(caught.value) == (
            f"{path}: key 'exceptions[0].expires': expected a date YYYY-MM-DD, got '2027-02-30'")

    def test_unquoted_date_loads(self, tmp_path: Path) -> None:
        """`expires: 2027-06-30` unquoted is a date, as in DESIGN.md's sketch."""
        path = tmp_path / "policy.yaml"
        path.write_text("rules:\n  - {name: a, when: {jurisdiction: us}, verdict: notice}\n"
                        "exceptions:\n  - {rule: a, zone: pacs, justification: x, expires: 2027-06-30}\n",
                        encoding="utf-8")
        assert Policy.load(path).exceptions[0].expires == date(2027, 6, 30)

    def test_duplicate_key(self, tmp_path: Path) -> None:
        """A key written twice in a mapping is refused (YAML would keep the last silently)."""
        path = tmp_path / "policy.yaml"
        path.write_text("rules:\n  - name: a\n    when: {jurisdiction: us}\n    when: {zone: x}\n"
                        "    verdict: notice\n", encoding="utf-8")
        with pytest.raises(PolicyError) as caught:
            Policy.load(path)
        assert str(caught.value) == f"{path}: expected each key once per mapping ('when' repeated on line 4)"

    def test_bad_yaml(self, tmp_path: Path) -> None:
        path = tmp_path / "policy.yaml"
        path.write_text("rules: [\n", encoding="utf-8")
        with pytest.raises(PolicyError) as caught:
            Policy.load(path)
        assert str(caught.value) == f"{path}: expected valid YAML (line 2, column 1)"

    def test_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.yaml"
        with pytest.raises(PolicyError) as caught:
            Policy.load(path)
        assert str(caught.value) == f"{path}: expected an existing policy file (not found)"
