"""`mbsnet watch`: Snakemake's output read into jobs done of the total and running jobs, the
trainings' epoch, step and ETA from their live logs, the terminal and plain views, the
headline at the end, and real Snakemake runs through the watcher."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mbsnet import watch
from mbsnet.watch import (
    Job,
    Screen,
    SnakemakeOutput,
    TrainingLogs,
    TrainingProgress,
    View,
    headline,
)

from .helpers import BIN

T0 = 1_800_000_000.0


class Clock:
    """A settable clock for the parser."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def step(epoch: int, global_step: int, seconds: float = 2.0) -> dict:
    return {"kind": "step", "epoch": epoch, "step": global_step, "gen_loss": 0.5,
            "disc_loss": 0.3, "lr": 1e-3, "step_seconds": seconds, "skipped": False}


def epoch_line(epoch: int, seconds: float) -> dict:
    return {"kind": "epoch", "epoch": epoch, "gen_loss": 0.5, "val_loss": 0.4, "val_pesq": 1.2,
            "lr": 1e-3, "seconds": seconds, "peak_memory_mb": 10.0, "skipped_steps": 0,
            "disc_skipped": 0, "metric_loss": False}


def write_results(results: Path, lines: list[dict], *, steps_per_epoch: int | None = 50,
                  ablation: str = "abl1") -> Path:
    """A results tree: the resolved config (3 epochs) and one training's live log."""
    config = {"ablations": {ablation: {"model": {}}},
              "training": {"epochs": 3, "steps_per_epoch": steps_per_epoch, "batch_size": 2}}
    (results / "config").mkdir(parents=True, exist_ok=True)
    (results / "config" / "resolved.yaml").write_text(json.dumps(config))
    log = watch.live_log_path(results / ablation / "seed0")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return log


def job_block(rule: str, jobid: int, wildcards: str = "", log: str = "") -> list[str]:
    """The lines Snakemake 9 prints when it starts a job."""
    lines = ["", "[Mon Nov 30 16:06:44 2026]", f"localrule {rule}:",
             f"    output: results/{rule}.out"]
    if log:
        lines.append(f"    log: {log}")
    lines += [f"    jobid: {jobid}", "    reason: Missing output files: x"]
    if wildcards:
        lines.append(f"    wildcards: {wildcards}")
    return lines + ["    resources: tmpdir=/tmp"]


def finished(rule: str, jobid: int, done: int, total: int) -> list[str]:
    return ["[Mon Nov 30 16:07:27 2026]", f"Finished jobid: {jobid} (Rule: {rule})",
            f"{done} of {total} steps ({round(100 * done / total)}%) done"]


JOB_STATS = ["Building DAG of jobs...", "Using shell: /usr/bin/bash", "Provided cores: 4",
             "Rules claiming more threads will be scaled down.", "Job stats:",
             "job               count", "--------------  -------", "prepare_data          1",
             "profile               2", "train                 2", "report                1",
             "total                 9", "", "Select jobs to execute...", "Execute 2 jobs..."]


def feed(output: SnakemakeOutput, lines: list[str]) -> list[str]:
    shown = []
    for line in lines:
        shown += output.feed(line + "\n")
    return shown


# -- the view of a run -------------------------------------------------------------------


