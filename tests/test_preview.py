"""`flowrun preview FLOW -o FILE` (issue 17, item 3), opened in a real headless Chromium:
it renders, the recipients and their filled-in texts are in the DOM, recipient data stays
text (never markup), the screenshot is not blank and shows the page's own style and the
inlined image, the browser logs nothing on its console and asks the network for nothing.
And `plan --only` / `flowrun FLOW --dry-run --only`, which used to ignore it.

Chromium is Debian's `chromium` package, run as a subprocess (`--dump-dom`, `--screenshot`):
missing outside CI the browser tests skip, saying why; in CI (CI=true, .ci/run installs it)
a missing browser fails. The screenshot is decoded with the standard library (zlib and the
PNG chunks of https://www.w3.org/TR/png/#5DataRep, filters of #9Filters)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import struct
import subprocess
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.ledger import Inbound, SqliteLedger
from runner.template_lock import fill, words
from tests.conftest import IN_CI

BUSINESS = "106540352242922"
HOSTILE = '<script>console.error("pwned")</script><img src=x onerror=alert(1)>'
MAGENTA = (255, 0, 255)
BUBBLE = bytes((0xD9, 0xFD, 0xD3))  # .bubble's background: the page's own style applied
CHAT = bytes((0xEF, 0xEA, 0xE2))  # section.chat's background

FLOW = """\
version: 1
name: clinic
api:
  phone_number_id: "106540352242922"
  token: "{{ env.WA_TOKEN }}"
recipients:
  csv: people.csv
messages:
  - name: reminder
    template:
      name: checkup_reminder
      language: en_US
      header: {image: {file: assets/square.png}}
      body: ["{{ recipient.name }}", "{{ recipient.day }}"]
      buttons:
        - quick_reply: confirm
        - url: "booking?who={{ recipient.phone }}"
  - name: note
    text: {body: "Dear {{ recipient.name }},\\nsee you on {{ recipient.day }}."}
  - name: tour
    video: {file: assets/tour.mp4, caption: "The way to room {{ recipient.room }}"}
  - name: directions
    document: {file: assets/prices.pdf, filename: "Directions {{ recipient.room }}.pdf"}
  - name: map
    image: {link: "https://maps.example.com/{{ recipient.room }}.png", caption: Map}
  - name: wave
    sticker: {file: assets/wave.webp}
  - name: thanks
    when: steps.reminder.button == 'confirm'
    text: {body: "Thanks for confirming, {{ recipient.name }}!"}
  - name: german
    when: recipient.lang == 'de'
    text: {body: "Bis bald"}
"""


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """A one-colour RGB PNG (filter 0 rows)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = b"\x00" + bytes(colour) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def write_clinic(folder: Path, rows: str) -> Path:
    (folder / "assets" / "square.png").write_bytes(png(64, 64, MAGENTA))
    (folder / "people.csv").write_text("phone,name,day,room,lang,last_inbound_at\n" + rows, "utf-8")
    flow = folder / "flow.yaml"
    flow.write_text(FLOW, "utf-8")
    return flow


def ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="seconds")


