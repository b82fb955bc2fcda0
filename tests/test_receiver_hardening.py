"""The receiver under attack: it is internet-facing, so an attacker's bodies, slow connections
and odd values must neither take its memory nor keep real callbacks out, and one bad callback
must not fail anyone else's. Real processes, real sockets, all on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.http import Client
from runner.ledger import SqliteLedger
from runner.receiver import Limits, Receiver, running
from runner.receiver.callbacks import sign
from runner.sandbox import SandboxState
from tests.sandbox_helpers import children, start, wait_until, write_flow
from tests.test_listen import SECRET, cloud, free_port, post, status, table

MB = 1024 * 1024


# The receiver as `flowrun listen`, a process of its own


class Listener:
    """`flowrun listen` on a free port, with WA_APP_SECRET set; `stop()` ends it with Ctrl-C
    and gives what it printed."""

    def __init__(self, ledger: Path, nofile: int | None = None) -> None:
        SqliteLedger.for_run(ledger, "f").close()
        self.ledger = ledger
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "runner", "listen", "--ledger", str(ledger)]
        if nofile is not None:  # the limit set in the process itself, then flowrun in its place
            limit = f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))"
            execute = f"os.execv(sys.executable, {[*command, '--port', str(self.port)]!r})"
            command = [sys.executable, "-c", f"import os, resource, sys; {limit}; {execute}"]
        else:
            command += ["--port", str(self.port)]
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "WA_APP_SECRET": SECRET},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(self._answers, 15)

    def _answers(self) -> bool:
        assert self.process.poll() is None, self.process.communicate()
        try:
            return post(self.url, cloud(status("wamid.PING", "sent", 1))) == 200
        except OSError:  # not listening yet
            return False

    def rss_mb(self) -> float:
        """Its resident memory now (VmRSS in /proc/PID/status)."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in text.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> tuple[str, str]:
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        return out, err


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    started = Listener(tmp_path / "l.sqlite")
    try:
        yield started
    finally:
        if started.process.poll() is None:
            started.process.kill()
            started.process.communicate()


