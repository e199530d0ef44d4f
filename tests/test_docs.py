"""The documentation's examples run: every ```python block of README.md and docs/*.md.

Each block runs as written, on its own, in a fresh empty directory (its current directory), once
per local strategy variant, so an example that the docs show cannot silently rot.  A block that
must not run is fenced as ```text or ```console instead.  Tracebacks point at the Markdown file and
its line.  A block containing the line ``# POSIX only`` is skipped on Windows.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import atomicwrite._serializers as serializers

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
POSIX_ONLY = "# POSIX only"
NEEDS_TORCH = "import torch"
# "from lightning..." / "import lightning" and atomicwrite's adapters for it.
NEEDS_LIGHTNING = re.compile(r"^\s*(?:from|import)\s+(?:lightning|pytorch_lightning|atomicwrite\.lightning)\b", re.M)
# Labels that would look like Python to a reader but escape this test.
UNTESTED_PYTHON_LABELS = {"py", "py3", "python3", "pycon", "ipython", "pyi"}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    page: Path
    line: int  # of the opening fence, counting from 1
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"


def fenced_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, also those indented inside admonitions or lists."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        words = info.replace("{", " ").replace("}", " ").split()
        language = words[0].lstrip(".").lower() if words else ""
        body: list[str] = []
        end = index + 1
        while True:
            if end == len(lines):
                raise AssertionError(f"{page.name}:{index + 1}: code fence {fence!r} is never closed")
            closing = _FENCE.match(lines[end])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            text = lines[end]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            end += 1
        blocks.append(Block(page, index + 1, language, "\n".join(body) + "\n"))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language == "python"]


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory; the umask and the serializer registry are put back after."""
    directory = tmp_path / "example"
    directory.mkdir()
    monkeypatch.chdir(directory)
    monkeypatch.setattr(serializers, "_REGISTRY", dict(serializers._REGISTRY))
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        yield directory
    finally:
        os.umask(umask)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[block.name for block in PYTHON_BLOCKS])
def test_example_runs(block: Block, isolated: Path, local_variant: str) -> None:
    if sys.platform == "win32" and POSIX_ONLY in block.code:
        pytest.skip("the example uses POSIX-only features (mode bits, symlinks, signals)")
    if NEEDS_TORCH in block.code:
        pytest.importorskip("torch", reason="the example needs torch (pip install torch==2.13.0)")
    if NEEDS_LIGHTNING.search(block.code):
        pytest.importorskip("lightning", reason="the example needs lightning (pip install 'lightning>=2.6,<2.7')")
    # Each example starts from an empty memory:// too, as it does from an empty directory.
    from fsspec.implementations.memory import MemoryFileSystem

    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs[:] = [""]
    # Leading newlines make the line numbers of a traceback those of the Markdown file.
    source = "\n" * block.line + block.code
    code = compile(source, str(block.page), "exec")
    exec(code, {"__name__": "docs_example"})


def test_every_page_has_been_read() -> None:
    names = {page.relative_to(ROOT).as_posix() for page in PAGES}
    assert {"README.md", "docs/index.md", "docs/guide.md", "docs/guarantees.md"} <= names
    for name in ("README.md", "docs/index.md", "docs/guide.md"):
        assert any(block.name.startswith(f"{name}:") for block in PYTHON_BLOCKS), f"{name} has no example"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.name for block in ALL_BLOCKS])
def test_fences_are_labelled(block: Block) -> None:
    """An unlabelled or ```py fence would escape test_example_runs: every fence says what it is."""
    assert block.language, f"{block.name}: label the fence (```python runs; ```text or ```console do not)"
    assert block.language not in UNTESTED_PYTHON_LABELS, f"{block.name}: use ```python (it runs) or ```text"
