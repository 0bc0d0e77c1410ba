"""Atomic writes: a failure leaves neither a partial file nor a temporary behind."""

import os
import stat

import pytest

from mbsnet.atomic import atomic_dir, atomic_path, write_json


def write_half_then_fail(target):
    with atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")


def build_half_then_fail(target):
    with atomic_dir(target) as tmp:
        (tmp / "part.wav").write_bytes(b"x")
        raise ValueError("bad input")


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="crash"):
        write_half_then_fail(target)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_written_file_has_the_usual_mode(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    mode = stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'


def test_failed_directory_build_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="bad input"):
        build_half_then_fail(tmp_path / "data")
    assert os.listdir(tmp_path) == []


def test_directory_replaces_the_old_one_on_success(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "stale.txt").write_text("old")
    with atomic_dir(tmp_path / "data") as tmp:
        (tmp / "new.txt").write_text("new")
    assert os.listdir(tmp_path / "data") == ["new.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o777 & ~umask
