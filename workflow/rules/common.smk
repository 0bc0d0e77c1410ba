# Config validation, the results tree's paths, wildcard constraints and small helpers shared
# by every rule.
import json
import os
import re
import shlex
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

from mbsnet import layout
from mbsnet.config import ablation_config, config_hash, validate_config
from mbsnet.models.spec import parse_model_config
from mbsnet.train.distributed import Layout

# The config's one validation, against mbsnet/schemas/config.schema.yaml: errors name the
# key path (data.source), cross-key checks (report.baseline, parents) run, and the schema's
# defaults are filled in, in place, so that every rule and resolved.yaml see them.
config.update(validate_config(config, source="config"))

RESERVED_NAMES = layout.reserved_names()
ABLATIONS = list(config["ablations"])
SEEDS = [str(seed) for seed in config["seeds"]]
THREADS = config["resources"]["threads"]
ENV = "../../envs/mbsnet.yaml"


def results(pattern):
    """A path of the results tree (a pattern of mbsnet.layout, e.g. layout.MODEL) as the
    rules name it: under results/, its {ablation} and {seed} left for Snakemake."""
    return f"{layout.RESULTS}/{pattern}"


def rule_log(rule):
    """The rule's log: results/logs/..., as mbsnet.layout names it."""
    return results(layout.log(rule))


def rule_benchmark(rule):
    """The rule's benchmark file: results/benchmarks/..., as mbsnet.layout names it."""
    return results(layout.benchmark(rule))


MANIFEST = results(layout.MANIFEST)


def mbsnet_command():
    """How a job starts the mbsnet command line: the installed `mbsnet`, or under
    `--sdm conda` the package from this workflow's directory, since envs/mbsnet.yaml holds
    only its dependencies (an env file cannot install the package: Snakemake creates the
    environment from a copy in .snakemake/conda/, where a path to it would point elsewhere).
    `env` sets PYTHONPATH, so that torchrun and srun, which start the first word of what
    follows them, start it too."""
    if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
        return "mbsnet"
    pythonpath = shlex.quote(f"PYTHONPATH={workflow.basedir}")
    return f"env {pythonpath} python -m mbsnet"


MBSNET = mbsnet_command()


def mbsnet_shell(arguments, launcher=""):
    """A rule's shell command: `mbsnet ARGUMENTS` (after `launcher`, a placeholder of the
    command that starts several processes). Without --sdm conda it is the command as it
    has always been: Snakemake reruns a job whose rule's command text changed."""
    escaped = MBSNET.replace("{", "{{").replace("}", "}}")  # no placeholder in a path
    return f"{launcher}{escaped} {arguments}"


_clash = RESERVED_NAMES.intersection(ABLATIONS)
if _clash:
    raise ValueError(
        f"config: ablations.{sorted(_clash)[0]}: this name is reserved for a results folder; "
        "choose another ablation name"
    )
# Each training's batch must divide among its processes and micro-batches: say so now.
LAYOUTS = {name: Layout.of(ablation_config(config, name)["training"], name) for name in ABLATIONS}


wildcard_constraints:
    ablation="|".join(re.escape(name) for name in ABLATIONS),
    seed="|".join(SEEDS),


RESOLVED_CONFIG = results(layout.RESOLVED_CONFIG)


def write_resolved_config():
    """Write the validated config with defaults, which the mbsnet commands read, when it
    changed. Called from onstart, so that parsing, linting and dry runs write nothing."""
    path = Path(RESOLVED_CONFIG)
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def dataset_input(wildcards):
    """The user's dataset folder (ancient: its mtime never triggers a rerun), if any."""
    if config["data"]["source"] == "voicebank" and config["data"]["root"]:
        return ancient(config["data"]["root"])
    return []


def data_settings(wildcards):
    """Rerun trigger for data preparation: only the data section matters."""
    return config_hash(config["data"])


def ablation_settings(wildcards):
    """Rerun trigger for one ablation: its model and merged training settings only."""
    return config_hash(ablation_config(config, wildcards.ablation))


def ablation_device(wildcards):
    """The ablation's training.device: its profile and evaluation run where it trains."""
    return ablation_config(config, wildcards.ablation)["training"]["device"]


def gpu_request(wildcards):
    """The `gpu` resource of a job that may run on CUDA (device auto or cuda): 1, else 0.
    Locally `--resources gpu=N` runs N such jobs at once, each on a GPU it claims
    (mbsnet.gpu_claim); on SLURM 1 becomes `sbatch --gpus=1`."""
    return 0 if ablation_device(wildcards) == "cpu" else 1


def training_cpus(wildcards):
    """CPUs of a training job on SLURM (`--cpus-per-task`): the trainer's threads, its PESQ
    worker processes and its data-loader workers. The profile gets the same, so it measures
    the step on the kind of allocation it guards. Locally the rule's `threads` stay
    resources.threads: the workers share the cores Snakemake hands out."""
    training = ablation_config(config, wildcards.ablation)["training"]
    return THREADS + training["pesq_workers"] + training["data_workers"]


# CPUs of an evaluation job on SLURM (`--cpus-per-task`): its threads and its scoring
# worker processes. Locally the workers share the cores Snakemake hands out.
EVALUATION_CPUS = THREADS + config["evaluation"]["workers"]


# Above every training's priority: all profiles first (they are short).
PROFILE_PRIORITY = 1000


