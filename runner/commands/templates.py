"""`flowrun templates pull FLOW`: the account's templates into the lock file beside the flow.

Cloud only: `GET /{version}/{waba_id}/message_templates` with the fields the lock keeps, one page
after another by `paging.next` until there is none (Graph's cursor paging), then the lock is
written whole (runner/template_lock.py `lock_text`: sorted, stable, no secrets). The On-Premises
API has no endpoint that lists templates: its lock is written by hand.

HTTP goes through flowrun's own transport (runner/transport.py `HttpTransport.get`): the same
proxy rules, timeout and answer bounds as every send, and the token stays inside it. `next` is
followed only on the API's own origin, so the token never goes anywhere the flow did not name.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import click

from runner.errors import EXIT_OK, FlowInvalid, FlowrunError, Problem, Problems
from runner.loader import LoadedFlow, load_flow
from runner.media import LocalFiles
from runner.plan import Plan
from runner.target import ApiTarget, api_target
from runner.template_lock import LOCK_FIELDS, LockError, lock_path, lock_text, shape_of
from runner.templates import EnvVars
from runner.transport import HttpTransport, MaybeDelivered, NotDelivered, public_url
from runner.untrusted import printable

PAGE_SIZE = 50  # templates a page: a page of big ones stays far below the client's answer bound
MAX_PAGES = 10_000  # an API that pages forever is stopped (a WABA holds at most a few thousand)


@dataclass(frozen=True, slots=True)
class Pulled:
    templates: list[dict[str, Any]]
    pages: int


def pull(flow_file: str, *, use_sandbox: bool = False, page_size: int = PAGE_SIZE) -> int:
    """Read the account's templates and write them to FLOW.templates.json."""
    loaded = load_flow(flow_file)
    lock = lock_path(loaded.path)
    if loaded.flow.api.kind != "cloud":
        raise FlowrunError(
            f"{flow_file}: the On-Premises API has no endpoint that lists templates; write"
            f" {lock.name} by hand (its format: runner/template_lock.py, or flowrun's README)"
        )
    with contextlib.ExitStack() as stack:
        target = _target(loaded, stack, use_sandbox)
        timeout = loaded.flow.api.timeout
        pulled = asyncio.run(_pull(target, page_size, timeout, proxies=not use_sandbox))
    text = lock_text(pulled.templates)
    before = lock.read_text("utf-8") if lock.is_file() else None
    if text != before:
        lock.write_text(text, "utf-8")
    change = "unchanged" if text == before else ("written" if before is None else "updated")
    click.echo(
        f"{lock_display(flow_file, lock)}: {change}: {len(pulled.templates)} templates"
        f" ({pulled.pages} page{'s' if pulled.pages != 1 else ''} from"
        f" {public_url(target.base_url or '')})"
    )
    return EXIT_OK


def lock_display(flow_file: str, lock: Path) -> str:
    """The lock's path as the user wrote the flow's."""
    return str(Path(flow_file).with_name(lock.name))


def _target(loaded: LoadedFlow, stack: contextlib.ExitStack, use_sandbox: bool) -> ApiTarget:
    """The flow's API (its secrets from the environment), or a sandbox started for this."""
    if use_sandbox:
        from runner import sandbox

        base_url, _ = stack.enter_context(sandbox.running())
        return sandbox.target_for(loaded.flow.api, base_url)
    problems = Problems()
    plan = Plan(loaded, (), problems, EnvVars(), LocalFiles(loaded.base_dir))
    target = api_target(plan, for_run=True, account=True)
    if target.waba_id is None and not problems.has_errors():
        problems.add(
            Problem(
                loaded.locate(("api",)),
                "templates pull needs the WhatsApp Business Account's id",
                'add waba_id: "{{ env.WA_WABA_ID }}" to api: and set WA_WABA_ID',
            )
        )
    if problems.has_errors() or not target.ready:
        raise FlowInvalid(problems)
    return target


async def _pull(target: ApiTarget, page_size: int, timeout: float, *, proxies: bool) -> Pulled:
    assert target.base_url is not None
    assert target.version is not None
    query = urlencode({"fields": ",".join(LOCK_FIELDS), "limit": page_size})
    path: str | None = f"/{target.version}/{target.waba_id}/message_templates?{query}"
    templates: list[dict[str, Any]] = []
    pages = 0
    async with HttpTransport(target.base_url, target.token, timeout, 1, proxies=proxies) as http:
        while path is not None:
            pages += 1
            if pages > MAX_PAGES:
                raise FlowrunError(f"templates pull: the API gave more than {MAX_PAGES} pages")
            data = await _page(http, path)
            templates.extend(_entries(data))
            path = _next_path(target.base_url, data)
    return Pulled(templates, pages)


async def _page(http: HttpTransport, path: str) -> dict[str, Any]:
    try:
        answer = await http.get(path)
    except (NotDelivered, MaybeDelivered) as exc:
        raise FlowrunError(f"templates pull: {exc}") from None
    if answer.status != 200 or not isinstance(answer.data, dict):
        raise FlowrunError(
            f"templates pull: the API refused: {_refusal(answer.status, answer.data)}"
        )
    return answer.data


def _refusal(status: int, data: Any) -> str:
    """The Graph error envelope in one line (its text cleaned: it is the API's, not ours)."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return f"HTTP {status}"
    line = f"HTTP {status}, error {error.get('code')}: {printable(str(error.get('message', '')))}"
    if error.get("code") == 190 or status == 401:
        line += " (check the token in api.token: it needs whatsapp_business_management)"
    return line


def _entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The page's templates, each one the lock can read (else the pull stops: a lock that
    cannot be read would fail every later validate)."""
    found = data.get("data")
    if not isinstance(found, list):
        raise FlowrunError("templates pull: the API's answer has no data list")
    for entry in found:
        if not isinstance(entry, dict):
            raise FlowrunError("templates pull: the API listed something that is not a template")
        try:
            shape_of(entry)
        except LockError as exc:
            raise FlowrunError(
                f"templates pull: the API listed a template flowrun cannot read: {exc}"
            ) from None
    return found


def _next_path(base_url: str, data: dict[str, Any]) -> str | None:
    """The path and query of `paging.next`, or None at the end. Only on the API's own origin
    (and below its base path): the token goes with it."""
    paging = data.get("paging")
    following = paging.get("next") if isinstance(paging, dict) else None
    if following is None:
        return None
    base, url = urlsplit(base_url), urlsplit(str(following))
    prefix = base.path.rstrip("/")
    if (url.scheme, url.netloc) != (base.scheme, base.netloc) or not url.path.startswith(prefix):
        raise FlowrunError(
            f"templates pull: the API's next page is on {public_url(str(following))}, not on"
            f" {public_url(base_url)}; not following it (the token would go there)"
        )
    return url.path[len(prefix) :] + (f"?{url.query}" if url.query else "")
