"""Media types and content negotiation (RFC 9110 §8.3, §12.5.1), parsed by Werkzeug rather than string prefixes.

* ``Content-Type`` is split into a lower-cased media type and its parameters; JSON is ``application/json`` or any
  ``+json`` suffix type (RFC 6839), in UTF-8 (RFC 8259 §8.1: a ``charset`` other than utf-8 is refused).
* ``Accept`` is parsed with q-values and specificity; no ``Accept`` (or an empty one) accepts anything, ``q=0``
  excludes a type. The server picks the best of the types it can produce for the answer at hand, and answers 406
  listing them when none is acceptable.
"""

from __future__ import annotations

from collections.abc import Sequence

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header, parse_options_header

from server.errors import ApiError

JSON = "application/json"
PNG = "image/png"
NPY = "application/x-npy"
OCTET = "application/octet-stream"
MULTIPART = "multipart/form-data"


def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """``(type/subtype lower-cased, parameters with lower-cased names)`` of a ``Content-Type`` value; ``("", {})``
    when absent."""
    if not header:
        return "", {}
    mime, params = parse_options_header(header)
    return mime.strip().lower(), {k.lower(): v for k, v in params.items()}


def is_json(mime: str) -> bool:
    """``application/json`` or a structured ``+json`` type (RFC 6839 §3.1)."""
    return mime == JSON or (mime.startswith("application/") and mime.endswith("+json"))


def is_image(mime: str) -> bool:
    """A raw image body: any ``image/*`` type, or ``application/octet-stream`` (the bytes are sniffed)."""
    return mime.startswith("image/") or mime == OCTET


def check_json_charset(params: dict[str, str]) -> None:
    """RFC 8259 §8.1: JSON between systems is UTF-8. Raises :class:`ApiError` 415 for another ``charset``."""
    charset = params.get("charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ApiError(415, "unsupported_media_type", f"Content-Type charset={charset} is not supported; JSON "
                                                      "bodies are UTF-8")


def negotiate(accept_header: str | None, offered: Sequence[str]) -> str:
    """The media type to answer with: the best match of ``Accept`` among ``offered`` (in server preference order).

    Raises:
        ApiError: 406 ``not_acceptable`` naming the ``Accept`` value and the available types.
    """
    if accept_header is None or not accept_header.strip():
        return offered[0]
    accept = parse_accept_header(accept_header, MIMEAccept)
    best = accept.best_match(list(offered))
    if best is None:
        raise ApiError(406, "not_acceptable", f"Accept: {accept_header} matches nothing this answer can be; "
                                              f"available: {', '.join(offered)}")
    return best


def acceptable(accept_header: str | None, mime: str) -> bool:
    """Whether ``mime`` is acceptable (q > 0) under ``Accept``."""
    if accept_header is None or not accept_header.strip():
        return True
    return parse_accept_header(accept_header, MIMEAccept).quality(mime) > 0
