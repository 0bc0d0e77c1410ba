"""One live view of a Snakemake run: jobs done of the total, and each running training's
epoch, step and ETA read from its live log (``results/{ablation}/seed{seed}/checkpoint/
train_log.jsonl``, docs/results.md).

``mbsnet watch -- snakemake --cores 4 report`` (what ``make report`` runs) starts Snakemake,
writes everything it prints to a log file, and shows instead: one line per finished job,
Snakemake's errors and anything it does not recognise, the last lines of a failed job's
log, and the view of what runs now. On a terminal the view is redrawn in place; otherwise
(CI, a batch job) it is printed as plain lines every ``every`` seconds.

Snakemake's own output is read as the text it prints (Snakemake 9: job blocks, ``Finished
jobid: N (Rule: R)``, ``N of M steps (P%) done``, ``Error in rule R:``); an unknown line is
shown, never dropped.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from . import layout
from .train.paths import RunPaths, steps_per_epoch

#: Step lines used for the step time before the first epoch ends (the first step is slow).
RECENT_STEPS = 20
#: Lines of a failed job's log shown under its error.
LOG_TAIL = 15
#: Running jobs listed in the view; more are counted on one line.
MAX_JOB_LINES = 12

Clock = Callable[[], float]


def clock_text(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# -- trainings ---------------------------------------------------------------------------


def live_log_path(run_dir: str | Path) -> Path:
    """A training's live log."""
    return RunPaths(run_dir).live_log


def training_totals(config_path: Path, manifest: Path, ablation: str) -> tuple[int, int] | None:
    """(epochs, steps per epoch) of one ablation from the resolved config the trainings
    read; None when it cannot be read yet."""
    from .config import ablation_config

    try:
        config = yaml.safe_load(config_path.read_text())
        settings = ablation_config(config, ablation)["training"]
        if settings["steps_per_epoch"]:
            return int(settings["epochs"]), int(settings["steps_per_epoch"])
        with open(manifest, newline="") as handle:
            items = sum(row["split"] == "train" for row in csv.DictReader(handle, delimiter="\t"))
        return int(settings["epochs"]), steps_per_epoch(settings, items)
    except Exception:  # absent, half-written or foreign: the view shows no totals
        return None


@dataclass
class TrainingProgress:
    """Where one training is, from its live log."""

    epochs: int | None
    steps: int | None
    epoch: int = 1  # the epoch under way (1-based); epochs + 1 once the last one ended
    step: int = 0  # steps done in that epoch
    done_steps: int = 0  # steps done in the whole run
    validating: bool = False  # the epoch's last step is done, its epoch line is not
    #: As of the last line: the mean epoch time (validation included) once an epoch ended,
    #: before that the median recent step time (validation left out).
    seconds_left: float | None = None

    @classmethod
    def read(cls, lines: Iterable[Mapping[str, Any]],
             totals: tuple[int, int] | None) -> TrainingProgress:
        """From the log's lines (step, epoch and resume lines, docs/results.md)."""
        epochs, steps = totals if totals else (None, None)
        progress = cls(epochs, steps)
        step_seconds: list[float] = []
        epoch_seconds: list[float] = []
        last_kind = None
        for line in lines:
            kind = line.get("kind")
            if kind == "step":
                progress.epoch, progress.done_steps = int(line["epoch"]), int(line["step"])
                if line.get("step_seconds") is not None:
                    step_seconds.append(float(line["step_seconds"]))
            elif kind == "resume":
                progress.epoch, progress.done_steps = int(line["epoch"]), int(line["step"])
            elif kind == "epoch":
                progress.epoch = int(line["epoch"]) + 1
                epoch_seconds.append(float(line["seconds"]))
                if steps:
                    progress.done_steps = int(line["epoch"]) * steps
            else:
                continue
            last_kind = kind
        if epochs is not None and steps:
            progress.step = progress.done_steps - (progress.epoch - 1) * steps
            progress.validating = last_kind == "step" and progress.step >= steps
            left = epochs * steps - progress.done_steps
            if epoch_seconds:  # a whole epoch's time includes its validation
                progress.seconds_left = left * statistics.fmean(epoch_seconds) / steps
            elif step_seconds:
                progress.seconds_left = left * statistics.median(step_seconds[-RECENT_STEPS:])
        else:
            progress.step = progress.done_steps
        return progress

    def describe(self, since_last_line: float = 0.0) -> str:
        """``epoch 2/3 step 30/50, ETA 2:30``; the ETA counts down from the last line."""
        if self.epochs is None or self.steps is None:
            return f"epoch {self.epoch} step {self.done_steps} (total unknown)"
        if self.epoch > self.epochs:
            return f"all {self.epochs} epochs done, writing the model"
        text = f"epoch {self.epoch}/{self.epochs} step {self.step}/{self.steps}"
        if self.validating:
            text += " (validating)"
        if self.seconds_left is not None:
            text += f", ETA {clock_text(self.seconds_left - since_last_line)}"
        return text


