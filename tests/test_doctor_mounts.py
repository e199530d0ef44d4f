"""doctor on NFS and Lustre: what their mount options change in the guarantee matrix.

No NFS server or Lustre cluster can run in this sandbox, so these tests feed the parser real
/proc/self/mountinfo lines of such mounts (copied in the kernel's format) instead of mounting
one; the mount table is the only thing stood in for.  One test runs the full probe on a real
local directory to show that nothing changes there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atomicwrite._cli import doctor
from atomicwrite._cli.doctor import diagnose, mount_notes, mount_options, parse_mountinfo

NFS3_NOLOCK = (
    "412 29 0:52 / /mnt/data rw,relatime shared:220 - nfs 10.0.0.5:/export rw,vers=3,rsize=1048576,"
    "wsize=1048576,namlen=255,hard,nolock,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.5,"
    "mountvers=3,mountport=20048,mountproto=udp,local_lock=all,addr=10.0.0.5"
)
NFS4 = (
    "413 29 0:53 / /mnt/home rw,relatime shared:221 - nfs4 10.0.0.5:/home rw,vers=4.2,rsize=1048576,"
    "wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.9,"
    "local_lock=none,addr=10.0.0.5"
)
NFS4_NOCTO_LOCAL_FLOCK = NFS4.replace("local_lock=none", "local_lock=flock,nocto")
LUSTRE = "500 29 0:60 / /lustre rw,relatime shared:300 - lustre 10.1.0.1@o2ib:/fs1 rw,{},lazystatfs"
EXT4 = "29 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro"


def notes(line: str) -> dict[str, bool | None]:
    parsed = parse_mountinfo(line)
    assert parsed is not None
    _, (_, fstype, _, options) = parsed
    return {note.key: note.holds for note in mount_notes(fstype, mount_options(options))}


def test_parse_mountinfo_keeps_the_file_system_options() -> None:
    parsed = parse_mountinfo(NFS3_NOLOCK)
    assert parsed is not None
    device, (point, fstype, source, options) = parsed
    assert (device, point, fstype, source) == ((0, 52), "/mnt/data", "nfs", "10.0.0.5:/export")
    assert mount_options(options)["vers"] == "3"
    assert "nolock" in mount_options(options)
    assert parse_mountinfo("not a mountinfo line") is None


def test_nfs3_nolock_loses_locks_across_hosts() -> None:
    found = notes(NFS3_NOLOCK)
    assert found["locks_across_hosts"] is False
    assert found["nfs_exclusive_create"] is None
    assert found["nfs_commit"] is None
    assert found["nfs_visibility"] is None


def test_nfs4_with_locking_claims_nothing_untested() -> None:
    found = notes(NFS4)
    assert found == {"nfs_commit": None, "nfs_visibility": None, "locks_across_hosts": None}
    details = " ".join(n.detail for n in mount_notes("nfs4", mount_options("vers=4.2,local_lock=none")))
    assert "not tested on a real server" in details


def test_nfs4_local_flock_and_nocto_are_downgrades() -> None:
    found = notes(NFS4_NOCTO_LOCAL_FLOCK)
    assert found["locks_across_hosts"] is False
    assert found["nfs_visibility"] is False


@pytest.mark.parametrize(("option", "holds"), [("flock", None), ("localflock", False), ("noflock", False)])
def test_lustre_flock_options(option: str, holds: bool | None) -> None:
    assert notes(LUSTRE.format(option)) == {"locks_across_hosts": holds}


def test_lustre_without_a_flock_option_is_unconfirmed() -> None:
    [note] = mount_notes("lustre", mount_options("rw,lazystatfs"))
    assert note.holds is None
    assert "default" in note.detail


def test_local_file_systems_get_no_notes() -> None:
    assert notes(EXT4) == {}
    assert mount_notes("tmpfs", mount_options("rw,nolock")) == []


def test_diagnose_on_a_real_local_directory_is_unchanged(tmp_path: Path) -> None:
    report = diagnose(str(tmp_path))
    keys = {g.key for g in report.guarantees}
    assert not keys & {"nfs_commit", "nfs_visibility", "locks_across_hosts", "nfs_exclusive_create"}
    assert "mount_options" not in {c.key for c in report.checks}
    [cas] = [g for g in report.guarantees if g.key == "compare_and_swap"]
    assert cas.detail == "race-free with lock=True"
    filesystem = next(c for c in report.checks if c.key == "filesystem")
    assert isinstance(filesystem.value["options"], str)


def test_nfs_notes_reach_the_json_and_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probes run on the real local directory; only the mount table says NFS."""
    parsed = parse_mountinfo(NFS3_NOLOCK)
    assert parsed is not None
    _, (point, fstype, source, options) = parsed

    def nfs_mount(path: str) -> dict[str, Any]:
        return {"type": fstype, "magic": "0x6969", "mount_point": point, "source": source, "options": options}

    monkeypatch.setattr(doctor, "filesystem_type", nfs_mount)
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    report = diagnose(str(tmp_path))
    answer = json.loads(json.dumps(report.to_json(), default=str))
    assert answer["guarantees"]["locks_across_hosts"]["holds"] is False
    # The compare-and-swap row agrees: lock=True excludes this host's writers only.
    assert "this host's writers only" in answer["guarantees"]["compare_and_swap"]["detail"]
    assert answer["checks"]["mount_options"]["value"]["local_lock"] == "all"
    assert answer["full_guarantees"] is False
    assert any("local to this host" in line for line in answer["recommendations"])

    from atomicwrite._cli.main import _print_doctor

    _print_doctor(report)
    printed = capsys.readouterr().out
    assert "locks across hosts" in printed
    assert "NFSv3: exclusive create" in printed