@pytest.fixture
def clinic(flowdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three patients: Ann wrote an hour ago (her window is open), Bob never wrote, and the
    third one's name is an attack on the page."""
    monkeypatch.chdir(flowdir)
    monkeypatch.setenv("WA_TOKEN", "t")
    name = HOSTILE.replace('"', '""')
    write_clinic(
        flowdir,
        f"+1 555 010 0001,Ann,Monday,12,en,{ago(1)}\n"
        "+1 555 010 0002,Bob,Tuesday,7,de,\n"
        f'+1 555 010 0003,"{name}",Friday,3,en,\n',
    )
    return flowdir


def flowrun(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# --- the page, read as HTML -------------------------------------------------------------------


class Page(HTMLParser):
    """Elements (tag, attributes) and the text of a page, as a browser's parser splits them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.chunks: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.chunks).split())

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.elements if name == tag]


def test_the_page_holds_each_step_escaped_and_locked_down(clinic: Path) -> None:
    code, out, _err = flowrun("preview", "flow.yaml", "-o", "page.html")
    assert code == 0, out
    assert out.startswith("wrote page.html (3 recipient(s), ")
    html = (clinic / "page.html").read_text("utf-8")
    page = Page(html)
    text = page.text
    # the recipients, their filled-in parameters, captions, file names, buttons
    for said in ("Ann", "Bob", "+15550100001", "Monday", "Tuesday", "checkup_reminder · en_US"):
        assert said in text
    assert "Dear Ann,\nsee you on Monday." in html  # shown as written (pre-wrap)
    assert "The way to room 12" in text
    assert "Directions 12.pdf" in text
    assert "prices.pdf" not in text
    assert "confirm quick reply" in text
    assert "booking?who=15550100001 link" in text
    assert "maps.example.com" in text
    # why: Ann's window is open, Bob's is not; the thanks waits for her tap; Bob's German
    assert "waits for the answer to step reminder" in text
    assert "waits for the customer to write" in text
    assert "german (text): skipped: when: recipient.lang == 'de' is false" in text
    # the hostile name is text, never markup; nothing runs, nothing loads
    assert HOSTILE in text
    assert page.all("script") == []
    assert not any(k.startswith("on") for _tag, attrs in page.elements for k in attrs)
    sources = [attrs["src"] or "" for attrs in page.all("img")]
    assert sources
    assert all(src.startswith("data:image/") for src in sources)
    assert any(src.startswith("data:image/png;base64,") for src in sources)  # the header
    assert any(src.startswith("data:image/webp;base64,") for src in sources)  # the sticker
    links = [attrs["href"] for attrs in page.all("a")]
    assert links
    assert all(link and link.startswith("https://") for link in links)
    (policy,) = [a["content"] for a in page.all("meta") if a.get("http-equiv")]
    assert policy is not None
    assert policy.startswith("default-src 'none'; img-src data:; style-src 'sha256-")
    assert "unsafe" not in policy
    assert "script" not in policy
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy


def test_only_chooses_recipients_and_refuses_unknown_ones(clinic: Path) -> None:
    code, _out, _err = flowrun(
        "preview", "flow.yaml", "--only", "+1 (555) 010-0002", "--only", "15550100001"
    )
    assert code == 0
    html = (clinic / "flow.preview.html").read_text("utf-8")  # the default: beside the flow
    assert re.findall(r'data-phone="([^"]+)"', html) == ["+15550100002", "+15550100001"]
    code, out, err = flowrun("preview", "flow.yaml", "--only", "+1 555 010 0009", "-o", "x.html")
    assert (code, out, err) == (
        2,
        "",
        "--only +1 555 010 0009: flow.yaml has no recipient with this phone\n",
    )
    assert not (clinic / "x.html").exists()
    code, _out, err = flowrun("preview", "flow.yaml", "--only", "call me")
    assert (code, err) == (2, "--only: 'call me' is not a phone number\n")


def test_a_customer_who_said_stop_is_shown_withheld(clinic: Path) -> None:
    ledger = clinic / "flow.ledger.sqlite"
    SqliteLedger.for_run(ledger, "clinic").close()
    with SqliteLedger.for_writer(ledger) as writer:
        stop = Inbound("wamid.stop", BUSINESS, "15550100002", ago(2), "text", "STOP")
        writer.record_webhooks([stop])
    code, _out, _err = flowrun("preview", "flow.yaml", "--only", "+15550100002", "-o", "p.html")
    assert code == 0
    text = Page((clinic / "p.html").read_text("utf-8")).text
    assert "opted out" in text
    assert "withheld (wrote 'STOP' on " in text
    assert "due now" not in text


def test_a_step_with_after_waits_and_holds_the_rest(clinic: Path) -> None:
    """A run now holds a step with `after:` (nothing of the recipient was sent yet), and the
    steps behind it: the page and `plan --only` say so, not "due now"."""
    (clinic / "flow.yaml").write_text(
        FLOW.split("  - name: note\n", maxsplit=1)[0]
        + "  - name: later\n    after: 2d\n    template: {name: follow_up, language: en_US}\n"
        + "  - name: last\n    template: {name: bye, language: en_US}\n",
        "utf-8",
    )
    code, _out, _err = flowrun("preview", "flow.yaml", "--only", "+15550100001", "-o", "p.html")
    assert code == 0
    text = Page((clinic / "p.html").read_text("utf-8")).text
    assert "later (template): waits for its time (after:): in 2 days, from " in text
    assert "; 2d after the message before it" in text
    assert "waits behind step later, which waits for its time (after:): in 2 days" in text
    assert "due now" not in text.split("later (template)")[1]
    code, out, _err = flowrun("plan", "flow.yaml", "--only", "+15550100001")
    assert code == 0
    assert "# 15550100001 step later: waits for its time (after:): in 2 days, from " in out
    assert "# 15550100001 step last: waits for its time (after:): in 2 days, from " in out


def test_template_words_come_from_the_lock_file_when_it_knows_the_template() -> None:
    texts = {("checkup_reminder", "en_US"): "Hi {{1}}, your check-up is on {{2}}."}
    sent = {
        "name": "checkup_reminder",
        "language": {"code": "en_US"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": t} for t in ("Ann", "Monday")]}
        ],
    }
    assert words(sent, texts) == "Hi Ann, your check-up is on Monday."
    assert words({**sent, "language": {"code": "de"}}, texts) is None
    assert words(sent, {}) is None
    named = {
        **sent,
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ann"}],
            }
        ],
    }
    assert words(named, {("checkup_reminder", "en_US"): "Hi {{first_name}}"}) == "Hi Ann"
    assert fill("Hi {{1}}, see you {{ 2 }}; {{3}}", ["Ann", "Monday"]) == (
        "Hi Ann, see you Monday; {{3}}"
    )


# --- plan --only and --dry-run --only ---------------------------------------------------------


def test_plan_only_shows_that_recipients_bodies(clinic: Path) -> None:
    code, out, _err = flowrun("plan", "flow.yaml", "--only", "+1 555 010 0003")
    assert code == 0
    assert "Recipient(s) +15550100003: POST" in out
    shown = set(re.findall(r"^# (\d+) step", out, re.M)) | set(re.findall(r'"to": "(\d+)"', out))
    assert shown == {"15550100003"}
    code, out, _err = flowrun("flow.yaml", "--dry-run", "--only", "+1 555 010 0002")
    assert code == 0
    assert "Recipient(s) +15550100002: POST" in out
    assert set(re.findall(r'"to": "(\d+)"', out)) == {"15550100002"}
    assert "# 15550100002 step german: waits for the customer to write" in out


def test_plan_only_unknown_phone_is_one_line(clinic: Path) -> None:
    for args in (
        ("plan", "flow.yaml"),
        ("flow.yaml", "--dry-run"),
        ("plan", "flow.yaml", "--jsonl"),
    ):
        code, out, err = flowrun(*args, "--only", "+44 7700 900101")
        assert (code, out, err) == (
            2,
            "",
            "--only +44 7700 900101: flow.yaml has no recipient with this phone\n",
        )


def test_plan_jsonl_only(clinic: Path) -> None:
    code, out, _err = flowrun("plan", "flow.yaml", "--jsonl", "--only", "+1 555 010 0001")
    assert code == 0
    bodies = [json.loads(line) for line in out.splitlines()]
    assert len(bodies) == 6  # not the German one, nor the thanks (it waits for her tap)
    assert {body["to"] for body in bodies} == {"15550100001"}


# --- in a real browser ------------------------------------------------------------------------

QUIET = (  # no first-run pages, no background fetches, no updates, no sync
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
)


@pytest.fixture(scope="module")
def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if IN_CI:
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    return found


class Watch:
    """A listener on 127.0.0.1 that Chromium is told to use as its proxy: every request the
    browser would make to the network reaches it (and is answered with nothing)."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.1)  # looks at `stop` ten times a second
        self.port = self.socket.getsockname()[1]
        self.requests: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                try:
                    first = connection.recv(4096).split(b"\r\n", 1)[0]
                except OSError:
                    first = b"?"
                self.requests.append(first.decode("latin-1"))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.socket.close()


@pytest.fixture
def watch() -> Iterator[Watch]:
    listener = Watch()
    yield listener
    listener.close()


def chromium(
    browser: str, watch: Watch, page: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    profile = page.parent / "chromium-profile"
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        *QUIET,
        f"--user-data-dir={profile}",
        f"--proxy-server=http://127.0.0.1:{watch.port}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def console(stderr: str) -> list[str]:
    """What the page said on the browser's console (errors, uncaught exceptions, refused
    loads and scripts: all logged as CONSOLE lines); a page without scripts says nothing."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_chromium_renders_the_page(browser: str, watch: Watch, clinic: Path) -> None:
    code, out, _err = flowrun("preview", "flow.yaml", "-o", "page.html")
    assert code == 0, out
    page = clinic / "page.html"
    dom = chromium(browser, watch, page, "--dump-dom")
    assert console(dom.stderr) == []
    rendered = Page(dom.stdout)
    for said in ("Ann", "Bob", "Monday", "Friday", "The way to room 7", "Directions 3.pdf"):
        assert said in rendered.text
    assert HOSTILE in rendered.text  # as text, after the browser parsed it
    assert rendered.all("script") == []
    shot = page.parent / "page.png"
    done = chromium(browser, watch, page, f"--screenshot={shot}", "--window-size=1280,1600")
    assert console(done.stderr) == []
    width, height, colours = decode_png(shot.read_bytes())
    assert (width, height) == (1280, 1600)
    assert len(colours) > 100  # text, bubbles, images: not a blank page
    assert colours.most_common(1)[0][1] < 0.8 * width * height
    assert colours[BUBBLE] > 10_000  # its style was applied
    assert colours[CHAT] > 10_000
    assert colours[bytes(MAGENTA)] > 2_000  # the inlined header image was drawn
    # Nothing the page names was fetched (its links are on example.com hosts: the link card's
    # image stays a link). Chromium 156 itself still asks clients2.google.com,
    # update.googleapis.com and accounts.google.com despite the flags: the watch takes those
    # on 127.0.0.1 and answers nothing, so they never leave the machine.
    assert [request for request in watch.requests if "example" in request] == []


def test_the_checks_would_see_a_script_and_a_fetch(
    browser: str, watch: Watch, tmp_path: Path
) -> None:
    """The two browser checks above can fail: a page that runs a script and loads an image
    from the network shows on the console and at the watching proxy."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><meta charset="utf-8"><img src="http://images.example.test/x.png">'
        '<script>console.error("boom")</script><p>bad</p>',
        "utf-8",
    )
    done = chromium(browser, watch, page, "--dump-dom")
    assert any('"boom"' in line for line in console(done.stderr))
    assert any("images.example.test" in request for request in watch.requests)


def decode_png(data: bytes) -> tuple[int, int, Counter[bytes]]:
    """(width, height, how many pixels of each RGB colour) of an 8-bit RGB or RGBA,
    non-interlaced PNG, as Chromium writes screenshots."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, compressed, width, height, depth, kind, interlace = 8, [], 0, 0, 0, 0, 0
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        name, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        at += 12 + length
        if name == b"IHDR":
            width, height, depth, kind, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif name == b"IDAT":
            compressed.append(body)
    assert (depth, interlace) == (8, 0)
    assert kind in (2, 6)
    size = 3 if kind == 2 else 4
    raw = zlib.decompress(b"".join(compressed))
    stride = width * size
    previous = bytearray(stride)
    colours: Counter[bytes] = Counter()
    for y in range(height):
        start = y * (stride + 1)
        row = _unfilter(raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, size)
        colours.update(bytes(row[x : x + 3]) for x in range(0, stride, size))
        previous = row
    return width, height, colours


def _unfilter(kind: int, row: bytearray, up: bytearray, size: int) -> bytearray:
    """Undo one scanline's filter: 0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth."""
    if kind == 0:
        return row
    if kind == 2:
        return bytearray((a + b) & 0xFF for a, b in zip(row, up, strict=True))
    for i in range(len(row)):
        left = row[i - size] if i >= size else 0
        if kind == 1:
            row[i] = (row[i] + left) & 0xFF
        elif kind == 3:
            row[i] = (row[i] + ((left + up[i]) >> 1)) & 0xFF
        else:  # Paeth: the nearest of left, up and corner to left + up - corner, in that order
            corner = up[i - size] if i >= size else 0
            guess = left + up[i] - corner
            near = min((abs(guess - left), 0, left), (abs(guess - up[i]), 1, up[i]))
            near = min(near, (abs(guess - corner), 2, corner))
            row[i] = (row[i] + near[2]) & 0xFF
    return row


def test_the_page_shows_the_approved_words_from_the_lock_file(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the templates pulled (the sandbox's own), a template bubble reads as the customer
    will read it: the approved text with this recipient's parameters."""
    shutil.copytree(
        Path(__file__).parent.parent / "flows",
        folder / "flows",
        ignore=shutil.ignore_patterns("*.sqlite*"),
    )
    monkeypatch.chdir(folder / "flows")
    assert flowrun("templates", "pull", "document-reminder.yaml", "--sandbox")[0] == 0
    code, _out, err = flowrun("preview", "document-reminder.yaml", "-o", "page.html")
    assert code == 0, err
    page = (folder / "flows" / "page.html").read_text("utf-8")
    assert "Hi Alice, invoice INV-1042 for November is attached." in page
