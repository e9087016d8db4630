"""infra.io: atomic file and directory writes with shared-filesystem modes, strict and live JSONL reading."""

from __future__ import annotations

import json
import os
import stat

import pytest

from infra import io


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_text_bytes_json_writes_are_readable_by_others_and_leave_no_temp(tmp_path, umask_022):
    io.atomic_write_text(tmp_path / "a" / "t.txt", "héllo\n")
    io.atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    io.atomic_write_json(tmp_path / "a" / "j.json", {"b": 1, "a": 2}, sort_keys=True)
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "j.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert {mode(p) for p in (tmp_path / "a").iterdir()} == {0o644}  # not mkstemp's 0600
    assert leftovers(tmp_path / "a") == []


def test_atomic_path_keeps_the_suffix_replaces_on_success_and_cleans_up_on_error(tmp_path, umask_022):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with io.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".png") and tmp != target
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # readers see the old file until the block ends
    assert target.read_bytes() == b"new" and mode(target) == 0o644
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"new" and leftovers(tmp_path) == []


def test_atomic_directory_swaps_a_complete_directory_in_and_keeps_the_old_one_on_error(tmp_path, umask_022):
    target = tmp_path / "hf_model"
    with io.atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (target / "config.json").exists() and mode(target) == 0o755  # not mkdtemp's 0700
    with io.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["weights"]
    with pytest.raises(ValueError):
        with io.atomic_directory(target) as tmp:
            (tmp / "partial").write_text("x")
            raise ValueError("export failed")
    assert sorted(p.name for p in target.iterdir()) == ["weights"] and leftovers(tmp_path) == []


def test_replace_directory_names_the_swapped_out_directory(tmp_path):
    (tmp_path / "step_1").mkdir()
    (tmp_path / "step_1" / "v").write_text("1")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "v").write_text("2")
    io.replace_directory(tmp_path / "new", tmp_path / "step_1", old=tmp_path / "old_step_1")
    assert (tmp_path / "step_1" / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]


def test_read_jsonl_is_strict_and_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n[1]\n')
    with pytest.raises(io.JsonlError, match=r"rows.jsonl:3: expected a JSON object"):
        io.read_jsonl(path)
    with pytest.raises(FileNotFoundError):
        io.read_jsonl(tmp_path / "missing.jsonl")
    io.atomic_write_jsonl(path, [{"a": 1}, {"b": "é"}])
    assert io.read_jsonl(path) == [{"a": 1}, {"b": "é"}]


def test_read_live_jsonl_skips_torn_lines_and_a_missing_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert io.read_live_jsonl(path) == []
    path.write_bytes(
        json.dumps({"step": 1}).encode()
        + b'\n{"step": 2, "tr\n'
        + json.dumps({"step": 3}).encode()
        + b'\n{"step": 4, "x": "\xc3'
    )  # a killed writer's line, then one cut inside a character
    assert io.read_live_jsonl(path) == [{"step": 1}, {"step": 3}]
