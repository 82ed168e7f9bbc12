"""Slow clients, the connection cap, the Host check (DNS rebinding) and the Origin check (CSRF)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pneumoseg.inference.predictor import Predictor
from pneumoseg.service import ServiceSettings, create_app, serve_in_background
from pneumoseg.service.security import allowed_host_set, parse_host

HEAD_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def dicom_bytes(synth_data: Path) -> bytes:
    return sorted((synth_data / "dicom").glob("*.dcm"))[0].read_bytes()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def guarded(trained_run: Path, predictor: Predictor) -> Iterator[str]:
    settings = ServiceSettings(header_timeout_s=HEAD_TIMEOUT, max_connections=6)
    with serve_in_background(create_app([trained_run], settings, predictor=predictor)) as url:
        yield url


def _trickle(port: int, result: dict) -> None:
    """Send a request head one byte a second; record when and how the server ended it."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(1.0)
        received = b""
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            received += chunk
            if not chunk:
                break
        result["elapsed"] = time.monotonic() - start
        result["received"] = received


def test_slow_header_clients_are_dropped_and_health_still_answers(guarded: str) -> None:
    port = _port(guarded)
    results: list[dict] = [{} for _ in range(3)]
    threads = [threading.Thread(target=_trickle, args=(port, r), daemon=True) for r in results]
    for t in threads:
        t.start()
    time.sleep(0.5)
    with httpx.Client(base_url=guarded, timeout=5) as client:  # while the slow clients are connected
        start = time.monotonic()
        assert client.get("/health").status_code == 200
        assert time.monotonic() - start < 2
    for t in threads:
        t.join(timeout=15)
    elapsed = ", ".join(f"{r.get('elapsed', -1):.2f}" for r in results)
    print(f"\nslow clients dropped after {elapsed} s (header timeout {HEAD_TIMEOUT} s)")
    for r in results:
        # Dropped at the deadline (not after the ~50 s the whole head would take), told why.
        assert HEAD_TIMEOUT - 0.5 <= r["elapsed"] <= HEAD_TIMEOUT + 3, r
        assert r["received"].startswith(b"HTTP/1.1 408"), r


def test_connections_beyond_the_cap_get_503_and_the_server_recovers(guarded: str) -> None:
    port = _port(guarded)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]
    try:
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503"), answer
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    with httpx.Client(base_url=guarded, timeout=5) as client:
        assert client.get("/health").status_code == 200


def test_a_foreign_host_header_is_refused_on_a_real_loopback_server(guarded: str) -> None:
    port = _port(guarded)
    with httpx.Client(base_url=guarded, timeout=5) as client:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            r = client.get("/health", headers={"Host": host})
            assert r.status_code == 400 and "not allowed" in r.json()["detail"], (host, r.text)
            assert "\n" not in r.json()["detail"]
        for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
            assert client.get("/health", headers={"Host": host}).status_code == 200, host


def test_host_check_uses_only_the_configured_hosts(trained_run: Path, predictor: Predictor) -> None:
    app = create_app([trained_run], ServiceSettings(allowed_hosts=()), predictor=predictor)
    with TestClient(app) as c:  # TestClient's own "testserver" is not allowed here
        assert c.get("/health").status_code == 400
        assert c.get("/api/browse").status_code == 400
    with TestClient(app, base_url="http://localhost:8000") as c:
        assert c.get("/health").status_code == 200
    app = create_app([trained_run], ServiceSettings(allowed_hosts=("viewer.lan:8443",), bind_host="10.1.2.3"),
                     predictor=predictor)
    for base, status in (("https://viewer.lan:8443", 200), ("https://viewer.lan:9999", 400),
                         ("http://10.1.2.3:8000", 200), ("http://10.1.2.4:8000", 400)):
        with TestClient(app, base_url=base) as c:
            assert c.get("/health").status_code == status, base


def test_cross_origin_posts_are_refused(client: TestClient, dicom_bytes: bytes) -> None:
    files = {"file": ("a.dcm", dicom_bytes, "application/dicom")}
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Referer": "http://evil.example/page"}, {"Origin": "http://testserver.evil.example"}):
        r = client.post("/predict", files=files, headers=headers)
        assert r.status_code == 403, (headers, r.text)
        assert "cross-origin" in r.json()["detail"]
    for headers in ({}, {"Origin": "http://testserver"}, {"Origin": "http://localhost:8000"},
                    {"Referer": "http://127.0.0.1:8000/"}):
        assert client.post("/predict", files=files, headers=headers).status_code == 200, headers
    # A cross-origin GET is not a state change (the Host check guards reads).
    assert client.get("/health", headers={"Origin": "http://evil.example"}).status_code == 200


def test_parse_host_and_the_allowed_set() -> None:
    assert parse_host("Example.ORG:8000") == ("example.org", 8000)
    assert parse_host("[::1]:80") == ("::1", 80)
    assert parse_host("[::1]") == ("::1", None)
    for bad in ("", ":80", "a:b", "a:0", "a:70000", "[::1"):
        assert parse_host(bad) is None, bad
    assert ("0.0.0.0", None) not in allowed_host_set("0.0.0.0", ())
    assert {("localhost", None), ("127.0.0.1", None), ("::1", None)} <= allowed_host_set("0.0.0.0", ())
    assert ("192.168.1.5", None) in allowed_host_set("192.168.1.5", ())


def test_settings_check_the_new_limits() -> None:
    from pneumoseg.errors import ConfigError

    for kwargs in ({"header_timeout_s": 0}, {"body_timeout_s": float("inf")}, {"max_connections": 1.5},
                   {"keep_alive_s": -1}, {"allowed_hosts": ("evil.example/path",)}, {"allowed_hosts": ("",)}):
        with pytest.raises(ConfigError):
            ServiceSettings(**kwargs)  # type: ignore[arg-type]


def test_serve_passes_the_limits_and_allowed_hosts_to_uvicorn(trained_run: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from pneumoseg.cli.main import app as cli_app

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(cli_app, ["serve", str(trained_run), "--port", str(port), "--device", "cpu",
                                          "--allowed-host", "viewer.lan", "--allowed-host", "10.0.0.5:8443",
                                          "--header-timeout-s", "3", "--max-connections", "7"],
                                env={"PNEUMOSEG_TOKEN": "", "PNEUMOSEG_ALLOWED_HOSTS": ""})
    assert result.exit_code == 0, result.output
    kw = calls[-1]
    settings = kw["app"].state.settings
    assert settings.allowed_hosts == ("viewer.lan", "10.0.0.5:8443") and settings.bind_host == "127.0.0.1"
    assert kw["http"].header_timeout == 3 and kw["http"].max_connections == 7
    assert kw["limit_concurrency"] == 8 and kw["timeout_keep_alive"] == 5
    result = CliRunner().invoke(cli_app, ["serve", str(trained_run), "--port", str(port),
                                          "--max-connections", "0"])
    assert result.exit_code == 2 and "--max-connections must be an integer > 0" in result.output
