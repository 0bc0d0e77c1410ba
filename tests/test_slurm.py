"""`snakemake --profile slurm` against a real single-node SLURM cluster (see tests/slurm/).

Root on Debian only: tests/slurm/start_cluster.sh installs and starts munge, MariaDB,
slurmdbd, slurmctld and slurmd with two fake GPUs. The tiny config then runs through the
users' profile plus the CI overlay; every rule must run as its own SLURM job, training,
profile and evaluation with `--gpus=1`, training and profile with CPUs for the trainer's
worker processes. The resume test cancels a training job mid-run: the profile's retries
resubmit it and the new job continues from the checkpoint. A two-process training
(training.devices: 2) runs as one job of two tasks and two GPUs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .helpers import BIN, ROOT, TINY_CONFIG

HARNESS = ROOT / "tests" / "slurm"
PROFILE = ROOT / "slurm"
OVERLAY = HARNESS / "overlay"
SNAKEFILE = ROOT / "Snakefile"
SNAKEMAKE_TIMEOUT = 900  # seconds; a hung status loop must not hang CI

# Jobs the tiny config (two ablations, one seed) submits, by rule.
EXPECTED_JOBS = {"prepare_data": 1, "profile": 2, "train": 2, "evaluate": 2,
                 "evaluate_noisy": 1, "report": 1}
# Jobs that may run on CUDA (training.device auto) and ask for one of the node's GPUs.
GPU_RULES = ("profile", "train", "evaluate")
# CPUs of a training and its profile: resources.threads 1 + training.pesq_workers 1 +
# training.data_workers 0 (the node has 2 CPUs).
TRAINING_CPUS = 2
# CPUs of an evaluation: resources.threads 1 + evaluation.workers 1 (tiny.yaml)
EVALUATION_CPUS = 2


def skip_reason() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: tests/slurm/start_cluster.sh starts SLURM daemons"
    if not Path("/etc/debian_version").exists():
        return "needs Debian: the cluster comes from Debian's munge/slurm/mariadb packages"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "SLURM packages are not installed and apt-get is not available"
    missing = [str(p.relative_to(ROOT)) for p in (SNAKEFILE, TINY_CONFIG) if not p.exists()]
    if missing:
        return f"the workflow is missing: {', '.join(missing)}"
    return None


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]


def harness(script: str, *args: str, timeout: int = 900) -> None:
    result = subprocess.run([str(HARNESS / script), *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"


def cluster_is_up() -> bool:
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "UP" in ping.stdout


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running cluster; stopped afterwards unless it was already running before."""
    was_up = cluster_is_up()
    harness("start_cluster.sh")
    yield
    if not was_up:
        harness("stop_cluster.sh", timeout=120)


def snakemake_command(workdir: Path, config: Path, *args: str) -> list[str]:
    """The users' command line (`--profile slurm`) plus the CI overlay, under `timeout -k`."""
    return ["timeout", "-k", "30", str(SNAKEMAKE_TIMEOUT),
            str(BIN / "snakemake"), "-s", str(SNAKEFILE), "-d", str(workdir),
            "--profile", str(PROFILE), "--profile", str(OVERLAY),
            "--configfile", str(config), "--verbose", *args]


