"""The sandbox: both WhatsApp Business APIs on 127.0.0.1, as strict as the real ones, for
trying flows without an account and for flowrun's own tests (server.py serves, checks.py
judges requests, webhooks.py calls back).

`target_for` is the sandbox's own credentials in a flow's dialect: what `--sandbox` sends with
instead of the flow's secrets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .checks import NAMESPACE
from .server import LOGIN, PHONE_NUMBER_ID, TOKEN, SandboxState, build_app, running, serve

if TYPE_CHECKING:
    from runner.models import CloudApi, OnPremApi
    from runner.target import ApiTarget

__all__ = [
    "LOGIN",
    "NAMESPACE",
    "PHONE_NUMBER_ID",
    "TOKEN",
    "SandboxState",
    "build_app",
    "running",
    "serve",
    "target_for",
]


def target_for(api: CloudApi | OnPremApi, base_url: str) -> ApiTarget:
    """The sandbox at `base_url` in place of the flow's API, in the flow's dialect: its own
    credentials (the flow's secrets are never asked for)."""
    from runner.target import ApiTarget

    if api.kind == "cloud":
        version = getattr(api, "version", None)
        return ApiTarget("cloud", base_url, TOKEN, PHONE_NUMBER_ID, version)
    if getattr(api, "login", None) is not None:
        user, password = LOGIN
        return ApiTarget(
            "onprem", base_url, username=user, password=password, template_namespace=NAMESPACE
        )
    return ApiTarget("onprem", base_url, TOKEN, template_namespace=NAMESPACE)
