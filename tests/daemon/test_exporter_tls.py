"""The metrics endpoint over TLS, with client certificates: a real server, real handshakes on loopback."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from douane.daemon.cli import demo_capture

DOUANE = [sys.executable, "-m", "douane.daemon.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def issue(name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
          ca: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    ca = issue("douane test CA", None, ca=True)
    write(folder, "ca", *ca)
    write(folder, "server", *issue("localhost", ca))
    write(folder, "client", *issue("prometheus", ca))
    write(folder, "stranger", *issue("stranger", issue("other CA", None, ca=True)))
    return folder


@pytest.fixture(scope="module")
def endpoint(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    config = tmp_path_factory.mktemp("cfg") / "douane.yaml"
    config.write_text(f"exporter:\n  tls:\n    cert: {pki / 'server.pem'}\n    key: {pki / 'server.key'}\n"
                      f"    client_ca: {pki / 'ca.pem'}\n")
    port = free_port()
    proc = subprocess.Popen([*DOUANE, "replay", str(demo_capture()), "-c", str(config),
                             "--serve", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "no exporter")
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def client(pki: Path, cert: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        context.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return context


class TestExporterTls:
    def test_client_with_certificate(self, pki: Path, endpoint: str) -> None:
        """A scraper with a certificate from the configured CA gets the metrics over TLS."""
        with urllib.request.urlopen(endpoint, context=client(pki, "client"), timeout=10) as response:
            assert response.status == 200
            assert b"douane_build_info" in response.read()

    @pytest.mark.parametrize("cert", [None, "stranger"])
    def test_client_refused(self, pki: Path, endpoint: str, cert: str | None) -> None:
        """No client certificate, or one from another CA: the handshake fails, no metrics."""
        with (pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)),
              urllib.request.urlopen(endpoint, context=client(pki, cert), timeout=10) as response):
            response.read()

    def test_plain_http_refused(self, endpoint: str) -> None:
        """Plain HTTP to the TLS endpoint gets no metrics."""
        with (pytest.raises((urllib.error.URLError, ConnectionError, OSError)),
              urllib.request.urlopen(endpoint.replace("https", "http"), timeout=10) as response):
            assert b"douane_build_info" not in response.read()
            raise ConnectionError("answered plain HTTP without metrics")


class TestTlsConfiguration:
    def test_key_without_cert_refused(self, tmp_path: Path) -> None:
        """A key without its certificate is a configuration error naming exporter.tls."""
        config = tmp_path / "douane.yaml"
        config.write_text("exporter:\n  tls:\n    key: /etc/ssl/private/x.key\n")
        result = subprocess.run([*DOUANE, "check", "-c", str(config)], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 2
        assert "key 'exporter.tls'" in result.stderr

    def test_check_reports_an_unusable_certificate(self, tmp_path: Path) -> None:
        """douane check names exporter.tls when the certificate cannot be loaded."""
        bad = tmp_path / "bad.pem"
        bad.write_text("not a certificate")
        config = tmp_path / "douane.yaml"
        config.write_text(f"exporter:\n  tls:\n    cert: {bad}\n    key: {bad}\n")
        result = subprocess.run([*DOUANE, "check", "-c", str(config)], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 1
        assert "exporter.tls" in result.stderr and "Traceback" not in result.stderr
