"""``atomicwrite verify``: is a file or object complete, by every check that applies to it?

Checks, each run where it applies:

* **torch checkpoint**: the zip structure, ``data.pkl`` and every record's CRC-32, by
  ``atomicwrite.torch.validate`` (imported only here; it needs no torch unless ``full``);
* **recorded checksum**: a checksum stored *with* the object, compared with one computed from
  the content read back.  S3: the object's ``x-amz-checksum-*``, which atomicwrite's S3 writes
  record (CRC64NVME of the whole object by default; a SHA-256 multipart object carries the
  checksum of its parts' checksums); CRC32C and CRC64NVME need awscrt (the ``s3`` extra) and are
  reported as not checkable without it.  GCS: the object's MD5 and CRC32C (the latter with
  awscrt or google-crc32c's C code).  Azure: the blob's Content-MD5, which a single Put Blob records and
  a block-list commit does not.  Anywhere else, or where the store recorded nothing, a
  ``NAME.sha256`` file beside the target in ``sha256sum``'s format.  A store's checksum proves
  that the bytes read back are the bytes the store accepted; only a checksum recorded by the
  producer (the sidecar) also proves the producer sent everything it meant to;
* a directory published by ``atomic_directory`` is checked against its manifest (every file
  present, sizes and SHA-256 match, nothing unlisted); a ``CheckpointStore`` root is checked by
  the generation its ``latest`` pointer names;
* a directory without a manifest of ours is judged by the convention of the tool that wrote it,
  if one recognises it (Orbax, torch.distributed.checkpoint, DeepSpeed, NeMo: see
  `atomicwrite._cli.peers`), and a file by NeMo's ``-unfinished`` marker beside it.

A file that no check applies to is *unverified*, which is not the same as intact.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .._checksums import available, new_digest
from .._errors import TargetNotFoundError, UnsupportedTargetError
from .._strategy import split_protocol

__all__ = ["CheckResult", "VerifyReport", "verify"]

Verdict = Literal["ok", "torn", "unverified"]
_CHUNK = 8 << 20
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class CheckResult:
    """One check: ``ok`` True (passed), False (failed: the content is damaged) or None (could
    not be run here)."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class VerifyReport:
    """Every check run on one target, and the verdict: ``"ok"`` (at least one check passed and
    none failed), ``"torn"`` (a check failed) or ``"unverified"`` (nothing could be checked)."""

    target: str
    kind: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        if any(check.ok is False for check in self.checks):
            return "torn"
        if any(check.ok for check in self.checks):
            return "ok"
        return "unverified"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "kind": self.kind,
            "verdict": self.verdict,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def verify(target: str, *, storage_options: Mapping[str, Any] | None = None, full: bool = False) -> VerifyReport:
    """Run every check that applies to ``target`` (see the module documentation)."""
    options = dict(storage_options or {})
    fs, path = _filesystem(target, options)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise TargetNotFoundError(2, f"cannot verify {target!r}: no such file or object", target) from None
    if info.get("type") == "directory":
        return _verify_directory(target, options, fs, path)
    report = VerifyReport(target, "file")
    report.checks.append(_torch_check(target, options, full, info))
    report.checks.append(_recorded_checksum(target, fs, path, info))
    from .peers import nemo_check

    report.checks.extend(CheckResult(*finding) for finding in nemo_check(fs, path, split_protocol(target)[0]) or [])
    return report


def _verify_directory(target: str, options: Mapping[str, Any], fs: Any, path: str) -> VerifyReport:
    """A directory published by ``atomic_directory`` is checked against its manifest; a
    ``CheckpointStore`` root, by the generation its ``latest`` pointer names; anything else by
    the first other tool's convention that recognises it (`atomicwrite._cli.peers`)."""
    from .._directories.generations import CheckpointStore
    from .._directories.reading import verify_directory

    result = verify_directory(target, storage_options=options)
    kind, where = "directory", ""
    # On a store a prefix without a manifest reads as "no-directory"; fs.info found it.
    unpublished = result.manifest is None and result.problems[0].kind in ("no-manifest", "no-directory")
    if unpublished:
        store = CheckpointStore(target, storage_options=options)
        named = store.pointer()
        if named is not None:
            result = store.verify(named)
            kind, where = "checkpoint store", f"latest is {named}, which "
            unpublished = False
    report = VerifyReport(target, kind)
    if result.manifest is None:
        problem = result.problems[0]
        if unpublished:
            from .peers import recognise

            judged = recognise(fs, path, split_protocol(target)[0])
            if judged is not None:
                tool, findings = judged
                report.kind = f"checkpoint by {tool}'s convention"
                report.checks.extend(CheckResult(*finding) for finding in findings)
                return report
            # No manifest, no pointer, no other tool's marker: nothing says what complete is.
            report.checks.append(CheckResult("manifest", None, problem.detail))
        else:
            report.checks.append(CheckResult("manifest", False, problem.detail))
        return report
    listed = f"{where}lists {len(result.manifest.files)} file(s), {result.manifest.total_bytes} bytes"
    report.checks.append(CheckResult("manifest", True, listed))
    for problem in result.problems:
        report.checks.append(CheckResult(problem.kind, False, f"{problem.name or target}: {problem.detail}"))
    if not result.problems:
        what = "sizes and SHA-256" if result.checked_checksums else "sizes"
        report.checks.append(CheckResult("files", True, f"every listed file present, {what} match"))
    return report


