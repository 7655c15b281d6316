"""``trainer._files.atomic_write``: the one way hpsearch writes a file whole or not at all."""

from __future__ import annotations

import pytest

from trainer._files import atomic_write


def test_atomic_write_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("old")
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"  # readers see the old file until the rename
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]


def test_atomic_write_keeps_the_old_file_and_no_temporary_after_an_error(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]


def test_atomic_write_gives_each_writer_its_own_temporary(tmp_path):
    path = tmp_path / "state.safetensors"
    with atomic_write(path) as a, atomic_write(path) as b:
        assert a != b  # two threads of one process writing the same file do not collide
        a.write_text("a")
        b.write_text("b")
    assert path.read_text() == "a"  # the outer block ends last: its rename wins