def signed_headers(body: bytes, length: int | None, chunked: bool = False) -> bytes:
    """A POST's head as Meta sends it (signed), announcing `length` bytes (or chunked)."""
    lines = ["POST /hook HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines.append(f"X-Hub-Signature-256: {sign(SECRET, body)}")
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Attack:
    """Connections an attacker holds open: opened, fed, and closed, all bounded in number and
    time. A write the receiver refuses (it closed the connection) just ends that one."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.closed = 0  # by the receiver

    async def open(self, port: int, head: bytes) -> asyncio.StreamWriter | None:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(head)
            await asyncio.wait_for(writer.drain(), 5)
        except (OSError, TimeoutError):
            self.closed += 1
            return None
        self.writers.append(writer)
        return writer

    async def feed(self, writer: asyncio.StreamWriter, data: bytes, total: int) -> None:
        """`total` bytes of `data` pieces, as fast as the receiver takes them (5 s at most)."""
        deadline = time.monotonic() + 5
        sent = 0
        try:
            while sent < total and time.monotonic() < deadline:
                writer.write(data)
                await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
                sent += len(data)
        except (OSError, TimeoutError):
            self.closed += 1

    async def dribble(self, data: bytes, seconds: float, every: float = 1.0) -> None:
        """One small write on every open connection each `every` seconds, for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for writer in list(self.writers):
                if writer.is_closing():
                    self.writers.remove(writer)
                    continue
                writer.write(data)
            await asyncio.sleep(every)

    def close(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()


def real_callbacks(url: str, count: int, every: float, prefix: str) -> list[tuple[int, float]]:
    """Up to `count` signed callbacks, one each `every` seconds, for 12 s at most (status 0:
    refused or not answered within 3 s): (status, seconds) of each."""
    answers: list[tuple[int, float]] = []
    deadline = time.monotonic() + 12
    for i in range(count):
        if time.monotonic() > deadline:
            break
        body = json.dumps(cloud(status(f"{prefix}{i}", "delivered", 1000 + i))).encode()
        request = urllib.request.Request(url, body, method="POST")
        request.add_header("X-Hub-Signature-256", sign(SECRET, body))
        began = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=3) as response:
                code = int(response.status)
        except urllib.error.HTTPError as error:
            error.close()
            code = int(error.code)
        except OSError:  # refused or not answered: the receiver kept it out
            code = 0
        answers.append((code, time.monotonic() - began))
        time.sleep(every)
    return answers


def in_thread(function: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(function(*args)), daemon=True)
    thread.start()
    return thread, result


# 1. Bounded resources


@pytest.mark.slow  # an attack of several seconds: CI runs it
def test_held_bodies_take_no_memory_and_keep_no_callback_out(listener: Listener) -> None:
    """300 connections each announce 4 MB and send half of it, 100 more send chunked bodies
    without end, 100 announce 3 MB, 300 more send 59 KB of 60 and hold: the receiver's memory
    stays bounded during and after, and real callbacks sent meanwhile are answered 200 at once
    and recorded."""
    rss: list[float] = [listener.rss_mb()]
    thread, answers = in_thread(real_callbacks, listener.url, 20, 0.2, "wamid.REAL")

    async def attack() -> None:
        held = Attack()
        piece = b"x" * 65536
        big = signed_headers(b"", 4 * MB)
        writers = await asyncio.gather(*(held.open(listener.port, big) for _ in range(300)))
        await asyncio.gather(*(held.feed(w, piece, 2 * MB) for w in writers if w))
        rss.append(listener.rss_mb())
        chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
        chunked = signed_headers(b"", None, chunked=True)
        writers = await asyncio.gather(*(held.open(listener.port, chunked) for _ in range(100)))
        await asyncio.gather(*(held.feed(w, chunk, MB) for w in writers if w))
        rss.append(listener.rss_mb())
        near = signed_headers(b"", 3 * MB)
        writers = await asyncio.gather(*(held.open(listener.port, near) for _ in range(100)))
        await asyncio.gather(*(held.feed(w, piece, 2 * MB) for w in writers if w))
        rss.append(listener.rss_mb())
        within = signed_headers(b"", 60 * 1024)  # under the bound: read, and held
        writers = await asyncio.gather(*(held.open(listener.port, within) for _ in range(300)))
        await asyncio.gather(*(held.feed(w, b"y" * 1024, 59 * 1024) for w in writers if w))
        rss.append(listener.rss_mb())
        await held.dribble(b"x", 2.0, every=0.5)
        rss.append(listener.rss_mb())
        await asyncio.to_thread(thread.join, 30)
        held.close()
        await asyncio.sleep(1)
        rss.append(listener.rss_mb())  # and after

    asyncio.run(attack())
    print(f"RSS MB: {[round(x) for x in rss]}; answers (s): {[round(a[1], 3) for a in answers[0]]}")
    assert max(rss) < 150, rss
    assert [code for code, _ in answers[0]] == [200] * 20
    assert max(seconds for _, seconds in answers[0]) < 8  # in ms when quiet
    out, err = listener.stop()
    print(out)
    assert err == ""  # not a line of error log
    assert sum(1 for row in table(listener.ledger) if row[0].startswith("wamid.REAL")) == 20


@pytest.mark.slow  # an attack of several seconds: CI runs it
def test_slow_connections_beyond_the_open_files_limit_keep_no_callback_out(
    tmp_path: Path,
) -> None:
    """Slowloris: with the receiver's open-files limit at 1,024, 1,100 connections each send
    one header byte a second; real callbacks meanwhile are answered 200 and recorded."""
    mine = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1024 + 1100 + 200
    if mine[0] < wanted <= mine[1] or mine[1] == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, mine[1]))
    limit = 1024 if resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted else mine[0] // 3
    slow = Listener(tmp_path / "l.sqlite", nofile=limit)
    try:

        async def attack() -> list[tuple[int, float]]:
            held = Attack()
            head = b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
            for _ in range((limit + 76) // 100 + 1):  # in waves, as a real attack would
                await asyncio.gather(*(held.open(slow.port, head) for _ in range(100)))
            opened = len(held.writers) + held.closed
            assert opened >= limit + 76
            thread, answers = in_thread(real_callbacks, slow.url, 12, 0.5, "wamid.REAL")
            await held.dribble(b"a", 7.0)
            thread.join(30)
            held.close()
            return list(answers[0])

        answers = asyncio.run(attack())
        print(f"answers (status, s): {[(c, round(s, 3)) for c, s in answers]}")
        assert [code for code, _ in answers] == [200] * 12
        assert max(seconds for _, seconds in answers) < 8  # in ms when quiet
        out, err = slow.stop()
        print(out)
        assert err == ""  # not even asyncio's "socket.accept() out of system resource"
        assert sum(1 for row in table(slow.ledger) if row[0].startswith("wamid.REAL")) == 12
    finally:
        if slow.process.poll() is None:
            slow.process.kill()
            slow.process.communicate()
        resource.setrlimit(resource.RLIMIT_NOFILE, mine)


def exchange(url: str, head: bytes, body: bytes = b"", wait: float = 5) -> tuple[int, float]:
    """Send `head` and `body` on a raw connection (the body may be short of what the head
    announces); the answer's status and how long it took (0: closed without an answer)."""
    host, port = url.removeprefix("http://").split(":")
    began = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(head + body)
        answer = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in answer and (chunk := sock.recv(4096)):
                answer += chunk
    code = int(answer.split()[1]) if answer.startswith(b"HTTP/1.") else 0
    return code, time.monotonic() - began


def closed_within(url: str, head: bytes, seconds: float, dribble: bytes = b"a") -> float:
    """A connection that sends `head`, then `dribble` every 0.2 s: how long until the
    receiver closes it (it never completes a request)."""
    host, port = url.removeprefix("http://").split(":")
    began = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=seconds) as sock:
        sock.sendall(head)
        sock.settimeout(0.2)
        while time.monotonic() - began < seconds:
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - began
            except TimeoutError:
                pass
            except OSError:
                return time.monotonic() - began
            with contextlib.suppress(OSError):
                sock.sendall(dribble)
    return float("inf")


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[str, Receiver]]:
    """A receiver in this process, with bounds small enough to reach in a test."""
    SqliteLedger.for_run(tmp_path / "l.sqlite", "f").close()
    limits = Limits(body=1024, large_body=8192, large_at_once=1, receive_within=1.0)
    receiver = Receiver(tmp_path / "l.sqlite", SECRET, limits=limits)
    with running(receiver) as url:
        yield url, receiver
    receiver.close()


