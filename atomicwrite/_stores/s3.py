"""The S3 strategy (s3fs): one conditional PUT, or a multipart upload completed at commit.

``PutObject`` and ``CompleteMultipartUpload`` each make the whole object appear at once, and S3
is strongly consistent, so a reader sees the old object until the commit and the new one after.
Exclusive creation sends ``If-None-Match: *`` and compare-and-swap ``If-Match: <etag>`` on the
publishing request itself: an exists-check before writing would not be exclusive.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from typing import Any

from .._errors import UnsupportedTargetError
from .._names import parse_temp_name
from .._strategy import WriteOptions
from .base import MiB, ObjectStoreBackend, ObjectStoreStrategy, PreconditionFailed

__all__ = ["S3Backend", "S3Strategy"]

# S3 accepts parts of 5 MiB to 5 GiB (the last may be smaller) and at most 10,000 of them.
MIN_PART = 5 * MiB
MAX_PARTS = 10_000


class _Body(io.BytesIO):
    """A request body that reads ``data`` in place.

    botocore turns a bytes body into ``BytesIO(data)``, which shares the bytes until someone asks
    for a writable buffer; aiohttp does (``getbuffer()``, to size the payload), and BytesIO then
    copies the whole part.  With up to ``parallel_parts`` parts in flight that doubled their
    memory.  Here ``getbuffer()`` is a read-only view of ``data``: a caller that tried to write
    through it would fail, never corrupt the part.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._data = data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)


def _precondition_failed(exc: BaseException) -> bool:
    """Whether an s3fs error is S3 refusing a conditional request (412, or 409 on a race)."""
    if isinstance(exc, FileExistsError):
        return True  # s3fs's translation of a failed If-None-Match
    cause = exc.__cause__
    response = getattr(cause, "response", None) or getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status == 412


def _no_such_key(exc: BaseException) -> bool:
    """Whether an s3fs error is S3 saying the key does not exist (not a missing upload)."""
    for error in (exc, exc.__cause__):
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            return code in ("NoSuchKey", "404", "Not Found")
    return "NoSuchUpload" not in str(exc)


class S3Backend(ObjectStoreBackend):
    """S3 calls for one object, through s3fs's botocore client."""

    creates_upload = True

    def __init__(self, fs: Any, bucket: str, key: str, *, part_size: int, parallel_parts: int) -> None:
        self._fs = fs
        self._bucket = bucket
        self._key = key
        self.part_size = max(part_size, MIN_PART)
        self.parallel_parts = max(1, parallel_parts)
        self._upload_id: str | None = None
        self._parts: dict[int, dict[str, Any]] = {}

    def _call(self, method: str, *, if_match: object | None = None, **kwargs: Any) -> Any:
        with self._refusals(if_match):
            return self._fs.call_s3(method, Bucket=self._bucket, Key=self._key, **kwargs)

    def _precondition(self, version: str | None) -> dict[str, Any]:
        return {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}

    def _refused(self, exc: BaseException, if_match: object | None) -> bool:
        # An If-Match on a key that no longer exists lost a race too: S3 answers it with 404 NoSuchKey.
        gone = if_match is not None and isinstance(exc, FileNotFoundError) and _no_such_key(exc)
        return gone or _precondition_failed(exc)

    def put(self, data: bytes, *, exclusive: bool, if_match: object | None) -> object:
        response = self._call(
            "put_object",
            if_match=if_match,
            Body=_Body(data),
            ChecksumAlgorithm="SHA256",
            **self._conditions(exclusive, if_match),
        )
        return response["ETag"]

    def known_uploads(self) -> list[str]:
        return pending_uploads(self._fs, self._bucket, self._key)

    def start(self, *, exclusive: bool, if_match: object | None) -> str:
        response = self._call("create_multipart_upload", ChecksumAlgorithm="SHA256")
        self._upload_id = str(response["UploadId"])
        return self._upload_id

    def upload_part(self, number: int, data: bytes) -> None:
        if number > MAX_PARTS:
            raise UnsupportedTargetError(
                f"s3://{self._bucket}/{self._key}: more than {MAX_PARTS} parts; raise part_size"
            )
        # ChecksumAlgorithm: S3 checks each part's SHA-256 on arrival, so a corrupted part fails
        # its upload instead of becoming part of the object.
        response = self._call(
            "upload_part", UploadId=self._upload_id, PartNumber=number, Body=_Body(data), ChecksumAlgorithm="SHA256"
        )
        self._parts[number] = {
            "PartNumber": number,
            "ETag": response["ETag"],
            "ChecksumSHA256": response.get("ChecksumSHA256"),
        }

    def complete(self, tail: bytes, *, exclusive: bool, if_match: object | None) -> object:
        if tail or not self._parts:
            self.upload_part(len(self._parts) + 1, tail)
        parts = [{k: v for k, v in self._parts[n].items() if v is not None} for n in sorted(self._parts)]
        if if_match is not None:
            # S3 checks If-Match on the completion itself; this earlier look only turns a lost
            # race into a clear error sooner, and covers servers that ignore the header there.
            head = self._call("head_object", if_match=if_match)
            if head.get("ETag") != if_match:
                raise PreconditionFailed(f"s3://{self._bucket}/{self._key} is at {head.get('ETag')}")
        response = self._call(
            "complete_multipart_upload",
            if_match=if_match,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
            **self._conditions(exclusive, if_match),
        )
        return response["ETag"]

    def abort(self) -> None:
        if self._upload_id is not None:
            abort_upload(self._fs, self._bucket, self._key, self._upload_id)


