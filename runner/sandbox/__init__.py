"""The sandbox: both WhatsApp Business APIs on 127.0.0.1, as strict as the real ones, for
trying flows without an account and for flowrun's own tests (server.py serves, checks.py
judges requests, webhooks.py calls back).

`target_for` is the sandbox's own credentials in a flow's dialect: what `--sandbox` sends with
instead of the flow's secrets; `state_for` is the sandbox a flow's `--sandbox` run talks to:
it simulates the audience the flow states.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner import clock

from .catalog import WABA_ID
from .checks import NAMESPACE
from .server import LOGIN, PHONE_NUMBER_ID, TOKEN, SandboxState, build_app, running, serve

if TYPE_CHECKING:
    from runner.models import CloudApi, Flow, OnPremApi
    from runner.target import ApiTarget

__all__ = [
    "LOGIN",
    "NAMESPACE",
    "PHONE_NUMBER_ID",
    "TOKEN",
    "WABA_ID",
    "SandboxState",
    "build_app",
    "running",
    "serve",
    "state_for",
    "target_for",
]

WROTE_AGO = 3600  # seconds: when the audience of a `window: open` flow wrote, in the sandbox


def state_for(flow: Flow) -> SandboxState:
    """The in-process sandbox of `flowrun FLOW --sandbox`: it enforces the 24-hour window like
    WhatsApp, and a flow that states every recipient wrote in the last 24 hours
    (`settings.window: open`) gets exactly that audience: every customer wrote an hour ago
    (`everyone_wrote`). Otherwise only what customers write opens a window."""
    state = SandboxState()
    if flow.settings.window == "open":
        state.customers.everyone_wrote = int(clock.now().timestamp()) - WROTE_AGO
    return state


# What the sandbox's customers do with each message of `flowrun FLOW --sandbox --follow`: each
# acts once on every message delivered to them (the shares add up to 1, so the run ends once
# every customer has answered their way through the flow).
DEMO_CUSTOMERS = {"tap_share": 0.6, "reply_share": 0.3, "stop_share": 0.1, "delay": 0.5}


def customers_answer(base_url: str, webhook: str, secret: str) -> None:
    """Make the sandbox at `base_url` a live audience: its customers tap quick replies, reply
    or send STOP (DEMO_CUSTOMERS), as signed webhooks to `webhook`. Through its own control
    API (server.py), as a test would."""
    import json
    import urllib.request

    for path, body in (
        ("/sandbox/webhook", {"url": webhook, "secret": secret}),
        ("/sandbox/customers", DEMO_CUSTOMERS),
    ):
        request = urllib.request.Request(
            base_url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10):
            pass


def target_for(api: CloudApi | OnPremApi, base_url: str) -> ApiTarget:
    """The sandbox at `base_url` in place of the flow's API, in the flow's dialect: its own
    credentials (the flow's secrets are never asked for)."""
    from runner.target import ApiTarget

    if api.kind == "cloud":
        version = getattr(api, "version", None)
        return ApiTarget("cloud", base_url, TOKEN, PHONE_NUMBER_ID, version, waba_id=WABA_ID)
    if getattr(api, "login", None) is not None:
        user, password = LOGIN
        return ApiTarget(
            "onprem", base_url, username=user, password=password, template_namespace=NAMESPACE
        )
    return ApiTarget("onprem", base_url, TOKEN, template_namespace=NAMESPACE)