def test_what_can_be_refused_before_the_body_is_read_is(small: tuple[str, Receiver]) -> None:
    """A length over the bound is 413 and a missing signature 401 at once: the answer comes
    while the body has not been sent at all."""
    url, receiver = small
    assert exchange(url, signed_headers(b"", 10 * MB))[0] == 413
    unsigned = signed_headers(b"", 500).replace(b"X-Hub-Signature-256", b"X-Other")
    assert exchange(url, unsigned)[0] == 401
    assert receiver.counts.too_large == 1
    assert receiver.counts.refused == 1


def test_a_body_without_a_length_is_bounded_while_read(small: tuple[str, Receiver]) -> None:
    url, receiver = small
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    code, _ = exchange(url, signed_headers(b"", None, chunked=True), chunk * 20)
    assert code == 413
    assert receiver.counts.too_large == 1


def test_a_large_callback_is_read_one_at_a_time_others_told_to_come_back(
    small: tuple[str, Receiver],
) -> None:
    """Meta documents payloads up to 3 MB: one over `body` is recorded, on one of the few
    places for them; while those are taken, the next gets 503 at once (Meta retries)."""
    url, receiver = small
    padding = "p" * 3000
    payload = {**cloud(status("wamid.LARGE", "read", 9)), "padding": padding}
    assert post(url, payload) == 200
    assert [row[:2] for row in table(Path(receiver.ledger))] == [("wamid.LARGE", "read")]

    body = json.dumps(payload).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as holder:
        holder.sendall(signed_headers(body, len(body)) + body[:2000])  # holds the one place
        wait_until(lambda: receiver.counts.callbacks == 2)
        assert exchange(url, signed_headers(body, len(body)), body)[0] == 503
    assert receiver.counts.busy == 1


def test_slow_requests_are_closed(small: tuple[str, Receiver]) -> None:
    """Within `receive_within` (here 1 s) a connection delivers a whole request, or is
    closed: headers a byte at a time, a body a byte at a time, an idle keep-alive."""
    url, receiver = small
    # the bound is 1 s; 8 is generous for a shared machine, and far from the 10 s a dribbling
    # client would hold a connection that is never closed
    assert closed_within(url, b"POST / HTTP/1.1\r\nX-Slow: ", 10) < 8
    assert closed_within(url, signed_headers(b"", 900), 10) < 8
    assert closed_within(url, b"", 10, dribble=b"") < 8
    assert receiver.counts.too_slow == 3
    assert receiver.counts.cut_short == 0  # closed by the receiver, counted once


