"""flowrun's HTTP client through a real forward proxy: Debian's tinyproxy, started per test on
loopback, in front of real servers (aiohttp, the sandbox).

That a request went through the proxy is proven on both sides: tinyproxy logs every request
line it serves (`POST http://...` for an http API, `CONNECT host:port` for a tunnel), and the
API's server sees the `Via` header tinyproxy adds to what it forwards (an http API) or counts
its connections, each of which must be one of the proxy's tunnels (an https API)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from runner import threadserver
from runner.http import Client, ConnectFailed, Lost, Reply
from runner.proxy import Proxy, ProxyUnsupported, parse_proxy, proxy_for
from runner.sandbox import SandboxState
from runner.transport import HttpTransport, NotDelivered
from tests.sandbox_helpers import flowrun, write_flow
from tests.tls import self_signed

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"  # where Debian puts it
PASSWORD = "s3cret-pass.word_9"  # tinyproxy's BasicAuth takes letters, digits and -._ only


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Tinyproxy:
    url: str
    log: Path

    def requests(self) -> list[str]:
        """The request lines tinyproxy read, in order (its log says `Request (file descriptor
        N): POST http://... HTTP/1.1` for each, before it forwards anything)."""
        lines = self.log.read_text("utf-8", "replace").splitlines()
        return [line.split("): ", 1)[1] for line in lines if "]: Request (file descriptor" in line]

    def with_credentials(self, user: str, password: str) -> str:
        return self.url.replace("http://", f"http://{user}:{password}@")


StartProxy = Callable[..., Tinyproxy]


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[StartProxy]:
    """`start_proxy(*lines)`: a tinyproxy on a free port of 127.0.0.1, in the foreground (-d),
    with `lines` added to its configuration; stopped at the end of the test."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*lines: str) -> Tinyproxy:
        if not os.access(TINYPROXY, os.X_OK):
            pytest.fail(
                f"{TINYPROXY} is missing: the proxy tests need a real forward proxy;"
                " install it with: apt-get install -y tinyproxy"
            )
        folder = tmp_path / f"tinyproxy{len(processes)}"
        folder.mkdir()
        port, log = free_port(), folder / "tinyproxy.log"
        # No ConnectPort line: tinyproxy then allows CONNECT to every port (tinyproxy.conf(5));
        # Debian's sample configuration allows only 443 and 563.
        config = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Allow 127.0.0.1",
            f'LogFile "{log}"',
            "LogLevel Connect",
            'ViaProxyName "flowrun-test-proxy"',
            "Timeout 30",
            *lines,
        ]
        (folder / "tinyproxy.conf").write_text("\n".join(config) + "\n", "utf-8")
        process = subprocess.Popen(
            [TINYPROXY, "-d", "-c", str(folder / "tinyproxy.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        processes.append(process)
        deadline = time.monotonic() + 10
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"tinyproxy did not start: {error.strip()}")
            time.sleep(0.02)
        return Tinyproxy(f"http://127.0.0.1:{port}", log)

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)
        if process.stderr:
            process.stderr.close()


@pytest.fixture
def proxy(start_proxy: StartProxy) -> Tinyproxy:
    return start_proxy()


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Seen:
    """What the API's server saw: one entry per request."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    def header(self, name: str) -> list[str | None]:
        return [r["headers"].get(name) for r in self.requests]

    def connections(self) -> int:
        return len({r["peer"] for r in self.requests})


def api_app(seen: Seen) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        assert request.transport is not None
        peer = request.transport.get_extra_info("peername")
        seen.requests.append({"headers": dict(request.headers), "peer": peer, "path": request.path})
        return web.json_response({"got": body.decode()})

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.json_response({"late": True})

    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()  # the API took the request and died before answering
        raise web.HTTPInternalServerError

    application = web.Application()
    application.router.add_post("/api/echo", echo)
    application.router.add_post("/api/slow", slow)
    application.router.add_post("/api/drop", drop)
    return application


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name `localhost` only (no IP address in it), so that a
    client checking the proxy's address (127.0.0.1) instead of the API's name would fail."""
    return self_signed(tmp_path_factory.mktemp("tls"), "localhost", "DNS:localhost")


@contextlib.contextmanager
def https_api(certificate: tuple[Path, Path], seen: Seen) -> Iterator[str]:
    """The API over TLS on 127.0.0.1, named https://localhost:PORT."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    with threadserver.serving(api_app(seen), ssl_context=context) as base:
        yield base.replace("https://127.0.0.1:", "https://localhost:") + "/api"


@contextlib.contextmanager
def http_api(seen: Seen) -> Iterator[str]:
    with threadserver.serving(api_app(seen)) as base:
        yield base + "/api"


LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None


@pytest.fixture(params=["uvloop", "asyncio"])
def loop(request: pytest.FixtureRequest) -> LoopFactory:
    """flowrun's default loop (uvloop) and asyncio's own (FLOWRUN_LOOP=asyncio)."""
    if request.param == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


def run(loop: LoopFactory, coroutine: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=loop) as runner:
        return runner.run(coroutine)


async def post_many(base: str, n: int, *, limit: int = 2, timeout: float = 5) -> list[Reply]:
    """n requests at once over at most `limit` connections, as a run sends them."""
    client = Client(base, limit, timeout)
    try:
        return await asyncio.gather(
            *(
                client.post("/echo", b'{"n": %d}' % i, "application/json", {"Authorization": "x"})
                for i in range(n)
            )
        )
    finally:
        await client.close()


def test_an_http_api_is_asked_through_the_proxy_in_absolute_form(
    proxy: Tinyproxy, loop: LoopFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = Seen()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with http_api(seen) as base:
        replies = run(loop, post_many(base, 6))
    assert [r.status for r in replies] == [200] * 6
    got = sorted(orjson.loads(r.body)["got"] for r in replies)
    assert got == [f'{{"n": {i}}}' for i in range(6)]
    assert proxy.requests() == [f"POST {base}/echo HTTP/1.1"] * 6
    assert seen.header("Via") == ["1.1 flowrun-test-proxy (tinyproxy/1.11.1)"] * 6


def test_an_https_api_is_reached_through_a_connect_tunnel(
    proxy: Tinyproxy,
    certificate: tuple[Path, Path],
    loop: LoopFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = Seen()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # OpenSSL's way to name trusted CAs
    with https_api(certificate, seen) as base:
        replies = run(loop, post_many(base, 8, limit=3))
    assert [r.status for r in replies] == [200] * 8
    authority = base.removeprefix("https://").removesuffix("/api")
    tunnels = proxy.requests()
    # every connection the API saw is one of the proxy's tunnels, and it saw all 8 requests
    assert tunnels == [f"CONNECT {authority} HTTP/1.1"] * seen.connections()
    assert 1 <= len(tunnels) <= 3
    assert len(seen.requests) == 8
    # the proxy saw ciphertext only: it could add nothing, and its credentials stay with it
    assert seen.header("Via") == [None] * 8
    assert seen.header("Proxy-Authorization") == [None] * 8


def test_tls_through_the_tunnel_checks_the_api_not_the_proxy(
    proxy: Tinyproxy,
    certificate: tuple[Path, Path],
    loop: LoopFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The certificate names localhost only; the proxy is 127.0.0.1. Trusted and named as in
    the certificate: it works (previous test). Not trusted, or the API named otherwise: no
    connection, so the check is the API's, end to end, and the proxy cannot stand in for it."""
    seen = Seen()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with https_api(certificate, seen) as base:
        with pytest.raises(ConnectFailed) as untrusted:
            run(loop, post_many(base, 1))
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
        by_address = base.replace("https://localhost:", "https://127.0.0.1:")
        with pytest.raises(ConnectFailed) as misnamed:
            run(loop, post_many(by_address, 1))
    assert "CERTIFICATE_VERIFY_FAILED" in str(untrusted.value)
    assert str(untrusted.value).endswith(f"(through the proxy {proxy.url})")
    assert "CERTIFICATE_VERIFY_FAILED" in str(misnamed.value)
    assert "mismatch" in str(misnamed.value)  # "IP address mismatch": 127.0.0.1 is not localhost
    assert [line.split()[0] for line in proxy.requests()] == ["CONNECT", "CONNECT"]
    assert seen.requests == []


@pytest.mark.parametrize(
    "no_proxy",
    ["127.0.0.1", "*", "example.com, 127.0.0.1:{port}", ".0.0.1", "localhost,127.0.0.1"],
    ids=["host", "star", "host-port", "suffix", "list"],
)
def test_no_proxy_goes_direct(
    proxy: Tinyproxy, no_proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = Seen()
    monkeypatch.setenv("http_proxy", proxy.url)
    with http_api(seen) as base:
        port = base.split(":")[2].split("/")[0]
        monkeypatch.setenv("no_proxy", no_proxy.format(port=port))
        replies = run(None, post_many(base, 3))
    assert [r.status for r in replies] == [200] * 3
    assert proxy.requests() == []
    assert seen.header("Via") == [None] * 3


def test_no_proxy_for_another_port_still_goes_through_the_proxy(
    proxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = Seen()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1:1")
    with http_api(seen) as base:
        run(None, post_many(base, 2))
    assert len(proxy.requests()) == 2
    assert seen.header("Via") == ["1.1 flowrun-test-proxy (tinyproxy/1.11.1)"] * 2


def test_without_proxy_variables_nothing_goes_through_a_proxy(proxy: Tinyproxy) -> None:
    assert not [name for name in os.environ if name.lower().endswith("_proxy")]  # conftest
    seen = Seen()
    with http_api(seen) as base:
        assert Client(base, 1, 5).proxy is None
        replies = run(None, post_many(base, 3))
    assert [r.status for r in replies] == [200] * 3
    assert proxy.requests() == []
    assert seen.header("Via") == [None] * 3


@pytest.fixture
def guarded(start_proxy: StartProxy) -> Tinyproxy:
    """A proxy that wants credentials: user `flow`, PASSWORD."""
    return start_proxy(f"BasicAuth flow {PASSWORD}")


def test_credentials_in_the_proxy_url_are_sent_percent_decoded(
    guarded: Tinyproxy,
    certificate: tuple[Path, Path],
    loop: LoopFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # %66 is "f", %73 is "s": sent as written, tinyproxy would refuse them
    url = guarded.with_credentials("%66low", PASSWORD.replace("s", "%73"))
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("HTTPS_PROXY", url)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    seen = Seen()
    with http_api(seen) as http_base, https_api(certificate, seen) as https_base:
        replies = run(loop, post_many(http_base, 2)) + run(loop, post_many(https_base, 2, limit=1))
    assert [r.status for r in replies] == [200] * 4
    assert [line.split()[0] for line in guarded.requests()] == ["POST", "POST", "CONNECT"]
    assert seen.header("Via")[:2] == ["1.1 flowrun-test-proxy (tinyproxy/1.11.1)"] * 2


@pytest.mark.parametrize("password", ["wrong-password", None])
def test_refused_credentials_are_one_line_without_the_password(
    guarded: Tinyproxy,
    certificate: tuple[Path, Path],
    password: str | None,
    loop: LoopFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = guarded.with_credentials("flow", password) if password else guarded.url
    monkeypatch.setenv("HTTPS_PROXY", url)
    seen = Seen()
    with https_api(certificate, seen) as base:
        client = Client(base, 1, 5)
        with pytest.raises(NotDelivered) as refused:
            run(loop, _post_via_transport(base))
    line = str(refused.value)
    authority = base.removeprefix("https://").removesuffix("/api")
    if password:
        # tinyproxy answers wrong credentials 401 (RFC 9110 says 407); flowrun reads both
        assert line == (
            f"cannot connect to {base}: the proxy refused the credentials"
            f" ({guarded.url} answered 401 Unauthorized)"
        )
        assert password not in line + repr(client.proxy) + str(client.proxy)
    else:
        assert line == (
            f"cannot connect to {base}: the proxy asks for credentials ({guarded.url} answered"
            f" 407 Proxy Authentication Required): put them in its URL,"
            f" http://USER:PASSWORD@{guarded.url.removeprefix('http://')}"
        )
    assert guarded.requests() == [f"CONNECT {authority} HTTP/1.1"]
    assert seen.requests == []


async def _post_via_transport(base: str) -> None:
    async with HttpTransport(base, "t0ken", 5, 1) as transport:
        await transport.post_json("/echo", b"{}")


def test_407_to_an_http_request_is_connect_failed(
    loop: LoopFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An http API through a proxy: the proxy answers the request itself. A 407 comes from the
    proxy alone (RFC 9110 §15.5.8), so the request went no further: never sent. (A raw proxy:
    tinyproxy closes such connections without reading the body, and a reset may beat its
    answer.)"""
    heads: list[bytes] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        await reader.readexactly(2)
        writer.write(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 0\r\n\r\n'
        )
        await writer.drain()
        writer.close()

    async def go() -> str:
        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        monkeypatch.setenv("HTTP_PROXY", f"http://flow:{PASSWORD}@127.0.0.1:{port}")
        try:
            client = Client("http://api.example:8080/v1", 1, 5)
            with pytest.raises(ConnectFailed) as refused:
                await client.post("/messages", b"{}", "application/json", {})
            await client.close()
            return str(refused.value)
        finally:
            server.close()
            await server.wait_closed()

    line = run(loop, go())
    port = line.rsplit(":", 1)[1].split(" ")[0]
    assert line == (
        f"the proxy refused the credentials (http://127.0.0.1:{port} answered 407 Proxy"
        " Authentication Required)"
    )
    [head] = heads
    assert head.startswith(b"POST http://api.example:8080/v1/messages HTTP/1.1\r\n")
    assert b"\r\nHost: api.example:8080\r\n" in head
    assert b"\r\nProxy-Authorization: Basic Zmxvdzpz" in head


@pytest.mark.parametrize(
    ("says", "connections"),
    [(b"Connection: keep-alive\r\n", 1), (b"", 3)],
    ids=["keep-alive", "nothing"],
)
def test_a_connection_to_an_http_proxy_is_kept_when_the_proxy_says_so(
    says: bytes, connections: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep-alive to the proxy when its answers say `keep-alive`; a new connection per request
    when they do not (tinyproxy, which closes each without saying so: the test above with
    six requests)."""
    peers: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[1])
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                writer.write(b"HTTP/1.1 200 OK\r\n" + says + b"Content-Length: 2\r\n\r\n{}")
                await writer.drain()
        writer.close()

    async def go() -> list[int]:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        client = Client("http://api.example/v1", 1, 5)
        try:
            replies = [await client.post("/m", b"{}", "application/json", {}) for _ in "abc"]
            return [reply.status for reply in replies]
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    assert run(None, go()) == [200] * 3
    assert len(peers) == connections


def test_a_tunnel_the_proxy_refuses_is_connect_failed(
    start_proxy: StartProxy, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = start_proxy("ConnectPort 443")
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    seen = Seen()
    with https_api(certificate, seen) as base, pytest.raises(ConnectFailed) as refused:
        run(None, post_many(base, 1))
    authority = base.removeprefix("https://").removesuffix("/api")
    assert str(refused.value) == (
        f"the proxy refused the tunnel to {authority} ({proxy.url} answered 403 Access violation)"
    )
    assert seen.requests == []


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("silent", "no connection within 0.3 s (through the proxy {proxy})"),
        ("hangs up", "the proxy {proxy} closed the connection before answering"),
        ("garbles", "the proxy {proxy} answered CONNECT with something that is not HTTP"),
    ],
)
def test_a_proxy_that_fails_during_connect_is_connect_failed(
    behaviour: str, expected: str, loop: LoopFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy that takes the connection, then never answers CONNECT, closes it or answers
    nonsense: the request was never sent (a raw server plays the broken proxy)."""

    async def go() -> str:
        finished = asyncio.get_running_loop().create_future()

        async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if behaviour == "silent":
                await reader.read()  # until flowrun gives up and closes
            elif behaviour == "garbles":
                writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
            writer.close()
            await writer.wait_closed()
            finished.set_result(None)

        server = await asyncio.start_server(broken, "127.0.0.1", 0)
        proxy = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        client = Client("https://graph.example", 1, 0.3)
        try:
            with pytest.raises(ConnectFailed) as failed:
                await client.post("/m", b"{}", "application/json", {})
        finally:
            await client.close()
            await asyncio.wait_for(finished, 5)
            server.close()
            await server.wait_closed()
        return str(failed.value).replace(proxy, "{proxy}")

    assert run(loop, go()) == expected


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_proxy_that_is_down_is_not_delivered(
    scheme: str, loop: LoopFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(f"{scheme.upper()}_PROXY", down)
    base = f"{scheme}://api.example:8443/v1"
    with pytest.raises(NotDelivered) as failed:
        run(loop, _post_via_transport(base))
    assert str(failed.value).startswith(
        f"cannot connect to {base}: the proxy {down} cannot be reached: "
    )


def test_an_answer_lost_inside_the_tunnel_is_lost(
    proxy: Tinyproxy,
    certificate: tuple[Path, Path],
    loop: LoopFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the request left through the tunnel, a missing answer may mean the API has it."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with https_api(certificate, Seen()) as base:
        with pytest.raises(Lost, match="no answer within"):
            run(loop, _post_once(base, "/slow", timeout=0.3))
        with pytest.raises(Lost, match="closed before the answer"):
            run(loop, _post_once(base, "/drop"))
    assert len(proxy.requests()) == 2


def test_an_answer_lost_behind_an_http_proxy_is_lost(
    proxy: Tinyproxy, loop: LoopFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with http_api(Seen()) as base, pytest.raises(Lost, match="closed before the answer"):
        run(loop, _post_once(base, "/drop"))
    assert proxy.requests() == [f"POST {base}/drop HTTP/1.1"]


async def _post_once(base: str, path: str, timeout: float = 5) -> Reply:
    client = Client(base, 1, timeout)
    try:
        return await client.post(path, b"{}", "application/json", {})
    finally:
        await client.close()


@pytest.mark.parametrize(
    "value",
    [
        "https://flow:s3cret@proxy.corp:3128",
        "socks5://flow:s3cret@proxy.corp:1080",
        "socks5h://proxy.corp:1080",
    ],
)
def test_proxies_flowrun_cannot_speak_to_are_refused_at_start(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("https_proxy", value)
    with pytest.raises(ProxyUnsupported) as refused:
        Client("https://graph.facebook.com", 1, 5)
    scheme = value.split(":", maxsplit=1)[0]
    port = value.rsplit(":", 1)[1]
    assert str(refused.value) == (
        f"https_proxy is {scheme}://proxy.corp:{port}: flowrun supports http:// proxies only"
        " (https APIs are reached through them by CONNECT); https:// and socks proxies are not"
        " supported"
    )


def test_a_malformed_proxy_url_is_refused_without_its_password() -> None:
    for value in ("http://flow:s3cret@proxy.corp:31x8", "http://flow:s3cret@[::1"):
        with pytest.raises(ProxyUnsupported) as refused:
            parse_proxy(value, "HTTP_PROXY")
        assert str(refused.value) == "HTTP_PROXY is not a proxy URL like http://HOST:PORT"
    with pytest.raises(ProxyUnsupported, match=r"^HTTP_PROXY is http://: not a proxy URL"):
        parse_proxy("http://", "HTTP_PROXY")


def test_the_environment_is_read_as_the_standard_library_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert proxy_for("https", "graph.facebook.com", 443) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://upper:3128")
    monkeypatch.setenv("https_proxy", "lower:8080")  # no scheme: http, as curl and urllib
    monkeypatch.setenv("HTTP_PROXY", "http://plain:3128")
    assert proxy_for("https", "graph.facebook.com", 443) == Proxy("lower", 8080)
    assert proxy_for("http", "wa.corp", 80) == Proxy("plain", 3128)
    monkeypatch.setenv("https_proxy", "")  # an empty lower case one switches the other off
    assert proxy_for("https", "graph.facebook.com", 443) is None
    monkeypatch.setenv("NO_PROXY", "facebook.com, wa.corp:8080")
    assert proxy_for("http", "wa.corp", 80) == Proxy("plain", 3128)  # another port
    assert proxy_for("http", "wa.corp", 8080) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://upper")
    monkeypatch.delenv("https_proxy")
    assert proxy_for("https", "graph.facebook.com", 443) is None  # a domain's hosts
    assert proxy_for("https", "notfacebook.com", 443) == Proxy("upper", 80)
    monkeypatch.setenv("no_proxy", "*")  # lower case wins here too
    assert proxy_for("https", "notfacebook.com", 443) is None


def test_credentials_become_a_basic_header_and_are_never_shown() -> None:
    proxy = parse_proxy("http://fl%C3%B6w:p%40ss%3Aw%25rd@proxy.corp:3128/", "HTTP_PROXY")
    assert proxy.authorization == "Basic ZmzDtnc6cEBzczp3JXJk"  # b"fl\xc3\xb6w:p@ss:w%rd"
    assert (proxy.host, proxy.port, proxy.url) == ("proxy.corp", 3128, "http://proxy.corp:3128")
    assert "p@ss" not in repr(proxy) + str(proxy)
    assert parse_proxy("http://user@[::1]:3128", "X").url == "http://[::1]:3128"


def test_a_run_sends_every_message_through_the_proxy(
    api: tuple[str, SandboxState],
    folder: Path,
    proxy: Tinyproxy,
    monkeypatch: pytest.MonkeyPatch,
    loop: LoopFactory,
) -> None:
    """A whole `flowrun FLOW` (an upload, then two steps to 20 recipients) with HTTP_PROXY set:
    every request the sandbox served is one the proxy forwarded."""
    base, state = api
    if loop is None:
        monkeypatch.setenv("FLOWRUN_LOOP", "asyncio")
    else:
        monkeypatch.delenv("FLOWRUN_LOOP", raising=False)  # uvloop, flowrun's default
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    steps = "  - image: {file: assets/welcome.jpg}\n  - text: {body: 'hi {{ recipient.name }}'}\n"
    write_flow(folder, base, steps, people=20)
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "sent 40, failed 0, skipped 0, uncertain 0, uploads 1" in out
    forwarded = proxy.requests()
    assert forwarded == [
        f"POST {base}/v1/{'media' if i == 0 else 'messages'} HTTP/1.1" for i in range(41)
    ]
    assert state.requests == len(forwarded) == len(state.inbox) + state.uploads


def test_a_run_refuses_a_socks_proxy_before_sending(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("HTTP_PROXY", "socks5://flow:s3cret@127.0.0.1:1080")
    write_flow(folder, base, "  - text: {body: hi}\n", people=2)
    code, out, err = flowrun("flow.yaml")
    assert code == 2
    assert err.splitlines()[-1] == (
        "HTTP_PROXY is socks5://127.0.0.1:1080: flowrun supports http:// proxies only (https APIs"
        " are reached through them by CONNECT); https:// and socks proxies are not supported"
    )
    assert "s3cret" not in out + err
    assert state.requests == 0


def test_a_sandbox_run_never_uses_a_proxy(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--sandbox` talks to flowrun's own server on loopback: a proxy (here one that is not
    even there) would only stand in the way."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    write_flow(folder, "https://graph.example.com", "  - text: {body: hi}\n", people=3)
    code, out, err = flowrun("flow.yaml", "--sandbox")
    assert code == 0, err
    assert "sent 3, failed 0" in out