class TrainingLogs:
    """Reads the live logs of running trainings under ``results``, again only when one
    changed."""

    def __init__(self, results: str | Path = "results") -> None:
        self.results = Path(results)
        self._cache: dict[Path, tuple[tuple[int, int], TrainingProgress]] = {}

    def describe(self, ablation: str, seed: str, now: float, started: float = 0.0) -> str:
        """What the view shows of one training whose job started at ``started`` (a live log
        last written before is a previous run's, until the training resumes or replaces it)."""
        path = live_log_path(layout.run_dir(self.results, ablation, seed))
        try:
            stat = path.stat()
        except OSError:
            return "starting"
        if stat.st_mtime < started:
            return "starting"
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is None or cached[0] != key:
            totals = training_totals(self.results / layout.RESOLVED_CONFIG,
                                     self.results / layout.MANIFEST, ablation)
            progress = TrainingProgress.read(_json_lines(path), totals)
            self._cache[path] = cached = (key, progress)
        progress = cached[1]
        if progress.done_steps == 0 and progress.epoch == 1:
            return "starting"
        return progress.describe(now - stat.st_mtime)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file being appended to (a half-written last line is
    left out)."""
    lines = []
    for text in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines


# -- Snakemake's output ------------------------------------------------------------------


@dataclass
class Job:
    """A job Snakemake started."""

    jobid: str
    rule: str
    started: float
    wildcards: dict[str, str] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``train abl1 seed0``: the rule and its wildcard values."""
        values = [f"seed{v}" if k == "seed" else v for k, v in self.wildcards.items()]
        return " ".join([self.rule, *values])


_HIDDEN = re.compile(
    r"^(Assuming unrestricted shared filesystem usage|SNAKEMAKE$|=+$|Building DAG of jobs"
    r"|Using shell:|Provided (cores|resources|remote nodes):|Rules claiming more threads"
    r"|(Conda environments|Singularity containers): ignored|Select jobs to execute"
    r"|Execute \d+ jobs|Shell command:|Complete log\(s\):|Elapsed time:|host: "
    r"|Job \d+ has been submitted with SLURM jobid"
    r"|\[\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}\]$)")
_JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
# Snakemake 9.27: "Finished jobid: 4 (Rule: profile)"; earlier: "Finished job 4."
_FINISHED = re.compile(r"^Finished job(?:id:)? (\d+)(?:\.| \(Rule: (\S+)\))$")
_PROGRESS = re.compile(r"^(\d+) of (\d+) steps \(\d+%\) done$")
_ERROR = re.compile(r"^Error in rule (\S+):$")
_FIELD = re.compile(r"^\s+(\w+): (.*)$")
_NOTHING = "Nothing to be done"