def test_view_of_a_run_from_snakemake_output_and_a_live_log(tmp_path):
    """Jobs done of the total from Snakemake's lines; the training's epoch, step and ETA from
    its live log: 70 steps left at 110 s per 50-step epoch = 154 s, written 4 s ago."""
    results = tmp_path / "results"
    log = write_results(results, [step(1, n) for n in range(1, 51)] + [epoch_line(1, 110.0)]
                        + [step(2, n) for n in range(51, 81)])
    os.utime(log, (T0 + 996, T0 + 996))
    clock = Clock(T0 + 10)
    output = SnakemakeOutput(clock)
    shown = feed(output, JOB_STATS + job_block("prepare_data", 3))
    clock.now = T0 + 26
    shown += feed(output, job_block("profile", 4, "ablation=abl1")
                  + finished("prepare_data", 3, 1, 9))
    clock.now = T0 + 90
    shown += feed(output, finished("profile", 4, 2, 9)
                  + job_block("profile", 5, "ablation=abl2"))
    clock.now = T0 + 100
    shown += feed(output, finished("profile", 5, 3, 9)
                  + job_block("train", 6, "ablation=abl1, seed=0",
                              "results/logs/train/abl1_seed0.log")
                  + job_block("profile", 7, "ablation=abl3"))
    clock.now = T0 + 940
    shown += feed(output, ["Select jobs to execute..."])

    assert shown == ["1/9 done: prepare_data (0:16)", "2/9 done: profile abl1 (1:04)",
                     "3/9 done: profile abl2 (0:10)"]
    view = View(output, TrainingLogs(results), started=T0)
    assert view.lines(T0 + 1000) == [
        "3/9 jobs done, 2 running (16:40 elapsed)",
        "  train abl1 seed0: epoch 2/3 step 30/50, ETA 2:30",
        "  profile abl3: running 15:00",
    ]
    # the ETA counts down between two log lines, and stops at 0:00
    assert view.lines(T0 + 1100)[1] == "  train abl1 seed0: epoch 2/3 step 30/50, ETA 0:50"
    assert view.lines(T0 + 2000)[1] == "  train abl1 seed0: epoch 2/3 step 30/50, ETA 0:00"


def test_total_is_unknown_until_snakemake_says_it():
    output = SnakemakeOutput(Clock(T0))
    assert View(output, TrainingLogs("nowhere"), T0).lines(T0 + 5) == [
        "0/? jobs done, 0 running (0:05 elapsed)"]


def test_a_previous_runs_live_log_is_not_shown_as_this_ones(tmp_path):
    """A training that has not yet rewritten the log left by an earlier run is starting."""
    results = tmp_path / "results"
    log = write_results(results, [step(1, n) for n in range(1, 11)])
    os.utime(log, (T0 - 60, T0 - 60))
    logs = TrainingLogs(results)
    assert logs.describe("abl1", "0", now=T0 + 5, started=T0) == "starting"
    assert logs.describe("abl1", "0", now=T0 + 5, started=T0 - 100).startswith("epoch 1/3")
    assert logs.describe("abl2", "0", now=T0 + 5, started=T0) == "starting"  # no log yet


# -- a training's progress ---------------------------------------------------------------


def test_eta_before_the_first_epoch_ends_is_the_median_step_time():
    """The slow first step does not count: 140 steps left x 1 s."""
    lines = [step(1, 1, 6.0)] + [step(1, n, 1.0) for n in range(2, 11)]
    progress = TrainingProgress.read(lines, (3, 50))
    assert progress.describe() == "epoch 1/3 step 10/50, ETA 2:20"


def test_validating_resumed_and_finished_trainings():
    full_epoch = [step(1, n, 1.0) for n in range(1, 51)]
    assert TrainingProgress.read(full_epoch, (3, 50)).describe() == \
        "epoch 1/3 step 50/50 (validating), ETA 1:40"
    assert TrainingProgress.read(full_epoch + [epoch_line(1, 60.0)], (3, 50)).describe() == \
        "epoch 2/3 step 0/50, ETA 2:00"
    resumed = [{"kind": "resume", "epoch": 2, "step": 70, "from": "last.pt"}]
    assert TrainingProgress.read(resumed, (3, 50)).describe() == "epoch 2/3 step 20/50"
    done = [epoch_line(e, 60.0) for e in (1, 2, 3)]
    assert TrainingProgress.read(done, (3, 50)).describe() == \
        "all 3 epochs done, writing the model"
    long = TrainingProgress.read([step(1, 1, 100.0)], (3, 50))
    assert long.describe() == "epoch 1/3 step 1/50, ETA 4:08:20"
    assert TrainingProgress.read([step(2, 80)], None).describe() == \
        "epoch 2 step 80 (total unknown)"


