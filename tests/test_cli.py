"""The `mbsnet` command line: discovery of sub-commands and user-facing errors."""

import pytest

from mbsnet.cli import command_names, main

EXPECTED = {"enhance", "evaluate", "params", "prepare", "profile", "report", "score", "train",
            "watch"}


def test_every_subcommand_is_discovered():
    assert EXPECTED <= set(command_names())


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out


def test_runtime_error_is_one_line_and_exit_status_1(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["params", "--config", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "mbsnet params: error:" in err and str(missing) in err
    assert "Traceback" not in err
    assert main(["score", str(tmp_path / "missing.wav"), str(tmp_path / "other.wav")]) == 1


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:       # argparse: an unknown option
        main(["score", "--no-such-option"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    # a wrong option value found by the command itself (UsageError)
    assert main(["watch", "--every", "0", "--", "true"]) == 2
    assert capsys.readouterr().err == "mbsnet watch: error: --every must be positive, got 0.0\n"


def test_a_failed_write_is_one_line_naming_the_path(monkeypatch, capsys):
    """A folder made read-only mid-run: the OSError of the write, not a traceback."""
    from mbsnet.commands import score

    def fail(args):
        raise PermissionError(13, "Permission denied", "results/abl1/profile.json")

    monkeypatch.setattr(score, "run", fail)
    assert main(["score", "a.wav", "b.wav"]) == 1
    assert capsys.readouterr().err == (
        "mbsnet score: error: Permission denied: results/abl1/profile.json\n")


@pytest.mark.parametrize("command", [
    ["evaluate", "--noisy", "--data", "DATA", "--out", "OUT"],
    ["profile", "--config", "CONFIG", "--ablation", "bsrnn", "--out", "OUT/profile.json"],
    ["report", "--config", "CONFIG", "--results", "RESULTS", "--out", "OUT/report.html"],
], ids=["evaluate", "profile", "report"])
def test_unwritable_output_is_one_line_before_any_work(command, tmp_path, capsys):
    """A file where the output folder should be: refused before the work starts."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    (tmp_path / "results").mkdir()
    values = {"DATA": str(tmp_path / "manifest.tsv"), "OUT": str(blocker / "out"),
              "CONFIG": str(root / "tests" / "configs" / "tiny.yaml"),
              "RESULTS": str(tmp_path / "results")}
    argv = [values.get(word, word) for word in command]
    argv = [word.replace("OUT", str(blocker / "out")) for word in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"cannot write to {blocker / 'out'}: Not a directory" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
