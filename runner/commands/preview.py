"""`flowrun preview FLOW -o FILE`: what chosen recipients would see, as one HTML page of chats.

The page is for the people who write flows (marketing, operations): each step of each chosen
recipient as a WhatsApp-like bubble, with the parameters, captions, files and buttons this
recipient's data gives it, and the steps a run now would skip, hold back or keep waiting, and
why. It is decided exactly as `flowrun plan` decides it (runner/commands/outlook.py `timeline`,
which follows runner/executor.py `_serve`), from the same ledger and CSV.

One file that opens anywhere, with no network: the style is inline, local images and stickers
are inlined as `data:` URIs, links are shown as cards (never loaded). Recipient data is
untrusted (a CSV from a CRM): every value goes through Jinja2's autoescaping
(`html.escape` rules), and a Content-Security-Policy forbids scripts, remote loads and every
style but the page's own (by its hash), so even a value that slipped through could not run.

`pick` and `conversations` also serve `flowrun plan --only` (runner/commands/plan.py).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import jinja2
from markupsafe import Markup

from runner import clock
from runner import dialect as dialects
from runner.contacts import Contact
from runner.conversation import WAITS_WINDOW, Window
from runner.dialect import Dialect
from runner.errors import EXIT_OK, FlowrunError
from runner.media import LocalMedia
from runner.plan import AfterPlan, Plan
from runner.recipients import Recipient, normalize_phone
from runner.render import Item, Message, Renderer, Waiting
from runner.template_lock import body_texts, lock_path, shown, words
from runner.timeline import Timeline

from .checking import check
from .ledger_choice import location_of, readable
from .outlook import Fate, Known, ledger_reader, quiet_hours, timeline

# A local image bigger than this is shown as a card, not inlined: a page of a few recipients
# stays a few megabytes at most (WhatsApp takes images up to 5 MB, stickers up to 100 KB).
INLINE_MAX = 2 * 1024 * 1024
INLINED = ("image", "sticker")  # what a browser shows by itself; video and audio get cards


# --- which recipients -------------------------------------------------------------------------


def pick(plan: Plan, flow_file: str, only: Sequence[str], sample: int) -> list[Recipient]:
    """The recipients named by `--only` (in that order; an unknown or malformed phone is one
    error line, exit 2, as for `flowrun FLOW --only`), else the first `sample` ones."""
    if not only:
        return list(itertools.islice(plan.recipients(), sample))
    wanted: dict[str, str] = {}  # normalised → as typed
    for raw in only:
        try:
            wanted.setdefault(normalize_phone(raw), raw)
        except ValueError as exc:
            raise FlowrunError(f"--only: {exc}") from None
    found = {r.phone: r for r in plan.recipients() if r.phone in wanted}
    for phone, raw in wanted.items():
        if phone not in found:
            raise FlowrunError(f"--only {raw}: {flow_file} has no recipient with this phone")
    return [found[phone] for phone in wanted]


# --- what a run now would do with each of their steps -----------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One step for one recipient: what rendering gave (a message, a skip, a wait for an
    answer) and what a run now would do with it; `behind`: the earlier step whose wait holds
    this one (a run goes no further for a customer than their first waiting step)."""

    item: Item
    fate: Fate
    behind: str | None = None


@dataclass(frozen=True, slots=True)
class Conversation:
    recipient: Recipient
    window: Window
    contact: Contact
    steps: tuple[Step, ...]


class _Recording(Renderer):
    """A Renderer that keeps what it yields, so the items `timeline` decided on can be shown
    beside their fates (one render pass: the bubble shows exactly what was decided)."""

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self.items: list[Item] = []

    def messages(self, recipient: Recipient, *args: Any, **kwargs: Any) -> Iterator[Item]:
        for item in super().messages(recipient, *args, **kwargs):
            self.items.append(item)
            yield item


def conversations(
    plan: Plan, dialect: Dialect, ledger: Path, recipients: Sequence[Recipient], now: datetime
) -> list[Conversation]:
    """Each recipient's steps and fates, read from the ledger (read-only; none yet: nothing
    sent, nobody wrote) and the CSV as runner/commands/outlook.py `outlook` reads them, and
    decided by its `timeline` (after:, answers, the window, quiet hours, earlier runs)."""
    quiet = quiet_hours(plan)
    found = []
    with ledger_reader(ledger) as reader:
        known = Known.read(reader, plan, dialect)
        for recipient in recipients:
            contact, inbound, history, window = known.of(recipient)
            line = Timeline(recipient, plan.steps, history, inbound, window, now)
            renderer = _Recording(plan)
            fates = [fate for _step, fate in timeline(renderer, line, contact, dialect, quiet)]
            found.append(Conversation(recipient, window, contact, _steps(renderer.items, fates)))
    return found


