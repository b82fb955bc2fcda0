"""Self-signed certificates for TLS tests, made with the openssl command."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(folder: Path, name: str, alt_name: str) -> tuple[Path, Path]:
    """(certificate, key) for `name`, with `alt_name` (`DNS:localhost`, `IP:127.0.0.1`) as
    its only subject alternative name; valid for a day."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", f"/CN={name}", "-addext", f"subjectAltName={alt_name}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
