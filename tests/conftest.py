"""Shared helpers: write a flow (and its files) into a temporary folder, run flowrun on it."""

from __future__ import annotations

import os
import shutil
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings

from runner.cli import cli
from runner.sandbox import TOKEN, SandboxState, running
from tests import pg

# Property tests: derandomized in CI (a failure reproduces), HYPOTHESIS_PROFILE=long to dig.
# No deadline and no "too slow" check: these machines are shared and noisy, and a property
# test is about results, not time (speed lives in bench/).
settings.register_profile(
    "quick",
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("long", max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "flows" / "assets"

HEADER = """\
version: 1
api:
  phone_number_id: "106540352242922"
  token: "{{ env.WA_TOKEN }}"
"""


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if "warning:" not in line]


@pytest.fixture
def flowdir(tmp_path: Path) -> Path:
    """A folder with the example assets, as a flow's own folder would have."""
    shutil.copytree(ASSETS, tmp_path / "assets")
    return tmp_path


RunFlow = Callable[..., Result]


@pytest.fixture
def run_flowrun(flowdir: Path, monkeypatch: pytest.MonkeyPatch) -> RunFlow:
    """Write `text` as flow.yaml (plus `files`) and run `flowrun COMMAND flow.yaml`."""
    monkeypatch.chdir(flowdir)
    monkeypatch.delenv("WA_TOKEN", raising=False)

    def run(
        text: str,
        *args: str,
        command: str = "validate",
        files: dict[str, str] | None = None,
        dedent: bool = True,
    ) -> Result:
        (flowdir / "flow.yaml").write_text(textwrap.dedent(text) if dedent else text, "utf-8")
        for name, content in (files or {}).items():
            (flowdir / name).write_text(content, "utf-8")
        result = CliRunner().invoke(cli, [command, "flow.yaml", *args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr)

    return run


WROTE_AGO = 3600  # seconds: when the audience of the tests' sandbox wrote


def audience_wrote(state: SandboxState) -> None:
    """Every customer of this sandbox wrote an hour ago: their 24-hour windows are open
    (POST /sandbox/window {"everyone_wrote": ...}, done on the state directly)."""
    state.customers.everyone_wrote = int(time.time()) - WROTE_AGO


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[tuple[str, SandboxState]]:
    """The sandbox, enforcing the 24-hour customer service window as WhatsApp does
    (docs/whatsapp-api.md#customer-service-window), with an audience that wrote an hour ago.

    Why: these tests are about other things (retries, pacing, media, the ledger...), and their
    audience wrote within 24 hours, stated on both sides: here (`everyone_wrote`) and in their
    flows (`settings: {window: open}`, which tests/sandbox_helpers.py `write_flow` writes by
    default). A test about a closed window says so explicitly: POST /sandbox/window
    {"everyone_wrote": null} and a flow with `window: check`.

    The guard: a free-form message refused for a closed window fails the test at teardown,
    so a violation never passes silently, unless the test is marked
    `@pytest.mark.closed_windows` (it expects refusals and checks them itself)."""
    with running() as server:
        audience_wrote(server[1])
        yield server
        expected = request.node.get_closest_marker("closed_windows") is not None
        problem = unexpected_refusals(server[1], expected=expected)
        if problem:
            pytest.fail(problem, pytrace=False)


def unexpected_refusals(state: SandboxState, *, expected: bool) -> str | None:
    """What the `api` fixture fails a test with: free-form messages the sandbox refused for a
    closed window, in a test not marked `closed_windows`."""
    refused = state.refused
    if not refused or expected:
        return None
    return (
        f"{len(refused)} free-form message(s) sent to a closed 24-hour window (131047 / 470),"
        f" first: {refused[0]}; give the test an audience that wrote, or mark it"
        " closed_windows if refusals are what it tests"
    )


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ASSETS, tmp_path / "assets")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WA_TOKEN", TOKEN)
    return tmp_path


@pytest.fixture(autouse=True)
def _no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests talk to servers on 127.0.0.1: a proxy set on the machine running them
    (HTTP_PROXY, https_proxy, NO_PROXY, ...) must not take their requests. Tests of proxies
    (tests/test_proxy.py) set their own."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


# Whether this suite runs in CI (.ci/run exports CI=true): a tool a test needs and does not find
# fails the test there instead of skipping it. Read once, here: flowrun itself reads CI too (a new
# ledger in CI is refused), so the tests' runs see no CI unless a test sets it (_not_in_ci).
IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(autouse=True)
def _not_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flows the tests run are new ledgers on purpose; a test of the CI refusal sets CI."""
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Postgres]:
    """A real PostgreSQL server for the whole session (tests/pg.py), started by the first test
    that asks for it. Without PostgreSQL's binaries the test is skipped, outside CI only: in CI
    (`CI=true`, .ci/run installs Debian's postgresql) a missing server fails."""
    bin_dir = pg.binaries()
    if bin_dir is None:
        reason = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
        if IN_CI:
            pytest.fail(f"{reason}; CI must run the PostgreSQL ledger's tests", pytrace=False)
        pytest.skip(reason)
    with pg.running(bin_dir) as server:
        print(f"\nPostgreSQL started in {server.started_in:.2f} s on port {server.port}")
        yield server
