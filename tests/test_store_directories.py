"""atomic_directory, CheckpointStore and sweep on gs:// (fake-gcs-server) and az:// (Azurite).

The place-parametrized tests of tests/test_directory.py and tests/test_retention.py are imported
below and run again here, once per emulator, with this module's ``place``: one protocol, checked
by one set of tests on every store (local, memory:// and s3:// run in their own modules).  The
tests after them are what these two stores need on top: the version token that a replacement's
compare-and-swap sends, and a saver killed for real in the middle of a save.

Known gaps of the emulators, none of which these tests depend on: fake-gcs-server ignores
``ifGenerationMatch`` on resumable sessions (GCS checks it atomically at the final chunk), so only
the library's own look before the final chunk guards a racing multi-part write there; manifests
and pointers are small, one request each, and the emulator does check the precondition on those.
Azurite keeps a blob's uncommitted blocks across ``Put Blob`` (Azure drops them); see
tests/test_azure.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atomicwrite import CheckpointStore, ConflictError, atomic_save, sweep
from atomicwrite._stores.azure import block_owner
from atomicwrite._strategy import WriteOptions, resolve_target
from tests import _gcs_server  # sets GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false before gcsfs is imported
from tests._azurite import azure_options, azurite_endpoint
from tests._dirworkers import content
from tests._gcs_server import BUCKET as GCS_BUCKET
from tests._gcs_server import GCSServer, gcs_server
from tests.test_directory import (
    Place,
    test_a_polling_reader_never_sees_a_partial_directory,
    test_an_exception_before_any_publish_leaves_no_target,
    test_an_exception_in_the_block_leaves_the_target_and_nothing_else,
    test_each_process_describes_the_files_it_declared,
    test_publish_lists_every_file_in_the_manifest,
    test_racing_publishers_on_a_store_one_wins,
    test_racing_replacements_on_a_store_one_wins,
    test_replace_false_refuses_an_existing_directory,
    test_replace_publishes_the_new_version_and_drops_the_old,
    test_sigkill_at_random_moments_keeps_latest_complete,
    test_staging_names_are_checked,
    test_store_failed_save_keeps_latest,
    test_store_retention_keeps_latest_and_newest,
    test_store_retention_under_a_concurrent_reader,
    test_store_saves_generations_and_moves_latest,
    test_str_is_the_path_and_repr_the_detail,
    test_sweep_removes_a_dead_writers_generation_on_a_store,
    test_verify_reports_damage,
    test_verify_without_a_directory,
)
from tests.test_retention import (
    test_an_object_store_save_does_not_wait_for_a_slow_delete,
    test_composed_policies_keep_what_any_policy_keeps,
    test_find_by_step_best_metric_and_tags,
    test_keep_every_seconds_on_a_store,
    test_latest_valid_skips_a_corrupt_and_a_torn_generation,
    test_nothing_is_removed_when_the_pointer_move_fails,
    test_nothing_is_removed_while_a_save_is_open,
    test_pins_survive_a_restart_until_unpinned,
    test_retention_survives_torn_generations,
    test_save_records_step_timestamp_metrics_and_tags,
    test_the_resumed_generation_is_never_removed,
)

__all__ = [
    "_gcs_server",
    "azurite_endpoint",
    "gcs_server",
    "test_a_polling_reader_never_sees_a_partial_directory",
    "test_an_exception_before_any_publish_leaves_no_target",
    "test_an_exception_in_the_block_leaves_the_target_and_nothing_else",
    "test_an_object_store_save_does_not_wait_for_a_slow_delete",
    "test_composed_policies_keep_what_any_policy_keeps",
    "test_each_process_describes_the_files_it_declared",
    "test_find_by_step_best_metric_and_tags",
    "test_keep_every_seconds_on_a_store",
    "test_latest_valid_skips_a_corrupt_and_a_torn_generation",
    "test_nothing_is_removed_when_the_pointer_move_fails",
    "test_nothing_is_removed_while_a_save_is_open",
    "test_pins_survive_a_restart_until_unpinned",
    "test_publish_lists_every_file_in_the_manifest",
    "test_racing_publishers_on_a_store_one_wins",
    "test_racing_replacements_on_a_store_one_wins",
    "test_replace_false_refuses_an_existing_directory",
    "test_replace_publishes_the_new_version_and_drops_the_old",
    "test_retention_survives_torn_generations",
    "test_save_records_step_timestamp_metrics_and_tags",
    "test_sigkill_at_random_moments_keeps_latest_complete",
    "test_staging_names_are_checked",
    "test_store_failed_save_keeps_latest",
    "test_store_retention_keeps_latest_and_newest",
    "test_store_retention_under_a_concurrent_reader",
    "test_store_saves_generations_and_moves_latest",
    "test_str_is_the_path_and_repr_the_detail",
    "test_sweep_removes_a_dead_writers_generation_on_a_store",
    "test_the_resumed_generation_is_never_removed",
    "test_verify_reports_damage",
    "test_verify_without_a_directory",
]

ROOT = Path(__file__).resolve().parent.parent
AZURE_CONTAINER = "atomicwrite-dirs"
MiB = 1 << 20
# The smallest parts each store takes, so that the killed saver's file is certainly multi-part.
PART_SIZE = {"gs": 256 * 1024, "az": MiB}


@pytest.fixture(scope="module")
def azure_container(azurite_endpoint: str) -> Any:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azure_options(azurite_endpoint)["connection_string"])
    client = service.get_container_client(AZURE_CONTAINER)
    with contextlib.suppress(ResourceExistsError):
        client.create_container()
    return client


@pytest.fixture(params=["gs", "az"])
def place(request: pytest.FixtureRequest) -> Iterator[Place]:
    import fsspec

    run = uuid.uuid4().hex
    if request.param == "gs":
        server: GCSServer = request.getfixturevalue("gcs_server")
        options = server.options()
        yield Place("gs", f"gs://{GCS_BUCKET}/dirs-{run}", options, fsspec.filesystem("gs", **options))
    else:
        request.getfixturevalue("azure_container")
        options = azure_options(request.getfixturevalue("azurite_endpoint"))
        yield Place("az", f"az://{AZURE_CONTAINER}/dirs-{run}", options, fsspec.filesystem("az", **options))


@pytest.fixture
def pending_uploads(place: Place, request: pytest.FixtureRequest) -> Callable[[str], list[str]]:
    """What is still pending under a prefix of ``place``: open GCS resumable sessions (the
    emulator's recording proxy follows them), or blocks staged on a never-committed Azure blob."""
    if place.kind == "gs":
        server: GCSServer = request.getfixturevalue("gcs_server")

        def sessions(url: str) -> list[str]:
            return server.proxy.open_sessions(GCS_BUCKET, url.removeprefix(f"gs://{GCS_BUCKET}/") + "/")

        return sessions
    container = request.getfixturevalue("azure_container")

    def blocks(url: str) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        found: list[str] = []
        start = url.removeprefix(f"az://{AZURE_CONTAINER}/") + "/"
        for item in container.list_blobs(name_starts_with=start, include=["uncommittedblobs"]):
            blob = container.get_blob_client(item.name)
            with contextlib.suppress(ResourceNotFoundError):
                if not blob.exists():
                    _, staged = blob.get_block_list("uncommitted")
                    found += [f"{item.name}:{block_owner(block.id)}" for block in staged]
        return found

    return blocks


# --- the version a replacement compares ---------------------------------------------------------


def test_version_is_the_token_a_conditional_write_compares(place: Place) -> None:
    """version() reads what CommitResult.version reported (GCS: the generation; Azure: the ETag),
    and a write conditional on it succeeds exactly while the object is unchanged."""
    url = place.url("pointer.json")
    strategy, _ = resolve_target(url)
    options = WriteOptions(storage_options=place.options)
    path = place.fs._strip_protocol(url)
    assert strategy.version(path, options) is None
    first = atomic_save(b"1", url, "bytes", storage_options=place.options)
    assert first.version is not None
    assert strategy.version(path, options) == first.version
    second = atomic_save(b"2", url, "bytes", storage_options=place.options, if_match=strategy.version(path, options))
    assert strategy.version(path, options) == second.version != first.version
    with pytest.raises(ConflictError):
        atomic_save(b"3", url, "bytes", storage_options=place.options, if_match=first.version)
    assert place.fs.cat_file(path) == b"2"


def test_a_checkpoint_store_on_the_store_is_accepted(place: Place) -> None:
    store = CheckpointStore(place.url("run"), storage_options=place.options)
    assert not store.local
    assert store.latest() is None


# --- a saver killed for real ---------------------------------------------------------------------


def test_a_killed_save_leaves_latest_complete_and_sweep_removes_only_its_leftovers(
    place: Place, pending_uploads: Callable[[str], list[str]], tmp_path: Path
) -> None:
    """SIGKILL inside a save, with a file half way through its multi-part upload: latest stays
    on the complete generation before it, and sweep removes the unpublished generation, the
    upload's marker and the upload, and nothing that is not this library's."""
    root = place.url("run")
    store = CheckpointStore(root, storage_options=place.options)
    with store.save() as stage, stage.open("model.bin") as file:
        file.write(content(1, "model.bin"))
    published = sorted(place.everything("run"))
    ready = tmp_path / "ready"
    worker_options = {**place.options, "part_size": PART_SIZE[place.kind]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests._dirworkers", "store_stager", root, json.dumps(worker_options), str(ready)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the saver never got inside its save"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    # What the killed saver left: its generation's objects, unpublished, and an upload's marker.
    left = sorted(set(place.everything("run")) - set(published))
    assert any(name.startswith("gen-00000002/") for name in left), left
    assert any(name.rpartition("/")[2].startswith(".big.bin.") for name in left), left
    latest = store.latest()
    assert latest is not None
    assert latest.name == "gen-00000001"
    assert store.pointer() == "gen-00000001"
    assert store.verify(latest.name).ok
    assert store.generations() == ["gen-00000001"]
    if place.kind == "gs":
        # Its resumable session is open (Azure's staged blocks may still be on their way).
        assert len(pending_uploads(root)) == 1
    # A user's own objects beside and inside the store, named like ours, are never touched.
    mine = ["gen-00000001-notes/readme.txt", ".big.bin.tmp", "gen.notes/x"]
    for name in mine:
        place.fs.pipe_file(place.fs._strip_protocol(f"{root}/{name}"), b"mine")
    removed = sweep(root, older_than=0, storage_options=place.options)
    assert removed, "sweep found nothing to remove"
    assert all("/gen-00000002/" in url for url in removed), removed
    assert sorted(place.everything("run")) == sorted([*published, *mine])
    assert pending_uploads(root) == []
    with store.save() as stage, stage.open("model.bin") as file:
        file.write(content(2, "model.bin"))
    assert store.pointer() == "gen-00000002"
    assert store.verify("gen-00000002").ok