def train_priority(wildcards):
    """Longer trainings start first: the model's sequential passes (a recurrent layer counts
    one per direction; MLPs none) stand for its step time, which is not measured yet when
    Snakemake orders the jobs (default run: bsrnn 15, abl2/abl3/optimized 4, abl1 2)."""
    spec = parse_model_config(ablation_config(config, wildcards.ablation)["model"])
    return 1 + sum(2 if b.bidirectional else 1 for b in spec.layers if b.type != "mlp")


def train_processes(wildcards):
    """The processes of one training (training.devices, absent: 1)."""
    return LAYOUTS[wildcards.ablation].devices


def train_gpus(wildcards):
    """The `gpu` resource of a training: a GPU per process where it may run on CUDA."""
    return gpu_request(wildcards) * train_processes(wildcards)


def worker_cores(wildcards):
    """Cores a training process holds locally besides its torch threads: one when it has
    worker processes (data loading, PESQ scoring), which need the CPU too. On the default
    run (2 cores, `--cores 4`) two trainings then run at a time, not four, each at about
    the speed it has alone (benchmarks/README.md, "The default run")."""
    training = ablation_config(config, wildcards.ablation)["training"]
    return 1 if training["pesq_workers"] + training["data_workers"] > 0 else 0


def profile_threads(wildcards):
    """Cores one training process holds locally: resources.threads plus worker_cores. Its
    profile holds the same, so the step is measured at the share of the CPU it will get."""
    return THREADS + worker_cores(wildcards)


def train_threads(wildcards):
    """Cores a training holds locally: those of one process (profile_threads) per process."""
    return profile_threads(wildcards) * train_processes(wildcards)


def torch_threads(wildcards, cores):
    """Torch threads of a process given `cores`: resources.threads, or fewer when `--cores`
    capped the cores Snakemake gave the job (its workers keep their core)."""
    return max(1, min(THREADS, cores - worker_cores(wildcards)))


def process_threads(wildcards, threads):
    """Torch threads of each of the training's processes (their share of `threads`)."""
    return torch_threads(wildcards, threads // train_processes(wildcards))


def profile_process_threads(wildcards, threads):
    """Torch threads of the profile."""
    return torch_threads(wildcards, threads)


def train_mem_mb(wildcards):
    """resources.train_mem_mb for each process of the training."""
    return config["resources"]["train_mem_mb"] * train_processes(wildcards)


def train_tasks(wildcards):
    """SLURM tasks of a multi-process training (`--ntasks`); None for one process."""
    processes = train_processes(wildcards)
    return processes if processes > 1 else None


def train_tasks_per_gpu(wildcards):
    """One task per GPU (`--ntasks-per-gpu=1`: the plugin would otherwise ask `tasks` per
    GPU) for a multi-process training on GPUs; None otherwise."""
    return 1 if train_tasks(wildcards) and gpu_request(wildcards) else None


def train_mpi(wildcards):
    """Marks a multi-process training as what the SLURM plugin calls an MPI job: its job
    runs the rule's command as it is, and the command starts the tasks with srun."""
    return "srun" if train_tasks(wildcards) else None


def train_launcher(wildcards):
    """What starts a training's processes, before `mbsnet train`: nothing for one; for N,
    `srun` inside the SLURM job of N tasks the resources above asked for, else
    `torchrun --standalone` on this machine. A string resource, so it is evaluated where
    the command runs (a SLURM job executes it remotely) and never triggers a rerun."""
    processes = train_processes(wildcards)
    if processes == 1:
        return ""
    if workflow.remote_exec and "SLURM_JOB_ID" in os.environ:
        gpus = " --gpus-per-task=1" if gpu_request(wildcards) else ""
        return (
            f"srun --ntasks={processes} --cpus-per-task={training_cpus(wildcards)}{gpus}"
            " --kill-on-bad-exit=1 "
        )
    return f"torchrun --standalone --nproc-per-node {processes} --no-python "


def evaluation_settings(wildcards):
    return config_hash(config["evaluation"])


def run_dir(wildcards):
    return results(layout.fill(layout.RUN, ablation=wildcards.ablation, seed=wildcards.seed))


def all_runs(pattern):
    """`pattern` expanded over every configured ablation and seed."""
    return expand(pattern, ablation=ABLATIONS, seed=SEEDS)


def report_settings(wildcards):
    return config_hash(config)


def stop_jobs_on_interrupt():
    """On SIGINT or SIGTERM to Snakemake itself, first send SIGTERM to every running local
    job (a training then checkpoints at its next step and exits; the job fails, so its
    declared outputs are removed and a plain rerun resumes it), then let Snakemake handle
    the signal as it would. Without this a training would run to its end while Snakemake
    waits for it, and its outputs would be left marked incomplete."""
    import signal

    import psutil

    def forwarding(previous):
        def handler(signum, frame):
            for child in psutil.Process().children(recursive=True):
                try:
                    child.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
            if callable(previous):
                previous(signum, frame)

        return handler

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forwarding(signal.getsignal(signum)))


# --- The end of a run: the report's path and headline table on the terminal -------------
# (called from onsuccess in the Snakefile; mbsnet.watch.headline formats them)
import time as _time

# When the Snakefile was read: a summary.md written since then was written by this run.
_PARSED_AT = _time.time()


def print_report_headline():
    """Print the report's path and the headline table of summary.md to stdout, when this
    run wrote them (a run of other targets prints nothing). Snakemake logs to stderr, so
    this also reaches the terminal under `mbsnet watch`."""
    from mbsnet.watch import headline

    summary = Path(rules.report.output.md)
    if summary.is_file() and summary.stat().st_mtime >= _PARSED_AT:
        print(f"\n{headline(rules.report.output.html, summary)}\n", flush=True)
