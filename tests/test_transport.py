"""What the HTTP engine lets out of the process."""

from __future__ import annotations

from runner.transport import public_url


def test_public_url_drops_credentials_and_query() -> None:
    assert public_url("https://user:pw@wa.example.com:8443/api?key=s3cret") == (
        "https://wa.example.com:8443/api"
    )
    assert public_url("http://127.0.0.1:8480") == "http://127.0.0.1:8480"