def test_a_full_receiver_makes_room_for_a_real_callback(tmp_path: Path) -> None:
    """With room for 8 connections, 8 idle ones held open: a real callback still gets in
    (the one that waited longest is closed), and is answered."""
    SqliteLedger.for_run(tmp_path / "l.sqlite", "f").close()
    receiver = Receiver(tmp_path / "l.sqlite", SECRET, limits=Limits(connections=8))
    with running(receiver) as url:
        host, port = url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(8)]
        try:
            assert post(url, cloud(status("wamid.IN", "read", 3))) == 200
            assert idle[0].recv(10) == b""  # the oldest made room
        finally:
            for sock in idle:
                sock.close()
    receiver.close()
    assert receiver.counts.for_room >= 1
    assert [row[:2] for row in table(tmp_path / "l.sqlite")] == [("wamid.IN", "read")]


def test_a_sender_that_expects_100_continue_gets_it_after_the_checks(
    small: tuple[str, Receiver],
) -> None:
    """`Expect: 100-continue`: told to go on once the head passed (and refused before the body
    when it does not)."""
    url, receiver = small
    body = json.dumps(cloud(status("wamid.CONT", "read", 4))).encode()
    head = signed_headers(body, len(body)).replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    unsigned = head.replace(b"X-Hub-Signature-256", b"X-Other")
    assert exchange(url, unsigned)[0] == 401
    assert [row[:2] for row in table(Path(receiver.ledger))] == [("wamid.CONT", "read")]


@pytest.mark.parametrize("pause", [0.0, 0.3])
def test_a_malformed_request_is_one_count_not_a_logged_traceback(
    small: tuple[str, Receiver], pause: float, caplog: pytest.LogCaptureFixture
) -> None:
    """A chunked body that breaks its encoding, with its head or once it is being read, and a
    header over 2 KB: each answered 400 (or, where aiohttp leaves the body waiting, closed
    within the time bound), counted, and nothing logged."""
    url, receiver = small
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        began = time.monotonic()
        sock.sendall(signed_headers(b"", None, chunked=True))
        time.sleep(pause)
        sock.sendall(b"zz\r\nnot hex\r\n")
        answer = sock.recv(4096)
        assert answer == b"" or answer.split()[1] == b"400"
        assert time.monotonic() - began < 8
    assert exchange(url, b"GET / HTTP/1.1\r\nX-Long: " + b"l" * 3000 + b"\r\n\r\n")[0] == 400
    wait_until(lambda: receiver.counts.malformed + receiver.counts.too_slow == 2)
    assert receiver.counts.cut_short == 0
    assert caplog.records == []


# 2. One bad callback fails nobody else's


POISONED = [
    status("wamid.P1", "failed", 5, code=2**63),  # JSON has it; SQLite's INTEGER does not
    status("wamid.P2", "failed", 5, code=2**64 - 1),
    {"id": "", "status": "read", "timestamp": "5"},
    {"id": "w" * 5000, "status": "read", "timestamp": "5"},
    {"id": 12, "status": "read", "timestamp": "5"},
    {"id": "wamid.P6", "status": "read", "timestamp": "99999999999"},
    {"id": "wamid.P7", "status": "read", "timestamp": str(10**30)},
    {"id": "wamid.P8", "status": "read", "timestamp": "-5"},
]


async def mixed_storm(url: str, legit: int) -> tuple[list[int], list[int]]:
    """`legit` good callbacks and the poisoned ones among them, all at once over 50
    connections: the answers to each kind."""
    client = Client(url, 50, 30)

    async def one(item: dict[str, Any]) -> int:
        body = json.dumps(cloud(item)).encode()
        headers = {"X-Hub-Signature-256": sign(SECRET, body)}
        return (await client.post("/", body, "application/json", headers)).status

    good = [status(f"wamid.G{i}", "delivered", 100 + i) for i in range(legit)]
    step = legit // len(POISONED)
    items: list[dict[str, Any]] = list(good)
    for n, bad in enumerate(POISONED):
        items.insert(n * step + n, bad)
    try:
        answers = await asyncio.gather(*(one(item) for item in items))
    finally:
        await client.close()
    bad_ids = {id(bad) for bad in POISONED}
    return (
        [a for a, item in zip(answers, items, strict=True) if id(item) not in bad_ids],
        [a for a, item in zip(answers, items, strict=True) if id(item) in bad_ids],
    )


