"""Request bodies and parameters: one set of parsing rules for every input channel.

Four channels carry request fields: a JSON body, multipart form fields, the query string (next to a raw image
body), and the raw body itself (the image). The rules:

* **JSON body**: UTF-8 JSON (``Content-Type: application/json`` or ``+json``); a key given twice anywhere is a 422
  naming the key; an empty body is ``{}`` (so the 422 names the missing fields).
* **Text fields** (multipart text parts, query parameters): each value is read as the JSON value it spells
  (``7`` is the integer 7, ``4.5`` a number, ``[0, 0, 8, 8]`` a list, ``null`` null), and text that is not JSON is
  the string itself (``inside``). So ``7.0`` for a class is refused exactly as the JSON number 7.0 is, and ``"7"``
  exactly as the JSON string "7" is. A field given twice is a 422 naming it.
* Every channel then goes through the same model and the same :class:`server.limits.Limits`
  (:func:`server.schemas.validate`): same types, ranges and messages.
* Images: a multipart file part, base64 (JSON fields and text parts named ``image``/``mask``, a ``data:`` URL
  accepted), or the raw body (``Content-Type: image/*`` or ``application/octet-stream``).
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import ApiError
from server.images import InvalidImage
from server.limits import Limits
from server.negotiation import MULTIPART, check_json_charset, is_image, is_json, media_type
from server.schemas import invalid, validate

MAX_MULTIPART_FILES = 4
MAX_MULTIPART_FIELDS = 32


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # RFC 8259 §4: names SHOULD be unique; a silent "last one wins" would hide a client bug
            raise _DuplicateKey(key)
        out[key] = value
    return out


def load_json(raw: bytes | str) -> Any:
    """Parse JSON text; every way it can fail is a 422 naming ``body`` (or the duplicated key).

    Raises:
        InvalidFields: invalid JSON (with the position), not UTF-8, a key given twice, an integer literal over
            Python's digit limit, or nesting too deep for the parser.
    """
    def bad(msg: str, allowed: str = "a JSON object"):
        return invalid("body", None, msg, allowed)

    try:
        return json.loads(raw, object_pairs_hook=_object)
    except _DuplicateKey as exc:
        raise invalid(exc.key, None, "given more than once in the JSON object", "one value per key") from None
    except json.JSONDecodeError as exc:
        raise bad(f"invalid JSON at position {exc.pos}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise bad(f"invalid JSON at position {exc.start}: not UTF-8", "a JSON object (UTF-8)") from None
    except RecursionError:
        raise bad("invalid JSON: nested too deeply", "a JSON object nested at most a few hundred levels") from None
    except ValueError as exc:  # an integer literal longer than sys.get_int_max_str_digits()
        limit = sys.get_int_max_str_digits()
        why = f"an integer literal has more than {limit} digits" if "digits" in str(exc) else str(exc)
        raise bad(f"invalid JSON: {why}", f"a JSON object with integers of at most {limit} digits") from None


def text_value(text: str) -> Any:
    """A form or query text value as the JSON value it spells, or the text itself when it is not JSON."""
    try:
        return json.loads(text, object_pairs_hook=_object)
    except (ValueError, RecursionError):  # _DuplicateKey and JSONDecodeError are ValueErrors
        return text


def _text_fields(items: list[tuple[str, str]], channel: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in items:
        if key in out:  # never let a second value silently replace the first
            raise invalid(key, None, f"given more than once in the {channel}", "one value per field")
        out[key] = text_value(value)
    return out


def _no_query(request: Request, why: str) -> None:
    if request.query_params:
        key = next(iter(request.query_params.keys()))
        raise invalid(key, None, f"query parameters are not read here ({why})", "no query parameters")


async def json_body(request: Request, model: type[BaseModel], limits: Limits) -> BaseModel:
    """Read and validate a JSON request body as ``model``.

    Raises:
        ApiError: 415 for a non-JSON ``Content-Type`` (or none, with a body), or a charset other than UTF-8.
        InvalidFields: 422 (see :func:`load_json` and :func:`server.schemas.validate`).
    """
    raw = await request.body()
    mime, params = media_type(request.headers.get("content-type"))
    if raw.strip() or mime:
        if not mime:
            raise ApiError(415, "unsupported_media_type", "Content-Type is missing; send the body as "
                                                          "application/json")
        if not is_json(mime):
            raise ApiError(415, "unsupported_media_type", f"Content-Type {mime!r} is not supported here; send "
                                                          "application/json")
        check_json_charset(params)
    _no_query(request, "send the fields in the JSON body")
    return validate(model, load_json(raw) if raw.strip() else {}, limits)


async def upload(request: Request, json_model: type[BaseModel], form_model: type[BaseModel],
                 limits: Limits, file_fields: tuple[str, ...] = ("image",)) -> tuple[BaseModel, dict[str, bytes]]:
    """Read an image upload: JSON (base64 images, ``json_model``), multipart (file parts and text fields,
    ``form_model``) or a raw image body with the fields in the query string (``form_model``).

    Returns:
        ``(validated fields, {"image": bytes, "mask": bytes (optional)})``.

    Raises:
        ApiError: 415 for any other ``Content-Type``. InvalidFields: 422 for invalid fields or a missing image.
        InvalidImage: base64 that does not decode (400).
    """
    mime, params = media_type(request.headers.get("content-type"))
    files: dict[str, bytes] = {}
    if mime == MULTIPART:
        _no_query(request, "send the fields as multipart parts")
        fields = await _multipart(request, files, file_fields)
        if "image" not in files:
            raise invalid("image", None, "Field required (a multipart file part 'image')", limits.allowed("image"))
        return validate(form_model, fields, limits, file_fields), files
    if is_image(mime):
        files["image"] = await request.body()
        fields = _text_fields(list(request.query_params.multi_items()), "query string")
        return validate(form_model, fields, limits, file_fields), files
    if mime and not is_json(mime):
        raise ApiError(415, "unsupported_media_type", f"Content-Type {mime!r} is not supported here; send "
                                                      "application/json, multipart/form-data or image/*")
    params_model = await json_body(request, json_model, limits)
    for key in file_fields:
        text = getattr(params_model, key, None)
        if text is not None:  # "" decodes to 0 bytes: a 400 naming the field, like an empty file part
            files[key] = decode_base64(text, key)
    return params_model, files


async def _multipart(request: Request, files: dict[str, bytes], file_fields: tuple[str, ...]) -> dict[str, Any]:
    try:
        form = await request.form(max_files=MAX_MULTIPART_FILES, max_fields=MAX_MULTIPART_FIELDS)
    except StarletteHTTPException as exc:  # starlette's 400 for a malformed body or too many parts
        raise invalid("body", None, f"invalid multipart body: {exc.detail}",
                      f"multipart/form-data with at most {MAX_MULTIPART_FILES} files and "
                      f"{MAX_MULTIPART_FIELDS} fields") from None
    texts: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, value in form.multi_items():
        if key in seen:
            raise invalid(key, None, "given more than once in the multipart body", "one part per field")
        seen.add(key)
        if isinstance(value, UploadFile):
            files[key] = await value.read()  # only bytes go further, never the spooled file (B23)
        elif key in file_fields:  # a text part named like a file: base64, as in JSON
            files[key] = decode_base64(value, key)
        else:
            texts.append((key, value))
    unknown_files = [k for k in files if k not in file_fields]
    if unknown_files:
        raise invalid(unknown_files[0], None, "a file part this endpoint does not read",
                      "file parts: " + ", ".join(file_fields))
    return _text_fields(texts, "multipart body")


def decode_base64(text: str, field: str) -> bytes:
    """Base64 (standard alphabet, padded; a ``data:...;base64,`` prefix is dropped) to bytes.

    Raises:
        InvalidImage: not valid base64 (HTTP 400 naming the field).
    """
    try:
        return base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{field}: invalid image (not valid base64)") from None
