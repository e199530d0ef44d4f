"""torch.distributed.checkpoint through dcp_writer/dcp_reader on object stores: two gloo ranks as
real processes against moto's S3 server, the GCS emulator and Azurite, and one process on
memory://.  A save publishes with the manifest's one conditional write; a failed or killed save
publishes nothing, and sweep removes what a killed coordinator left, and nothing else."""

from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

from atomicwrite import sweep, verify_directory
from atomicwrite._directories.manifest import MANIFEST_NAME
from tests import _gcs_server  # sets GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false before gcsfs is imported
from tests._azurite import azure_options, azurite_endpoint
from tests._gcs_server import BUCKET as GCS_BUCKET
from tests._gcs_server import gcs_server
from tests._stores import moto_endpoint, s3_options
from tests.test_directory import BUCKET as S3_BUCKET
from tests.test_directory import Place, s3fs_instance
from tests.test_distributed import run_rank_commands
from tests.test_store_directories import AZURE_CONTAINER, azure_container

__all__ = [
    "_gcs_server",
    "azure_container",
    "azurite_endpoint",
    "gcs_server",
    "moto_endpoint",
    "s3fs_instance",
]

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.checkpoint")

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="no gloo backend"
)


@pytest.fixture(params=["s3", "gs", "az"])
def store(request: pytest.FixtureRequest) -> Place:
    """A fresh directory on each object store's loopback server."""
    import fsspec

    run = uuid.uuid4().hex
    if request.param == "s3":
        fs = request.getfixturevalue("s3fs_instance")
        return Place("s3", f"s3://{S3_BUCKET}/dcp-{run}", s3_options(request.getfixturevalue("moto_endpoint")), fs)
    if request.param == "gs":
        options = request.getfixturevalue("gcs_server").options()
        return Place("gs", f"gs://{GCS_BUCKET}/dcp-{run}", options, fsspec.filesystem("gs", **options))
    request.getfixturevalue("azure_container")
    options = azure_options(request.getfixturevalue("azurite_endpoint"))
    return Place("az", f"az://{AZURE_CONTAINER}/dcp-{run}", options, fsspec.filesystem("az", **options))


def run_ranks(tmp_path: Path, target: str, options: dict[str, Any], mode: str) -> list[tuple[int, Any]]:
    """Run two ranks of tests._dcp_workers: ``(returncode, report)`` per rank."""
    init_file = str(tmp_path / f"init-{uuid.uuid4().hex}")
    return run_rank_commands(
        [["tests._dcp_workers", str(rank), "2", init_file, target, json.dumps(options), mode] for rank in range(2)]
    )


def load(target: str, options: dict[str, Any]) -> dict[str, Any]:
    from atomicwrite.distributed import dcp_load

    state = {"model": {"weight": torch.zeros(32, 32)}, "step": -1, "rank0": -1, "rank1": -1}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process.*", category=UserWarning)
        dcp_load(state, target, storage_options=options)
    return state


def check_step(target: str, options: dict[str, Any], step: int) -> None:
    from tests._distworkers import dcp_state

    assert verify_directory(target, storage_options=options).ok
    state = load(target, options)
    assert state["step"] == step
    assert torch.equal(state["model"]["weight"], dcp_state(0, step)["model"]["weight"])
    assert (state["rank0"], state["rank1"]) == (0, 1)


