"""How a run and its ledger writer process talk: length-prefixed orjson frames over a pipe.

Run → writer: `to_wire(batch)`, every record by field name. Writer → run: `{"error": null}` once
the batch is durable, or `{"error": "what went wrong"}`. The framing is a 4-byte little-endian
length, then the body. End of input means the run is over (or dead).
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

import orjson

from .records import Batch, Mark, Outcome, Preference, Uploaded

HEADER = struct.Struct("<I")


def frame(payload: Any) -> bytes:
    data = orjson.dumps(payload)
    return HEADER.pack(len(data)) + data


def read_frame(stream: BinaryIO) -> Any | None:
    """The next frame's payload; None at the end of input."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    return orjson.loads(stream.read(size))


def to_wire(batch: Batch) -> dict[str, Any]:
    """The batch as JSON-ready data, every record by field name."""
    return {
        "marks": [_fields(m) for m in batch.marks],
        "outcomes": [_fields(o) for o in batch.outcomes],
        "uploads": [_fields(u) for u in batch.uploads],
        "preferences": [_fields(p) for p in batch.preferences],
    }


def batch_from_wire(data: dict[str, Any]) -> Batch:
    """`to_wire`'s inverse; an unknown or missing field is a TypeError, never a shifted value."""
    return Batch(
        [Mark(**m) for m in data["marks"]],
        [Outcome(**o) for o in data["outcomes"]],
        [Uploaded(**u) for u in data["uploads"]],
        [Preference(**p) for p in data["preferences"]],
    )


def _fields(record: Mark | Outcome | Uploaded | Preference) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}