@contextmanager
def snakemake_running(workdir: Path, config: Path, *args: str):
    """Snakemake in the background as (process, output file); stopped if still running
    when the block ends (SIGTERM; `timeout -k` follows up with SIGKILL)."""
    log = workdir / f"snakemake-{len(list(workdir.glob('snakemake-*.log')))}.log"
    # SLURM jobs get this environment (sbatch --export=ALL): the venv's bin must be first
    # so that `mbsnet` resolves inside the jobs.
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("SNAKEMAKE_PROFILE", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(snakemake_command(workdir, config, *args), cwd=workdir,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=120)


def finish(proc: subprocess.Popen, log: Path) -> str:
    """Wait for Snakemake; fail with the end of its output unless it succeeded."""
    returncode = proc.wait(timeout=SNAKEMAKE_TIMEOUT + 60)
    text = log.read_text()
    assert returncode != 124, f"snakemake timed out after {SNAKEMAKE_TIMEOUT}s:\n{text[-6000:]}"
    assert returncode == 0, f"snakemake failed ({returncode}):\n{text[-6000:]}"
    return text


@dataclass
class SlurmJob:
    job_id: str
    rule: str
    wildcards: str
    state: str
    alloc_tres: str


def run_id(snakemake_output: str) -> str:
    match = re.search(r"SLURM run ID: (\S+)", snakemake_output)
    assert match, "no 'SLURM run ID' in the snakemake output: did it use the slurm executor?"
    return match.group(1)


def sacct_jobs(name: str) -> list[SlurmJob]:
    """Every SLURM job (allocation, not steps) named `name`, from the accounting database.

    The plugin names all jobs of one Snakemake run with the run's ID and comments each
    `rule_<rule>` or `rule_<rule>_wildcards_<values>`.
    """
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", "now-2days", "--name", name,
         "-o", "JobIDRaw,Comment%200,State,AllocTRES%200"],
        capture_output=True, text=True, check=True, timeout=30).stdout
    jobs = []
    for line in out.splitlines():
        job_id, comment, state, tres = line.split("|")
        match = re.fullmatch(r"rule_(.+?)(?:_wildcards_(.*))?", comment)
        assert match, f"SLURM job {job_id} has no rule comment: {comment!r}"
        jobs.append(SlurmJob(job_id, match.group(1), match.group(2) or "", state.split()[0], tres))
    return jobs


def wait_for_accounting(name: str, count: int, timeout: float = 60) -> list[SlurmJob]:
    """slurmdbd records a job's end shortly after the job ends: wait for `count` final ones."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = sacct_jobs(name)
        done = [j for j in jobs if j.state not in ("PENDING", "RUNNING", "REQUEUED")]
        if len(done) >= count or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


def sbatch_calls(snakemake_output: str) -> dict[str, list[str]]:
    """The plugin's `sbatch` command lines (printed with --verbose) by job comment."""
    calls: dict[str, list[str]] = {}
    for line in snakemake_output.splitlines():
        if line.startswith("sbatch call: "):
            comment = re.search(r"--comment (\S+)", line).group(1).strip("'")
            calls.setdefault(comment, []).append(line)
    return calls


def tiny_config() -> dict:
    """The tiny config, its training sized to the test node's 2 CPUs (TRAINING_CPUS)."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["training"]["data_workers"] = 0
    assert config["resources"]["threads"] + config["training"]["pesq_workers"] == TRAINING_CPUS
    assert config["resources"]["threads"] + config["evaluation"]["workers"] == EVALUATION_CPUS
    return config


@pytest.fixture(scope="module")
def tiny_run(slurm_cluster, tmp_path_factory):
    """The tiny config run to the report on the cluster: (workdir, snakemake output)."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    config = workdir / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    with snakemake_running(workdir, config) as (proc, log):
        return workdir, finish(proc, log)