def _steps(items: Sequence[Item], fates: Sequence[Fate]) -> tuple[Step, ...]:
    """Items with their fates (a step due now: the message as rendered with the recipient's
    history, `Fate.message`); a later step held by an earlier one's wait is given that fate
    itself by `timeline` (the same object), which is how the earlier step is found."""
    steps = []
    holder: tuple[Fate, str] | None = None
    for item, fate in zip(items, fates, strict=True):
        behind = None
        if fate.state == "waits":
            if holder is None:
                holder = (fate, item.step.key)
            elif fate is holder[0]:
                behind = holder[1]
        shown = fate.message if fate.state == "due" and fate.message is not None else item
        steps.append(Step(shown, fate, behind))
    return tuple(steps)


# --- a template step's words ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateWords:
    """What a template bubble says: the template's text with the parameters in place when it
    is known, else the parameters alone (`{{1}}`, `{{2}}`, ... in order)."""

    text: str | None
    parameters: tuple[str, ...]


# (template name, language) → its approved body text, from the flow's template lock file
Texts = Mapping[tuple[str, str], str]


# --- what a bubble shows ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Media:
    """An image, video, document, audio or sticker: inlined (`data`) when it is a local image
    small enough, else a card with its name, link or media id."""

    kind: str
    data: str | None = None  # a data: URI
    name: str | None = None  # the file's name (a document's `filename`, else the local file's)
    link: str | None = None
    link_host: str | None = None
    media_id: str | None = None
    size: str | None = None  # "12.3 KB", for local files


@dataclass(frozen=True, slots=True)
class Button:
    kind: str  # quick_reply | url
    value: str  # the payload a tap sends back, or the end of the URL button's link


@dataclass(frozen=True, slots=True)
class Bubble:
    key: str
    kind: str
    state: str  # due | waits | skipped | withheld
    why: str  # a sentence: what a run now would do with it, and why
    note: bool  # shown as a note in the middle of the chat (nothing rendered to show)
    after: str | None = None  # the step's `after:`, said
    text: str | None = None  # a text body, or a caption
    media: Media | None = None
    header: str | None = None  # a template's text header
    template: str | None = None  # "name · language"
    words: TemplateWords | None = None
    buttons: tuple[Button, ...] = ()


@dataclass(frozen=True, slots=True)
class Chat:
    name: str
    phone: str
    fields: tuple[tuple[str, str], ...]
    window: str
    counts: str
    bubbles: tuple[Bubble, ...]


def _chat(conversation: Conversation, now: datetime, texts: Texts) -> Chat:
    recipient = conversation.recipient
    fields = recipient.fields
    name = str(fields.get("name") or fields.get("Name") or f"+{recipient.phone}")
    shown = tuple((str(k), _said(v)) for k, v in fields.items() if k not in ("phone", "name"))
    bubbles = tuple(_bubble(step, now, texts) for step in conversation.steps)
    states = [b.state for b in bubbles]
    counts = ", ".join(
        f"{states.count(state)} {said}"
        for state, said in (
            ("sent", "sent already"),
            ("due", "due now"),
            ("waits", "waiting"),
            ("skipped", "skipped"),
            ("withheld", "withheld"),
        )
        if state in states
    )
    window = _window(conversation.window, conversation.contact, now)
    return Chat(name, f"+{recipient.phone}", shown, window, counts, bubbles)


def _said(value: object) -> str:
    return "" if value is None else str(value)


def _window(window: Window, contact: Contact, now: datetime) -> str:
    """The customer's 24-hour window (docs/whatsapp-api.md#customer-service-window), said."""
    if contact.opted_out is not None:
        return f"opted out: {contact.opted_out}"
    if window.wrote is not None and window.open_at(now):
        return f"window open until {_time(window.until())} (they wrote {_time(window.wrote)})"
    if window.trusted:
        return "window open: settings.window: open says every recipient wrote in the last 24 h"
    if window.wrote is not None:
        return f"window closed: they last wrote {_time(window.wrote)}"
    return "window closed: no message from them is known (ledger, CSV last_inbound_at)"


