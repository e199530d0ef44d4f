"""The Azure Blob strategy: one conditional ``Put Blob``, or staged blocks published by ``Put Block List``.

adlfs cannot defer a commit (it ignores ``autocommit=False``, and a failed ``fs.transaction``
still publishes), so the writes go through azure-storage-blob's ``BlobClient``, built from the
same settings as the adlfs file system, which still serves the markers, listings and reads:

* A small write is one ``Put Blob``.
* A large one stages each part as a block (``Put Block``, in parallel, each with its Content-MD5
  so the service checks it on arrival); staged blocks are invisible.  The commit is one
  ``Put Block List`` naming this write's blocks in order, which makes the whole blob appear at
  once.  Block ids are ``aw`` + a random write id + the part number, all of one length (Azure
  wants that), so concurrent writers to one blob never mix their blocks.
* Exclusive creation sends ``If-None-Match: *`` on the publishing request, compare-and-swap
  ``If-Match: <etag>``; the version token is the blob's ETag.  Azure refuses with 412, or 409
  ``BlobAlreadyExists``.  A refusal can answer the SDK's retry of a publishing request whose
  first attempt did publish (its response lost): before reporting one, the commit checks whether
  the blob's committed blocks are this write's, and a retried Put Blob whether the blob's stored
  MD5 is its own.

Azure has no call that drops staged blocks.  They are dropped by the blob's next commit (by
anyone: a ``Put Block List`` keeps only the blocks it names), and by the service 7 days after the
last block was staged.  So an aborted write (and :func:`atomicwrite.sweep`, for a killed writer)
does what can be done safely:

* if the blob was never committed and every staged block on it is this write's, it deletes the
  blob, which removes the blocks; the delete carries ``If-Unmodified-Since: 2000-01-01``, so it
  cannot remove a blob that another writer committed in the meantime;
* otherwise (the blob exists, or another writer has blocks staged on it) it leaves the blocks,
  invisible, to the next commit or to the 7-day expiry.

A commit drops every block that it does not name, a concurrent writer's included: of two
unconditional writers to one blob, the second to commit fails (nothing of it is published) when
the first committed while its blocks were staged.  Azure allows 50,000 committed blocks per blob:
raise ``part_size`` (storage option) for objects over 50,000 parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import re
import secrets
import threading
import weakref
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .._errors import AtomicWriteError, UnsupportedTargetError
from .._strategy import WriteOptions, split_protocol
from .base import MiB, ObjectStoreBackend, ObjectStoreStrategy, PreconditionFailed

if TYPE_CHECKING:
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobClient, BlobServiceClient

__all__ = ["AzureBackend", "AzureStrategy"]

# Blocks of any size up to 4000 MiB; 50,000 committed blocks per blob.  The floor only keeps a
# misconfigured part_size from running into the block limit after a few GiB.
MIN_PART = 1 * MiB
MAX_PART = 4000 * MiB
MAX_BLOCKS = 50_000

# "aw" + 16 hex digits of write id + 6 digits of part number: 24 bytes, 32 in base64 on the wire.
_BLOCK_ID = re.compile(r"aw([0-9a-f]{16})(\d{6})")
# The condition of the delete that drops a never-committed blob: any committed blob was modified
# after this date, so the delete cannot remove one.
_LONG_AGO = datetime(2000, 1, 1, tzinfo=timezone.utc)


def block_id(write_id: str, number: int) -> str:
    """The id of part ``number`` of a write (the SDK base64-encodes it)."""
    return f"aw{write_id}{number:06d}"


def block_owner(block: str) -> str | None:
    """The write id in one of this library's block ids, or None for someone else's block."""
    match = _BLOCK_ID.fullmatch(block)
    return match.group(1) if match else None


def _error_code(exc: BaseException) -> str:
    code: Any = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


class _SyncTokenCredential:
    """A synchronous face for an asynchronous credential given to adlfs (run on adlfs's loop)."""

    def __init__(self, credential: Any, loop: Any) -> None:
        self._credential = credential
        self._loop = loop

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from fsspec.asyn import sync

        return sync(self._loop, self._credential.get_token, *scopes, **kwargs)


_CLIENTS: weakref.WeakKeyDictionary[Any, BlobServiceClient] = weakref.WeakKeyDictionary()
_CLIENTS_LOCK = threading.Lock()


def service_client(fs: Any) -> BlobServiceClient:
    """A synchronous BlobServiceClient with the adlfs file system's account and credentials.

    Mirrors adlfs's ``do_connect``: a connection string first; else the account URL (from
    ``account_name``, or ``account_host``) with the credential (adlfs's synchronous twin of one it
    made itself, or the one given), the account key, a SAS token, or nothing (anonymous).
    One client per file system, shared by its writes (it is thread-safe).
    """
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(fs)
        if client is None:
            client = _CLIENTS[fs] = _make_client(fs)
        return client


def _make_client(fs: Any) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient

    # Every small write must be one Put Blob, whatever part_size says (Put Blob takes 5000 MiB).
    settings: dict[str, Any] = {"max_single_put_size": MAX_PART}
    connection_string = getattr(fs, "connection_string", None)
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string, **settings)
    account_url = getattr(fs, "account_url", None)
    if not account_url:
        raise UnsupportedTargetError("Azure storage_options need a connection_string or an account_name")
    credential: Any = getattr(fs, "sync_credential", None) or getattr(fs, "credential", None)
    if credential is not None and inspect.iscoroutinefunction(getattr(credential, "get_token", None)):
        credential = _SyncTokenCredential(credential, fs.loop)
    if credential is None:
        credential = getattr(fs, "account_key", None)
    sas_token = getattr(fs, "sas_token", None)
    if credential is None and sas_token:
        account_url += sas_token if sas_token.startswith("?") else "?" + sas_token
    return BlobServiceClient(account_url, credential=credential, **settings)


