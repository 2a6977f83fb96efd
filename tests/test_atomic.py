"""Atomic writes: the target appears whole or not at all, with ordinary file permissions."""

from __future__ import annotations

import os
import stat

import pytest

from agebias.atomic import atomic_path, write_json, write_text


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_outputs_get_umask_permissions_and_json_nan_is_null(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {"x": float("nan"), "y": 1.5})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
    assert (tmp_path / "r.json").read_text().replace(" ", "").replace("\n", "") == '{"x":null,"y":1.5}'