def _time(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _bubble(step: Step, now: datetime, texts: Texts) -> Bubble:
    item, fate = step.item, step.fate
    plan_step = item.step
    after = _after(plan_step.after) if plan_step.after is not None else None
    why = _why(step, now)
    base = Bubble(plan_step.key, plan_step.kind, fate.state, why, note=True, after=after)
    if not isinstance(item, Message):
        return base
    content = item.content
    if plan_step.kind == "template":
        return _template_bubble(base, content, item.upload, texts)
    if plan_step.kind == "text":
        return _replace(base, text=str(content.get("body", "")))
    return _replace(
        base, text=content.get("caption"), media=_media(plan_step.kind, content, item.upload)
    )


def _replace(bubble: Bubble, **changes: Any) -> Bubble:
    """The bubble with what its message shows (no longer a note)."""
    return dataclasses.replace(bubble, note=False, **changes)


def _after(after: AfterPlan) -> str:
    """`after:` said: "2d after the message before it", "1h after step welcome was read"."""
    if after.step is None:
        return f"{_duration(after.wait)} after the message before it"
    if not after.wait:
        return f"when step {after.step} was {after.event}"
    return f"{_duration(after.wait)} after step {after.step} was {after.event}"


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _why(step: Step, now: datetime) -> str:
    """What a run now would do with the step, in a sentence (outlook's words, and which
    step holds it)."""
    fate, item = step.fate, step.item
    if fate.state == "due":
        return "due now: a run now sends it"
    if fate.state == "skipped":
        false = " is false for this recipient" if fate.reason == "when" else ""
        return f"skipped: {fate.detail}{false}"
    if fate.state == "sent":
        return f"sent already ({fate.detail})"
    if step.behind is not None:
        why = f"waits behind step {step.behind}, which {fate.said(now)}"
    elif fate.state == "waits" and fate.reason == WAITS_WINDOW:
        why = (
            "waits for the customer to write: WhatsApp takes this only within 24 hours of their"
            " last message"
        )
    else:
        why = fate.said(now)
    if isinstance(item, Waiting) and item.step.when_source:
        why += f"; then sent if {item.step.when_source}"
    return why


def _template_bubble(
    base: Bubble, content: Mapping[str, Any], upload: LocalMedia | None, texts: Texts
) -> Bubble:
    name = str(content.get("name", ""))
    language = str(content.get("language", {}).get("code", ""))
    header_text = None
    media = None
    body: list[str] = []
    buttons = []
    for component in content.get("components", []):
        kind = component.get("type")
        parameters = component.get("parameters", [])
        if kind == "header" and parameters:
            first = parameters[0]
            if first.get("type") == "text":
                header_text = str(first.get("text", ""))
            else:
                media_kind = str(first.get("type"))
                media = _media(media_kind, first.get(media_kind, {}), upload)
        elif kind == "body":
            body = [shown(p) for p in parameters]
        elif kind == "button" and parameters:
            sub_type = str(component.get("sub_type"))
            value = parameters[0].get("text" if sub_type == "url" else "payload")
            buttons.append(Button(sub_type, str(value)))
    return _replace(
        base,
        header=header_text,
        media=media,
        template=f"{name} · {language}",
        words=TemplateWords(words(content, texts), tuple(body)),
        buttons=tuple(buttons),
    )


def _media(kind: str, content: Mapping[str, Any], upload: LocalMedia | None) -> Media:
    name = content.get("filename")
    if upload is not None:
        data = None
        if kind in INLINED and upload.size <= INLINE_MAX:
            encoded = base64.b64encode(upload.path.read_bytes()).decode("ascii")
            data = f"data:{upload.mime};base64,{encoded}"
        return Media(kind, data, str(name or upload.path.name), size=_size(upload.size))
    link = content.get("link")
    if isinstance(link, str):
        parts = urlsplit(link)
        if parts.scheme in ("http", "https"):  # checked when rendered; kept off href otherwise
            file_name = parts.path.rsplit("/", 1)[-1] or None
            return Media(kind, name=str(name or file_name or ""), link=link, link_host=parts.netloc)
        return Media(kind, name=str(name or link))
    return Media(kind, name=str(name) if name else None, media_id=str(content.get("id", "")))


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


# --- the page ---------------------------------------------------------------------------------

STYLE = """\
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 "Segoe UI",Helvetica,Arial,sans-serif;color:#111b21;background:#d1d7db}
header.page{padding:16px 24px;background:#00a884;color:#fff}
header.page h1{margin:0 0 4px;font-size:20px}
header.page p{margin:0;opacity:.9}
main{display:flex;flex-wrap:wrap;gap:24px;padding:24px;align-items:flex-start}
section.chat{width:380px;background:#efeae2;border-radius:12px;overflow:hidden;
box-shadow:0 1px 3px rgba(0,0,0,.25)}
.top{background:#008069;color:#fff;padding:10px 14px}
.top h2{margin:0;font-size:16px}
.top .phone{opacity:.85;font-size:12px}
.facts{background:#f0f2f5;padding:6px 14px;font-size:12px;color:#54656f}
.facts dl{margin:0;display:flex;flex-wrap:wrap;gap:2px 10px}
.facts dt{font-weight:600}.facts dd{margin:0}
.msgs{padding:10px 12px 14px;display:flex;flex-direction:column;gap:8px}
.bubble{align-self:flex-end;max-width:88%;background:#d9fdd3;border-radius:8px 0 8px 8px;
padding:6px 8px 4px;box-shadow:0 1px .5px rgba(11,20,26,.13)}
.bubble.sticker{background:transparent;box-shadow:none}
.bubble.waits{opacity:.75;border:1px dashed #8696a0}
.bubble.withheld{opacity:.55;border:1px dashed #ea0038}
.label{font-size:11px;color:#667781;margin-bottom:3px}
.label b{color:#027eb5}
.tpl{font-size:11px;color:#667781}
.text{white-space:pre-wrap;overflow-wrap:anywhere}
.hdr{font-weight:700;margin-bottom:2px}
.params{margin:2px 0;padding:0;list-style:none}
.params li{overflow-wrap:anywhere}
.params .n{color:#667781;font-family:monospace;margin-right:4px}
.unknown{font-size:11px;color:#667781;font-style:italic}
img.pic{display:block;max-width:100%;max-height:320px;border-radius:6px;margin-bottom:4px}
img.stk{display:block;width:128px;height:128px;object-fit:contain}
.card{display:flex;gap:8px;align-items:center;background:rgba(0,0,0,.05);border-radius:6px;
padding:8px;margin-bottom:4px;overflow-wrap:anywhere}
.icon{flex:none;width:40px;height:40px;border-radius:6px;background:#8696a0;color:#fff;
display:flex;align-items:center;justify-content:center;font-weight:700;font-size:12px}
.icon.document{background:#e2514c}.icon.video{background:#6f42c1}.icon.audio{background:#f39c12}
.icon.image{background:#27ae60}.icon.sticker{background:#16a085}
.card .meta{font-size:11px;color:#667781}
.card a{color:#027eb5;text-decoration:none}
.buttons{display:flex;flex-direction:column;gap:1px;margin-top:6px;border-top:1px solid #c5d3c1}
.btn{text-align:center;color:#027eb5;padding:5px 4px 2px;overflow-wrap:anywhere}
.btn .k{color:#667781;font-size:11px}
.state{font-size:11px;margin-top:3px;text-align:right;color:#667781}
.state.due,.state.sent{color:#00a884}.state.waits{color:#b7791f}.state.withheld{color:#ea0038}
.note{align-self:center;max-width:92%;background:#fff8c5;color:#54656f;border-radius:8px;
padding:5px 10px;font-size:12px;text-align:center;box-shadow:0 1px .5px rgba(11,20,26,.13)}
.note.skipped{background:#e1f2fb}
footer{padding:0 24px 24px;color:#54656f;font-size:12px}
"""

# Nothing but this page's own style: no scripts, no fetches, no forms, no base URL.
CSP = (
    "default-src 'none'; img-src data:; style-src '{style_hash}'; base-uri 'none';"
    " form-action 'none'"
)

PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{ flow }}: preview</title>
<style>{{ style }}</style>
</head>
<body>
<header class="page">
<h1>{{ flow }}: what {{ chats|length }} recipient(s) would get</h1>
<p>A preview: nothing was sent. Decided as a run at {{ now }} would decide it
({{ source }}).</p>
</header>
<main>
{%- for chat in chats %}
<section class="chat" data-phone="{{ chat.phone }}">
<div class="top"><h2>{{ chat.name }}</h2><div class="phone">{{ chat.phone }}</div></div>
<div class="facts">
{%- if chat.fields %}<dl>{% for key, value in chat.fields %}<dt>{{ key }}</dt><dd>{{ value }}</dd>
{%- endfor %}</dl>{% endif %}
<div>{{ chat.window }}</div><div>{{ chat.counts }}</div>
</div>
<div class="msgs">
{%- for b in chat.bubbles %}
{%- if b.note %}
<div class="note {{ b.state }}"><b>{{ b.key }}</b> ({{ b.kind }}): {{ b.why }}
{%- if b.after %}; {{ b.after }}{% endif %}</div>
{%- else %}
<div class="bubble {{ b.state }}{% if b.kind == 'sticker' %} sticker{% endif %}">
<div class="label"><b>{{ b.key }}</b> · {{ b.kind }}
{%- if b.after %} · {{ b.after }}{% endif %}</div>
{%- if b.template %}<div class="tpl">template {{ b.template }}</div>{% endif %}
{%- if b.media %}{{ media(b.media) }}{% endif %}
{%- if b.header %}<div class="hdr">{{ b.header }}</div>{% endif %}
{%- if b.words %}
{%- if b.words.text %}<div class="text">{{ b.words.text }}</div>
{%- elif b.words.parameters %}<ol class="params">
{%- for p in b.words.parameters %}<li><span class="n">{{ '{{' }}{{ loop.index }}{{ '}}' }}</span>
<span class="text">{{ p }}</span></li>{% endfor %}</ol>
<div class="unknown">the template's own text is in WhatsApp Manager; these are its parameters</div>
{%- else %}<div class="unknown">no parameters</div>{% endif %}
{%- endif %}
{%- if b.text %}<div class="text">{{ b.text }}</div>{% endif %}
{%- if b.buttons %}<div class="buttons">
{%- for button in b.buttons %}<div class="btn">{{ button.value }}
<span class="k">{{ 'quick reply' if button.kind == 'quick_reply' else 'link' }}</span></div>
{%- endfor %}</div>{% endif %}
<div class="state {{ b.state }}">{{ b.why }}</div>
</div>
{%- endif %}
{%- endfor %}
</div>
</section>
{%- endfor %}
</main>
<footer>flowrun preview {{ flow_file }}</footer>
</body>
</html>
"""

MEDIA = """\
{%- macro media(m) %}
{%- if m.data and m.kind == 'sticker' %}<img class="stk" src="{{ m.data }}" alt="{{ m.name }}">
{%- elif m.data %}<img class="pic" src="{{ m.data }}" alt="{{ m.name }}">
{%- else %}<div class="card"><div class="icon {{ m.kind }}">{{ icons[m.kind] }}</div><div>
{%- if m.name %}<div>{{ m.name }}</div>{% endif %}
{%- if m.link %}<div class="meta">
<a href="{{ m.link }}" rel="noopener noreferrer">{{ m.link_host }}</a>
{{ m.link }}</div>{% endif %}
{%- if m.media_id %}<div class="meta">media id {{ m.media_id }} (uploaded before)</div>{% endif %}
{%- if m.size %}<div class="meta">{{ m.kind }}, {{ m.size }}, a local file</div>{% endif %}
</div></div>
{%- endif %}
{%- endmacro %}"""

ICONS = {"image": "IMG", "video": "▶", "audio": "♪", "document": "DOC", "sticker": "☺"}


def page(flow: str, flow_file: str, chats: Sequence[Chat], now: datetime, source: str) -> str:
    """The HTML page (Jinja2's ordinary autoescaping environment, not the flows' sandbox:
    this template is flowrun's own; the data it places is escaped)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    macros = env.from_string(MEDIA, globals={"icons": ICONS}).module
    digest = base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")
    return env.from_string(PAGE).render(
        csp=CSP.format(style_hash=f"sha256-{digest}"),
        style=Markup(STYLE),  # flowrun's own constant, hashed as written
        flow=flow,
        flow_file=flow_file,
        chats=chats,
        now=_time(now),
        source=source,
        media=macros.media,  # type: ignore[attr-defined]
    )


# --- the command ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreviewRequest:
    output: str | None = None  # default: FLOW.preview.html beside the flow
    only: tuple[str, ...] = ()
    sample: int = 3
    ledger_path: str | None = None
    use_sandbox: bool = False


def preview(flow_file: str, request: PreviewRequest) -> int:
    checked = check(flow_file)
    plan = checked.plan
    recipients = pick(plan, flow_file, request.only, request.sample)
    location = location_of(plan.loaded.path, request.ledger_path, sandbox=request.use_sandbox)
    now = clock.now()
    with readable(location) as (ledger, name):
        found = conversations(plan, dialects.build(checked.target), ledger, recipients, now)
        source = f"ledger {name}" if ledger.is_file() else "no ledger yet: nobody wrote"
    texts = body_texts(lock_path(plan.loaded.path))
    chats = [_chat(conversation, now, texts) for conversation in found]
    html = page(plan.loaded.name, flow_file, chats, now, source)
    output = (
        Path(request.output) if request.output else plan.loaded.path.with_suffix(".preview.html")
    )
    try:
        output.write_text(html, "utf-8")
    except OSError as exc:
        raise FlowrunError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(
        f"wrote {output} ({len(chats)} recipient(s), {len(html.encode('utf-8')):,} bytes):"
        " open it in a browser"
    )
    return EXIT_OK
