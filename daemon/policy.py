"""The policy: rules that give each flow a verdict, exceptions that lift a rule for a scope.

A policy file (`config/policy.yaml`, DESIGN.md "Policy") has `rules` and `exceptions`:

```yaml
rules:
  - name: health-outside-eu
    when: {data_category: health, jurisdiction: [third, us, ru, cn]}
    verdict: critical
exceptions:
  - rule: health-outside-eu
    provider: microsoft
    justification: "DPIA 2026-04, transfer register entry 12"
    expires: 2027-06-30
```

Semantics, precisely:

- A rule's `when` is a mapping of conditions, all of which must hold. A condition is a value, a list
  of values (any of them), or `{not: value-or-list}` (none of them). Fields holding several values
  (`data_category`, from the record's `data_categories` keys, and `exposure`) match when any of the
  record's values is listed; their `not:` form holds when none is. A flow with no data category has
  the category `unknown`. A field the record lacks or holds as null matches no value, so it
  satisfies every `not:` condition.
- Every rule is evaluated. The verdict is the most severe of the matching rules
  (`allowed < notice < warning < critical`), with the name of the first such rule in file order. No
  match gives `allowed` with no rule.
- An exception names one rule and a scope (`provider`, `service`, `zone`: at least one, each a value or
  a list). While it applies, a flow in its scope is treated as if that rule had not matched: the rule
  neither counts nor decides, and any other matching rule still does. It applies up to and including
  its `expires` date (local time of the host) and stops the day after; an expired exception is
  reported (`Policy.expired_exceptions`, and by `policy_stage` through a log line and a callback).
- `Decision.exception` is set when exceptions lowered the verdict: it names the exception that
  lifted the rule that would have decided without any exception. Rules an exception lifted are
  listed in `Decision.excused`, whether or not that changed the verdict.

Everything is checked when the file loads (`PolicyError` names the file, the key path and the
expectation) and compiled to frozensets, so `decide` only does set look-ups.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as day_start
from pathlib import Path
from typing import Any

import structlog
import yaml

from douane.daemon.config import DATA_CATEGORY_NAMES, ConfigError
from douane.geo.jurisdiction import JURISDICTION_ORDER
from douane.geo.providers import OTHER, default_registry
from douane.geo.services import ServicesError, default_catalogue
from douane.geo.zones import ZONES

Record = dict[str, Any]

VERDICTS: tuple[str, ...] = ("allowed", "notice", "warning", "critical")
SEVERITY: dict[str, int] = {verdict: rank for rank, verdict in enumerate(VERDICTS)}
DIRECTIONS: tuple[str, ...] = ("outbound", "inbound", "internal", "external")
CATEGORIES: tuple[str, ...] = (*DATA_CATEGORY_NAMES, "unknown")
# The metric the caller sets from `policy_stage`'s callback (a gauge: it returns to 0 on reload).
EXPIRED_METRIC = "douane_policy_exceptions_expired"

_SLUG = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_COUNTRY = re.compile(r"[A-Z]{2}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

# How a compiled check reads the record; a check is (record key, values, negated, how).
_SCALAR, _CATEGORY, _MANY = 0, 1, 2
_Check = tuple[str, frozenset[str], bool, int]

log = structlog.get_logger("douane.policy")


class PolicyError(ConfigError):
    """An invalid policy: the message names the file, the key path and what was expected."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one flow.

    Attributes:
        verdict: `allowed`, `notice`, `warning` or `critical`.
        rule: the rule that decided (the most severe; ties: first in file order), None if none matched.
        exception: the id of the exception that lowered the verdict, if one did.
        matched: every rule that matched and counted, in file order.
        excused: rules that matched but an exception lifted for this flow, in file order.
    """

    verdict: str
    rule: str | None
    exception: str | None = None
    matched: tuple[str, ...] = ()
    excused: tuple[str, ...] = ()


ALLOWED = Decision("allowed", None)


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule: all its `checks` must hold (see `_Check`)."""

    name: str
    verdict: str
    description: str | None
    checks: tuple[_Check, ...]
    rank: int  # the verdict's place in VERDICTS