def test_every_rule_runs_as_a_slurm_job(tiny_run):
    workdir, output = tiny_run
    assert (workdir / "results" / "report.html").stat().st_size > 0

    jobs = wait_for_accounting(run_id(output), sum(EXPECTED_JOBS.values()))
    by_rule: dict[str, int] = {}
    for job in jobs:
        by_rule[job.rule] = by_rule.get(job.rule, 0) + 1
    assert by_rule == EXPECTED_JOBS
    assert [j for j in jobs if j.state != "COMPLETED"] == []

    # Training, profile and evaluation asked for and got one GPU; nothing else did. Training
    # and its profile got CPUs for the trainer, its PESQ workers and its data workers, and
    # the training's memory (tiny.yaml resources.train_mem_mb).
    calls = sbatch_calls(output)
    for job in jobs:
        comment = f"rule_{job.rule}" + (f"_wildcards_{job.wildcards}" if job.wildcards else "")
        (call,) = calls[comment]
        if job.rule in GPU_RULES:
            assert " --gpus=1 " in call, call
            assert "gres/gpu=1" in job.alloc_tres
        else:
            assert "--gpus" not in call
            assert "gres/gpu" not in job.alloc_tres
        if job.rule in ("train", "profile"):
            assert f" --cpus-per-task={TRAINING_CPUS} " in call, call
            assert f"cpu={TRAINING_CPUS}" in job.alloc_tres
            assert " --mem 2000 " in call
        elif job.rule in ("evaluate", "evaluate_noisy"):
            assert f" --cpus-per-task={EVALUATION_CPUS} " in call, call
        else:
            assert " --cpus-per-task=1 " in call, call       # resources.threads
            assert " --mem 1000 " in call                    # the overlay's default
        # time limit: training's from the config (resources.train_runtime_min), else the
        # overlay's default
        assert (" -t 15 " if job.rule == "train" else " -t 10 ") in call
        assert " -A ci " in call
        assert " -p local " in call

    # Each job's SLURM log is kept under results/logs/slurm/, named by its job id, and the
    # submission lines name the same ids.
    logs = {p.stem: p for p in (workdir / "results" / "logs" / "slurm").rglob("*.log")}
    submitted = set(re.findall(r"has been submitted with SLURM jobid (\d+)", output))
    assert submitted == {j.job_id for j in jobs} == set(logs)
    for job in jobs:
        assert logs[job.job_id].parent.relative_to(workdir / "results/logs/slurm").parts[0] \
            == f"rule_{job.rule}"

    # The fake GPU has no CUDA behind it: every job fell back to the CPU and says so.
    results = workdir / "results"
    recorded = [*results.glob("*/seed*/train_summary.json"), *results.glob("*/profile.json"),
                *results.glob("*/seed*/eval/summary.json")]
    assert len(recorded) == 6
    for path in recorded:
        assert json.loads(path.read_text())["device"] == "cpu", path
    for rule_log in ("prepare_data.log", "report.log"):
        assert (workdir / "results" / "logs" / rule_log).exists()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def running_train_job(name: str) -> str | None:
    """The SLURM id of the running training job of Snakemake run `name`, if any."""
    out = subprocess.run(["squeue", "-h", "-t", "R", "--name", name, "-o", "%A|%k"],
                         capture_output=True, text=True, timeout=30).stdout
    for line in out.splitlines():
        job_id, comment = line.split("|", 1)
        if comment.startswith("rule_train"):
            return job_id
    return None


def test_cancelled_training_is_resubmitted_and_resumes(tiny_run):
    """scancel the training job after its first checkpoint: the retry continues from it."""
    workdir, _ = tiny_run
    run_dir = workdir / "results" / "bsrnn" / "seed0"
    # A fresh, longer training for one ablation; the data and profile stay as they are.
    config = tiny_config()
    config["training"].update(epochs=4, steps_per_epoch=6)
    config_path = workdir / "resume.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.rmtree(run_dir / "checkpoint")
    for name in ("model.pt", "train_log.jsonl", "train_summary.json"):
        (run_dir / name).unlink()

    checkpoint = run_dir / "checkpoint" / "last.pt"
    target = str(run_dir.relative_to(workdir) / "train_summary.json")
    # Only the missing training reruns: the changed training settings alone trigger nothing.
    with snakemake_running(workdir, config_path, "--rerun-triggers=mtime", target) as (proc, log):
        cancelled = None
        deadline = time.monotonic() + 600
        while cancelled is None and proc.poll() is None and time.monotonic() < deadline:
            if checkpoint.exists():
                name = re.search(r"SLURM run ID: (\S+)", log.read_text())
                cancelled = name and running_train_job(name.group(1))
                if cancelled:
                    subprocess.run(["scancel", cancelled], timeout=30)
            time.sleep(0.2)
        assert cancelled, "the training job ended before it was cancelled after a checkpoint"
        output = finish(proc, log)

    jobs = [j for j in wait_for_accounting(run_id(output), 2) if j.rule == "train"]
    assert [(j.job_id, j.state) for j in jobs][:1] == [(cancelled, "CANCELLED")]
    assert [j.state for j in jobs[1:]] == ["COMPLETED"]
    assert all("gres/gpu=1" in j.alloc_tres for j in jobs)

    # The second job resumed from the checkpoint instead of starting over.
    lines = read_jsonl(run_dir / "train_log.jsonl")
    resumes = [i for i, line in enumerate(lines) if line["kind"] == "resume"]
    assert len(resumes) == 1, lines
    resume = lines[resumes[0]]
    assert resume["step"] > 0
    assert Path(resume["from"]).name == "last.pt"
    steps_after = [line["step"] for line in lines[resumes[0]:] if line["kind"] == "step"]
    assert steps_after
    assert min(steps_after) > resume["step"]
    epochs = [line["epoch"] for line in lines if line["kind"] == "epoch"]
    assert sorted(set(epochs)) == epochs
    assert len(epochs) == 4
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["resumed"] == 1
    assert summary["epochs"] == 4


