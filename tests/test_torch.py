"""atomicwrite.torch: streamed checkpoints, validation of torn and footer-only files, loading."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import atomicwrite.torch as awt  # noqa: E402 - after the importorskip
from atomicwrite import AtomicWriteError, UsageError, atomic_save  # noqa: E402
from atomicwrite._api import AtomicBinaryFile  # noqa: E402

from ._stores import moto_endpoint, s3_options  # noqa: E402, F401 - the fixture

MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


class Unpicklable:
    """An object whose pickling raises, as a half-built module or an open handle would."""

    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle this")


def state_dict(scale: int = 1) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(64 * scale, 32, generator=gen),
        "layer.bias": torch.randn(64 * scale, generator=gen),
        "half": torch.randn(16, 16, generator=gen).to(torch.bfloat16),
        "step": 7,
        "meta": {"lr": 0.1, "names": ["a", "b"]},
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def memory_url(name: str) -> str:
    return f"memory://atomicwrite-torch-tests/{uuid.uuid4().hex}/{name}"


def entries(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# --- save / load round trips ---------------------------------------------------------------


def test_round_trip_local(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    result = awt.save(state_dict(), target)
    assert result.target == str(target)
    assert result.bytes_written == target.stat().st_size
    assert result.durability == "full"
    assert_same(awt.load(target), state_dict())
    assert entries(tmp_path) == ["model.pt"]


def test_round_trip_replaces_an_old_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    awt.save({"v": 1}, target)
    awt.save({"v": 2}, str(target), durability="none")
    assert awt.load(target) == {"v": 2}


def test_round_trip_memory_url() -> None:
    url = memory_url("model.pt")
    result = awt.save(state_dict(), url)
    assert result.strategy == "memory"
    assert awt.validate(url)
    assert_same(awt.load(url, map_location="cpu"), state_dict())


def test_load_of_a_url_goes_through_a_deleted_temp_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    url = memory_url("model.pt")
    awt.save(state_dict(), url)
    seen: list[str] = []
    real_load = torch.load

    def spy(path: Any, **kwargs: Any) -> Any:
        seen.append(path)
        assert isinstance(path, str)
        assert Path(path).parent == tmp_path
        return real_load(path, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert_same(awt.load(url, weights_only=True), state_dict())
    assert len(seen) == 1
    assert os.listdir(tmp_path) == []  # the temp copy is gone


def test_load_mmap_local(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    awt.save(state_dict(), target)
    loaded = awt.load(target, mmap=True, weights_only=True, map_location="cpu")
    assert_same(loaded, state_dict())


def test_load_missing_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        awt.load(tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError):
        awt.load(memory_url("absent.pt"))
    with pytest.raises(FileNotFoundError):
        awt.load(tmp_path / "absent.pt", verify=False)


def test_save_refuses_the_legacy_format(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        awt.save({"v": 1}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert entries(tmp_path) == []


def test_torch_save_kwargs_pass_through(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    awt.save(state_dict(), target, pickle_protocol=4)
    assert_same(awt.load(target, weights_only=False), state_dict())  # weights-only loading refuses protocol 4


# --- streaming ------------------------------------------------------------------------------


def test_save_streams_one_storage_per_write(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sizes: list[int] = []
    real_write = AtomicBinaryFile.write

    def spy(self: AtomicBinaryFile, data: Any) -> int:
        sizes.append(memoryview(data).nbytes)
        return real_write(self, data)

    monkeypatch.setattr(AtomicBinaryFile, "write", spy)
    tensors = {f"t{i}": torch.full((MiB // 4,), float(i)) for i in range(8)}  # 8 storages of 1 MiB
    target = tmp_path / "big.pt"
    awt.save(tensors, target)
    total = target.stat().st_size
    assert total > 8 * MiB
    assert max(sizes) <= MiB  # never more than one storage at a time, let alone the whole checkpoint
    assert sum(1 for size in sizes if size == MiB) == 8
    assert_same(awt.load(target), tensors)


@pytest.mark.slow
def test_save_peak_memory_stays_flat(tmp_path: Path) -> None:
    proc = run_python(
        """
        import resource, sys, torch
        import atomicwrite.torch as awt
        sd = {f"w{i}": torch.ones(10 * 2**20 // 4) for i in range(30)}  # 300 MiB, pages touched
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        awt.save(sd, sys.argv[1], durability="none")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(before, after)
        """,
        str(tmp_path / "big.pt"),
    )
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    before_kib, after_kib = map(int, out.split())
    assert (after_kib - before_kib) * 1024 < 32 * MiB, (before_kib, after_kib)
    assert (tmp_path / "big.pt").stat().st_size > 300 * MiB


# --- failures leave the target alone --------------------------------------------------------


def test_pickling_error_leaves_the_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    awt.save({"v": 1}, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle"):
        awt.save({"weights": torch.ones(1000), "bad": Unpicklable()}, target)
    assert target.read_bytes() == before
    assert entries(tmp_path) == ["model.pt"]  # no temp file left behind
    assert awt.load(target) == {"v": 1}


def test_pickling_error_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        awt.save({"bad": Unpicklable()}, tmp_path / "model.pt")
    assert entries(tmp_path) == []


def test_pickling_error_on_a_url_leaves_the_object_untouched() -> None:
    url = memory_url("model.pt")
    awt.save({"v": 1}, url)
    with pytest.raises(RuntimeError):
        awt.save({"w": torch.ones(10), "bad": Unpicklable()}, url)
    assert awt.load(url) == {"v": 1}


# --- validate --------------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> Path:
    target = tmp_path / "good.pt"
    awt.save(state_dict(scale=64), target)
    return target


def test_validate_a_good_checkpoint(good: Path) -> None:
    result = awt.validate(good)
    assert result
    assert result.valid
    assert result.reason == "ok"
    assert not result.loaded
    full = awt.validate(good, full=True)
    assert full
    assert full.loaded


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.1, 0.5, 0.9, 0.999])
def test_validate_a_truncated_copy_is_torn(good: Path, fraction: float) -> None:
    data = good.read_bytes()
    torn = good.with_name("torn.pt")
    torn.write_bytes(data[: int(len(data) * fraction)])
    result = awt.validate(torn)
    assert not result
    assert result.reason == "torn", result
    with pytest.raises(awt.CheckpointError) as caught:
        awt.load(torn)
    assert caught.value.reason == "torn"
    assert isinstance(caught.value, AtomicWriteError)


@pytest.mark.parametrize("cut", [1, 22, 100])
def test_validate_a_file_missing_its_last_bytes_is_torn(good: Path, cut: int) -> None:
    torn = good.with_name("torn.pt")
    torn.write_bytes(good.read_bytes()[:-cut])
    assert awt.validate(torn).reason == "torn"


def test_validate_a_footer_only_file(tmp_path: Path) -> None:
    # The brief's claim: torch.save into a plain file whose pickling raises still writes a zip
    # footer, leaving a valid-looking zip without data.pkl.
    import zipfile

    target = tmp_path / "footer.pt"
    with open(target, "wb") as plain, pytest.raises(RuntimeError):
        torch.save({"w": torch.ones(1000), "bad": Unpicklable()}, plain)
    assert target.stat().st_size > 0
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None  # a well-formed zip...
        assert not any(name.endswith("data.pkl") for name in archive.namelist())  # ...with no data
    result = awt.validate(target)
    assert not result
    assert result.reason == "footer-only"
    with pytest.raises(awt.CheckpointError) as caught:
        awt.load(target)
    assert caught.value.reason == "footer-only"


def test_validate_a_flipped_byte_is_corrupt(good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a tensor's storage
    bad = good.with_name("bad.pt")
    bad.write_bytes(bytes(data))
    result = awt.validate(bad)
    assert result.reason == "corrupt", result


def test_validate_random_bytes_and_other_zips(tmp_path: Path) -> None:
    import zipfile

    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(10_000))
    assert awt.validate(noise).reason == "not-a-checkpoint"
    plain_zip = tmp_path / "plain.pt"
    with zipfile.ZipFile(plain_zip, "w") as archive:
        archive.writestr("hello.txt", "hi")
    assert awt.validate(plain_zip).reason == "not-a-checkpoint"
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert awt.validate(empty).reason == "torn"
    assert awt.validate(tmp_path / "absent.pt").reason == "missing"
    assert awt.validate(tmp_path).reason == "not-a-checkpoint"


def test_validate_urls(good: Path) -> None:
    url = memory_url("good.pt")
    awt.save(state_dict(), url)
    assert awt.validate(url)
    assert awt.validate(url, full=True).loaded
    import fsspec

    fs = fsspec.filesystem("memory")
    torn = memory_url("torn.pt")
    fs.pipe_file(torn, good.read_bytes()[:-100])
    assert awt.validate(torn).reason == "torn"
    assert awt.validate(torn, full=True).reason == "torn"
    assert awt.validate(memory_url("absent.pt")).reason == "missing"
    assert awt.validate(memory_url("absent.pt"), full=True).reason == "missing"
    with pytest.raises(awt.CheckpointError):
        awt.load(torn)


def test_validate_full_on_a_checkpoint_that_is_not_weights_only(tmp_path: Path) -> None:
    target = tmp_path / "custom.pt"
    awt.save({"w": torch.ones(3), "obj": Path("x")}, target)
    result = awt.validate(target, full=True)
    assert result  # structure and CRCs verified...
    assert not result.loaded  # ...but weights-only loading refused the object


# --- latest_valid ---------------------------------------------------------------------------


def test_latest_valid_skips_a_torn_newest(tmp_path: Path) -> None:
    now = time.time()
    for step, age in ((1, 30), (2, 20)):
        path = tmp_path / f"step-{step}.pt"
        awt.save({"step": step}, path)
        os.utime(path, (now - age, now - age))
    newest = tmp_path / "step-3.pt"
    newest.write_bytes((tmp_path / "step-2.pt").read_bytes()[:-50])
    footer = tmp_path / "step-4.ckpt"
    with open(footer, "wb") as plain, pytest.raises(RuntimeError):
        torch.save({"bad": Unpicklable()}, plain)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    found = awt.latest_valid(tmp_path)
    assert found == str(tmp_path / "step-2.pt")
    assert awt.load(found) == {"step": 2}
    assert awt.latest_valid(str(tmp_path / "step-1")) == str(tmp_path / "step-1.pt")  # a prefix
    assert awt.latest_valid(tmp_path, "*.ckpt") is None
    assert awt.latest_valid(tmp_path / "nowhere") is None


def test_latest_valid_patterns(tmp_path: Path) -> None:
    awt.save({"v": "pt"}, tmp_path / "a.pt")
    os.utime(tmp_path / "a.pt", (time.time() - 10, time.time() - 10))
    awt.save({"v": "bin"}, tmp_path / "b.bin")
    assert awt.latest_valid(tmp_path) == str(tmp_path / "a.pt")
    assert awt.latest_valid(tmp_path, "*.bin|*.pt") == str(tmp_path / "b.bin")
    assert awt.latest_valid(tmp_path, ["*.bin"]) == str(tmp_path / "b.bin")
    with pytest.raises(ValueError, match="pattern"):
        awt.latest_valid(tmp_path, "")


def test_latest_valid_on_a_url(good: Path) -> None:
    import fsspec

    base = memory_url("").rstrip("/")
    awt.save({"step": 1}, f"{base}/step-1.pt")
    time.sleep(0.01)
    awt.save({"step": 2}, f"{base}/step-2.pt")
    time.sleep(0.01)
    fsspec.filesystem("memory").pipe_file(f"{base}/step-3.pt", good.read_bytes()[:1000])
    found = awt.latest_valid(base + "/")
    assert found == f"{base}/step-2.pt"
    assert awt.load(found) == {"step": 2}
    assert awt.latest_valid(base) == f"{base}/step-2.pt"
    assert awt.latest_valid(f"{base}/step-1") == f"{base}/step-1.pt"


# --- serializers ----------------------------------------------------------------------------


def test_torch_serializer_through_atomic_save(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    atomic_save(state_dict(), target, "torch")
    assert_same(torch.load(target), state_dict())
    assert awt.validate(target)


def test_torch_serializer_with_atomic_update(tmp_path: Path) -> None:
    from atomicwrite import atomic_update

    target = tmp_path / "counter.pt"
    for _ in range(3):
        atomic_update(target, lambda old: {"n": torch.tensor((0 if old is None else int(old["n"])) + 1)}, "torch")
    assert int(awt.load(target)["n"]) == 3


def test_numpy_serializer(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(100_000, dtype=np.float32).reshape(100, 1000)
    for target in (tmp_path / "a.npy", memory_url("a.npy")):
        atomic_save(array, target, "numpy")
    assert np.array_equal(np.load(tmp_path / "a.npy"), array)
    with pytest.raises(ValueError, match="pickle"):
        atomic_save(np.array([object()], dtype=object), tmp_path / "obj.npy", "numpy")
    assert not (tmp_path / "obj.npy").exists()
    with open(tmp_path / "a.npy", "rb") as file:
        assert np.array_equal(awt.numpy_serializer.load(file), array)


def test_safetensors_serializer(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    tensors = {"w": torch.randn(10, 10), "b": torch.zeros(10, dtype=torch.bfloat16)}
    target = tmp_path / "model.safetensors"
    atomic_save(tensors, target, "safetensors")
    from safetensors.torch import load_file

    assert_same(load_file(target), tensors)
    with open(target, "rb") as file:
        assert_same(awt.safetensors_serializer.load(file), tensors)
    np = pytest.importorskip("numpy")
    atomic_save({"a": np.ones(4)}, tmp_path / "np.safetensors", "safetensors")
    from safetensors.numpy import load_file as load_numpy

    assert np.array_equal(load_numpy(tmp_path / "np.safetensors")["a"], np.ones(4))
    with pytest.raises(ValueError, match="dict"):
        atomic_save([1, 2], tmp_path / "bad.safetensors", "safetensors")


def mixed_tensors() -> dict[str, Any]:
    """Every common dtype, in no particular name order, with a 0-dim and a zero-element tensor."""
    gen = torch.Generator().manual_seed(1)
    return {
        "w.f32": torch.randn(7, 5, generator=gen),
        "b.f16": torch.randn(9, generator=gen).to(torch.float16),
        "a.bf16": torch.randn(3, 4, generator=gen).to(torch.bfloat16),
        "steps.i64": torch.arange(-6, 6).reshape(2, 6),
        "pixels.u8": torch.randint(0, 256, (4, 3), dtype=torch.uint8, generator=gen),
        "mask.bool": torch.rand(11, generator=gen) > 0.5,
        "z.f64": torch.randn(2, 2, 2, generator=gen, dtype=torch.float64),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3, dtype=torch.float16),
        'odd "name"\n\u00e9\u65e5': torch.ones(2, dtype=torch.int32),
    }


def test_safetensors_bytes_are_those_of_safetensors_torch_save(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file, save

    tensors = mixed_tensors()
    target = tmp_path / "model.safetensors"
    atomic_save(tensors, target, "safetensors")
    assert target.read_bytes() == save(tensors)
    assert_same(load_file(target), tensors)


def test_safetensors_bytes_are_those_of_safetensors_numpy_save(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    np = pytest.importorskip("numpy")
    from safetensors.numpy import load_file, save

    arrays = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "big_endian": np.arange(5, dtype=">f8"),
        "complex_big_endian": np.array([1 + 2j, -3.5 - 4j], dtype=">c8"),
        "h": np.linspace(0, 1, 6, dtype=np.float16),
        "flags": np.array([True, False, True]),
        "ids": np.arange(4, dtype=np.int64),
        "scalar": np.array(7, dtype=np.uint8),
        "nothing": np.zeros((2, 0), dtype=np.int16),
    }
    target = tmp_path / "arrays.safetensors"
    atomic_save(arrays, target, "safetensors")
    assert target.read_bytes() == save(arrays)
    loaded = load_file(target)
    assert loaded.keys() == arrays.keys()
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype.newbyteorder("<"), name  # stored little-endian
        assert np.array_equal(loaded[name], array), name


def test_safetensors_mixes_tensors_and_arrays(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    np = pytest.importorskip("numpy")
    from safetensors.torch import load_file

    target = tmp_path / "mixed.safetensors"
    atomic_save({"array": np.arange(4, dtype=">i8"), "tensor": torch.ones(2, 2)}, target, "safetensors")
    assert_same(load_file(target), {"array": torch.arange(4), "tensor": torch.ones(2, 2)})


def test_safetensors_snapshot_writes_the_same_bytes() -> None:
    pytest.importorskip("safetensors")
    from safetensors.torch import save

    tensors = mixed_tensors()
    snapshot = awt.safetensors_serializer.snapshot(tensors)
    written = io.BytesIO()
    awt.safetensors_serializer.dump(snapshot, written)
    assert written.getvalue() == save(tensors)


def _numpy() -> Any:
    return pytest.importorskip("numpy")


_SHARED = torch.arange(10.0)

#: What the "safetensors" serializer refuses, each next to a tensor it would accept.
REFUSED_SAFETENSORS: dict[str, Callable[[], Any]] = {
    "not a tensor": lambda: {"w": torch.ones(2), "step": 3},
    "a list": lambda: {"w": torch.ones(2), "l": [1.0, 2.0]},
    "sparse": lambda: {"w": torch.ones(2), "s": torch.eye(3).to_sparse()},
    "non-contiguous": lambda: {"w": torch.ones(2), "t": torch.ones(3, 4).t()},
    "same tensor twice": lambda: {"a": _SHARED, "b": _SHARED},
    "overlapping views": lambda: {"a": _SHARED[:6], "b": _SHARED[4:]},
    "no safetensors dtype": lambda: {"w": torch.ones(2), "c": torch.ones(2, dtype=torch.complex128)},
    "non-str key": lambda: {"w": torch.ones(2), 3: torch.ones(2)},
    "reserved name": lambda: {"w": torch.ones(2), "__metadata__": torch.ones(2)},
    "meta device": lambda: {"w": torch.ones(2), "m": torch.empty(2, device="meta")},
    "unencodable name": lambda: {"w": torch.ones(2), "\ud800": torch.ones(2)},
    "empty dict": dict,
    "not a dict": lambda: [torch.ones(2)],
    "non-contiguous array": lambda: {"a": _numpy().ones((4, 4))[:, ::2]},
    "object array": lambda: {"a": _numpy().array([object()])},
    "numpy scalar": lambda: {"a": _numpy().float32(1.0)},
}


@pytest.mark.parametrize("case", list(REFUSED_SAFETENSORS))
def test_safetensors_refusals_write_nothing_and_keep_the_old_file(tmp_path: Path, case: str) -> None:
    bad = REFUSED_SAFETENSORS[case]()
    target = tmp_path / "model.safetensors"
    atomic_save({"old": torch.ones(3)}, target, "safetensors")
    before = target.read_bytes()
    with pytest.raises(UsageError):
        atomic_save(bad, target, "safetensors")
    assert target.read_bytes() == before
    assert entries(tmp_path) == ["model.safetensors"]
    written = io.BytesIO()
    with pytest.raises(UsageError):
        awt.safetensors_serializer.dump(bad, written)
    assert written.getvalue() == b""  # refused before the first byte
    with pytest.raises(UsageError):
        awt.safetensors_serializer.snapshot(bad)  # a background save is refused at once too


def test_safetensors_accepts_what_safetensors_accepts_next_to_a_refusal() -> None:
    """Views of one storage that do not overlap are fine, as in safetensors."""
    pytest.importorskip("safetensors")
    from safetensors.torch import save

    base = torch.arange(10.0)
    halves = {"first": base[:5], "second": base[5:], "none": base[5:5]}
    written = io.BytesIO()
    awt.safetensors_serializer.dump(halves, written)
    assert written.getvalue() == save(halves)


def test_safetensors_written_without_the_safetensors_package(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.numpy import save as save_numpy
    from safetensors.torch import save as save_torch

    proc = run_python(
        """
        import sys
        sys.modules["safetensors"] = None  # as if safetensors were not installed
        import numpy as np
        import torch
        from atomicwrite import atomic_save
        import atomicwrite.torch

        atomic_save({"w": torch.arange(6.0).reshape(2, 3)}, sys.argv[1] + "/t.safetensors", "safetensors")
        atomic_save({"a": np.arange(4, dtype=">i4")}, sys.argv[1] + "/n.safetensors", "safetensors")
        """,
        str(tmp_path),
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    np = pytest.importorskip("numpy")
    assert (tmp_path / "t.safetensors").read_bytes() == save_torch({"w": torch.arange(6.0).reshape(2, 3)})
    assert (tmp_path / "n.safetensors").read_bytes() == save_numpy({"a": np.arange(4, dtype=">i4")})


def test_safetensors_writes_the_values_of_conjugate_and_negative_views(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    base = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    tensors = {"conj": base.conj(), "neg": torch.ones(3)._neg_view()}
    assert tensors["conj"].is_conj()
    assert tensors["neg"].is_neg()
    atomic_save(tensors, tmp_path / "views.safetensors", "safetensors")
    loaded = load_file(tmp_path / "views.safetensors")
    assert torch.equal(loaded["conj"], torch.tensor([1 - 2j, 3 + 4j], dtype=torch.complex64))
    assert torch.equal(loaded["neg"], -torch.ones(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_safetensors_from_cuda_tensors(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.torch import save

    on_host = mixed_tensors()
    on_gpu = {name: tensor.to("cuda") for name, tensor in on_host.items()}
    atomic_save(on_gpu, tmp_path / "direct.safetensors", "safetensors")
    assert (tmp_path / "direct.safetensors").read_bytes() == save(on_host)
    snapshot = awt.safetensors_serializer.snapshot(on_gpu)
    written = io.BytesIO()
    awt.safetensors_serializer.dump(snapshot, written)
    assert written.getvalue() == save(on_host)
    with pytest.raises(UsageError, match="share memory"):
        atomic_save({"a": on_gpu["w.f32"], "b": on_gpu["w.f32"]}, tmp_path / "direct.safetensors", "safetensors")


def test_safetensors_to_s3_in_several_parts(moto_endpoint: str) -> None:  # noqa: F811 - the fixture
    pytest.importorskip("safetensors")
    import s3fs
    from safetensors.torch import load, save

    options = s3_options(moto_endpoint)
    bucket = f"safetensors-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**options)
    fs.call_s3("create_bucket", Bucket=bucket)
    part = 5 * MiB  # S3's smallest part
    tensors = {f"layer{i}": torch.full((MiB,), float(i)) for i in range(4)}  # 16 MiB: four parts
    tensors.update(mixed_tensors())
    url = f"s3://{bucket}/run/model.safetensors"
    atomic_save(tensors, url, "safetensors", storage_options={**options, "part_size": part})
    stored = fs.cat_file(f"{bucket}/run/model.safetensors")
    assert len(stored) > 3 * part
    assert stored == save(tensors)
    assert_same(load(stored), tensors)
    assert fs.ls(f"{bucket}/run/") == [f"{bucket}/run/model.safetensors"]  # no marker left


class _WriteSizes(io.RawIOBase):
    """A file that keeps only the size of each write."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sizes.append(memoryview(data).nbytes)
        return self.sizes[-1]


def test_safetensors_streams_without_holding_the_file() -> None:
    size = 64 * MiB
    tensors = {"big": torch.ones(size // 4), "small": torch.zeros(8)}
    sink = _WriteSizes()
    awt.safetensors_serializer.dump(tensors, sink)
    assert sum(sink.sizes) > size
    assert max(sink.sizes) <= 8 * MiB  # slices, not the whole file in one write


def test_safetensors_save_allocates_far_less_than_the_file(tmp_path: Path) -> None:
    import tracemalloc

    size = 64 * MiB
    tensors = {f"layer{i}": torch.full((size // 16,), float(i)) for i in range(4)}
    tracemalloc.start()
    try:
        atomic_save(tensors, tmp_path / "model.safetensors", "safetensors")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (tmp_path / "model.safetensors").stat().st_size > size
    assert peak < size // 4, f"{peak / MiB:.1f} MiB allocated at the peak"


def test_import_without_torch_does_not_import_it() -> None:
    proc = run_python(
        """
        import sys
        import atomicwrite, atomicwrite.torch
        assert "torch" not in sys.modules, "atomicwrite.torch imported torch"
        sys.modules["torch"] = None  # as if torch were not installed
        import atomicwrite.torch as awt
        try:
            awt.save({}, "x.pt")
        except ImportError:
            print("ok")
        """
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "ok"


# --- SIGKILL during a save ------------------------------------------------------------------


def _written_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io") as io_file:
            for line in io_file:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_during_save_leaves_the_old_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    awt.save({"generation": "old", "w": torch.arange(1000)}, target)
    old = target.read_bytes()
    proc = run_python(
        """
        import sys, torch
        import atomicwrite.torch as awt
        sd = {f"w{i}": torch.ones(10 * 2**20 // 4) for i in range(20)}  # 200 MiB
        sd["generation"] = "new"
        print("saving", flush=True)
        awt.save(sd, sys.argv[1])
        print("saved", flush=True)
        """,
        str(target),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "saving"
    start = _written_bytes(proc.pid)
    written = start
    deadline = time.monotonic() + 30
    if start is not None:
        # Kill once some of the checkpoint, but not all of it, went to the temp file.
        while time.monotonic() < deadline:
            written = _written_bytes(proc.pid)
            if written is None or written - start > 20 * MiB:
                break
            time.sleep(0.001)
    else:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    if start is not None and written is not None:
        assert written - start < 200 * MiB  # killed half way through the checkpoint
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == old
    assert awt.validate(target)
    assert awt.load(target)["generation"] == "old"
    assert awt.latest_valid(tmp_path) == str(target)  # a leftover named temp is never a candidate


def test_copy_of_checkpoint_keeps_validating(good: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.pt"
    shutil.copyfile(good, copy)
    assert awt.validate(copy)


# --- background saves -------------------------------------------------------------------------


class SlowToPickle:
    """Pickles (in the saver's worker) only after ``seconds``: a save that takes a while."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> Any:
        time.sleep(self.seconds)
        return (dict, ())


def test_background_save_snapshots_tensors_before_returning(tmp_path: Path) -> None:
    weight = torch.arange(12.0)
    state = {"w": weight, "view": weight[2:5], "p": torch.nn.Parameter(torch.ones(3)), "slow": SlowToPickle(0.2)}
    future = awt.save(state, tmp_path / "a.pt", background=True)
    weight.add_(100)  # training goes on while the worker writes
    state["w"] = torch.zeros(1)
    result = future.result(timeout=60)
    assert result.target.endswith("a.pt")
    loaded = awt.load(tmp_path / "a.pt", weights_only=False)
    assert torch.equal(loaded["w"], torch.arange(12.0))
    assert torch.equal(loaded["view"], torch.arange(2.0, 5.0))
    # The view still shares its storage with the tensor it came from, as torch.save records it.
    assert loaded["view"].untyped_storage().data_ptr() == loaded["w"].untyped_storage().data_ptr()
    assert isinstance(loaded["p"], torch.nn.Parameter)
    assert loaded["p"].requires_grad


def test_background_save_of_unusual_tensors(tmp_path: Path) -> None:
    complex_values = torch.tensor([1 + 2j, 3 - 4j])
    state = {
        "conj": complex_values.conj(),  # a view with the conjugate bit: values not in its storage
        "neg": complex_values.conj().imag,  # a negated view
        "sparse": torch.eye(3).to_sparse(),
        "empty": torch.empty(0),
        "strided": torch.arange(12.0).reshape(3, 4).t(),
        "nested": [(torch.ones(2),), {"deep": torch.zeros(2)}],
    }
    expected = {
        "conj": complex_values.conj().resolve_conj(),
        "neg": -complex_values.imag,
        "sparse": torch.eye(3),
        "strided": torch.arange(12.0).reshape(3, 4).t(),
    }
    awt.save(state, tmp_path / "odd.pt", background=True).result(timeout=60)
    loaded = awt.load(tmp_path / "odd.pt")
    assert torch.equal(loaded["conj"].resolve_conj(), expected["conj"])
    assert torch.equal(loaded["neg"].resolve_neg(), expected["neg"])
    assert torch.equal(loaded["sparse"].to_dense(), expected["sparse"])
    assert loaded["empty"].numel() == 0
    assert torch.equal(loaded["strided"], expected["strided"])
    assert loaded["strided"].stride() == (1, 4)
    assert isinstance(loaded["nested"][0], tuple)
    assert torch.equal(loaded["nested"][1]["deep"], torch.zeros(2))


def test_async_saves_of_one_target_commit_in_order(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    with awt.AsyncSaver(max_pending=3) as saver:
        futures = [saver.save({"n": n, "slow": SlowToPickle(0.05 * (3 - n))}, target) for n in range(3)]
        versions = [future.result(timeout=60).version for future in futures]
    assert awt.load(target, weights_only=False)["n"] == 2
    mtimes = [version.mtime_ns for version in versions]  # type: ignore[union-attr]
    assert mtimes == sorted(mtimes)


def test_async_error_surfaces_on_the_future_and_on_the_next_save(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    awt.save({"v": 1}, target)
    old = target.read_bytes()
    saver = awt.AsyncSaver()
    failed = saver.save({"bad": Unpicklable()}, target)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        failed.result(timeout=60)
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        saver.save({"v": 2}, target)
    assert target.read_bytes() == old
    assert entries(tmp_path) == ["model.pt"]
    # Reported once: the saver goes on.
    assert saver.save({"v": 3}, target).result(timeout=60).bytes_written > 0
    saver.close()
    assert awt.load(target)["v"] == 3
    with pytest.raises(UsageError, match="closed"):
        saver.save({"v": 4}, target)


def test_async_then_waits_for_the_saves_before_it(tmp_path: Path) -> None:
    saver = awt.AsyncSaver()
    seen: list[bool] = []
    saver.save({"slow": SlowToPickle(0.3)}, tmp_path / "new.pt")
    done = saver.then(lambda: seen.append((tmp_path / "new.pt").exists()) or "ran")
    assert seen == []
    assert done.result(timeout=60) == "ran"
    assert seen == [True]
    failing = saver.save({"slow": SlowToPickle(0.1), "bad": Unpicklable()}, tmp_path / "bad.pt")
    skipped = saver.then(lambda: seen.append(False))
    with pytest.raises(awt.DependencyFailedError) as caught:
        skipped.result(timeout=60)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert seen == [True]
    with pytest.raises(RuntimeError):
        failing.result()
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        saver.wait()
    saver.wait()  # reported once


def test_async_max_pending_bounds_the_snapshots_in_memory(tmp_path: Path) -> None:
    saver = awt.AsyncSaver(max_pending=1)
    first = saver.save({"slow": SlowToPickle(0.3)}, tmp_path / "a.pt")
    assert saver.pending == 1
    assert not first.done()
    saver.save({"v": 2}, tmp_path / "b.pt")  # blocks until the first one is written
    assert first.done()
    saver.wait()
    assert saver.pending == 0
    with pytest.raises(UsageError):
        awt.AsyncSaver(max_pending=0)


def test_async_wait_from_the_worker_is_refused(tmp_path: Path) -> None:
    saver = awt.AsyncSaver()
    future = saver.then(saver.wait)
    with pytest.raises(UsageError, match="worker"):
        future.result(timeout=60)
    with pytest.raises(UsageError, match="worker"):
        saver.wait()  # that error is also reported on the next call


def test_background_saves_finish_before_the_interpreter_exits(tmp_path: Path) -> None:
    target = tmp_path / "at-exit.pt"
    proc = run_python(
        """
        import sys, time
        import torch
        import atomicwrite.torch as awt

        class Slow:
            def __reduce__(self):
                time.sleep(0.5)
                return (dict, ())

        awt.save({"w": torch.ones(3), "slow": Slow()}, sys.argv[1], background=True)
        print("returned", flush=True)
        """,
        str(target),
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "returned"
    assert torch.equal(awt.load(target, weights_only=False)["w"], torch.ones(3))