def test_a_poisoned_callback_fails_nobody_else(tmp_path: Path) -> None:
    """1,500 legitimate callbacks at once, 8 poisoned ones among them (an error code beyond 64
    bits, an empty or 5,000-character id, an absurd timestamp): every legitimate one is
    answered 200 and recorded; each poisoned one gets its own 400 and is counted."""
    path = tmp_path / "l.sqlite"
    SqliteLedger.for_run(path, "f").close()
    receiver = Receiver(path, SECRET)
    with running(receiver) as url:
        good, bad = asyncio.run(mixed_storm(url, 1500))
    receiver.close()
    assert good == [200] * 1500
    assert bad == [400] * len(POISONED)
    assert len(table(path)) == 1500
    assert receiver.counts.invalid == len(POISONED)


# 9. Process hygiene


def test_an_aborted_upload_is_counted_not_logged(listener: Listener) -> None:
    """A client that announces 1,000 bytes, sends 100 and hangs up (or resets the
    connection): no traceback, no error line; the summary counts it."""

    async def abort(reset: bool) -> None:
        held = Attack()
        writer = await held.open(listener.port, signed_headers(b"", 1000))
        assert writer is not None
        writer.write(b"{" * 100)
        await writer.drain()
        await asyncio.sleep(0.2)
        if reset:
            writer.transport.abort()
        else:
            writer.close()

    asyncio.run(abort(reset=False))
    asyncio.run(abort(reset=True))
    assert post(listener.url, cloud(status("wamid.AFTER", "read", 7))) == 200
    time.sleep(0.5)
    out, err = listener.stop()
    assert err == ""
    assert "2 cut short" in out


def alive(pid: int) -> bool:
    """Still running (a zombie has finished)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def receiver_child(run: subprocess.Popen[str]) -> int:
    """The run's `--listen` receiver process, once it is there."""

    def found() -> list[int]:
        return [
            pid
            for pid in children(run.pid)
            if b"listen" in Path(f"/proc/{pid}/cmdline").read_bytes()
            or b"receiver" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]

    wait_until(lambda: bool(found()), 20)
    return found()[0]


def test_listen_on_a_taken_port_refuses_to_start_the_run(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """Another process listens on the port: one line, exit 2, nothing sent."""
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=5, kind="cloud")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start(folder, "--listen", str(port))
        out, err = process.communicate(timeout=60)
    assert process.returncode == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert str(port) in err
    assert "Traceback" not in err
    assert state.inbox == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill -9", "SIGTERM"])
def test_no_receiver_outlives_its_run(
    api: tuple[str, SandboxState], folder: Path, sig: signal.Signals
) -> None:
    """kill -9 or SIGTERM to a run the moment its receiver is up (it may not even have begun
    sending): the receiver goes too."""
    base, _ = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=2000, kind="cloud")
    process = start(folder, "--listen", str(free_port()))
    child = receiver_child(process)
    process.send_signal(sig)
    process.communicate(timeout=60)
    wait_until(lambda: not alive(child), 15)


def test_flowrun_listen_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    SqliteLedger.for_run(tmp_path / "l.sqlite", "f").close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = ["listen", "--ledger", str(tmp_path / "l.sqlite"), "--port", str(port)]
        done = subprocess.run(
            [sys.executable, "-m", "runner", *command],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_sigterm_while_waiting_for_statuses_ends_the_receiver_too(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    """SIGTERM while the run waits for the last statuses (none come): the run stops waiting,
    says what it sent, and its receiver is gone."""
    base, state = api
    write_flow(folder, base, "  - text: {body: hi}\n", people=3, kind="cloud")
    process = start(folder, "--listen", str(free_port()))
    child = receiver_child(process)
    wait_until(lambda: len(state.inbox) == 3)
    time.sleep(1.0)  # the run is waiting for statuses that never come (up to 10 s)
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert "sent 3" in out, (out, err)
    assert err.strip() == "flowrun: stopped waiting for statuses"
    wait_until(lambda: not alive(child), 15)
