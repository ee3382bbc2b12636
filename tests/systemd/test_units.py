"""The systemd units in systemd/: their hardening, `systemd-analyze verify` and `security`, and the daemon
running under the unit's own system-call filter and capabilities.

The unit files are read by a small parser of systemd's syntax (repeated keys, `\\` continuations, `#`
and `;` comments), so that an edit dropping or weakening one hardening key fails here, named.

`systemd-analyze verify` refuses a unit whose ExecStart binary does not exist, and douane is installed
under /opt/douane/venv only on a gateway: the test copies the units to a temporary folder with that one
path (DOUANE below) replaced by /bin/true, and checks the rest as it is. systemd-analyze comes with
Debian's `systemd` package; the tests that need it are skipped, saying so, where it is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from douane.daemon.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
DOUANE = "/opt/douane/venv/bin/douane"  # the one install path the units name (systemd/README.md)
SERVICE, UPDATE, TIMER = "douane.service", "douane-update-db.service", "douane-update-db.timer"
REPORT, REPORT_TIMER = "douane-report.service", "douane-report.timer"
MAX_EXPOSURE = 2.0

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """Sections mapped to their (key, value) pairs in file order; a repeated key appears repeatedly."""
    unit: Unit = {}
    section: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):  # continuation: the next line goes on this one
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"not a unit line: {raw!r}"
        section.append((key.strip(), value.strip()))
    return unit


def load(name: str) -> Unit:
    return parse_unit((UNITS / name).read_text())


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= should be set once, found {found}"
    return found[0]


# --- the parser -------------------------------------------------------------------------------


def test_parser_keeps_repeats_and_joins_continuations() -> None:
    unit = parse_unit("# c\n[Service]\nA=1\n; c\nA=2 \\\n  3\nB=x=y\n\n[Install]\nWantedBy=t\n")
    assert unit == {"Service": [("A", "1"), ("A", "2 3"), ("B", "x=y")], "Install": [("WantedBy", "t")]}


# --- douane.service ------------------------------------------------------------------------------

# Each key set once, to exactly this value (systemd takes the last of repeated single-value keys, so a
# later line could silently undo an earlier one: `one` refuses repeats).
HARDENING = {
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "User": "douane",
    "Group": "douane",
    "StateDirectory": "douane",
    "ConfigurationDirectory": "douane",
    "UMask": "0077",
    "AmbientCapabilities": "CAP_NET_RAW",
    "CapabilityBoundingSet": "CAP_NET_RAW",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "DevicePolicy": "closed",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "IPAddressDeny": "any",
    "IPAddressAllow": "localhost",
    "RemoveIPC": "yes",
    "PrivateMounts": "yes",
}
FAMILIES = {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}
SYSCALLS = ["@system-service", "~@privileged @resources"]


def size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", text)
    assert match, f"not a size: {text!r}"
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2)]


class TestDaemonUnit:
    unit = load(SERVICE)

    @pytest.mark.parametrize(("key", "value"), sorted(HARDENING.items()))
    def test_hardening_key(self, key: str, value: str) -> None:
        assert one(self.unit, "Service", key) == value

    def test_address_families_and_system_calls(self) -> None:
        assert set(one(self.unit, "Service", "RestrictAddressFamilies").split()) == FAMILIES
        assert values(self.unit, "Service", "SystemCallFilter") == SYSCALLS

    def test_no_dynamic_user_or_user_namespace(self) -> None:
        """A dedicated user (see the unit's comment); PrivateUsers= would take CAP_NET_RAW's power over
        the host's network namespace away, and AF_PACKET with it."""
        assert values(self.unit, "Service", "DynamicUser") == []
        assert values(self.unit, "Service", "PrivateUsers") in ([], ["no"])
        assert values(self.unit, "Service", "PrivateNetwork") in ([], ["no"])

    def test_commands(self) -> None:
        config = "--config /etc/douane/douane.yaml"
        assert one(self.unit, "Service", "ExecStartPre") == f"{DOUANE} check {config}"
        assert one(self.unit, "Service", "ExecStart") == f"{DOUANE} run {config}"
        assert one(self.unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"

    def test_watchdog_and_memory(self) -> None:
        watchdog = one(self.unit, "Service", "WatchdogSec")
        assert re.fullmatch(r"\d+s", watchdog) and 10 <= int(watchdog[:-1]) <= 120
        # Measured 212 MiB RSS at most on a replay (README, Performance): the limit leaves room for a
        # full flow table, without letting a leak take the gateway down.
        assert 512 << 20 <= size(one(self.unit, "Service", "MemoryMax")) <= 2 << 30
        assert size(one(self.unit, "Service", "MemoryHigh")) < size(one(self.unit, "Service", "MemoryMax"))

    def test_installed_for_boot(self) -> None:
        assert one(self.unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_paths_match_the_configuration_defaults() -> None:
    """The state directory holds what the example configuration puts there, and the exporter's default
    address is one that IPAddressAllow=localhost lets Prometheus reach."""
    config = load_config(str(ROOT / "config" / "douane.yaml"))
    state = Path("/var/lib") / one(load(SERVICE), "Service", "StateDirectory")
    assert config.evidence_path is not None and config.evidence_path.parent == state
    assert config.geo.state_dir == Path("/var/lib") / one(load(UPDATE), "Service", "StateDirectory")
    assert config.policy is not None and config.policy.parent == Path("/etc/douane")
    assert Config().exporter_listen.startswith("127.0.0.1:")
    assert Config().geo.state_dir == config.geo.state_dir


# --- douane-update-db.service and .timer ---------------------------------------------------------


class TestUpdateUnits:
    unit = load(UPDATE)
    timer = load(TIMER)

    def test_oneshot_as_the_daemons_user(self) -> None:
        daemon = load(SERVICE)
        assert one(self.unit, "Service", "Type") == "oneshot"
        command = f"{DOUANE} update-db --config /etc/douane/douane.yaml"
        assert one(self.unit, "Service", "ExecStart") == command
        for key in ("User", "Group"):
            assert one(self.unit, "Service", key) == one(daemon, "Service", key)
        # Inside the daemon's state directory, and nothing else of it writable.
        state = one(daemon, "Service", "StateDirectory")
        assert one(self.unit, "Service", "StateDirectory") == f"{state}/geo"

    def test_reload_after_a_successful_update(self) -> None:
        """`+`: outside the sandbox, as root, which systemctl needs; a stopped daemon is left stopped."""
        post = one(self.unit, "Service", "ExecStartPost")
        assert post == "+/bin/systemctl try-reload-or-restart douane.service"

    def test_secrets_hidden_and_no_capability(self) -> None:
        lines = values(self.unit, "Service", "InaccessiblePaths")
        hidden = {path.lstrip("-") for line in lines for path in line.split()}
        assert {"/var/lib/douane/pseudonym.key", "/var/lib/douane/evidence.sqlite"} <= hidden
        assert one(self.unit, "Service", "CapabilityBoundingSet") == ""
        assert values(self.unit, "Service", "AmbientCapabilities") in ([], [""])
        families = set(one(self.unit, "Service", "RestrictAddressFamilies").split())
        assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
        assert values(self.unit, "Service", "IPAddressDeny") == []  # the one unit that reaches the Internet
        for key in ("NoNewPrivileges", "ProtectSystem", "MemoryDenyWriteExecute", "PrivateTmp", "ProtectHome",
                    "PrivateDevices", "ProtectKernelTunables", "RestrictNamespaces", "LockPersonality",
                    "SystemCallArchitectures", "RemoveIPC", "PrivateMounts"):
            assert one(self.unit, "Service", key) == HARDENING[key]
        assert values(self.unit, "Service", "SystemCallFilter") == SYSCALLS

    def test_timer_monthly_persistent_spread(self) -> None:
        monthly = r"\*-\*-0?[1-9] \d\d:\d\d(:\d\d)?|monthly"
        assert re.fullmatch(monthly, one(self.timer, "Timer", "OnCalendar"))
        assert one(self.timer, "Timer", "Persistent") == "true"
        assert one(self.timer, "Timer", "RandomizedDelaySec")
        assert values(self.timer, "Timer", "Unit") in ([], [UPDATE])
        assert one(self.timer, "Install", "WantedBy") == "timers.target"


# --- systemd-analyze ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze not found (Debian package `systemd`): unit verification skipped")
    return found


@pytest.fixture(scope="module")
def verifiable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three units with the douane binary path replaced by one that exists everywhere."""
    folder = tmp_path_factory.mktemp("units")
    for name in (SERVICE, UPDATE, TIMER, REPORT, REPORT_TIMER):
        text = (UNITS / name).read_text()
        (folder / name).write_text(text.replace(DOUANE, "/bin/true"))
    return folder


def test_only_one_install_path(verifiable: Path) -> None:
    for name in (SERVICE, UPDATE, REPORT):
        text = (verifiable / name).read_text()
        assert "/opt/douane" not in "\n".join(
            line for line in text.splitlines() if line.startswith("Exec")
        ), f"{name}: an Exec line names another path under /opt/douane than {DOUANE}"


def test_systemd_analyze_verify(analyze: str, verifiable: Path) -> None:
    """Exit 0 and not a word: systemd only warns (exit 0) about an unknown or misspelt key."""
    result = subprocess.run(
        [analyze, "verify", "--man=no",
         *(str(verifiable / n) for n in (SERVICE, UPDATE, TIMER, REPORT, REPORT_TIMER))],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def exposure(analyze: str, unit: Path) -> float:
    # --json gives the per-setting rows only; the overall figure is on the text output's last line.
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", f"--threshold={int(MAX_EXPOSURE * 10)}",
         str(unit)], capture_output=True, text=True, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    figure = float(match.group(1))
    assert (result.returncode == 0) == (figure <= MAX_EXPOSURE), result.stdout
    return figure


@pytest.mark.parametrize("name", [SERVICE, UPDATE, REPORT])
def test_systemd_analyze_security(analyze: str, verifiable: Path, name: str) -> None:
    assert exposure(analyze, verifiable / name) <= MAX_EXPOSURE


def test_security_rows_as_json(analyze: str, verifiable: Path) -> None:
    """The settings systemd counts against the daemon are only those the unit cannot avoid."""
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--json=short", str(verifiable / SERVICE)],
        capture_output=True, text=True, check=True,
    )
    exposed = {row["name"] for row in json.loads(result.stdout) if row.get("exposure")}
    assert exposed <= {
        "PrivateNetwork=",  # capture needs the host's network
        "PrivateUsers=",  # a user namespace would void CAP_NET_RAW on the host's interfaces
        "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)",  # CAP_NET_RAW: AF_PACKET
        "RestrictAddressFamilies=~AF_PACKET",
        "RestrictAddressFamilies=~AF_NETLINK",
        "RestrictAddressFamilies=~AF_UNIX",  # sd_notify, journald
        "RestrictAddressFamilies=~AF_(INET|INET6)",  # the exporter
        "IPAddressDeny=",  # localhost allowed: the exporter
        "DeviceAllow=",  # char-rtc:r, which ProtectClock= itself adds
        "AmbientCapabilities=",  # CAP_NET_RAW for a non-root user
        "RootDirectory=/RootImage=",  # the daemon runs from the host's Python and venv
    }, exposed


# --- the daemon under the unit's own system-call filter and capabilities ----------------------------

# Applies the unit's SystemCallFilter= (allow-list minus deny-list, refused calls failing with EPERM),
# MemoryDenyWriteExecute= (as systemd's seccomp rules: no W+X mmap, no PROT_EXEC mprotect, no SHM_EXEC)
# and RestrictAddressFamilies=, with libseccomp, then executes the rest of its command line.
SANDBOX = r'''
import errno, json, os, socket, sys
import seccomp
spec = json.loads(sys.argv[1])
W, X, SHM_EXEC = 0x2, 0x4, 0o100000
f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for name in spec["allowed"]:
    if name in ("mmap", "mprotect", "pkey_mprotect", "shmat", "socket"):
        continue
    try:
        f.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError, OSError):
        pass  # a name this architecture or libseccomp does not know
mdwe = spec["mdwe"]
for prot in ((0, W, X) if mdwe else (0, W, X, W | X)):
    f.add_rule(seccomp.ALLOW, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, W | X, prot))
for call in ("mprotect", "pkey_mprotect"):
    if call in spec["allowed"]:
        f.add_rule(seccomp.ALLOW, call, *([seccomp.Arg(2, seccomp.MASKED_EQ, X, 0)] if mdwe else []))
f.add_rule(seccomp.ALLOW, "shmat", *([seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, 0)] if mdwe else []))
for family in spec["families"]:
    f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, getattr(socket, family)))
f.load()
os.execv(sys.argv[2], sys.argv[2:])
'''


def expand(analyze: str, group: str) -> set[str]:
    out = subprocess.run([analyze, "syscall-filter", "--no-pager", group],
                         capture_output=True, text=True, check=True).stdout
    names: set[str] = set()
    for line in (entry.strip() for entry in out.splitlines()[1:]):
        if line and not line.startswith("#"):
            names |= expand(analyze, line) if line.startswith("@") else {line}
    return names


def seccomp_python() -> str:
    """An interpreter that has libseccomp's bindings (Debian's python3-seccomp), or a skip."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if Path(candidate).exists() and subprocess.run(
            [candidate, "-c", "import seccomp"], capture_output=True, check=False
        ).returncode == 0:
            return candidate
    pytest.skip("libseccomp's Python bindings not found (Debian package python3-seccomp): "
                "the daemon is not run under the unit's system-call filter")


@pytest.fixture(scope="module")
def sandbox(analyze: str, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A command prefix giving a process the unit's capabilities, system calls and address families."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("ip") is None:
        pytest.skip("running under the unit's sandbox needs root, setpriv and iproute2")
    unit = load(SERVICE)
    allowed: set[str] = set()
    for line in values(unit, "Service", "SystemCallFilter"):
        deny = line.startswith("~")
        groups = {n for g in line.lstrip("~").split() for n in (expand(analyze, g) if g[0] == "@" else {g})}
        allowed = allowed - groups if deny else allowed | groups
    spec = {
        "allowed": sorted(allowed),
        "mdwe": one(unit, "Service", "MemoryDenyWriteExecute") == "yes",
        "families": one(unit, "Service", "RestrictAddressFamilies").split(),
    }
    ambient = one(unit, "Service", "AmbientCapabilities").split()
    caps = ",".join("+" + cap.removeprefix("CAP_").lower() for cap in ambient)
    script = tmp_path_factory.mktemp("sandbox") / "sandbox.py"
    script.write_text(SANDBOX)
    # ProcSubset=pid and ProtectProc=invisible: a /proc of the process's own, mounted in a mount
    # namespace before the capabilities go. uid 0 keeps the test's files readable; with a bounding set
    # of CAP_NET_RAW alone, root has no other capability, as the unit's user.
    proc = "mount -t proc -o hidepid=invisible,subset=pid proc /proc && exec \"$@\""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", proc, "sh",
            "setpriv", f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
            f"--bounding-set=-all,{caps}", seccomp_python(), str(script), json.dumps(spec)]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"douane-sd-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "dva", "type", "veth", "peer", "name", "dvb"],
                       check=True)
        for dev in ("lo", "dva", "dvb"):
            subprocess.run(["ip", "-n", name, "link", "set", dev, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_replay_and_check_under_the_unit_sandbox(sandbox: list[str], tmp_path: Path) -> None:
    """The replay pipeline (geo, QUIC decryption with cryptography, the policy) and `douane check` of
    the example configuration (its policy taken from the repository instead of /etc/douane)."""
    config = tmp_path / "douane.yaml"
    config.write_text((ROOT / "config" / "douane.yaml").read_text().replace(
        "policy: /etc/douane/policy.yaml", f"policy: {ROOT / 'config' / 'policy.yaml'}"))
    for args in (["demo"], ["check", "--config", str(config)]):
        result = subprocess.run([*sandbox, sys.executable, "-m", "douane.daemon.cli", *args],
                                capture_output=True, text=True, check=False, timeout=120)
        assert result.returncode == 0, result.stderr


def test_live_capture_under_the_unit_sandbox(sandbox: list[str], netns: str, tmp_path: Path) -> None:
    """`douane run` on a veth in its own namespace, with only the unit's capability and system calls:
    capture starts (AF_PACKET, promiscuous mode, the BPF filter) beside the flow collector (a UDP
    socket on an unprivileged port), SIGHUP reloads, SIGTERM exits 0."""
    config = tmp_path / "douane.yaml"
    config.write_text("capture:\n  interface: dva\n  bpf: 'not port 22'\n"
                      "  collector:\n    listen: 127.0.0.1:2055\n    exporters: [127.0.0.1]\n"
                      "exporter:\n  listen: 127.0.0.1:19743\nlogging:\n  format: json\n")
    log = tmp_path / "daemon.log"
    with log.open("w") as err:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *sandbox, sys.executable, "-m",
                                 "douane.daemon.cli", "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            for event, then in (("capture_started", signal.SIGHUP), ("config_reloaded", signal.SIGTERM)):
                deadline = time.monotonic() + 60
                while f'"{event}"' not in log.read_text():
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
                proc.send_signal(then)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert '"capture_stopped"' in log.read_text()
    assert '"collector_started"' in log.read_text() and '"collector_stopped"' in log.read_text()


# --- douane-report.service and .timer -------------------------------------------------------------


class TestReportUnits:
    def test_monthly_report_without_network(self) -> None:
        """The report runs `douane report --last-month` into the state directory, with no network."""
        unit = load(REPORT)
        assert values(unit, "Service", "ExecStart") == [
            f"{DOUANE} report --config /etc/douane/douane.yaml --last-month "
            "--output-dir /var/lib/douane/reports"
        ]
        assert values(unit, "Service", "PrivateNetwork") == ["yes"]
        assert values(unit, "Service", "RestrictAddressFamilies") == ["AF_UNIX"]
        assert values(unit, "Service", "CapabilityBoundingSet") == [""]
        assert values(unit, "Service", "User") == ["douane"]

    def test_timer_first_of_the_month(self) -> None:
        """The report timer runs on the 1st and catches up after downtime."""
        timer = load(REPORT_TIMER)
        assert values(timer, "Timer", "OnCalendar") == ["*-*-01 05:00:00"]
        assert values(timer, "Timer", "Persistent") == ["true"]