def test_half_written_last_line_is_skipped(tmp_path):
    results = tmp_path / "results"
    log = write_results(results, [step(1, n, 1.0) for n in range(1, 6)])
    with open(log, "a") as handle:
        handle.write('{"kind": "step", "epo')
    os.utime(log, (T0, T0))
    assert TrainingLogs(results).describe("abl1", "0", now=T0) == \
        "epoch 1/3 step 5/50, ETA 2:25"


def test_steps_per_epoch_null_is_one_pass_over_the_training_set(tmp_path):
    """Counted from the manifest as the trainer counts it (and the live log where the
    trainer writes it)."""
    from mbsnet.train.loop import RunPaths
    from mbsnet.train.loop import steps_per_epoch as trainer_steps

    results = tmp_path / "results"
    write_results(results, [], steps_per_epoch=None)
    manifest = results / "data" / "manifest.tsv"
    manifest.parent.mkdir(parents=True)
    rows = ["utt_id\tsplit\tduration"] + [f"t{i}\ttrain\t1.0" for i in range(7)] + [
        f"v{i}\tvalid\t1.0" for i in range(3)]
    manifest.write_text("\n".join(rows) + "\n")
    settings = {"steps_per_epoch": None, "batch_size": 2}
    assert watch.training_totals(results / "config" / "resolved.yaml", manifest, "abl1") == \
        (3, trainer_steps(settings, 7)) == (3, 3)
    assert watch.live_log_path(tmp_path / "run") == RunPaths(tmp_path / "run").live_log
    assert watch.training_totals(tmp_path / "absent.yaml", manifest, "abl1") is None


# -- Snakemake's errors ------------------------------------------------------------------

FAILED_RUN = """\
Execute 2 jobs...

[Mon Nov 30 16:17:09 2026]
localrule a:
    output: results/b.txt
    log: results/logs/b.log
    jobid: 1
    reason: Missing output files: results/b.txt
    wildcards: x=b
    resources: tmpdir=/tmp
[Mon Nov 30 16:17:09 2026]
localrule a:
    output: results/c.txt
    log: results/logs/c.log
    jobid: 2
    reason: Missing output files: results/c.txt
    wildcards: x=c
    resources: tmpdir=/tmp
Shell command: touch results/c.txt
RuleException:
CalledProcessError in file "/tmp/wb/fail/Snakefile", line 6:
Command 'set -euo pipefail;  exit 3' returned non-zero exit status 3.
[Mon Nov 30 16:17:10 2026]
Error in rule a:
    message: None
    jobid: 1
    output: results/b.txt
    log: results/logs/b.log (check log file(s) for error details)
    shell:
        exit 3
        (command exited with non-zero exit code)
[Mon Nov 30 16:17:10 2026]
Finished jobid: 2 (Rule: a)
1 of 3 steps (33%) done
Exiting because a job execution failed. Look above for error messages
Complete log(s): /tmp/wb/fail/.snakemake/log/2026-11-30T161709.322957.snakemake.log
Elapsed time: 0:00:01.291839
WorkflowError:
At least one job did not complete successfully.
"""


def test_errors_are_shown_with_the_failed_jobs_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("results/logs").mkdir(parents=True)
    Path("results/logs/b.log").write_text(
        "".join(f"line {i}\n" for i in range(20)) + "Traceback: boom\n")
    output = SnakemakeOutput(Clock(T0))
    shown = feed(output, FAILED_RUN.splitlines()) + output.close()
    assert shown == [
        "RuleException:",
        'CalledProcessError in file "/tmp/wb/fail/Snakefile", line 6:',
        "Command 'set -euo pipefail;  exit 3' returned non-zero exit status 3.",
        "Error in rule a:",
        "    message: None",
        "    jobid: 1",
        "    output: results/b.txt",
        "    log: results/logs/b.log (check log file(s) for error details)",
        "    shell:",
        "        exit 3",
        "        (command exited with non-zero exit code)",
        "  last lines of results/logs/b.log:",
        *[f"  | line {i}" for i in range(6, 20)],
        "  | Traceback: boom",
        "1/3 done: a c (0:00)",
        "Exiting because a job execution failed. Look above for error messages",
        "WorkflowError:",
        "At least one job did not complete successfully.",
    ]
    assert [job.label for job in output.failed] == ["a b"]
    assert output.running == {}
    assert View(output, TrainingLogs(), T0).lines(T0 + 8) == [
        "1/3 jobs done, 0 running, 1 failed (0:08 elapsed)"]


