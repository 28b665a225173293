"""Reading a voice upload's multipart/form-data body as a stream, with bounded memory.

The recording goes into a ``SpooledTemporaryFile``: the first ``SPOOL_MEMORY_BYTES`` in memory, the
rest on disk, and reading stops with UploadTooLargeError as soon as it passes the limit (nothing
beyond it is read). The form must be exactly what a browser sends: every part named, one 'file' and
one 'name', at most ``MAX_UPLOAD_PARTS`` parts. A body that does not parse (a part-header line over
aiohttp's 8,190 bytes, a ``Content-Encoding`` the body is not in, a broken boundary) is the client's
error (UploadFormError, answered 400), never the server's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import IO

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import BadHttpMessage

from vcstream.errors import VcstreamError
from vcstream.service.db.models import MAX_NAME_CHARS
from vcstream.service.voice_names import InvalidVoiceNameError
from vcstream.service.voices import UploadTooLargeError

#: room for multipart boundaries, part headers and the name field on top of the file itself
MULTIPART_OVERHEAD = 64 * 1024
#: parts a voice upload may have: 'name' and 'file', and room for a few fields a form adds. Parsing a
#: part costs the event loop ~0.3 ms of Python (headers, Content-Disposition) whatever its size: a
#: body of 10,000 one-byte parts kept the loop busy for seconds, so the count is refused early
MAX_UPLOAD_PARTS = 8
#: bytes of a recording kept in memory before the spool moves to a temporary file
SPOOL_MEMORY_BYTES = 256 * 1024
_CHUNK = 64 * 1024
_NAME_FIELD_LIMIT = 4 * MAX_NAME_CHARS + 64  # UTF-8 takes at most 4 bytes a character


class UploadFormError(VcstreamError):
    """The body is not a voice upload form (``code`` says how, for the client)."""

    def __init__(self, code: str, message: str, *, body_broken: bool = False) -> None:
        super().__init__(message)
        self.code = code
        #: the rest of the body cannot be read (its decoding failed): answer, then close the connection
        self.body_broken = body_broken


@dataclass
class UploadForm:
    """The fields of one upload; ``recording`` is open until ``close`` (the library reads it)."""

    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    recording: IO[bytes] | None = None
    size: int = 0
    _seen: set[str] = field(default_factory=set)

    def close(self) -> None:
        if self.recording is not None:
            self.recording.close()


def too_large(limit: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"the upload exceeds the limit of {limit} bytes ({limit / 2**20:.1f} MiB)")


async def read_upload_form(request: web.Request, limit: int) -> UploadForm:
    """The form, its recording spooled; the caller closes it. Raises UploadFormError,
    UploadTooLargeError, InvalidVoiceNameError; ConnectionResetError when the client goes away."""
    form = UploadForm()
    try:
        await _read_parts(request, limit, form)
    except BaseException:
        form.close()
        raise
    return form


async def _read_parts(request: web.Request, limit: int, form: UploadForm) -> None:
    parts = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > MAX_UPLOAD_PARTS:
                raise UploadFormError(
                    "too_many_parts",
                    f"a voice upload has at most {MAX_UPLOAD_PARTS} form fields ('name' and 'file' needed)",
                )
            if not isinstance(part, BodyPartReader):
                raise UploadFormError("bad_multipart", "nested multipart bodies are not supported")
            await _read_part(part, parts, limit, form)
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not gzip
        encoding = request.headers.get(hdrs.CONTENT_ENCODING)
        cause = exc.__cause__ or exc
        said = f" (Content-Encoding: {encoding})" if encoding else ""
        raise UploadFormError(
            "bad_body", f"the request body could not be read{said}: {cause}", body_broken=True
        ) from exc
    except (ValueError, BadHttpMessage) as exc:  # boundary, header lines over 8,190 bytes, 128+ headers
        problem = getattr(exc, "message", None) or str(exc)
        raise UploadFormError("bad_multipart", f"the multipart body could not be parsed: {problem}") from exc


async def _read_part(part: BodyPartReader, number: int, limit: int, form: UploadForm) -> None:
    if not part.name:
        raise UploadFormError(
            "unnamed_part",
            f"form field {number} has no name (Content-Disposition: form-data; name=...); "
            "a voice upload sends 'name' and 'file'",
        )
    if part.name in ("file", "name"):
        if part.name in form._seen:
            raise UploadFormError(
                "duplicate_field", f"the form field {part.name!r} is sent twice; a voice upload has one"
            )
        form._seen.add(part.name)
    if part.name == "file":
        form.recording, form.size = await _spool(part, limit)
        form.filename = part.filename
        form.content_type = part.headers.get(hdrs.CONTENT_TYPE)
    elif part.name == "name":
        too_long = InvalidVoiceNameError(f"the voice name is longer than {MAX_NAME_CHARS} characters")
        raw = await _read_capped(part, _NAME_FIELD_LIMIT, too_long)
        try:
            form.name = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidVoiceNameError("the voice name is not valid UTF-8") from exc
    else:  # unknown fields are read and ignored, within the same overall bound
        await _read_capped(part, MULTIPART_OVERHEAD, too_large(limit))


async def _spool(part: BodyPartReader, limit: int) -> tuple[IO[bytes], int]:
    spool = tempfile.SpooledTemporaryFile(SPOOL_MEMORY_BYTES, prefix="vcstream-upload-")  # noqa: SIM115
    size = 0
    try:
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            # on the loop: 64 KiB into the page cache takes microseconds, a thread hop costs more
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool, size


async def _read_capped(part: BodyPartReader, limit: int, too_much: Exception) -> bytes:
    """A small part's bytes, raising ``too_much`` as soon as more than ``limit`` arrive."""
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        if len(data) + len(chunk) > limit:
            raise too_much
        data += chunk
    return bytes(data)