def test_a_two_process_training_runs_as_one_job_of_two_tasks_and_gpus(tiny_run):
    """training.devices: 2 on SLURM: one job with 2 tasks, 2 GPUs and CPUs per task; its
    command starts the 2 processes with srun, which find each other from SLURM's variables
    (gloo here: the fake GPUs have no CUDA behind them)."""
    workdir, _ = tiny_run
    config = tiny_config()
    bsrnn = config["ablations"]["bsrnn"]
    config["ablations"] = {"bsrnn_ddp": {"model": bsrnn["model"],
                                         "training": {"devices": 2, "pesq_workers": 0}}}
    config.setdefault("report", {})["baseline"] = "bsrnn_ddp"
    config_path = workdir / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = workdir / "results" / "bsrnn_ddp" / "seed0"
    target = str((run_dir / "train_summary.json").relative_to(workdir))
    with snakemake_running(workdir, config_path, "--rerun-triggers=mtime", target) as (proc, log):
        output = finish(proc, log)

    (job,) = [j for j in wait_for_accounting(run_id(output), 2) if j.rule == "train"]
    assert job.state == "COMPLETED"
    assert job.wildcards == "bsrnn_ddp_0"
    assert "gres/gpu=2" in job.alloc_tres
    assert "cpu=2" in job.alloc_tres
    (call,) = sbatch_calls(output)["rule_train_wildcards_bsrnn_ddp_0"]
    for flag in (" --gpus=2", " --ntasks=2 ", " --ntasks-per-gpu=1 ", " --cpus-per-task=1 ",
                 " --mem 4000 "):
        assert flag in call, (flag, call)

    # The job ran the rule's command itself (no `srun -n1` around Snakemake), and the
    # command started the processes: one job step of 2 tasks.
    (slurm_log,) = (workdir / "results" / "logs" / "slurm" / "rule_train").rglob(
        f"{job.job_id}.log")
    assert ("srun --ntasks=2 --cpus-per-task=1 --gpus-per-task=1 --kill-on-bad-exit=1 "
            "mbsnet train --config") in slurm_log.read_text()
    steps = subprocess.run(["sacct", "-j", job.job_id, "-n", "-P", "-o", "JobName,NTasks,State"],
                           capture_output=True, text=True, check=True, timeout=30).stdout
    assert "mbsnet|2|COMPLETED" in steps.splitlines(), steps

    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert (summary["processes"], summary["process_devices"], summary["batch_size"],
            summary["micro_batch"]) == (2, ["cpu", "cpu"], 2, 1)
    assert summary["steps"] == 4
    assert summary["utterances_per_second"] > 0
    train_log = (workdir / "results" / "logs" / "train" / "bsrnn_ddp_seed0.log").read_text()
    assert "training bsrnn_ddp seed 0 on 2 processes (cpu)" in train_log
    assert train_log.count("done: 4 steps") == 1          # rank 0 alone reports