def test_older_finished_lines_and_checkpoint_rules():
    output = SnakemakeOutput(Clock(T0))
    shown = feed(output, ["localcheckpoint split:", "    jobid: 3", "    wildcards: part=a",
                          "Finished job 3.", "1 of 2 steps (50%) done"])
    assert shown == ["1/2 done: split a (0:00)"]
    assert output.running == {}


def test_job_label_names_the_wildcards():
    job = Job("4", "evaluate", T0, {"ablation": "abl1", "seed": "2"})
    assert job.label == "evaluate abl1 seed2"
    assert Job("1", "report", T0).label == "report"


# -- the screen --------------------------------------------------------------------------


def test_plain_view_every_period_and_only_while_a_job_runs():
    stream = io.StringIO()
    screen = Screen(stream, live=False, every=60, started=T0)
    running = ["1/9 jobs done, 1 running (0:30 elapsed)", "  profile abl1: running 0:30"]
    screen.update(running, T0 + 30)
    screen.message("1/9 done: prepare_data (0:16)")
    screen.update(running, T0 + 61)
    screen.update(running, T0 + 62)
    screen.update(["2/9 jobs done, 0 running (2:10 elapsed)"], T0 + 130)
    screen.update(running, T0 + 131)
    screen.close()
    assert stream.getvalue() == (
        "1/9 done: prepare_data (0:16)\n" + "\n".join(running) + "\n"
        + "\n".join(running) + "\n")


def test_terminal_view_is_redrawn_in_place_below_the_messages():
    stream = io.StringIO()
    screen = Screen(stream, live=True, every=60, started=T0)
    screen.update(["a", "b"], T0)
    screen.update(["a", "b"], T0 + 1)  # unchanged: nothing written
    screen.message("done")
    screen.update(["c"], T0 + 2)
    screen.close()
    up2, up1 = "\x1b[2A\x1b[J", "\x1b[1A\x1b[J"
    assert stream.getvalue() == f"a\nb\n{up2}done\na\nb\n{up2}c\n{up1}"


# -- the headline at the end -------------------------------------------------------------

SUMMARY_MD = """\
| System | PESQ-WB | SI-SDR | Params | RTF |
|---|---|---|---|---|
| noisy | 1.33 ± 0.17 | 7.56 ± 2.42 | — | — |
| abl1 | **1.87 ± 0.27** | **10.75 ± 1.62** | **3.86 M** | 0.2 |
| optimized_as_coded | missing [1] | 6.35 ± 1.09 | 1.2 M | **0.1** |

Mean ± 95 % CI over test utterances. Best per column in bold.

[1] missing: no metrics.tsv{two_spaces}

## What each change buys

| Step | Change |
|---|---|
| abl1 → abl2 | x |
""".format(two_spaces="  ")  # summary.md ends a note with a Markdown line break


