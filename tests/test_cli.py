"""The `mbsnet` command line: discovery of sub-commands and user-facing errors."""

import pytest

from mbsnet.cli import command_names, main

EXPECTED = {"enhance", "evaluate", "params", "prepare", "profile", "report", "score", "train"}


def test_every_subcommand_is_discovered():
    assert EXPECTED <= set(command_names())


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out


def test_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["params", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "mbsnet params: error:" in err and str(missing) in err
    assert "Traceback" not in err


def test_a_failed_write_is_one_line_naming_the_path(monkeypatch, capsys):
    """A folder made read-only mid-run: the OSError of the write, not a traceback."""
    from mbsnet.commands import score

    def fail(args):
        raise PermissionError(13, "Permission denied", "results/abl1/profile.json")

    monkeypatch.setattr(score, "run", fail)
    assert main(["score", "a.wav", "b.wav"]) == 2
    assert capsys.readouterr().err == (
        "mbsnet score: error: Permission denied: results/abl1/profile.json\n")
