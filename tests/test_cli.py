"""The `mbsnet` command line: discovery of sub-commands, user-facing errors and what
-q/-v show."""

import logging

import pytest

from mbsnet.cli import _command_in, command_names, main
from mbsnet.console import TO_STDERR, TO_STDOUT, console

from .fake_voicebank import make_fake_voicebank
from .helpers import ROOT, TINY_CONFIG

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
    assert "mbsnet params: error:" in err
    assert str(missing) in err
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
    with pytest.raises(SystemExit) as exit_info:       # -q and -v exclude each other
        main(["-q", "-v", "score", "a.wav", "b.wav"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


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
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    (tmp_path / "results").mkdir()
    values = {"DATA": str(tmp_path / "manifest.tsv"), "OUT": str(blocker / "out"),
              "CONFIG": str(TINY_CONFIG),
              "RESULTS": str(tmp_path / "results")}
    argv = [values.get(word, word) for word in command]
    argv = [word.replace("OUT", str(blocker / "out")) for word in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"cannot write to {blocker / 'out'}: Not a directory" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# -- what -q and -v show ------------------------------------------------------------------

@pytest.fixture
def voicebank_config(tmp_path):
    """A config importing a tiny fake VoiceBank-DEMAND (prepared in about a second)."""
    tree = make_fake_voicebank(tmp_path / "vb", "official", per_speaker=1)
    config = tmp_path / "config.yaml"
    config.write_text((ROOT / "config.yaml").read_text().replace(
        "source: synthetic", "source: voicebank").replace("root: null", f"root: {tree.root}"))
    return config


def test_default_output_is_the_printed_text(voicebank_config, tmp_path, capsys):
    """INFO on stdout and progress on stderr, as bare lines: the text users always saw."""
    out = tmp_path / "data"
    argv = ["prepare", "--config", str(voicebank_config), "--out", str(out), "--workers", "1"]
    assert main(argv) == 0
    shown = capsys.readouterr()
    assert shown.out.startswith(f"prepare: importing 4 VoiceBank-DEMAND pairs from "
                                f"{voicebank_config.parent / 'vb'} (official layout)\n"
                                f"prepare: wrote {out} (train 2 utterances / 2 speakers, "
                                "valid 1 utterances / 1 speakers, test 1 utterances / 1 "
                                "speakers; 0.00 h) in ")
    assert shown.err == "".join(f"prepare: resampling: {i}/4\n" for i in range(1, 5))
    assert main(argv) == 0
    assert capsys.readouterr() == (
        f"prepare: {out} is up to date (made from the same data config); nothing to do\n", "")


def test_quiet_hides_messages_and_keeps_errors(voicebank_config, tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["prepare", "--config", str(voicebank_config), "--out", str(out), "--workers", "1"]
    assert main(["-q", *argv]) == 0
    assert capsys.readouterr() == ("", "")               # neither messages nor progress
    assert (out / "manifest.tsv").is_file()
    assert main(["--quiet", *argv]) == 0                   # up to date: said only without -q
    assert capsys.readouterr() == ("", "")
    missing = tmp_path / "nope.yaml"
    assert main(["-q", "prepare", "--config", str(missing), "--out", str(out)]) == 1
    shown = capsys.readouterr()
    assert shown.out == ""
    assert shown.err.startswith("mbsnet prepare: error: ")
    assert str(missing) in shown.err


def test_verbose_adds_debug_messages(voicebank_config, tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["prepare", "--config", str(voicebank_config), "--out", str(out), "--workers", "1"]
    assert main(["-v", *argv]) == 0
    printed = capsys.readouterr().out
    assert f"prepare: building {out}: no readable prepare.json (" in printed
    assert printed.splitlines()[0].startswith("mbsnet 0.1.0, Python ")
    assert main(["-v", *argv, "--force"]) == 0
    assert f"prepare: building {out}: --force\n" in capsys.readouterr().out
    assert main([*argv, "--force"]) == 0                   # the default shows no debug
    assert "building" not in capsys.readouterr().out


def test_the_command_is_found_after_the_options():
    assert _command_in(["-q", "score", "a.wav", "b.wav"]) == "score"
    assert _command_in(["--verbose", "watch", "--", "snakemake"]) == "watch"
    assert _command_in(["--help"]) is None
    assert _command_in(["-q", "nope"]) is None


def test_console_streams_and_restores_the_logger(capsys):
    logger = logging.getLogger("mbsnet.test")
    before = logging.getLogger("mbsnet").level
    with console(logging.INFO):
        logger.debug("hidden")
        logger.info("result")
        logger.info("progress", extra=TO_STDERR)
        logger.warning("warning: on stderr")
        logger.warning("warning: on stdout", extra=TO_STDOUT)
    logger.warning("after the block")                     # no console handler any more
    assert capsys.readouterr() == ("result\nwarning: on stdout\n",
                                   "progress\nwarning: on stderr\n")
    assert logging.getLogger("mbsnet").level == before
