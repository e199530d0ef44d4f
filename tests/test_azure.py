"""Azure Blob Storage through adlfs and azure-storage-blob, against Azurite on loopback.

What Azurite 3.35 does differently from Azure, and how the tests deal with it:

* It ignores ``If-None-Match: *`` on Delete Blob (Azure's own docs say it applies to every write;
  Azurite's source says Azure itself ignores it for Set Blob Properties).  So the delete that drops
  a never-committed blob's blocks is guarded by ``If-Unmodified-Since`` instead, which Azurite
  checks: :meth:`TestAzure.test_abort_never_deletes_a_committed_blob`.
* ``Put Blob`` keeps the blob's uncommitted blocks (Azure drops them); only ``Put Block List``
  drops them here, so the tests that need the drop commit with blocks.
* It accepts block ids of different lengths on one blob (Azure refuses); ours have one length
  anyway: :func:`test_block_ids_have_one_length`.

Azure itself cannot drop blocks staged on a blob that exists: an aborted write's blocks stay,
invisible, until the blob's next commit or for 7 days.  ``pending_uploads`` therefore counts
what the library can still act on: blocks on a blob that was never committed, and blocks of a
write whose marker is still there.  The raw staged blocks are checked by the Azure tests below.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from atomicwrite import AtomicWriteError, ConflictError, TargetExistsError, atomic_open, atomic_save, sweep
from atomicwrite._stores.azure import block_owner
from tests._azurite import ACCOUNT_KEY, azure_options, azurite_endpoint
from tests.objectstore_contract import MiB, ObjectStoreContract, StoreHandle, markers, unique_prefix, write_in_chunks

__all__ = ["azurite_endpoint"]

CONTAINER = "atomicwrite-tests"
PART = MiB


@pytest.fixture(scope="module")
def container(azurite_endpoint: str) -> Any:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azure_options(azurite_endpoint)["connection_string"])
    client = service.get_container_client(CONTAINER)
    with contextlib.suppress(ResourceExistsError):
        client.create_container()
    return client


@pytest.fixture(scope="module")
def azure(container: Any, azurite_endpoint: str) -> Any:
    import fsspec

    return fsspec.filesystem("az", **azure_options(azurite_endpoint))


def key_of(store: StoreHandle, name: str) -> str:
    return store.url(name).removeprefix(f"az://{CONTAINER}/")


def staged(container: Any, store: StoreHandle) -> dict[str, list[str]]:
    """Blob name -> the ids of the blocks staged (uncommitted) on it, for every blob under the prefix."""
    from azure.core.exceptions import ResourceNotFoundError

    found: dict[str, list[str]] = {}
    start = key_of(store, "")
    for item in container.list_blobs(name_starts_with=start, include=["uncommittedblobs"]):
        with contextlib.suppress(ResourceNotFoundError):
            _, blocks = container.get_blob_client(item.name).get_block_list("uncommitted")
            if blocks:
                found[item.name.removeprefix(start)] = sorted(block.id for block in blocks)
    return found


@pytest.fixture
def store(azure: Any, container: Any, azurite_endpoint: str) -> StoreHandle:
    handle = StoreHandle(
        strategy="azure",
        prefix=unique_prefix(f"az://{CONTAINER}"),
        options={**azure_options(azurite_endpoint), "part_size": PART, "parallel_parts": 3},
        fs=azure,
        multipart_size=3 * PART + 4321,
        pending_uploads=list,
        extra={"secret": ACCOUNT_KEY},
    )

    def pending() -> list[str]:
        """Writes with a marker (sweep's to finish), and writes with blocks on a never-committed blob.

        Blocks that a finished write left on a committed blob are not counted: nothing but the
        blob's next commit (or Azure, after 7 days) can drop them.
        """
        found = set()
        for name in markers(handle):
            with contextlib.suppress(FileNotFoundError, ValueError):
                found.add(json.loads(azure.cat_file(handle.url(name)))["upload_id"])
        for name, blocks in staged(container, handle).items():
            if not container.get_blob_client(key_of(handle, name)).exists():
                found.update(block_owner(block) or f"foreign:{block}" for block in blocks)
        return sorted(found)

    handle.pending_uploads = pending
    return handle


class Requests:
    """The HTTP requests azure-storage-blob sends (method, blob path, query, headers, status)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def to(self, store: StoreHandle, name: str) -> list[dict[str, Any]]:
        path = "/" + key_of(store, name)
        return [request for request in self.seen if request["path"].endswith(path)]


@pytest.fixture
def requests_sent(monkeypatch: pytest.MonkeyPatch) -> Requests:
    from urllib.parse import parse_qs, unquote, urlsplit

    from azure.core.pipeline.transport import RequestsTransport

    recorder = Requests()
    original = RequestsTransport.send

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        response = original(self, request, **kwargs)
        parts = urlsplit(request.url)
        recorder.seen.append(
            {
                "method": request.method,
                "path": unquote(parts.path),
                "comp": parse_qs(parts.query).get("comp", [None])[0],
                "headers": dict(request.headers),
                "status": response.status_code,
            }
        )
        return response

    monkeypatch.setattr(RequestsTransport, "send", send)
    return recorder


class TestAzure(ObjectStoreContract):
    def test_blocks_are_staged_while_writing(self, store: StoreHandle, container: Any) -> None:
        """Full parts leave as blocks as soon as they are full; none is visible before the commit."""
        file = atomic_open(store.url("stream.bin"), "wb", storage_options=store.options)
        write_in_chunks(file, b"p" * (2 * PART + 100), chunk=PART // 4)
        file.flush()
        # Two parts are full; give the upload threads a moment to stage them.
        for _ in range(400):
            blocks = staged(container, store)
            if len(blocks.get("stream.bin", [])) == 2:
                break
            time.sleep(0.05)
        assert list(blocks) == ["stream.bin"]
        assert len(blocks["stream.bin"]) == 2
        assert store.read("stream.bin") is None
        assert store.names() == markers(store)  # only the marker is visible
        file.commit()
        assert store.read("stream.bin") == b"p" * (2 * PART + 100)
        assert staged(container, store) == {}
        committed, _ = container.get_blob_client(key_of(store, "stream.bin")).get_block_list("committed")
        assert [block.size for block in committed] == [PART, PART, 100]

    def test_requests_carry_conditions_and_checksums(self, store: StoreHandle, requests_sent: Requests) -> None:
        """What goes on the wire: If-None-Match / If-Match on the publishing request, MD5 per block."""
        big = b"m" * store.multipart_size
        atomic_save(b"s", store.url("small.bin"), "bytes", storage_options=store.options, exclusive=True)
        first = atomic_save(big, store.url("big.bin"), "bytes", storage_options=store.options, exclusive=True)
        atomic_save(big, store.url("big.bin"), "bytes", storage_options=store.options, if_match=first.version)
        atomic_save(b"t", store.url("plain.bin"), "bytes", storage_options=store.options)

        (put,) = requests_sent.to(store, "small.bin")
        assert (put["method"], put["comp"], put["headers"].get("If-None-Match")) == ("PUT", None, "*")
        assert put["headers"].get("Content-MD5")

        big_requests = requests_sent.to(store, "big.bin")
        blocks = [r for r in big_requests if r["comp"] == "block"]
        commits = [r for r in big_requests if r["comp"] == "blocklist"]
        assert len(blocks) == 2 * 4  # three full parts and the tail, twice
        assert all(r["headers"].get("Content-MD5") for r in blocks)
        assert all("If-None-Match" not in r["headers"] and "If-Match" not in r["headers"] for r in blocks)
        assert [(r["headers"].get("If-None-Match"), r["headers"].get("If-Match")) for r in commits] == [
            ("*", None),
            (None, first.version),
        ]
        (plain,) = requests_sent.to(store, "plain.bin")
        assert "If-None-Match" not in plain["headers"]
        assert "If-Match" not in plain["headers"]

    def test_abort_drops_the_blocks_of_a_new_blob(
        self, store: StoreHandle, container: Any, requests_sent: Requests
    ) -> None:
        with pytest.raises(RuntimeError), atomic_open(store.url("new.bin"), "wb", storage_options=store.options) as f:
            write_in_chunks(f, b"n" * store.multipart_size)
            raise RuntimeError("serializer failed")
        assert staged(container, store) == {}
        (delete,) = [r for r in requests_sent.to(store, "new.bin") if r["method"] == "DELETE"]
        assert delete["headers"].get("If-Unmodified-Since") == "Sat, 01 Jan 2000 00:00:00 GMT"
        assert delete["status"] == 202

    def test_abort_never_deletes_a_committed_blob(
        self, store: StoreHandle, container: Any, requests_sent: Requests
    ) -> None:
        """Blocks on a blob that exists stay (invisible) until the blob's next commit drops them."""
        atomic_save(b"old", store.url("keep.bin"), "bytes", storage_options=store.options)
        with pytest.raises(RuntimeError), atomic_open(store.url("keep.bin"), "wb", storage_options=store.options) as f:
            write_in_chunks(f, b"k" * store.multipart_size)
            raise RuntimeError("serializer failed")
        assert store.read("keep.bin") == b"old"
        # The guarded delete was tried and refused: the blob is committed.
        (delete,) = [r for r in requests_sent.to(store, "keep.bin") if r["method"] == "DELETE"]
        assert delete["status"] == 412
        # The full parts that were staged before the abort (those not yet started were cancelled).
        leftover = staged(container, store)
        assert list(leftover) == ["keep.bin"]
        assert 1 <= len(leftover["keep.bin"]) <= 3
        assert len({block_owner(block) for block in leftover["keep.bin"]}) == 1
        assert store.pending_uploads() == []  # nothing the library could still do
        # The next commit of the blob drops them.
        atomic_save(b"N" * store.multipart_size, store.url("keep.bin"), "bytes", storage_options=store.options)
        assert staged(container, store) == {}

    def test_concurrent_commit_fails_the_other_writer_cleanly(self, store: StoreHandle, container: Any) -> None:
        """A commit drops every block it does not name: a writer whose blocks went fails, publishing nothing."""
        atomic_save(b"v1", store.url("c.bin"), "bytes", storage_options=store.options)
        slow = atomic_open(store.url("c.bin"), "wb", storage_options=store.options)
        write_in_chunks(slow, b"a" * store.multipart_size)
        slow.flush()
        winner = b"b" * store.multipart_size
        atomic_save(winner, store.url("c.bin"), "bytes", storage_options=store.options)
        with pytest.raises(AtomicWriteError, match="another writer committed it"):
            slow.commit()
        assert store.read("c.bin") == winner
        # Its tail, staged after the other commit, waits (invisible) for the blob's next commit.
        assert [len(blocks) for blocks in staged(container, store).values()] == [1]
        assert store.pending_uploads() == []
        assert store.names() == ["c.bin"]

    def test_concurrent_commit_against_compare_and_swap_is_a_conflict(self, store: StoreHandle) -> None:
        first = atomic_save(b"v1", store.url("cas.bin"), "bytes", storage_options=store.options)
        slow = atomic_open(store.url("cas.bin"), "wb", storage_options=store.options, if_match=first.version)
        write_in_chunks(slow, b"a" * store.multipart_size)
        slow.flush()
        atomic_save(b"b" * store.multipart_size, store.url("cas.bin"), "bytes", storage_options=store.options)
        with pytest.raises(ConflictError):
            slow.commit()
        assert store.read("cas.bin") == b"b" * store.multipart_size

    def test_lost_commit_response_is_recognised(self, store: StoreHandle, monkeypatch: pytest.MonkeyPatch) -> None:
        """A retried commit refused because its first attempt did publish: the write succeeded."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobClient

        original = BlobClient.commit_block_list

        def commit_then_lose_response(self: Any, *args: Any, **kwargs: Any) -> Any:
            original(self, *args, **kwargs)
            error = ResourceExistsError(message="The specified blob already exists.")
            error.status_code, error.error_code = 409, "BlobAlreadyExists"
            raise error

        monkeypatch.setattr(BlobClient, "commit_block_list", commit_then_lose_response)
        data = os.urandom(store.multipart_size)
        result = atomic_save(data, store.url("r.bin"), "bytes", storage_options=store.options, exclusive=True)
        assert store.read("r.bin") == data
        assert result.version == store.fs.info(store.url("r.bin"))["etag"]
        # Someone else's blob is not mistaken for ours.
        with pytest.raises(TargetExistsError):
            atomic_save(data, store.url("r.bin"), "bytes", storage_options=store.options, exclusive=True)

    def test_lost_put_response_is_recognised(self, store: StoreHandle, monkeypatch: pytest.MonkeyPatch) -> None:
        """A retried Put Blob refused because its first attempt did publish: the write succeeded."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobClient

        original = BlobClient.upload_blob

        def put_then_retry(self: Any, *args: Any, **kwargs: Any) -> Any:
            original(self, *args, **kwargs)
            kwargs["retry_hook"](retry_count=0, location_mode="primary")
            error = ResourceExistsError(message="The specified blob already exists.")
            error.status_code, error.error_code = 409, "BlobAlreadyExists"
            raise error

        atomic_save(b"theirs", store.url("p.bin"), "bytes", storage_options=store.options)
        monkeypatch.setattr(BlobClient, "upload_blob", put_then_retry)
        with pytest.raises(TargetExistsError):  # its content is not ours
            atomic_save(b"mine", store.url("p.bin"), "bytes", storage_options=store.options, exclusive=True)
        assert store.read("p.bin") == b"theirs"
        result = atomic_save(b"ours", store.url("q.bin"), "bytes", storage_options=store.options, exclusive=True)
        assert store.read("q.bin") == b"ours"
        assert result.version == store.fs.info(store.url("q.bin"))["etag"]

    def test_killed_writer_of_a_new_blob_is_swept_completely(self, store: StoreHandle, container: Any) -> None:
        """SIGKILL mid-upload to a blob that never existed: sweep deletes its staged blocks too.

        Written through an abfs:// URL, which sweep reports under the same scheme.
        """
        url = store.url("fresh.bin").replace("az://", "abfs://", 1)
        code = (
            "import json, sys\n"
            "from atomicwrite import atomic_open\n"
            "f = atomic_open(sys.argv[1], 'wb', storage_options=json.loads(sys.argv[2]))\n"
            f"f.write(b'f' * {store.multipart_size})\n"
            "f.flush()\n"
            "print('uploading', flush=True)\n"
            "sys.stdin.read()\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, url, json.dumps(store.options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        try:
            assert proc.stdout.readline().strip() == "uploading"
            for _ in range(400):  # let its upload threads stage the full parts
                if len(staged(container, store).get("fresh.bin", [])) == 3:
                    break
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait(timeout=30)
            proc.stdin.close()
            proc.stdout.close()
        (marker,) = markers(store)
        assert [len(blocks) for blocks in staged(container, store).values()] == [3]
        assert len(store.pending_uploads()) == 1
        prefix = store.prefix.replace("az://", "abfs://", 1)
        assert sweep(prefix, storage_options=store.options) == [f"{prefix}/{marker}"]
        assert staged(container, store) == {}
        assert store.names() == []

    @pytest.mark.parametrize("size", ["small", "multipart"])
    def test_compare_and_swap_on_a_deleted_blob_is_a_conflict(self, store: StoreHandle, size: str) -> None:
        payload = b"d" * (10 if size == "small" else store.multipart_size)
        first = atomic_save(payload, store.url("gone.bin"), "bytes", storage_options=store.options)
        store.fs.rm_file(store.url("gone.bin"))
        with pytest.raises(ConflictError):
            atomic_save(payload, store.url("gone.bin"), "bytes", storage_options=store.options, if_match=first.version)
        assert store.read("gone.bin") is None
        assert store.pending_uploads() == []

    @pytest.mark.parametrize("scheme", ["abfs", "abfss"])
    def test_other_schemes(self, store: StoreHandle, scheme: str) -> None:
        url = store.url("s.bin").replace("az://", f"{scheme}://", 1)
        result = atomic_save(b"x" * store.multipart_size, url, "bytes", storage_options=store.options)
        assert result.strategy == "azure"
        assert store.read("s.bin") == b"x" * store.multipart_size


# --- without a server ----------------------------------------------------------------------


def test_block_ids_have_one_length() -> None:
    """Azure wants every block id of a blob to have one length (Azurite does not check)."""
    import base64

    from atomicwrite._stores.azure import MAX_BLOCKS, block_id

    ids = [block_id("0123456789abcdef", number) for number in (1, 9, 10, 4321, MAX_BLOCKS)]
    assert {len(base64.b64encode(i.encode())) for i in ids} == {32}
    assert {block_owner(i) for i in ids} == {"0123456789abcdef"}
    assert block_owner("MDAwMDE=") is None
    assert block_owner(block_id("0123456789abcdef", 1) + "0") is None


def test_part_limits() -> None:
    from atomicwrite._errors import UnsupportedTargetError
    from atomicwrite._stores.azure import MAX_BLOCKS, MIN_PART, AzureBackend

    backend = AzureBackend(None, None, "az://c/k", part_size=1, parallel_parts=0)  # type: ignore[arg-type]
    assert (backend.part_size, backend.parallel_parts) == (MIN_PART, 1)
    backend.start(exclusive=False, if_match=None)
    with pytest.raises(UnsupportedTargetError, match="raise part_size"):
        backend.upload_part(MAX_BLOCKS + 1, b"x")


def _filesystem(**options: Any) -> Any:
    pytest.importorskip("adlfs", reason="adlfs is not installed (pip install -e .[azure])")
    pytest.importorskip("azure.storage.blob", reason="azure-storage-blob is not installed (pip install -e .[azure])")
    import fsspec

    return fsspec.filesystem("az", skip_instance_cache=True, **options)


def test_client_from_account_key() -> None:
    from atomicwrite._stores.azure import service_client

    client = service_client(_filesystem(account_name="acct", account_key=ACCOUNT_KEY))
    assert client.url == "https://acct.blob.core.windows.net/"
    assert client.credential.account_name == "acct"
    assert client.credential.account_key == ACCOUNT_KEY
    host = "acct.blob.core.chinacloudapi.cn"  # another cloud
    hosted = service_client(_filesystem(account_name="acct", account_key=ACCOUNT_KEY, account_host=host))
    assert hosted.url == f"https://{host}/"


def test_client_from_sas_token() -> None:
    from atomicwrite._stores.azure import service_client

    client = service_client(_filesystem(account_name="acct", sas_token="sv=2024&sig=abc"))
    assert client.url.startswith("https://acct.blob.core.windows.net/")
    assert "sig=abc" in client.url
    assert client.credential is None


def test_client_from_asynchronous_credential() -> None:
    """A credential given to adlfs is asynchronous; the synchronous client gets its tokens on adlfs's loop."""
    from azure.core.credentials import AccessToken

    from atomicwrite._stores.azure import service_client

    class AsyncCredential:
        def __init__(self) -> None:
            self.calls: list[tuple[str, ...]] = []

        async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            self.calls.append(scopes)
            return AccessToken("token", 2**40)

        async def close(self) -> None:
            pass

    credential = AsyncCredential()
    client = service_client(_filesystem(account_name="acct", credential=credential))
    token = client.credential.get_token("https://storage.azure.com/.default")
    assert token.token == "token"
    assert credential.calls == [("https://storage.azure.com/.default",)]
