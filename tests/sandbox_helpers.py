"""Helpers for tests that run flows against the sandbox: write a flow for it, run flowrun,
read the ledger, set the sandbox's faults."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from runner.cli import cli
from runner.sandbox import NAMESPACE, PHONE_NUMBER_ID, TOKEN
from tests.conftest import REPO


def api_section(base: str, kind: str, timeout: float = 2) -> str:
    """The flow's `api:` for the sandbox at `base`, in either dialect."""
    if kind == "cloud":
        return (
            f"api:\n  kind: cloud\n  base_url: {base}\n  phone_number_id: '{PHONE_NUMBER_ID}'\n"
            f"  token: '{{{{ env.WA_TOKEN }}}}'\n  timeout: {timeout}\n"
        )
    return (
        f"api:\n  kind: onprem\n  base_url: {base}\n  token: '{{{{ env.WA_TOKEN }}}}'\n"
        f"  template_namespace: {NAMESPACE}\n  timeout: {timeout}\n"
    )


def write_flow(
    folder: Path,
    base: str,
    messages: str,
    people: int = 3,
    *,
    timeout: float = 2,
    kind: str = "onprem",
    **settings: Any,
) -> Path:
    """A flow for the sandbox at `base`: `people` recipients, `messages` (YAML list items).

    `window: open` by default: these tests are about other things, and their audience wrote
    within 24 hours, stated on both sides (the `api` fixture's sandbox says `everyone_wrote`
    an hour ago, tests/conftest.py). A test about the window passes `window="check"`."""
    rows = "".join(f"+1 555 010 {i:04d},P{i},{'en' if i % 2 else 'de'}\n" for i in range(people))
    (folder / "people.csv").write_text("phone,name,lang\n" + rows, "utf-8")
    # No pacing unless a test asks for it: the sandbox has no limits.
    settings = {
        "concurrency": 4,
        "rate": "100000/s",
        "per_recipient_interval": 0,
        "window": "open",
        **settings,
    }
    extra = "".join(f"  {k}: {v}\n" for k, v in settings.items())
    text = (
        f"version: 1\nname: t\n{api_section(base, kind, timeout)}"
        f"settings:\n{extra}"
        f"recipients: {{csv: people.csv}}\nmessages:\n{messages}"
    )
    (folder / "flow.yaml").write_text(text, "utf-8")
    return folder / "flow.yaml"


def login_flow(
    folder: Path,
    base: str,
    people: int,
    messages: str = "  - text: {body: 'hi {{ recipient.name }}'}\n",
    **settings: Any,
) -> None:
    """An On-Premises flow that logs in (user sandbox, password from WA_PASSWORD)."""
    write_flow(folder, base, messages, people=people, **settings)
    text = (folder / "flow.yaml").read_text("utf-8")
    login = "  login: {username: sandbox, password: '{{ env.WA_PASSWORD }}'}\n"
    text = text.replace("  token: '{{ env.WA_TOKEN }}'\n", login)
    (folder / "flow.yaml").write_text(text, "utf-8")


def flowrun(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def run_flowrun(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`flowrun ARGS` in `folder` as a process of its own, to its end (the sandbox's token in
    its environment)."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=folder,
        env={**os.environ, "WA_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def query(folder: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the flow's ledger as a person would, with its own connection, closed after."""
    with contextlib.closing(sqlite3.connect(folder / "flow.ledger.sqlite")) as db:
        return db.execute(sql).fetchall()


def count(folder: Path, where: str) -> int:
    return int(query(folder, f"SELECT count(*) FROM messages WHERE {where}")[0][0])


def ledger_rows(folder: Path) -> list[tuple[Any, ...]]:
    return query(
        folder,
        "SELECT step, recipient, state, http_status, error_code, error_title, attempts"
        " FROM messages ORDER BY recipient, step",
    )


def post(url: str, body: Any) -> None:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(request, timeout=5).close()


def start(folder: Path, *args: str, backoff: float = 1.0) -> subprocess.Popen[str]:
    """`flowrun flow.yaml ARGS` as a process of its own; `backoff` scales its retry waits
    (tests/scaled_backoff.py says why)."""
    env = {**os.environ, "WA_TOKEN": TOKEN}
    command = ["-m", "runner"]
    if backoff != 1.0:
        command = ["-m", "tests.scaled_backoff", str(backoff)]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, *command, "flow.yaml", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition: Callable[[], bool], seconds: float = 20) -> None:
    """Poll `condition` until it holds: how a test waits for what another thread or process
    does, instead of sleeping for a guessed time (too short under load, wasted otherwise).
    Fails the test, naming the condition, if it does not hold within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:g} s in vain for: {_source(condition)}")
        time.sleep(0.01)


def _source(condition: Callable[[], bool]) -> str:
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


APP_SECRET = "app-secret"  # what the tests' sandbox signs its webhooks with


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepting(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def listening(ledger: Path | str) -> Iterator[int]:
    """`flowrun listen --ledger LEDGER` on a free port, in a process of its own as in
    production (in the tests' process, a run's closing of the ledger file would drop the
    receiver's SQLite locks: runner/ledger/sqlite.py, _take_lock); the port."""
    port = free_port()
    env = {**os.environ, "WA_APP_SECRET": APP_SECRET}
    command = [sys.executable, "-m", "runner", "listen", "--ledger", str(ledger)]
    with subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        try:
            wait_until(lambda: _accepting(port))
            yield port
        finally:
            child.terminate()
            child.communicate(timeout=30)
