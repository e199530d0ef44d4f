"""The S3 strategy (s3fs): one conditional PUT, or a multipart upload completed at commit.

``PutObject`` and ``CompleteMultipartUpload`` each make the whole object appear at once, and S3
is strongly consistent, so a reader sees the old object until the commit and the new one after.
Exclusive creation sends ``If-None-Match: *`` and compare-and-swap ``If-Match: <etag>`` on the
publishing request itself: an exists-check before writing would not be exclusive.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from collections.abc import Callable
from typing import Any

from .._errors import UnsupportedTargetError
from .._names import parse_temp_name
from .._strategy import WriteOptions
from .base import MiB, ObjectStoreBackend, ObjectStoreStrategy, PreconditionFailed, b64

__all__ = ["S3Backend", "S3Strategy"]

# S3 accepts parts of 5 MiB to 5 GiB (the last may be smaller) and at most 10,000 of them.
MIN_PART = 5 * MiB
MAX_PARTS = 10_000
# S3's checksums that a multipart upload can carry for the whole object (FULL_OBJECT): S3
# combines the parts' CRCs and compares them with ours at completion.  SHA-256 is only ever
# checked per part (a COMPOSITE checksum of the parts' checksums).
_FULL_OBJECT = ("crc64nvme", "crc32c", "crc32")
# Error codes of an S3-compatible server that does not take a checksum it was sent.  Never a
# checksum *mismatch* (BadDigest, InvalidDigest, XAmzContentChecksumMismatch): that is a
# corrupted upload, and it fails.
_CHECKSUM_REFUSED = ("InvalidArgument", "InvalidRequest", "NotImplemented", "BadRequest", "UnsupportedChecksum")


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


def _checksum_refused(exc: BaseException) -> bool:
    """Whether an error answers a request that carried a checksum with "not supported"."""
    for error in (exc, exc.__cause__):
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", "")) in _CHECKSUM_REFUSED
    return False


class S3Backend(ObjectStoreBackend):
    """S3 calls for one object, through s3fs's botocore client."""

    creates_upload = True
    # botocore computes CRC64NVME (and CRC32C) with awscrt; without it, zlib's CRC32.
    default_checksums = ("crc64nvme", "crc32")

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

    def _field(self) -> str:
        """The request field of this write's checksum: ``ChecksumCRC64NVME``..."""
        assert self.checksum is not None
        return "Checksum" + self.checksum.upper()

    def _object_checksum(self, digest: bytes | None) -> dict[str, Any]:
        """The arguments that have S3 check the whole object against ``digest``."""
        if digest is None or self.checksum is None or self.checksum_refused:
            return {}
        if self.checksum == "md5":
            return {"ContentMD5": b64(digest)}
        # Given the value, botocore sends it rather than hashing the body a second time.
        return {"ChecksumAlgorithm": self.checksum.upper(), self._field(): b64(digest)}

    def _part_checksum(self, data: bytes) -> dict[str, Any]:
        """The arguments that have S3 check one part on arrival."""
        if self.checksum is None or self.checksum_refused:
            return {}
        if self.checksum == "md5":
            return {"ContentMD5": b64(hashlib.md5(data, usedforsecurity=False).digest())}
        return {"ChecksumAlgorithm": self.checksum.upper()}

    def _checksum_call(self, method: str, checksum: dict[str, Any], **kwargs: Any) -> Any:
        """A request that carries a checksum; sent again without it, once, if the server
        refuses checksums (an older S3-compatible server): the write then reports none."""
        try:
            return self._call(method, **checksum, **kwargs)
        except Exception as exc:
            if not checksum or isinstance(exc, PreconditionFailed) or not _checksum_refused(exc):
                raise
        self.checksum_refused = True
        body = kwargs.get("Body")
        if body is not None:
            body.seek(0)  # the refused request read it
        warnings.warn(
            f"s3://{self._bucket}/{self._key}: the server refused the {self.checksum} checksum; the upload"
            " went on without one, and the store validated none (the result's checksum is None)",
            RuntimeWarning,
            stacklevel=2,
        )
        return self._call(method, **kwargs)

    def put(self, data: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        response = self._checksum_call(
            "put_object",
            self._object_checksum(digest),
            if_match=if_match,
            Body=_Body(data),
            **self._conditions(exclusive, if_match),
        )
        return response["ETag"]

    def known_uploads(self) -> list[str]:
        return pending_uploads(self._fs, self._bucket, self._key)

    def start(self, *, exclusive: bool, if_match: object | None) -> str:
        checksum: dict[str, Any] = {}
        if self.checksum in _FULL_OBJECT:
            checksum = {"ChecksumAlgorithm": self.checksum.upper(), "ChecksumType": "FULL_OBJECT"}
        elif self.checksum == "sha256":
            checksum = {"ChecksumAlgorithm": "SHA256"}
        response = self._checksum_call("create_multipart_upload", checksum)
        self._upload_id = str(response["UploadId"])
        return self._upload_id

    def upload_part(self, number: int, data: bytes) -> None:
        if number > MAX_PARTS:
            raise UnsupportedTargetError(
                f"s3://{self._bucket}/{self._key}: more than {MAX_PARTS} parts; raise part_size"
            )
        # S3 checks each part's checksum on arrival, so a corrupted part fails its upload
        # instead of becoming part of the object.
        response = self._call(
            "upload_part", UploadId=self._upload_id, PartNumber=number, Body=_Body(data), **self._part_checksum(data)
        )
        self._parts[number] = {"PartNumber": number, "ETag": response["ETag"]}
        if self.checksum not in (None, "md5") and not self.checksum_refused:
            self._parts[number][self._field()] = response.get(self._field())

    def complete(self, tail: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        if tail or not self._parts:
            self.upload_part(len(self._parts) + 1, tail)
        parts = [{k: v for k, v in self._parts[n].items() if v is not None} for n in sorted(self._parts)]
        if if_match is not None:
            # S3 checks If-Match on the completion itself; this earlier look only turns a lost
            # race into a clear error sooner, and covers servers that ignore the header there.
            head = self._call("head_object", if_match=if_match)
            if head.get("ETag") != if_match:
                raise PreconditionFailed(f"s3://{self._bucket}/{self._key} is at {head.get('ETag')}")
        whole: dict[str, Any] = {}
        if self.checksum in _FULL_OBJECT and digest is not None and not self.checksum_refused:
            # S3 combines the parts' CRCs into the object's and refuses a completion whose CRC
            # differs: the whole object is checked, not only each part.
            whole = {self._field(): b64(digest), "ChecksumType": "FULL_OBJECT"}
        response = self._call(
            "complete_multipart_upload",
            if_match=if_match,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
            **whole,
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
