"""Which proxy a request to one origin goes through, read from the environment the way the
standard library reads it (`urllib.request.getproxies_environment` and
`proxy_bypass_environment`: HTTPS_PROXY for https targets, HTTP_PROXY for http ones, NO_PROXY to
go direct; lower case names win over upper case, as there).

Only http:// proxies are spoken to: an https target is reached through them by a CONNECT tunnel
(runner/http.py), which is what corporate proxies offer. An https:// or socks proxy URL is
refused with one line rather than ignored: going around a proxy someone set is exactly the
failure this module exists to end.

The proxy URL may carry credentials (`http://user:pass@proxy:3128`): they become a
`Proxy-Authorization: Basic` header value (RFC 9110 §11.7.1, RFC 7617) and are never shown —
a proxy is named by `Proxy.url`, without them.
"""

from __future__ import annotations

import base64
import os
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes, urlsplit

from .errors import FlowrunError


class ProxyUnsupported(FlowrunError):
    """The proxy variable names a proxy flowrun cannot speak to: nothing is sent."""


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    # "Basic ..." (or None): a secret, so out of repr and str
    authorization: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The form shown in messages: `http://proxy:3128`, never with credentials."""
        return f"http://{_bracketed(self.host)}:{self.port}"

    def __str__(self) -> str:
        return self.url


def proxy_for(scheme: str, host: str, port: int) -> Proxy | None:
    """The proxy for requests to scheme://host:port, or None to connect directly.

    NO_PROXY is matched against `host:port` (always with the port), so that its entries with a
    port match too, as `proxy_bypass_environment` intends."""
    proxies = urllib.request.getproxies_environment()
    value = proxies.get(scheme)
    if not value:
        return None
    # (public since Python 2, though typeshed leaves it out)
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(f"{_bracketed(host)}:{port}", proxies):
        return None
    return parse_proxy(value, _variable(scheme))


def parse_proxy(value: str, variable: str) -> Proxy:
    """`http://[user[:password]@]host[:port]` (the scheme may be left out, as curl and the
    standard library allow; the port defaults to 80 as in http.client)."""
    try:
        parts = urlsplit(value if "://" in value else f"http://{value}")
        port = parts.port
    except ValueError:  # a bad IPv6 address or port: the value itself may hold a password
        raise ProxyUnsupported(f"{variable} is not a proxy URL like http://HOST:PORT") from None
    shown = f"{parts.scheme}://{_bracketed(parts.hostname or '')}" + (f":{port}" if port else "")
    if parts.scheme != "http":  # (urlsplit gives it in lower case)
        raise ProxyUnsupported(
            f"{variable} is {shown}: flowrun supports http:// proxies only (https APIs are"
            " reached through them by CONNECT); https:// and socks proxies are not supported"
        )
    if not parts.hostname:
        raise ProxyUnsupported(f"{variable} is {shown}: not a proxy URL like http://HOST:PORT")
    authorization = None
    if parts.username is not None:
        # urlsplit leaves them percent-encoded; the header carries the bytes they stand for
        pair = unquote_to_bytes(parts.username) + b":" + unquote_to_bytes(parts.password or "")
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    return Proxy(parts.hostname, port or 80, authorization)


def _variable(scheme: str) -> str:
    """The variable that was read: lower case wins (getproxies_environment)."""
    lower = f"{scheme}_proxy"
    return lower if os.environ.get(lower) else lower.upper()


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
