"""The image in a request body: the raw bytes, or the `image` field of a
multipart/form-data body, parsed in memory (Starlette's form parser spools large parts
to temporary files; an upload here never touches the disk)."""

from __future__ import annotations

from python_multipart.multipart import MultipartParser, parse_options_header

from pipeline.serve.errors import ApiError

FIELD = "image"


def image_bytes(body: bytes, content_type: str | None) -> tuple[bytes, str | None]:
    """(image bytes, the filename the form gave, if any)."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        return body, None
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart/form-data without a boundary")
    parts: list[dict] = []
    header: list[bytes] = [b"", b""]

    def on_part_begin():
        parts.append({"headers": {}, "data": []})

    def on_header_field(data, start, end):
        header[0] += data[start:end]

    def on_header_value(data, start, end):
        header[1] += data[start:end]

    def on_header_end():
        parts[-1]["headers"][header[0].lower()] = header[1]
        header[0], header[1] = b"", b""

    def on_part_data(data, start, end):
        parts[-1]["data"].append(data[start:end])

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as error:  # python-multipart's own errors: a malformed body
        raise ApiError(400, f"malformed multipart body: {error}") from None
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if disposition.get(b"name") == FIELD.encode():
            filename = disposition.get(b"filename")
            return b"".join(part["data"]), filename.decode("utf-8", "replace") if filename else None
    raise ApiError(422, f"the multipart body has no {FIELD!r} field")