def _filesystem(target: str, options: Mapping[str, Any]) -> tuple[Any, str]:
    import fsspec

    protocol, _ = split_protocol(target)
    try:
        fs, path = fsspec.core.url_to_fs(target, **options)
    except (ImportError, ValueError) as exc:
        raise UnsupportedTargetError(f"cannot read {target!r}: {exc}") from exc
    if protocol in ("", "file", "local"):
        path = fs._strip_protocol(path)
    return fs, path


def _torch_check(target: str, options: Mapping[str, Any], full: bool, info: Mapping[str, Any]) -> CheckResult:
    from .. import torch as checkpoints

    name = "torch checkpoint"
    if not info.get("size") and not target.endswith(_CHECKPOINT_SUFFIXES):
        return CheckResult(name, None, "an empty file, not named like a checkpoint")
    result = checkpoints.validate(target, full=full, storage_options=options)
    if result.reason == "not-a-checkpoint":
        return CheckResult(name, None, f"not a torch checkpoint ({result.detail})")
    return CheckResult(name, result.valid, result.detail if result.valid else f"{result.reason}: {result.detail}")


# --- recorded checksums ------------------------------------------------------------------------


def _recorded_checksum(target: str, fs: Any, path: str, info: Mapping[str, Any]) -> CheckResult:
    protocol, _ = split_protocol(target)
    found: CheckResult | None = None
    if protocol in ("s3", "s3a"):
        found = _s3_checksum(fs, path, info)
    elif protocol in ("gs", "gcs"):
        found = _gcs_checksum(fs, path, info)
    elif protocol in ("az", "abfs", "abfss"):
        found = _azure_checksum(fs, path, info)
    return found if found is not None else _sidecar_checksum(target, fs, path)


def _compare(
    name: str, fs: Any, path: str, recorded: dict[str, str], factories: dict[str, Callable[[], _Hash]]
) -> CheckResult:
    """Hash the content once with every algorithm in ``recorded`` (base64 digests by name)."""
    hashes = {algorithm: factories[algorithm]() for algorithm in recorded}

    def update(chunk: bytes) -> None:
        for digest in hashes.values():
            digest.update(chunk)

    _read(fs, path, update)
    wrong = [a for a, h in hashes.items() if base64.b64encode(h.digest()).decode() != recorded[a]]
    names = " and ".join(recorded)
    if wrong:
        return CheckResult(name, False, f"{' and '.join(wrong)} of the content does NOT match the recorded value")
    return CheckResult(name, True, f"{names} of the content {'match' if len(recorded) > 1 else 'matches'}")


def _gcs_checksum(fs: Any, path: str, info: Mapping[str, Any]) -> CheckResult | None:
    """GCS keeps an MD5 (not for composed objects) and a CRC32C of every object."""
    recorded: dict[str, str] = {}
    factories: dict[str, Callable[[], _Hash]] = {"md5": lambda: hashlib.md5(usedforsecurity=False)}
    if info.get("md5Hash"):
        recorded["md5"] = str(info["md5Hash"])
    crc32c = _factory("crc32c")
    if info.get("crc32c") and crc32c is not None:
        recorded["crc32c"] = str(info["crc32c"])
        factories["crc32c"] = crc32c
    if not recorded:
        return None
    return _compare("recorded checksum (GCS)", fs, path, recorded, factories)


def _azure_checksum(fs: Any, path: str, info: Mapping[str, Any]) -> CheckResult | None:
    """Azure keeps the Content-MD5 given at upload: atomicwrite's single Put Blob sends one; a
    block-list commit records none."""
    settings = info.get("content_settings") or {}
    md5 = settings.get("content_md5") if isinstance(settings, Mapping) else getattr(settings, "content_md5", None)
    if not md5:
        return None
    recorded = {"md5": base64.b64encode(bytes(md5)).decode()}
    return _compare(
        "recorded checksum (Azure Content-MD5)", fs, path, recorded, {"md5": lambda: hashlib.md5(usedforsecurity=False)}
    )


