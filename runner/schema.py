"""The JSON Schema of the flow format, generated from the models (never written by hand)."""

from __future__ import annotations

import json

from .models import Flow


def flow_schema() -> str:
    """The schema as stable, pretty JSON: checked in as schemas/flow.schema.json."""
    schema = Flow.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False)