@dataclass(frozen=True, slots=True)
class PolicyException:
    """A policy exception (a record, not a Python exception): lifts `rule` for a scope until `expires`.

    A scope left out (None) does not restrict; `key` is its place in the file (`exceptions[0]`).
    """

    id: str
    rule: str
    providers: frozenset[str] | None
    services: frozenset[str] | None
    zones: frozenset[str] | None
    justification: str
    expires: date
    key: str

    def covers(self, record: Record) -> bool:
        """Whether the record is in the exception's scope (expiry is not considered)."""
        return (
            (self.providers is None or record.get("provider") in self.providers)
            and (self.services is None or record.get("service") in self.services)
            and (self.zones is None or record.get("zone") in self.zones)
        )


# A rule that can match a combination of categories: its index, itself, its other checks.
_Candidate = tuple[int, "Rule", tuple[_Check, ...]]
# What a day's state holds: until (epoch seconds), day, exceptions in force per rule index, expired.
_Day = tuple[float, date, tuple[tuple[PolicyException, ...], ...], tuple[PolicyException, ...]]


class Policy:
    """Compiled rules and exceptions; `decide` gives a flow its `Decision`.

    Build it with `load` or `parse`. With `today`, the policy's day is fixed (tests, `douane check`);
    without, it follows the host's local date through `clock`, re-evaluating exceptions at midnight.
    """

    def __init__(
        self,
        rules: tuple[Rule, ...],
        exceptions: tuple[PolicyException, ...],
        source: str,
        today: date | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = rules
        self.exceptions = exceptions
        self.source = source
        self._fixed = today
        self._clock = clock
        self._index = {rule.name: index for index, rule in enumerate(rules)}
        self._candidates: dict[tuple[str, ...], tuple[_Candidate, ...]] = {}
        self._day: _Day = self._state(today or date.fromtimestamp(clock()))

    @classmethod
    def load(
        cls,
        path: Path,
        today: date | None = None,
        *,
        zones: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Policy:
        """Read, validate and compile a policy file; raises `PolicyError`.

        Args:
            zones: the configured zone names; when given, a `zone` no zone has is an error.
        """
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PolicyError(source, "", "an existing policy file (not found)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(source, "", f"a readable UTF-8 file ({exc.__class__.__name__})") from None
        try:
            data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
        except _DuplicateKey as exc:
            raise PolicyError(source, "", f"each key once per mapping ({exc})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise PolicyError(source, "", f"valid YAML{where}") from None
        return cls.parse(data, source, today, zones=zones, clock=clock)

    @classmethod
    def parse(
        cls,
        data: Any,
        source: str,
        today: date | None = None,
        *,
        zones: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Policy:
        """Validate and compile parsed YAML; raises `PolicyError`."""
        checker = _Checker(source, None if zones is None else frozenset(zones))
        rules, exceptions = checker.document(data)
        return cls(rules, exceptions, source, today, clock)

    @property
    def expired_exceptions(self) -> tuple[PolicyException, ...]:
        """Exceptions past their expiry date on the policy's current day, in file order."""
        return self._today()[3]

    @property
    def today(self) -> date:
        """The day the policy evaluates expiry at."""
        return self._today()[1]

    def decide(self, record: Record, today: date | None = None) -> Decision:
        """The verdict on one flow record; `today` overrides the policy's day (for tests)."""
        if today is None:
            day = self._day
            if day[0] <= self._clock():
                day = self._today()
        else:
            day = self._state(today)
        in_force = day[2]
        categories = record.get("data_categories")
        key = tuple(categories) if categories else ()
        candidates = self._candidates.get(key)
        if candidates is None:
            candidates = self._select(key)
        if not candidates:
            return ALLOWED
        best = -1
        decider: Rule | None = None
        matched: list[str] | None = None
        excused: list[str] | None = None
        # The severity there would be without exceptions, and the exception that lifted its rule.
        top = -1
        lifted_by: PolicyException | None = None
        for index, rule, checks in candidates:
            for field, values, negated, kind in checks:
                if kind == _SCALAR:
                    hit = record.get(field) in values
                else:
                    hit = not values.isdisjoint(record.get(field) or ())
                if hit is negated:
                    break
            else:
                rank = rule.rank
                lifting = None
                for exception in in_force[index]:
                    if exception.covers(record):
                        lifting = exception
                        break
                if lifting is not None:
                    if excused is None:
                        excused = []
                    excused.append(rule.name)
                    if rank > top:
                        top, lifted_by = rank, lifting
                    continue
                if matched is None:
                    matched = []
                matched.append(rule.name)
                if rank > best:
                    best, decider = rank, rule
                if rank > top:
                    top, lifted_by = rank, None
        if decider is None and excused is None:
            return ALLOWED
        return Decision(
            verdict=decider.verdict if decider is not None else "allowed",
            rule=decider.name if decider is not None else None,
            exception=lifted_by.id if lifted_by is not None and top > best else None,
            matched=tuple(matched or ()),
            excused=tuple(excused or ()),
        )

    def _select(self, key: tuple[str, ...]) -> tuple[_Candidate, ...]:
        """The rules whose data-category condition holds for these categories, without that check.

        Categories are few, so each combination is worked out once: a flow without a category
        (most of them) then only meets the rules that can match it, often none.
        """
        categories = frozenset(key or ("unknown",))
        selected = []
        for index, rule in enumerate(self.rules):
            rest = []
            holds = True
            for check in rule.checks:
                if check[3] == _CATEGORY:
                    holds = holds and (not check[1].isdisjoint(categories)) is not check[2]
                else:
                    rest.append(check)
            if holds:
                selected.append((index, rule, tuple(rest)))
        candidates = tuple(selected)
        if len(self._candidates) < 1024:  # bounded even if a stage invents categories
            self._candidates[key] = candidates
        return candidates

    def _today(self) -> _Day:
        day = self._day
        if self._fixed is None and day[0] <= self._clock():
            day = self._day = self._state(date.fromtimestamp(self._clock()))
        return day

    def _state(self, today: date) -> _Day:
        in_force: list[list[PolicyException]] = [[] for _ in self.rules]
        expired = []
        for exception in self.exceptions:
            if today <= exception.expires:
                in_force[self._index[exception.rule]].append(exception)
            else:
                expired.append(exception)
        if self._fixed is not None:
            until = float("inf")
        else:
            until = datetime.combine(today + timedelta(days=1), day_start.min).timestamp()
        return until, today, tuple(tuple(e) for e in in_force), tuple(expired)


def policy_stage(
    policy: Policy,
    on_expired: Callable[[tuple[PolicyException, ...]], None] | None = None,
) -> Callable[[Record], Record]:
    """A pipeline stage filling `verdict`, `rule` and `exception` (an exception id or None).

    Expired exceptions are logged (a warning each, once) when the stage is built and whenever the
    day turns; `on_expired` then receives all of the policy's expired exceptions, for the
    `douane_policy_exceptions_expired` gauge (set it to their number).
    """
    reported: tuple[PolicyException, ...] = ()

    def report(expired: tuple[PolicyException, ...]) -> None:
        nonlocal reported
        for exception in expired:
            if exception not in reported:
                log.warning("policy exception expired", policy=policy.source, key=exception.key,
                            exception=exception.id, rule=exception.rule,
                            expires=exception.expires.isoformat())
        reported = expired
        if on_expired is not None:
            on_expired(expired)

    report(policy.expired_exceptions)
    decide = policy.decide

    def stage(record: Record) -> Record:
        decision = decide(record)
        record["verdict"] = decision.verdict
        record["rule"] = decision.rule
        record["exception"] = decision.exception
        nonlocal reported
        expired = policy.expired_exceptions
        if expired is not reported:
            if expired != reported:
                report(expired)
            reported = expired
        return record

    return stage


# --- loading -------------------------------------------------------------------------------------


class _DuplicateKey(yaml.YAMLError):
    pass


class _Loader(yaml.SafeLoader):
    """Safe YAML where dates stay text (checked with their key path) and a repeated key is an error."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            line = key_node.start_mark.line + 1
            raise _DuplicateKey(f"{key!r} repeated on line {line}")
        out[key] = loader.construct_object(value_node, deep=True)
    return out


def _date_text(loader: _Loader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _date_text)
_Loader.add_constructor("tag:yaml.org,2002:map", _mapping)

_TOP_KEYS = ("version", "rules", "exceptions")
_RULE_KEYS = ("name", "description", "when", "verdict")
_EXCEPTION_KEYS = ("id", "rule", "provider", "service", "zone", "justification", "expires")
# Condition fields: record key and how it is read.
_FIELDS: dict[str, tuple[str, int]] = {
    "data_category": ("data_categories", _CATEGORY),
    "jurisdiction": ("jurisdiction", _SCALAR),
    "exposure": ("exposure", _MANY),
    "location_zone": ("location_zone", _SCALAR),
    "location_country": ("location_country", _SCALAR),
    "controller_zone": ("controller_zone", _SCALAR),
    "controller_country": ("controller_country", _SCALAR),
    "provider": ("provider", _SCALAR),
    "service": ("service", _SCALAR),
    "zone": ("zone", _SCALAR),
    "direction": ("direction", _SCALAR),
}


class _Checker:
    """Validates a parsed policy document; every error is a `PolicyError` with its key path."""

    def __init__(self, source: str, zones: frozenset[str] | None) -> None:
        self.source = source
        self.zones = zones
        registry = default_registry()
        try:
            services: frozenset[str] | None = default_catalogue().slugs
        except ServicesError:  # a packaging error the identity stage reports; check the form only
            services = None
        self.known: dict[str, tuple[frozenset[str] | None, str]] = {
            "data_category": (frozenset(CATEGORIES), "a data category"),
            "jurisdiction": (frozenset(JURISDICTION_ORDER), "a jurisdiction"),
            "exposure": (frozenset(registry.laws), "a law of geo/providers.yaml"),
            "location_zone": (frozenset(ZONES), "a legal zone"),
            "controller_zone": (frozenset(ZONES), "a legal zone"),
            "provider": (registry.slugs | {OTHER}, "a provider of geo/providers.yaml or other"),
            "service": (services, "a service of geo/services.yaml"),
            "zone": (zones, "a zone of the configuration"),
            "direction": (frozenset(DIRECTIONS), "a direction"),
        }

    def fail(self, key: str, expected: str, got: object = None) -> PolicyError:
        return PolicyError(self.source, key, expected, got)

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "a mapping of keys to values", value)
        for name in value:
            if name not in allowed:
                where = f"{key}.{name}" if key else str(name)
                raise self.fail(where, "one of the known keys: " + ", ".join(allowed))
        return value

    def text(self, section: dict[str, Any], key: str, name: str) -> str:
        value = section.get(name)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key}.{name}", "a non-empty string", value)
        return value.strip()

    def optional_text(self, section: dict[str, Any], key: str, name: str) -> str | None:
        return None if section.get(name) is None else self.text(section, key, name)

    def document(self, data: Any) -> tuple[tuple[Rule, ...], tuple[PolicyException, ...]]:
        top = self.mapping(data, "", _TOP_KEYS)
        if top.get("version", 1) != 1:
            raise self.fail("version", "1", top.get("version"))
        raw_rules = top.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise self.fail("rules", "a list of at least one rule", raw_rules)
        rules: list[Rule] = []
        names: set[str] = set()
        for index, raw in enumerate(raw_rules):
            rule = self.rule(raw, f"rules[{index}]")
            if rule.name in names:
                raise self.fail(f"rules[{index}].name", "a name no other rule has", rule.name)
            names.add(rule.name)
            rules.append(rule)
        raw_exceptions = top.get("exceptions")
        if raw_exceptions is None:
            raw_exceptions = []
        if not isinstance(raw_exceptions, list):
            raise self.fail("exceptions", "a list of exceptions", raw_exceptions)
        exceptions: list[PolicyException] = []
        ids: set[str] = set()
        for index, raw in enumerate(raw_exceptions):
            exception = self.exception(raw, f"exceptions[{index}]", names)
            if exception.id in ids:
                raise self.fail(f"exceptions[{index}].id", "an id no other exception has",
                                exception.id)
            ids.add(exception.id)
            exceptions.append(exception)
        return tuple(rules), tuple(exceptions)

    def rule(self, raw: Any, key: str) -> Rule:
        section = self.mapping(raw, key, _RULE_KEYS)
        name = section.get("name")
        if not isinstance(name, str) or not _SLUG.fullmatch(name):
            raise self.fail(f"{key}.name", "a rule name in lower case (letters, digits, -, _, .)",
                            name)
        verdict = section.get("verdict")
        if verdict not in VERDICTS:
            raise self.fail(f"{key}.verdict", "one of " + ", ".join(VERDICTS), verdict)
        description = self.optional_text(section, key, "description")
        when = section.get("when")
        if not isinstance(when, dict) or not when:
            raise self.fail(f"{key}.when", "a mapping of at least one condition", when)
        checks = []
        for field, written in when.items():
            where = f"{key}.when.{field}"
            if field not in _FIELDS:
                raise self.fail(where, "a field among: " + ", ".join(_FIELDS))
            condition = written
            negated = isinstance(written, dict)
            if negated:
                if set(written) != {"not"}:
                    raise self.fail(where, "a value, a list of values or {not: values}", written)
                condition, where = written["not"], f"{where}.not"
            values = self.values(field, condition, where)
            record_key, kind = _FIELDS[field]
            checks.append((record_key, values, negated, kind))
        return Rule(name, verdict, description, tuple(checks), SEVERITY[verdict])

    def values(self, field: str, condition: Any, key: str) -> frozenset[str]:
        items = condition if isinstance(condition, list) else [condition]
        if not items:
            raise self.fail(key, "at least one value", condition)
        out = set()
        for index, item in enumerate(items):
            where = f"{key}[{index}]" if isinstance(condition, list) else key
            out.add(self.value(field, item, where))
        return frozenset(out)

    def value(self, field: str, value: Any, key: str) -> str:
        if field in ("location_country", "controller_country"):
            if not isinstance(value, str) or not _COUNTRY.fullmatch(value):
                hint = " (quote NO: YAML reads it as false)" if value is False else ""
                raise self.fail(key, f"an ISO 3166-1 alpha-2 country code in capitals{hint}", value)
            return value
        known, what = self.known[field]
        if known is None:
            if not isinstance(value, str) or not _SLUG.fullmatch(value):
                raise self.fail(key, f"{what} (a lower-case name)", value)
            return value
        if value not in known:
            raise self.fail(key, f"{what}, one of: " + ", ".join(sorted(known)), value)
        return str(value)

    def exception(self, raw: Any, key: str, rules: set[str]) -> PolicyException:
        section = self.mapping(raw, key, _EXCEPTION_KEYS)
        rule = section.get("rule")
        if rule not in rules:
            raise self.fail(f"{key}.rule", "the name of a rule of this policy", rule)
        scopes = {name: self.values(name, section[name], f"{key}.{name}")
                  for name in ("provider", "service", "zone") if name in section}
        if not scopes:
            raise self.fail(key, "a scope: provider, service or zone (one or more)")
        justification = self.text(section, key, "justification")
        expires = section.get("expires")
        try:
            # fromisoformat alone would also take 20270630 and week dates.
            if not isinstance(expires, str) or not _DATE.fullmatch(expires):
                raise ValueError
            day = date.fromisoformat(expires)
        except ValueError:
            raise self.fail(f"{key}.expires", "a date YYYY-MM-DD", expires) from None
        ident = self.optional_text(section, key, "id") or justification
        return PolicyException(
            id=ident,
            rule=str(rule),
            providers=scopes.get("provider"),
            services=scopes.get("service"),
            zones=scopes.get("zone"),
            justification=justification,
            expires=day,
            key=key,
        )