@pytest.mark.slow
def test_two_ranks_save_replace_fail_and_get_killed(store: Place, tmp_path: Path) -> None:
    target = store.url("dcp")
    first = run_ranks(tmp_path, target, store.options, "step1")
    assert [code for code, _ in first] == [0, 0], first
    assert first[0][1]["published"] == [".metadata", "__0_0.distcp", "__1_0.distcp"], first
    assert first[1][1] == {"rank": 1, "published": None}, first
    check_step(target, store.options, 1)
    step1 = store.everything("dcp")
    # One generation prefix holds the files, the manifest beside it names it.
    assert MANIFEST_NAME in step1
    assert len({name.split("/")[0] for name in step1} - {MANIFEST_NAME}) == 1, step1

    second = run_ranks(tmp_path, target, store.options, "step2")
    assert [code for code, _ in second] == [0, 0], second
    check_step(target, store.options, 2)
    step2 = store.everything("dcp")
    # The replacement dropped the old generation.
    assert not set(step1) - {MANIFEST_NAME} & set(step2), (step1, step2)

    # Rank 1 cannot serialize its part: every rank fails, the coordinator drops the generation.
    raised = run_ranks(tmp_path, target, store.options, "raise")
    assert [code for code, _ in raised] == [0, 0], raised
    assert all("error" in result for _, result in raised), raised
    assert store.everything("dcp") == step2
    check_step(target, store.options, 2)

    # Rank 1 is killed mid-save: the coordinator fails on the lost peer and drops the generation;
    # whatever the dead rank's upload left, sweep removes, and nothing else.
    killed = run_ranks(tmp_path, target, store.options, "kill1")
    assert killed[1][0] == -9, killed
    assert "error" in killed[0][1], killed
    check_step(target, store.options, 2)
    sweep(target, older_than=0, storage_options=store.options)
    assert store.everything("dcp") == step2

    # The coordinator dies after both shards are uploaded, before .metadata and the manifest.
    killed = run_ranks(tmp_path, target, store.options, "killfinish")
    assert killed[0][0] == -9, killed
    assert "error" in killed[1][1], killed
    left = sorted(set(store.everything("dcp")) - set(step2))
    assert left, "the killed coordinator left no generation"
    assert all(name.endswith(".distcp") for name in left), left
    check_step(target, store.options, 2)
    # A user's object named like ours is never swept.
    mine = "gen-notes/readme.txt"
    store.fs.pipe_file(store.fs._strip_protocol(f"{target}/{mine}"), b"mine")
    removed = sweep(target, older_than=0, storage_options=store.options)
    assert len(removed) == 1, removed
    assert sorted(store.everything("dcp")) == sorted([*step2, mine])
    check_step(target, store.options, 2)


def test_one_process_on_memory() -> None:
    import fsspec
    from torch.distributed.checkpoint.api import CheckpointException

    from atomicwrite.distributed import dcp_save

    place = Place("memory", f"memory://dcp-{uuid.uuid4().hex}", {}, fsspec.filesystem("memory"))
    target = place.url("dcp")
    warnings.filterwarnings("ignore", message=".*single process.*", category=UserWarning)
    for step in (1, 2):
        weight = torch.full((32, 32), float(step))
        result = dcp_save({"model": {"weight": weight}, "step": step, "rank0": 0, "rank1": 1}, target)
        assert result is not None
        assert result.replaced == (step == 2)
        assert sorted(entry.name for entry in result.manifest.files) == [".metadata", "__0_0.distcp"]
        assert verify_directory(target).ok
        state = load(target, {})
        assert state["step"] == step
        assert torch.equal(state["model"]["weight"], weight)
    published = place.everything("dcp")

    class Unpicklable:
        def __reduce__(self) -> Any:
            raise RuntimeError("cannot serialize")

    with pytest.raises(CheckpointException):
        dcp_save({"model": {"weight": torch.zeros(32, 32)}, "step": 3, "bad": Unpicklable()}, target)
    assert place.everything("dcp") == published
    assert load(target, {})["step"] == 2


def test_a_reader_of_nothing_published_is_refused(tmp_path: Path) -> None:
    from atomicwrite import TargetNotFoundError
    from atomicwrite.distributed import dcp_reader

    with pytest.raises(TargetNotFoundError):
        dcp_reader(f"memory://nothing-{uuid.uuid4().hex}/dcp")
    with pytest.raises(TargetNotFoundError):
        dcp_reader(tmp_path / "dcp")