class AzureBackend(ObjectStoreBackend):
    """Azure Blob calls for one blob, through azure-storage-blob."""

    def __init__(self, fs: Any, blob: BlobClient, url: str, *, part_size: int, parallel_parts: int) -> None:
        self._fs = fs
        self._blob = blob
        self._url = url
        self.part_size = min(max(part_size, MIN_PART), MAX_PART)
        self.parallel_parts = max(1, parallel_parts)
        self._write_id: str | None = None
        self._staged: set[int] = set()

    def _precondition(self, version: str | None) -> dict[str, Any]:
        from azure.core import MatchConditions

        if version is None:
            return {"match_condition": MatchConditions.IfMissing}  # If-None-Match: *
        return {"etag": version, "match_condition": MatchConditions.IfNotModified}  # If-Match

    def _refused(self, exc: BaseException, if_match: object | None) -> bool:
        status = getattr(exc, "status_code", None)
        code = _error_code(exc)
        if status == 412 or code in ("ConditionNotMet", "BlobAlreadyExists"):
            return True
        # If-Match on a blob that is gone: the version asked for is not there any more.
        return if_match is not None and status == 404 and code == "BlobNotFound"

    def _refusal(self, exc: HttpResponseError) -> PreconditionFailed:
        return PreconditionFailed(f"{self._url}: {_error_code(exc) or exc.status_code}")

    def _published(self) -> None:
        self._fs.invalidate_cache(self._fs._parent(self._url))

    def put(self, data: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob import ContentSettings

        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        retries: list[object] = []
        try:
            response = self._blob.upload_blob(
                data,
                length=len(data),
                overwrite=True,
                # Content-MD5, checked by the service; and stored with the blob, for _own_put.
                validate_content=True,
                content_settings=ContentSettings(content_md5=bytearray(md5)),
                retry_hook=lambda **_: retries.append(None),
                **self._conditions(exclusive, if_match),
            )
        except HttpResponseError as exc:
            if not self._refused(exc, if_match):
                raise
            # A refusal that answers a retry may follow an attempt that did publish but whose
            # response was lost: then the blob holds exactly our bytes (its stored MD5 says so).
            if retries:
                etag = self._own_put(md5)
                if etag is not None:
                    self._published()
                    return etag
            raise self._refusal(exc) from exc
        self._published()
        return response["etag"]

    def _own_put(self, md5: bytes) -> object | None:
        from azure.core.exceptions import HttpResponseError

        try:
            properties = self._blob.get_blob_properties()
        except HttpResponseError:
            return None
        stored = properties.content_settings.content_md5
        return properties.etag if stored and bytes(stored) == md5 else None

    def start(self, *, exclusive: bool, if_match: object | None) -> str:
        # Nothing to ask the service: a block list exists as soon as its first block is staged.
        self._write_id = secrets.token_hex(8)
        return self._write_id

    def upload_part(self, number: int, data: bytes) -> None:
        if number > MAX_BLOCKS:
            raise UnsupportedTargetError(f"{self._url}: more than {MAX_BLOCKS} blocks; raise part_size")
        assert self._write_id is not None
        # validate_content: Content-MD5 on the request, so the service refuses a corrupted block.
        self._blob.stage_block(block_id(self._write_id, number), data, length=len(data), validate_content=True)
        self._staged.add(number)

    def complete(self, tail: bytes, *, exclusive: bool, if_match: object | None, digest: bytes | None) -> object:
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob import BlobBlock

        if tail or not self._staged:
            self.upload_part(len(self._staged) + 1, tail)
        assert self._write_id is not None
        ids = [block_id(self._write_id, number) for number in sorted(self._staged)]
        try:
            response = self._blob.commit_block_list(
                [BlobBlock(block_id=i) for i in ids], **self._conditions(exclusive, if_match)
            )
        except HttpResponseError as exc:
            # A refusal, or blocks gone: first make sure the blob is not ours already (a retried
            # commit whose first attempt did publish).  Our block ids name this write alone.
            etag = self._own_commit(ids)
            if etag is not None:
                self._published()
                return etag
            if self._refused(exc, if_match):
                raise self._refusal(exc) from exc
            if _error_code(exc) == "InvalidBlockList":
                # Another writer's commit dropped our blocks.  If it also broke our precondition,
                # that is the error to report; nothing of this write was published either way.
                if (exclusive or if_match is not None) and self._precondition_broken(exclusive, if_match):
                    raise self._refusal(exc) from exc
                raise AtomicWriteError(
                    f"cannot write {self._url!r}: another writer committed it while this write's blocks"
                    " were staged, and Azure dropped them; nothing of this write was published"
                ) from exc
            raise
        self._published()
        return response["etag"]

    def _own_commit(self, ids: list[str]) -> object | None:
        from azure.core.exceptions import HttpResponseError

        try:
            properties = self._blob.get_blob_properties()
            committed, _ = self._blob.get_block_list("committed")
        except HttpResponseError:
            return None
        return properties.etag if [block.id for block in committed] == ids else None

    def _precondition_broken(self, exclusive: bool, if_match: object | None) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            etag = self._blob.get_blob_properties().etag
        except ResourceNotFoundError:
            return if_match is not None
        return exclusive or etag != if_match

    def abort(self) -> None:
        if self._write_id is not None:
            drop_staged_blocks(self._blob, self._write_id)


def drop_staged_blocks(blob: BlobClient, write_id: str) -> bool:
    """Drop the blocks a write staged, where Azure allows it; whether they were dropped.

    Only a blob that was never committed can be deleted with its blocks, and only when every
    block staged on it is this write's (another writer's upload must not be broken).  The delete
    is conditional (If-Unmodified-Since: 2000), so a blob committed since the look stays.
    Best effort: whatever is left expires within 7 days.
    """
    from azure.core.exceptions import AzureError

    try:
        _, staged = blob.get_block_list("uncommitted")
        if not staged or any(block_owner(block.id) != write_id for block in staged):
            return False
        blob.delete_blob(if_unmodified_since=_LONG_AGO)
    except AzureError:
        return False
    return True


class AzureStrategy(ObjectStoreStrategy):
    """``az://``, ``abfs://`` and ``abfss://`` blobs (adlfs for reading and listing)."""

    name = "azure"
    protocol = "az"
    bucket_noun = "container"

    def _blob(self, fs: Any, location: str) -> BlobClient:
        container, blob, _ = self.split_object(fs, location)
        return service_client(fs).get_blob_client(container, blob)

    def backend(self, location: str, options: WriteOptions) -> AzureBackend:
        fs = self.filesystem(options)
        part_size, parallel_parts = self.upload_tuning(options)
        return AzureBackend(fs, self._blob(fs, location), location, part_size=part_size, parallel_parts=parallel_parts)

    def version(self, path: str, options: WriteOptions) -> object | None:
        """The blob's ETag, as ``CommitResult.version`` reports it: what ``If-Match`` compares."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            properties = self._blob(self.filesystem(options), path).get_blob_properties()
        except ResourceNotFoundError:
            return None
        etag: object = properties.etag
        return etag

    def abort_upload(self, record: dict[str, Any], options: WriteOptions) -> None:
        fs = self.filesystem(options)
        with contextlib.suppress(UnsupportedTargetError):
            drop_staged_blocks(self._blob(fs, str(record["target"])), str(record["upload_id"]))

    def sweep(self, location: str, older_than: float, dry_run: bool, options: WriteOptions) -> list[str]:
        # Report the leftovers under the scheme the caller used (az://, abfs:// or abfss://).
        scheme = split_protocol(location)[0] or self.protocol
        found = super().sweep(location, older_than, dry_run, options)
        return [f"{scheme}://{url.partition('://')[2]}" for url in found]