def pending_uploads(fs: Any, bucket: str, key: str) -> list[str]:
    """The ids of the multipart uploads pending for exactly ``key``."""
    found: list[str] = []
    markers: dict[str, str] = {}
    while True:
        response = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key, **markers)
        found += [str(upload["UploadId"]) for upload in response.get("Uploads", []) if upload.get("Key") == key]
        if not response.get("IsTruncated"):
            return found
        markers = {"KeyMarker": response["NextKeyMarker"], "UploadIdMarker": response["NextUploadIdMarker"]}


def abort_upload(fs: Any, bucket: str, key: str, upload_id: str) -> None:
    """Abort one multipart upload; an upload that is already gone is not an error."""
    with contextlib.suppress(FileNotFoundError):
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)


class S3Strategy(ObjectStoreStrategy):
    """``s3://`` (and ``s3a://``) objects."""

    name = "s3"
    protocol = "s3"

    def version(self, path: str, options: WriteOptions) -> object | None:
        try:
            info: dict[str, Any] = self.filesystem(options).info(path, refresh=True)
        except FileNotFoundError:
            return None
        return info.get("ETag")

    def backend(self, location: str, options: WriteOptions) -> S3Backend:
        fs = self.filesystem(options)
        bucket, key, _ = self.split_object(fs, location)
        part_size, parallel_parts = self.upload_tuning(options)
        return S3Backend(fs, bucket, key, part_size=part_size, parallel_parts=parallel_parts)

    def abort_upload(self, record: dict[str, Any], options: WriteOptions) -> None:
        fs = self.filesystem(options)
        bucket, key, _ = fs.split_path(str(record["target"]))
        abort_upload(fs, bucket, key, str(record["upload_id"]))

    def abort_unnamed_upload(
        self, record: dict[str, Any], options: WriteOptions, may_be_live: Callable[[str, dict[str, Any]], bool]
    ) -> bool:
        """The writer died between CreateMultipartUpload and storing the upload's id: abort the
        uploads of its target that were not pending before it started (its marker lists those)
        and that no other marker names."""
        fs = self.filesystem(options)
        bucket, key, _ = fs.split_path(str(record["target"]))
        # Uploads first, markers second: every writer stores its marker before it creates its
        # upload, so the writer of any upload listed here has its marker in the listing below.
        candidates = set(pending_uploads(fs, bucket, key)) - set(record.get("known_uploads") or [])
        if not candidates:
            return True
        try:
            listing: list[dict[str, Any]] = fs.ls(f"{bucket}/{key}".rpartition("/")[0], detail=True, refresh=True)
        except FileNotFoundError:
            listing = []
        for info in listing:
            path = str(info["name"])
            if parse_temp_name(path.rpartition("/")[2]) is None:
                continue
            try:
                other: dict[str, Any] = json.loads(fs.cat_file(path))
            except (FileNotFoundError, ValueError):
                continue
            if fs.split_path(str(other.get("target", "")))[:2] != (bucket, key):
                continue
            if other.get("upload_id") is not None:
                candidates.discard(str(other["upload_id"]))
            elif may_be_live(path, info):
                return False  # a live writer may be about to name one of them: next sweep
        for upload_id in candidates:
            abort_upload(fs, bucket, key, upload_id)
        return True