def _sidecar_checksum(target: str, fs: Any, path: str) -> CheckResult:
    name = "recorded checksum"
    sidecar = path + ".sha256"
    try:
        text = fs.cat_file(sidecar).decode("utf-8", "replace")
    except (FileNotFoundError, IsADirectoryError):
        return CheckResult(name, None, "none recorded (no checksum metadata, no NAME.sha256 beside it)")
    words = text.split()
    if not words or len(words[0]) != 64:
        return CheckResult(name, False, f"{sidecar} is not in sha256sum's format")
    digest = hashlib.sha256()
    _read(fs, path, digest.update)
    ok = digest.hexdigest() == words[0].lower()
    what = "matches" if ok else f"does NOT match (content sha256 {digest.hexdigest()})"
    return CheckResult(name, ok, f"sha256 from {sidecar.rpartition('/')[2]} {what}")


def _read(fs: Any, path: str, sink: Callable[[bytes], object]) -> None:
    with fs.open(path, "rb") as source:
        while chunk := source.read(_CHUNK):
            sink(chunk)


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def _factory(algorithm: str) -> Callable[[], _Hash] | None:
    """A running checksum of ``algorithm``, or None where its library is not installed."""
    if not available(algorithm):
        return None
    return lambda: new_digest(algorithm)


_S3_ALGORITHMS: dict[str, Callable[[], _Hash] | None] = {
    "ChecksumSHA256": hashlib.sha256,
    "ChecksumSHA1": lambda: hashlib.sha1(usedforsecurity=False),
    "ChecksumCRC32": _factory("crc32"),
    "ChecksumCRC32C": _factory("crc32c"),
    "ChecksumCRC64NVME": _factory("crc64nvme"),
}


def _s3_checksum(fs: Any, path: str, info: Mapping[str, Any]) -> CheckResult | None:
    """The object's ``x-amz-checksum-*``, checked against its content; None if it has none."""
    bucket, key, _ = fs.split_path(path)
    head = fs.call_s3("head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    found = [(name, head[name]) for name in _S3_ALGORITHMS if head.get(name)]
    if not found:
        return None
    field_name, recorded = found[0]
    factory = _S3_ALGORITHMS[field_name]
    algorithm = field_name.removeprefix("Checksum").lower()
    name = f"recorded checksum (S3 {algorithm})"
    if factory is None:
        return CheckResult(name, None, f"{algorithm} is recorded, but cannot be computed here")
    value, _, count = str(recorded).partition("-")
    first = fs.call_s3("head_object", Bucket=bucket, Key=key, PartNumber=1)
    parts = int(first.get("PartsCount") or 0)
    if head.get("ChecksumType") == "FULL_OBJECT" or (parts <= 1 and not count):
        digest = factory()
        _read(fs, path, digest.update)
        computed = base64.b64encode(digest.digest()).decode()
        how = "of the whole object"
    else:
        sizes = _part_sizes(
            fs, bucket, key, parts=parts, first=int(first["ContentLength"]), total=int(head["ContentLength"])
        )
        computed = base64.b64encode(_composite(fs, path, sizes, factory)).decode()
        how = f"of the {parts} parts' checksums"
    ok = computed == value
    return CheckResult(name, ok, f"the checksum {how} " + ("matches" if ok else f"does NOT match ({computed})"))


def _part_sizes(fs: Any, bucket: str, key: str, *, parts: int, first: int, total: int) -> list[int]:
    """Each part's size: uniform parts (every writer we know) cost one more request; else one
    request per part."""
    last = total - first * (parts - 1)
    if 0 < last <= first:
        tail = fs.call_s3("head_object", Bucket=bucket, Key=key, PartNumber=parts)
        if int(tail["ContentLength"]) == last:
            return [first] * (parts - 1) + [last]
    return [
        int(fs.call_s3("head_object", Bucket=bucket, Key=key, PartNumber=n)["ContentLength"])
        for n in range(1, parts + 1)
    ]


def _composite(fs: Any, path: str, sizes: list[int], factory: Callable[[], _Hash]) -> bytes:
    """S3's composite checksum: the checksum of the concatenated checksums of the parts."""
    outer = factory()
    with fs.open(path, "rb") as source:
        for size in sizes:
            part = factory()
            left = size
            while left:
                chunk = source.read(min(left, _CHUNK))
                if not chunk:
                    raise UnsupportedTargetError(f"{path!r} is shorter than its parts say")
                part.update(chunk)
                left -= len(chunk)
            outer.update(part.digest())
    return outer.digest()
