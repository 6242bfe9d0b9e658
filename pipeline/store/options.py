"""KEY=VALUE storage options, parsed one way for the CLI and the trainer."""

from __future__ import annotations

import json


def parse_key_value(text: str) -> tuple[str, object]:
    """("endpoint_url", "http://...") from "endpoint_url=http://...". The value is
    JSON where it parses (numbers, booleans, null, objects such as
    config_kwargs={"retries": {"max_attempts": 1}}), else the string as given.
    Only the first "=" splits, so values may contain "=". ValueError without a key or "="."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError("expected KEY=VALUE")  # not echoing the text: it may hold a secret
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value
