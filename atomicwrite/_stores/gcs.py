"""The GCS strategy (gcsfs): one conditional upload, or a resumable session finalized at commit.

Google Cloud Storage has two calls that make a whole object appear at once, and the strategy
uses each where it fits:

* a small write is one *multipart* upload (``uploadType=multipart``: metadata and bytes in one
  request), which creates the object or fails whole;
* a large write is a *resumable session*: chunks of ``part_size`` bytes (a multiple of 256 KiB,
  as GCS requires of every chunk but the last) go out in order while the caller keeps writing,
  and nothing is visible until the final request, sent only at commit, gives the total size
  (``Content-Range: bytes */TOTAL`` when the tail is empty).  A failure or a discard cancels the
  session (``DELETE`` on its URI): the old object stays.

Preconditions are the store's own: ``ifGenerationMatch=0`` for exclusive creation and
``ifGenerationMatch=<generation>`` for compare-and-swap, on the multipart upload and on the
session's initiation (GCS checks a session's precondition when it starts and again, atomically,
when the final chunk arrives).  The version token of a GCS object is its *generation*, returned
as a string of digits.  Before the final chunk of an exclusive or conditional session, one
metadata read turns an already lost race into a clear error sooner (and covers emulators that
ignore preconditions on sessions); it is not what makes the commit safe.

Integrity: the simple upload declares the payload's CRC32C (or MD5) in its metadata, and the
final request of a session sends ``X-Goog-Hash`` with the whole object's checksum, as Google's
own clients do; GCS refuses an upload whose bytes do not match.  That is the write's own
checksum when it is one of those two (CRC32C by default); a write hashed with another algorithm
computes CRC32C (or MD5 without a compiled CRC32C) as well, for the store to check.

What the store cannot be asked to do here:

* The marker beside a session's target records the session URI, so that [`sweep`][atomicwrite.sweep]
  can cancel the session after its writer died.  No credential is ever written there, but a
  session URI is itself a capability for that one session (until it completes, is cancelled,
  or expires after a week): whoever can read the marker object could send bytes to it.  Keep
  markers where only trusted principals read, as with the objects they sit beside.
* Sweeping cancels only session URIs on the endpoint this file system talks to (the
  ``endpoint_url`` or the GCS default), so a planted marker cannot send our credentials
  elsewhere.
* Zonal ("Rapid") buckets, which take appendable objects over gRPC, are not supported: the
  strategy speaks the JSON API.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import uuid
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from .._errors import AtomicWriteError, UsageError
from .._strategy import WriteOptions
from .base import ObjectStoreBackend, ObjectStoreStrategy, PreconditionFailed, b64

__all__ = ["GCSBackend", "GCSStrategy"]

#: Every chunk of a resumable session but the last is a multiple of this.
CHUNK_QUANTUM = 256 * 1024
CONTENT_TYPE = "application/octet-stream"
# How often a chunk may be answered with no progress before the upload is given up.
_MAX_STALLS = 3


class _Checksum:
    """The checksum GCS validates on upload: CRC32C where google-crc32c has its C code, else MD5."""

    def __init__(self) -> None:
        self._crc: Any = None
        self._md5: Any = None
        try:
            crc32c: Any = importlib.import_module("google_crc32c")
        except ImportError:
            crc32c = None
        if crc32c is not None and getattr(crc32c, "implementation", "") == "c":
            self._crc = crc32c.Checksum()
            self.algorithm = "crc32c"
        else:
            # The pure-Python CRC32C would cost more than the upload; MD5 is validated too.
            self._md5 = hashlib.md5(usedforsecurity=False)
            self.algorithm = "md5"

    def update(self, data: bytes | memoryview) -> None:
        if self._crc is not None:
            self._crc.update(bytes(data) if isinstance(data, memoryview) else data)
        else:
            self._md5.update(data)

    def base64(self) -> str:
        digest: bytes = self._crc.digest() if self._crc is not None else self._md5.digest()
        return b64(digest)


def _status_of(exc: BaseException) -> object:
    return getattr(exc, "code", None)


def _request(fs: Any, method: str, url: str, **kwargs: Any) -> tuple[int, Any, bytes]:
    """One JSON-API request through gcsfs (its session, credentials and retries).

    Returns the status, the response headers and the body; raises gcsfs's errors (FileNotFoundError
    for 404, FileExistsError for 412, HttpError...) for every status of 400 and above but 499.
    """
    from fsspec.asyn import sync

    status, headers, _, contents = sync(fs.loop, fs._request, method, url, **kwargs)
    return int(status), headers, bytes(contents)


def _cancel_session(fs: Any, session: str) -> None:
    """Cancel a resumable session; one that is already gone (404, 410) is not an error."""
    try:
        # GCS answers a cancelled session with 499, which gcsfs does not raise.
        _request(fs, "DELETE", session)
    except FileNotFoundError:
        pass
    except Exception as exc:
        if _status_of(exc) not in (404, 410):
            raise


class GCSBackend(ObjectStoreBackend):
    """GCS JSON-API calls for one object, through gcsfs's authenticated session."""

    #: A resumable session takes its chunks strictly in order.
    parallel_parts = 1

    def __init__(
        self, fs: Any, bucket: str, key: str, *, location: str, part_size: int = ObjectStoreBackend.part_size
    ) -> None:
        self._fs = fs
        self._bucket = bucket
        self._key = key
        self._location = location
        self.part_size = max(CHUNK_QUANTUM, part_size // CHUNK_QUANTUM * CHUNK_QUANTUM)
        self._session: str | None = None
        self._offset = 0  # bytes the session holds
        self._own: _Checksum | None = None
        self._hash_header: str | None = None

    # --- helpers ------------------------------------------------------------------------

    default_checksums = ("crc32c", "md5")

    def _extra_checksum(self) -> _Checksum | None:
        """GCS validates CRC32C and MD5 only: a write hashed with another algorithm computes one
        of those too, so that the store still refuses a corrupted upload."""
        if self.checksum is None or self.checksum in self.default_checksums:
            return None
        if self._own is None:
            self._own = _Checksum()
        return self._own

    def _declared(self, digest: bytes | None) -> tuple[str, str] | None:
        """The algorithm GCS checks the whole object with, and the base64 digest it expects."""
        extra = self._extra_checksum()
        if extra is not None:
            return extra.algorithm, extra.base64()
        if digest is None or self.checksum is None:
            return None
        return self.checksum, b64(digest)

    @property
    def _endpoint(self) -> str:
        return str(self._fs._location).rstrip("/")

    @property
    def _upload_url(self) -> str:
        return f"{self._endpoint}/upload/storage/v1/b/{quote(self._bucket, safe='')}/o"

    def _call(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        with self._refusals():
            return _request(self._fs, method, url, **kwargs)

    def _precondition(self, version: str | None) -> dict[str, Any]:
        return {"ifGenerationMatch": "0" if version is None else version}

    def _refused(self, exc: BaseException, if_match: object | None) -> bool:
        # gcsfs turns every 412 into FileExistsError, whichever precondition failed.
        return isinstance(exc, FileExistsError) or _status_of(exc) == 412

    def _published(self, contents: bytes) -> object:
        """The generation of the object a publishing request created."""
        try:
            generation = json.loads(contents).get("generation")
        except (ValueError, AttributeError):
            generation = None
        # gcsfs caches listings; the object just changed under it.
        self._fs.invalidate_cache(f"{self._bucket}/{self._key}")
        if not generation:
            raise AtomicWriteError(f"{self._location!r}: the store published the object but sent no generation")
        return str(generation)

    def _current_generation(self) -> str | None:
        with self._refusals():
            return current_generation(self._fs, self._bucket, self._key)

    # --- one request ----------------------------------------------------------------------

    def put(self, data: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        extra = self._extra_checksum()
        if extra is not None:
            extra.update(data)
        resource = {"name": self._key}
        declared = self._declared(digest)
        if declared is not None:
            resource["crc32c" if declared[0] == "crc32c" else "md5Hash"] = declared[1]
        metadata = json.dumps(resource)
        boundary = f"atomicwrite-{uuid.uuid4().hex}"
        while boundary.encode() in data:  # pragma: no cover - 2**-122 per try
            boundary = f"atomicwrite-{uuid.uuid4().hex}"
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n".encode(),
                f"--{boundary}\r\nContent-Type: {CONTENT_TYPE}\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        _, _, contents = self._call(
            "POST",
            self._upload_url,
            headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
            data=body,
            uploadType="multipart",
            **self._conditions(exclusive, if_match),
        )
        return self._published(contents)

    # --- a resumable session --------------------------------------------------------------

    def start(self, *, exclusive: bool, if_match: object | None) -> str:
        _, headers, _ = self._call(
            "POST",
            self._upload_url,
            json={"name": self._key},
            headers={"X-Upload-Content-Type": CONTENT_TYPE},
            uploadType="resumable",
            name=self._key,
            **self._conditions(exclusive, if_match),
        )
        location = headers.get("Location")
        if not location:
            raise AtomicWriteError(f"{self._location!r}: the store opened no upload session")
        self._session = str(location)
        return self._session

    def upload_part(self, number: int, data: bytes) -> None:
        extra = self._extra_checksum()
        if extra is not None:
            extra.update(data)
        self._send(data, total=None)

    def complete(self, tail: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        if exclusive or if_match is not None:
            # GCS checks the session's precondition atomically as the final chunk arrives; this
            # look only turns a race already lost into a clear error before publishing.
            current = self._current_generation()
            if (exclusive and current is not None) or (not exclusive and current != str(if_match)):
                raise PreconditionFailed(f"gs://{self._bucket}/{self._key} is at generation {current}")
        extra = self._extra_checksum()
        if extra is not None:
            extra.update(tail)
        declared = self._declared(digest)
        self._hash_header = None if declared is None else f"{declared[0]}={declared[1]}"
        contents = self._send(tail, total=self._offset + len(tail))
        return self._published(contents)

    def _send(self, data: bytes, *, total: int | None) -> bytes:
        """Send ``data`` at the session's offset: an intermediate chunk, or the final one
        (``total`` given).  Resends whatever the store did not keep."""
        session = self._session
        if session is None:
            raise AtomicWriteError(f"{self._location!r}: no upload session")
        view = memoryview(data)
        done = 0
        stalls = 0
        while True:
            first = self._offset + done
            rest = view[done:]
            headers = {"Content-Type": CONTENT_TYPE}
            if total is None:
                headers["Content-Range"] = f"bytes {first}-{first + len(rest) - 1}/*"
            else:
                span = f"{first}-{first + len(rest) - 1}" if len(rest) else "*"
                headers["Content-Range"] = f"bytes {span}/{total}"
                if self._hash_header is not None:
                    headers["X-Goog-Hash"] = self._hash_header
            try:
                status, reply, contents = self._call(
                    "PUT", session, headers=headers, data=data if not done else bytes(rest)
                )
            except FileNotFoundError as exc:
                raise AtomicWriteError(
                    f"{self._location!r}: the upload session is gone (expired or cancelled); nothing was published"
                ) from exc
            if status in (200, 201):
                if total is None:
                    raise AtomicWriteError(f"{self._location!r}: the store finalized the upload before its last chunk")
                self._offset += len(data)
                return contents
            if status != 308:
                raise AtomicWriteError(f"{self._location!r}: unexpected answer {status} to an upload chunk")
            kept = _persisted(reply)
            if total is None and kept == first + len(rest):
                self._offset += len(data)
                return contents
            if kept < self._offset or kept > first + len(rest):
                raise AtomicWriteError(
                    f"{self._location!r}: the store holds {kept} bytes of the upload, expected {first + len(rest)}"
                )
            if kept > first:
                done = kept - self._offset
                stalls = 0
            else:
                stalls += 1
                if stalls >= _MAX_STALLS:
                    raise AtomicWriteError(f"{self._location!r}: the store keeps refusing the chunk at {first}")

    def abort(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        # An abort runs while another error is on its way up: that one matters.  A session that
        # could not be cancelled publishes nothing and expires on its own.
        with contextlib.suppress(Exception):
            _cancel_session(self._fs, session)


def current_generation(fs: Any, bucket: str, key: str) -> str | None:
    """The object's generation now, read from the store (not gcsfs's listing cache); None if
    there is no object.  This is the token ``ifGenerationMatch`` compares against."""
    endpoint = str(fs._location).rstrip("/")
    url = f"{endpoint}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(key, safe='')}"
    try:
        _, _, contents = _request(fs, "GET", url, fields="generation")
    except FileNotFoundError:
        return None
    generation = json.loads(contents).get("generation")
    return None if generation is None else str(generation)


def _persisted(headers: Any) -> int:
    """How many bytes a session holds, from the ``Range: bytes=0-N`` of a 308 answer."""
    value = headers.get("Range") if headers is not None else None
    if not value:
        return 0
    _, _, last = str(value).rpartition("-")
    try:
        return int(last) + 1
    except ValueError:
        return 0


def _is_generation(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and value.isdigit()


class GCSStrategy(ObjectStoreStrategy):
    """``gs://`` (and ``gcs://``) objects."""

    name = "gcs"
    protocol = "gs"

    def backend(self, location: str, options: WriteOptions) -> GCSBackend:
        fs = self.filesystem(options)
        bucket, key, generation = self.split_object(fs, location)
        if generation:
            raise UsageError(f"{location!r} names one generation of an object; write to the object itself")
        if options.if_match is not None and not _is_generation(options.if_match):
            raise UsageError(
                f"if_match={options.if_match!r}: a GCS version is an object generation (digits),"
                " as returned in CommitResult.version"
            )
        # parallel_parts does not apply: a session takes its chunks in order.
        part_size, _ = self.upload_tuning(options)
        return GCSBackend(fs, bucket, key, location=location, part_size=part_size)

    def version(self, path: str, options: WriteOptions) -> object | None:
        """The object's generation (digits), as ``CommitResult.version`` reports it."""
        fs = self.filesystem(options)
        bucket, key, _ = self.split_object(fs, path)
        return current_generation(fs, bucket, key)

    def abort_upload(self, record: dict[str, Any], options: WriteOptions) -> None:
        fs = self.filesystem(options)
        bucket, key, _ = fs.split_path(str(record["target"]))
        session = str(record.get("upload_id", ""))
        if _is_own_session(session, str(fs._location), bucket, key):
            _cancel_session(fs, session)
        # Anything else was not written by this library: send no request (and no credentials)
        # to it.  The marker goes all the same; a real session expires on its own.


def _is_own_session(session: str, endpoint: str, bucket: str, key: str) -> bool:
    """Whether ``session`` is a resumable-session URI for ``bucket/key`` on ``endpoint``."""
    parts = urlsplit(session)
    base = urlsplit(endpoint)
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc) or parts.fragment:
        return False
    expected_path = f"{base.path.rstrip('/')}/upload/storage/v1/b/{quote(bucket, safe='')}/o"
    if parts.path != expected_path:
        return False
    query = parse_qs(parts.query)
    if not query.get("upload_id"):
        return False
    names = query.get("name")
    return names is None or names == [key]