class SnakemakeOutput:
    """Snakemake's output read line by line: jobs done and their total, the running jobs,
    and the lines a person should see (:meth:`feed` returns them)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.total: int | None = None
        self.done = 0
        self.running: dict[str, Job] = {}
        self.failed: list[Job] = []
        self.nothing_to_do = False
        self._block: str | None = None  # hidden | shown | stats | job | error
        self._job: Job | None = None
        self._error: dict[str, str] = {}
        self._finished: Job | None = None

    def feed(self, line: str) -> list[str]:
        """Take one line; return the lines to show for it (often none)."""
        line = line.rstrip("\n").rstrip("\r")
        if line.startswith((" ", "\t")) and self._block not in (None, "stats"):
            return self._indented(line)
        out = self._end_block()
        if self._block == "stats" and line.strip():
            total = re.match(r"^total\s+(\d+)$", line)
            if total:
                self.total = int(total.group(1))
            return out
        self._block = None
        if line.strip():
            out += self._unindented(line)
        return out

    def close(self) -> list[str]:
        """The lines still held back at the end of the output."""
        out = self._end_block()
        self._block = None
        return out

    def _unindented(self, line: str) -> list[str]:
        """A line that starts a block or stands alone, after the previous block ended."""
        out: list[str] = []
        if line == "Job stats:":
            self._block = "stats"
        elif match := _JOB.match(line):
            self._block = "job"
            self._job = Job("?", match.group(1), self.clock())
        elif match := _FINISHED.match(line):
            self._finished = self.running.pop(match.group(1), None) or Job(
                match.group(1), match.group(2) or "job", self.clock())
        elif match := _PROGRESS.match(line):
            self.done, self.total = int(match.group(1)), int(match.group(2))
            if self._finished is not None:
                job, self._finished = self._finished, None
                out.append(f"{self.done}/{self.total} done: {job.label} "
                           f"({clock_text(self.clock() - job.started)})")
        elif match := _ERROR.match(line):
            self._block, self._error = "error", {"rule": match.group(1)}
            out.append(line)
        elif _HIDDEN.match(line):
            self._block = "hidden"
        elif line.startswith(_NOTHING):  # said again at the end, with the headline
            self.nothing_to_do = True
        else:
            self._block = "shown"
            out.append(line)
        return out

    def _indented(self, line: str) -> list[str]:
        match = _FIELD.match(line)
        if self._block == "job" and match and self._job is not None:
            key, value = match.groups()
            if key == "jobid":  # running from now: the block's last line may be long in coming
                self._job.jobid = value
                self.running[value] = self._job
            elif key == "wildcards":
                self._job.wildcards = dict(item.split("=", 1) for item in value.split(", ")
                                           if "=" in item)
            elif key == "log":
                self._job.logs = value.split(", ")
        elif self._block == "error" and match:
            self._error.setdefault(*match.groups())
        return [line] if self._block in ("shown", "error") else []

    def _end_block(self) -> list[str]:
        """Close the job or error block being read."""
        if self._block == "job":
            self._job = None
        elif self._block == "error":
            return self._failed()
        return []

    def _failed(self) -> list[str]:
        job = self.running.pop(self._error.get("jobid", "?"), None)
        if job is not None:
            self.failed.append(job)
        logs = job.logs if job else []
        if not logs and self._error.get("log"):
            logs = self._error["log"].split(" (check log")[0].split(", ")
        out = []
        for log in logs:
            tail = _tail(Path(log), LOG_TAIL)
            if tail:
                out.append(f"  last lines of {log}:")
                out += [f"  | {text}" for text in tail]
        return out


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    # tqdm redraws a line with carriage returns: keep what was shown last
    return [part.rsplit("\r", 1)[-1] for part in text.splitlines()[-lines:]]


# -- the view ----------------------------------------------------------------------------


class View:
    """The lines of the live view: jobs done of the total, then each running job, a
    training with its epoch, step and ETA."""

    def __init__(self, output: SnakemakeOutput, trainings: TrainingLogs, started: float) -> None:
        self.output, self.trainings, self.started = output, trainings, started

    def lines(self, now: float) -> list[str]:
        out = self.output
        total = "?" if out.total is None else out.total
        running = list(out.running.values())
        head = f"{out.done}/{total} jobs done, {len(running)} running"
        if out.failed:
            head += f", {len(out.failed)} failed"
        lines = [f"{head} ({clock_text(now - self.started)} elapsed)"]
        for job in running[:MAX_JOB_LINES]:
            if job.rule == "train" and {"ablation", "seed"} <= job.wildcards.keys():
                state = self.trainings.describe(job.wildcards["ablation"],
                                                job.wildcards["seed"], now, job.started)
            else:
                state = f"running {clock_text(now - job.started)}"
            lines.append(f"  {job.label}: {state}")
        if len(running) > MAX_JOB_LINES:
            lines.append(f"  and {len(running) - MAX_JOB_LINES} more")
        return lines


class Screen:
    """Messages, and the view below them: redrawn in place on a terminal (``live``),
    printed every ``every`` seconds as plain lines otherwise."""

    def __init__(self, stream: TextIO, live: bool, every: float, started: float) -> None:
        self.stream, self.live, self.every = stream, live, every
        self.last_print = started
        self.drawn: list[str] = []

    def message(self, text: str) -> None:
        self._erase()
        self.stream.write(text + "\n")
        self._draw(self.drawn)

    def update(self, lines: list[str], now: float) -> None:
        if self.live:
            width = max(20, shutil.get_terminal_size().columns - 1)
            lines = [line[:width] for line in lines]
            if lines != self.drawn:
                self._erase()
                self._draw(lines)
        elif now - self.last_print >= self.every and len(lines) > 1:  # a job runs
            self.last_print = now
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def close(self) -> None:
        self._erase()
        self.drawn = []
        self.stream.flush()

    def _erase(self) -> None:
        if self.live and self.drawn:
            self.stream.write(f"\x1b[{len(self.drawn)}A\x1b[J")

    def _draw(self, lines: list[str]) -> None:
        if self.live:
            self.stream.write("".join(line + "\n" for line in lines))
            self.drawn = lines
        self.stream.flush()


# -- the end of a run --------------------------------------------------------------------


def headline(report: str | Path, summary_md: str | Path) -> str:
    """The report's path and the metric columns of summary.md's headline table, aligned
    for a terminal."""
    summary_md = Path(summary_md)
    rows: list[list[str]] = []
    notes: list[str] = []
    for line in summary_md.read_text().splitlines():
        if line.startswith("|"):
            if set(line) <= set("|-: "):
                continue
            rows.append([cell.strip().replace("**", "") for cell in line.strip("|").split(" | ")])
        elif rows and re.match(r"^\[\d+\] ", line):
            notes.append(line.rstrip())
        elif rows and line.startswith("#"):
            break
    if not rows:
        return f"Report: {report}\n(no table in {summary_md})"
    keep = rows[0].index("Params") if "Params" in rows[0] else len(rows[0])
    rows = [row[:keep] for row in rows]
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(keep)]
    # a row may end before the last column (no Params column to cut at): not strict
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
             for row in rows]
    return "\n".join([f"Report: {report}", "", *table, *notes, "",
                      f"Mean ± 95 % CI over the test utterances; costs and the steps between "
                      f"ablations: {summary_md}"])


# -- running Snakemake -------------------------------------------------------------------


def default_log_path(results: str | Path = "results") -> Path:
    """``results/logs/snakemake/<start time>.log``."""
    return layout.path(results, layout.SNAKEMAKE_LOG, start_time=time.strftime("%Y-%m-%dT%H%M%S"))


def run(command: list[str], *, log_path: Path, results: str | Path = "results",
        every: float = 60.0, stream: TextIO | None = None, live: bool | None = None,
        refresh: float = 0.5) -> int:
    """Run ``command`` (Snakemake), its output to ``log_path``, the view on ``stream``;
    return its exit status (128 + N when a signal N ended it)."""
    stream = stream or sys.stdout
    if live is None:
        live = stream.isatty() and os.environ.get("TERM") != "dumb"
    started = time.time()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    output = SnakemakeOutput()
    view = View(output, TrainingLogs(results), started)
    screen = Screen(stream, live, every, started)
    screen.message(f"Running {shlex.join(command)}; its whole output: {log_path}")
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, errors="replace", bufsize=1)
        readers = [threading.Thread(target=_read, args=(pipe, name, lines), daemon=True)
                   for pipe, name in ((process.stdout, "out"), (process.stderr, "err"))]
        for reader in readers:
            reader.start()
        try:
            with _ForwardSignals(process, screen) as signals:
                _follow(lines, log, output, screen, view, signals, refresh)
        except BaseException:  # the watcher failed (its output closed, a bug): stop
            if process.poll() is None:  # Snakemake as Ctrl-C would, rather than orphan it
                process.terminate()
            raise
        status = process.wait()
    for text in output.close():
        screen.message(text)
    screen.close()
    status = 128 - status if status < 0 else status
    screen.message(_final(output, status, time.time() - started, log_path, Path(results)))
    return status


def _follow(lines: queue.Queue, log: TextIO, output: SnakemakeOutput, screen: Screen,
            view: View, signals: _ForwardSignals, refresh: float) -> None:
    """Until both pipes close: log every line, show what a person should see, and the view
    after each burst of lines (or every ``refresh`` seconds)."""
    open_pipes = 2
    while open_pipes:
        for name, line in _available(lines, refresh):
            if line is None:
                open_pipes -= 1
                continue
            log.write(line)
            for text in [line.rstrip("\n")] if name == "out" else output.feed(line):
                screen.message(text)
        log.flush()
        signals.note()
        now = time.time()
        screen.update(view.lines(now), now)


def _final(output: SnakemakeOutput, status: int, seconds: float, log_path: Path,
           results: Path) -> str:
    total = "?" if output.total is None else output.total
    if status == 0 and output.nothing_to_do:
        report, summary = results / layout.REPORT_HTML, results / layout.SUMMARY_MD
        text = "Nothing to be done: every output is up to date."
        if report.is_file() and summary.is_file():
            text += "\n\n" + headline(report, summary)
        return text
    if status == 0 and output.total is None:  # a dry run, or not Snakemake
        return f"Finished in {clock_text(seconds)}. Whole output: {log_path}"
    if status == 0:
        return (f"Finished: {output.done}/{total} jobs in {clock_text(seconds)}. "
                f"Whole output: {log_path}")
    failed = f"; failed: {', '.join(job.label for job in output.failed)}" if output.failed else ""
    return (f"Stopped with exit status {status} after {clock_text(seconds)}: {output.done}/"
            f"{total} jobs done{failed}. Whole output: {log_path}")


def _available(lines: queue.Queue, timeout: float) -> list[tuple[str, str | None]]:
    """The lines read so far, after waiting up to ``timeout`` for the first."""
    try:
        got = [lines.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            got.append(lines.get_nowait())
        except queue.Empty:
            return got


def _read(pipe: TextIO, name: str, lines: queue.Queue) -> None:
    for line in pipe:
        lines.put((name, line))
    lines.put((name, None))


class _ForwardSignals:
    """Pass SIGTERM (and SIGHUP) on to Snakemake, which stops its jobs; a Ctrl-C reaches
    it from the terminal by itself, so SIGINT is only noted here."""

    def __init__(self, process: subprocess.Popen, screen: Screen) -> None:
        self.process, self.screen = process, screen
        self.previous: dict[int, Any] = {}
        self.interrupted = self.noted = False

    def _forward(self, signum: int, _frame: Any) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def _interrupted(self, _signum: int, _frame: Any) -> None:
        self.interrupted = True

    def note(self) -> None:
        """Say once, from the main loop, that a Ctrl-C came."""
        if self.interrupted and not self.noted:
            self.noted = True
            self.screen.message("Interrupted: Snakemake stops its jobs (a training saves a "
                                "checkpoint; the same command resumes it)")

    def __enter__(self) -> _ForwardSignals:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in ((signal.SIGTERM, self._forward),
                                    (signal.SIGHUP, self._forward),
                                    (signal.SIGINT, self._interrupted)):
                self.previous[signum] = signal.signal(signum, handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