def test_headline_is_the_metric_columns_aligned(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text(SUMMARY_MD)
    assert headline("results/report.html", summary) == "\n".join([
        "Report: results/report.html",
        "",
        "System              PESQ-WB      SI-SDR",
        "noisy               1.33 ± 0.17  7.56 ± 2.42",
        "abl1                1.87 ± 0.27  10.75 ± 1.62",
        "optimized_as_coded  missing [1]  6.35 ± 1.09",
        "[1] missing: no metrics.tsv",
        "",
        f"Mean ± 95 % CI over the test utterances; costs and the steps between ablations: "
        f"{summary}",
    ])


# -- real runs through the watcher -------------------------------------------------------

FAKE_TRAIN = """\
import json, sys, time
from pathlib import Path

ablation, seed, fail = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
print(f"training {ablation}", flush=True)
log = Path(f"results/{ablation}/seed{seed}/checkpoint/train_log.jsonl")
log.parent.mkdir(parents=True, exist_ok=True)
for n in (1, 2, 3, 4):
    with open(log, "a") as handle:
        handle.write(json.dumps({"kind": "step", "epoch": (n + 1) // 2, "step": n,
                                 "step_seconds": 0.5}) + "\\n")
        if n % 2 == 0:
            handle.write(json.dumps({"kind": "epoch", "epoch": n // 2, "seconds": 1.0}) + "\\n")
    time.sleep(1.5 if n == 1 else 0.1)
    if fail:
        print("Traceback: boom", flush=True)
        sys.exit(3)
Path(f"results/{ablation}/seed{seed}/model.pt").write_text("model")
"""

FAKE_SNAKEFILE = """\
from pathlib import Path

rule report:
    input: "results/abl1/seed0/model.pt"
    output: "results/report.html", "results/summary.md"
    run:
        Path(output[1]).write_text("| System | SI-SDR | Params |\\n|---|---|---|\\n"
                                   "| abl1 | 9.5 ± 1.0 | 2 M |\\n")
        Path(output[0]).write_text("<html></html>")

rule train:
    output: "results/{ablation}/seed{seed}/model.pt"
    log: "results/logs/train/{ablation}_seed{seed}.log"
    shell: "python fake_train.py {wildcards.ablation} {wildcards.seed} FAIL > {log} 2>&1"

onsuccess:
    from mbsnet.watch import headline
    print(headline("results/report.html", "results/summary.md"), flush=True)
"""


def fake_workflow(tmp_path: Path, fail: bool) -> Path:
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    (tmp_path / "Snakefile").write_text(FAKE_SNAKEFILE.replace("FAIL", "1" if fail else "0"))
    config = {"ablations": {"abl1": {"model": {}}},
              "training": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2}}
    (tmp_path / "results" / "config").mkdir(parents=True)
    (tmp_path / "results" / "config" / "resolved.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def run_watch(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([str(BIN / "mbsnet"), "watch", "--every", "0.3",
                           "--log", "results/logs/snakemake.log", "--", str(BIN / "snakemake"),
                           "--cores", "1", *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_snakemake_run_through_the_watcher(tmp_path):
    work = fake_workflow(tmp_path, fail=False)
    result = run_watch(work)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("Running ")
    assert out[0].endswith(
        "its whole output: results/logs/snakemake.log")
    # the view, printed every 0.3 s, while the fake training waits after its first step
    assert re.search(r"^  train abl1 seed0: epoch 1/2 step 1/2, ETA 0:0[0-2]$",
                     result.stdout, re.M)
    assert re.search(r"^1/2 jobs done, 1 running \(0:\d\d elapsed\)$", result.stdout, re.M)
    assert "1/2 done: train abl1 seed0" in "\n".join(out)
    # the onsuccess handler's headline reaches the terminal, after the jobs
    table = out.index("Report: results/report.html")
    assert out[table + 2:table + 4] == ["System  SI-SDR", "abl1    9.5 ± 1.0"]
    assert out[-1].startswith("Finished: 2/2 jobs in ")
    assert "localrule" not in result.stdout
    assert "jobid" not in result.stdout
    assert result.stderr == ""
    full = (work / "results" / "logs" / "snakemake.log").read_text()
    assert "localrule train:" in full
    assert "2 of 2 steps (100%) done" in full


def test_a_failed_run_shows_the_error_and_keeps_the_exit_status(tmp_path):
    work = fake_workflow(tmp_path, fail=True)
    result = run_watch(work)
    assert result.returncode == 1
    out = result.stdout
    assert "Error in rule train:" in out
    assert "  last lines of results/logs/train/abl1_seed0.log:\n  | training abl1\n" \
        "  | Traceback: boom\n" in out
    assert out.splitlines()[-1].startswith("Stopped with exit status 1 after ")
    assert out.splitlines()[-1].endswith(
        "0/2 jobs done; failed: train abl1 seed0. Whole output: results/logs/snakemake.log")


def test_sigterm_reaches_the_command_and_its_status_is_returned(tmp_path):
    (tmp_path / "child.py").write_text(textwrap.dedent("""\
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (print("got TERM", flush=True), sys.exit(5)))
        print("ready", flush=True)
        time.sleep(60)
    """))
    process = subprocess.Popen([str(BIN / "mbsnet"), "watch", "--log", str(tmp_path / "log"),
                                "--", sys.executable, "child.py"], cwd=tmp_path,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("Running ")
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 5
    assert out.splitlines()[0] == "got TERM"
    assert (tmp_path / "log").read_text() == "ready\ngot TERM\n"


def test_ctrl_c_waits_for_the_command_to_stop(tmp_path):
    """A Ctrl-C reaches Snakemake from the terminal; the watcher stays to show how it ends."""
    (tmp_path / "child.py").write_text(textwrap.dedent("""\
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(2)
        print("stopped", flush=True)
    """))
    process = subprocess.Popen([str(BIN / "mbsnet"), "watch", "--log", str(tmp_path / "log"),
                                "--", sys.executable, "child.py"], cwd=tmp_path,
                               stdout=subprocess.PIPE, text=True)
    process.stdout.readline()
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert out.splitlines()[:2] == [
        "Interrupted: Snakemake stops its jobs (a training saves a checkpoint; the same "
        "command resumes it)", "stopped"]


def fake_snakemake(tmp_path: Path, stdout: str, stderr: str) -> list[str]:
    """A command that prints like Snakemake."""
    script = tmp_path / "fake_snakemake.py"
    script.write_text(f"import sys\nprint({stdout!r}, end='')\n"
                      f"print({stderr!r}, end='', file=sys.stderr)\n")
    return [sys.executable, str(script)]


def test_nothing_to_do_shows_the_headline_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("results").mkdir()
    Path("results/summary.md").write_text(SUMMARY_MD)
    Path("results/report.html").write_text("<html></html>")
    command = fake_snakemake(tmp_path, "", "Building DAG of jobs...\nNothing to be done (all "
                             "requested files are present and up to date).\n")
    stream = io.StringIO()
    assert watch.run(command, log_path=Path("log"), stream=stream) == 0
    assert stream.getvalue().splitlines()[1:] == [
        "Nothing to be done: every output is up to date.", "",
        *headline(Path("results/report.html"), Path("results/summary.md")).splitlines()]


def test_a_dry_run_prints_as_snakemake_does(tmp_path):
    """Snakemake prints a dry run on stdout: passed through as it is."""
    plan = "Job stats:\njob      count\ntrain        2\ntotal        2\n\nrule train:\n" \
        "    jobid: 1\nThis was a dry-run (flag -n).\n"
    stream = io.StringIO()
    log = tmp_path / "log"
    assert watch.run(fake_snakemake(tmp_path, plan, ""), log_path=log, stream=stream) == 0
    lines = stream.getvalue().splitlines()
    assert lines[1:-1] == plan.splitlines()
    assert re.fullmatch(rf"Finished in 0:0\d\. Whole output: {log}", lines[-1])
    assert log.read_text() == plan


def test_no_command_is_a_one_line_error(capsys):
    from mbsnet.cli import main

    assert main(["watch"]) == 2
    assert capsys.readouterr().err == (
        "mbsnet watch: error: no command to run: mbsnet watch -- snakemake --cores 4 report\n")


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (3599, "59:59"),
                                           (3600, "1:00:00"), (-5, "0:00")])
def test_clock_text(seconds, text):
    assert watch.clock_text(seconds) == text


def test_the_watcher_does_not_import_torch():
    """The watcher starts without torch (seconds on a loaded machine)."""
    code = "import sys, mbsnet.commands.watch; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout == "False\n"
