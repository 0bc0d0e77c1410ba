"""The Snakemake workflow: dry runs, lint, config errors, and the tiny pipeline end to end."""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from mbsnet import layout

from .fake_voicebank import make_fake_voicebank
from .helpers import BIN, ROOT, TINY_CONFIG
from .snakemake_runs import planned_jobs, planned_rules, snakemake, write_config


def test_dry_run_default_config_plans_every_ablation(tmp_path):
    result = snakemake(tmp_path, "-n", config=ROOT / "config.yaml")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    ablations, runs = len(config["ablations"]), len(config["ablations"]) * len(config["seeds"])
    assert ablations >= 5
    jobs = planned_jobs(result.stdout)
    assert jobs == {"prepare_data": 1, "profile": ablations, "train": runs, "evaluate": runs,
                    "evaluate_noisy": 1, "report": 1, "all": 1}


def test_dry_run_voicebank_config(tmp_path):
    root = tmp_path / "vbd"
    make_fake_voicebank(root, layout="official")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["data"] = {"source": "voicebank", "root": str(root), "valid_speakers": 1}
    path = write_config(tmp_path / "vb.yaml", config)
    result = snakemake(tmp_path, "-n", config=path)
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result.stdout)["train"] == 2


def test_lint_is_clean():
    result = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c["training"].update(epochz=3), "epochz"),
        (lambda c: c["ablations"]["mamba"]["model"]["stages"][0]["blocks"][0].update(type="gru"),
         "ablations.mamba.model.stages.0.blocks.0.type"),
        (lambda c: c["ablations"]["bsrnn"]["model"].pop("decoder"), "decoder"),
        (lambda c: c["data"].update(source="libri"), "data.source"),
    ],
    ids=["typo", "unknown-block-type", "missing-key", "unknown-source"],
)
def test_bad_config_fails_before_any_job(tmp_path, edit, key):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    edit(config)
    result = snakemake(tmp_path, "--cores", "1", config=write_config(tmp_path / "bad.yaml", config))
    assert result.returncode != 0
    assert key in result.stdout + result.stderr
    assert not (tmp_path / "results" / "data").exists()


def documented_tree() -> str:
    """The results tree drawn at the top of docs/results.md."""
    text = (ROOT / "docs" / "results.md").read_text()
    return text.split("```", 2)[1]


def generalised(relative: Path, ablations: set[str]) -> list[str]:
    """A results file's path with its names as docs/results.md writes them: {ablation},
    seed{seed}, {split}, {utt_id}.wav; logs/ and benchmarks/ by their folder only."""
    parts = list(relative.parts)
    if parts[0] in ("logs", "benchmarks"):
        return [f"{parts[0]}/"]
    if parts[0] in ablations:
        parts[0] = "{ablation}"
    parts = ["seed{seed}" if re.fullmatch(r"seed\d+", p) else p for p in parts]
    if parts[0] == "data" and len(parts) > 2:
        parts[1] = "{split}"
    if parts[-1].endswith(".wav"):
        parts[-1] = "{utt_id}.wav"
    if "tensorboard" in parts:  # TensorBoard names its event files
        parts = parts[:parts.index("tensorboard") + 1]
    return parts


def assert_documented(results: Path, config: dict) -> None:
    """Every file a finished run wrote is named in docs/results.md's tree, folder by folder
    (the tree names each folder and file in its own words, e.g. `{ablation}/`)."""
    tree = documented_tree()
    missing = set()
    for path in results.rglob("*"):
        # Snakemake's own marker in a directory() output is not the pipeline's file
        if path.is_file() and path.name != ".snakemake_timestamp":
            for part in generalised(path.relative_to(results), set(config["ablations"])):
                if part.rstrip("/") not in tree:
                    missing.add(f"{path.relative_to(results)} ({part})")
    assert not missing, f"not in docs/results.md's tree: {sorted(missing)}"


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path):
    work = tmp_path / "run"
    work.mkdir()
    config_path = shutil.copy(TINY_CONFIG, work / "tiny.yaml")
    result = snakemake(work, "--cores", "2", "report", config=config_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Report: results/report.html" in result.stdout  # the onsuccess headline
    html = (work / "results" / "report.html").read_text()
    for name in ("bsrnn", "mamba", "noisy"):
        assert name in html
    summary = (work / "results" / "summary.tsv").read_text()
    assert "bsrnn" in summary
    assert "mamba" in summary
    for rule_log in ("prepare_data.log", "report.log"):
        assert (work / "results" / "logs" / rule_log).exists()
    assert_documented(work / "results", yaml.safe_load(TINY_CONFIG.read_text()))

    again = snakemake(work, "--cores", "2", "report", config=config_path)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
    assert (work / "results" / "config" / "resolved.yaml").is_file()  # written at run time

    # Snakemake's own report: the tagged outputs with their captions and the description
    zipped = work / "snakemake-report.zip"
    built = snakemake(work, "--report", str(zipped), config=config_path)
    assert built.returncode == 0, built.stderr[-2000:]
    with zipfile.ZipFile(zipped) as archive:
        text = "".join(archive.read(name).decode(errors="replace")
                       for name in archive.namelist() if not name.endswith((".tsv", ".html"))
                       or name.endswith("report.html"))
    for words in ("trained, evaluated and compared on one corpus",  # workflow description
                  "mbsnet&#x27;s comparison report", "Per-utterance scores of mamba"):
        assert words in text or words.replace("&#x27;", "'") in text, words

    # Changing one ablation's settings reruns that ablation and the report only.
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["training"]["lr"] = 1e-3  # unchanged global value: no effect
    config["ablations"]["mamba"]["model"]["channels"] = 12
    changed = write_config(work / "tiny.yaml", config)
    plan = snakemake(work, "-n", "report", config=changed)
    assert plan.returncode == 0, plan.stderr
    assert planned_jobs(plan.stdout) == {"profile": 1, "train": 1, "evaluate": 1, "report": 1}


def test_every_planned_file_is_a_path_of_the_layout(tmp_path):
    """Each job's outputs, log and benchmark are mbsnet.layout's paths under results/."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    result = snakemake(tmp_path, "-n", "-p", "--cores", "4", config=TINY_CONFIG)
    assert result.returncode == 0, result.stderr
    names = [{"ablation": a, "seed": s} for a in config["ablations"] for s in config["seeds"]]
    known = {f"{layout.RESULTS}/{layout.fill(pattern, **{k: w[k] for k in needed})}"
             for pattern in layout.patterns().values()
             if (needed := layout.placeholders(pattern)) <= {"ablation", "seed"}
             for w in names}
    planned = [name for field in re.findall(r"^\s+(?:output|log|benchmark): (.*)$",
                                            result.stdout, re.M)
               for name in field.split(", ")]
    assert len(planned) > 20
    assert [name for name in planned if name not in known] == []


# --------------------------------------------------------------------------- GPUs and CPUs

def test_gpu_and_cpu_requests_follow_each_ablations_training_device(tmp_path):
    """Training, its profile and its evaluation ask for a GPU unless the ablation trains on
    the CPU; on SLURM the training and its profile get CPUs for the trainer's threads, PESQ
    workers and data workers, while the rule's local threads stay resources.threads."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["training"].update(pesq_workers=1, data_workers=3)
    config["resources"]["threads"] = 2
    config["ablations"]["mamba"]["training"] = {"device": "cpu", "pesq_workers": 0}
    path = write_config(tmp_path / "devices.yaml", config)
    result = snakemake(tmp_path, "-n", "-p", "--cores", "4", "--profile", str(ROOT / "slurm"),
                       config=path)
    assert result.returncode == 0, result.stderr
    jobs = {(job["rule"], job["wildcards"].get("ablation")): job
            for job in planned_rules(result.stdout)}
    assert len(jobs) == 10      # prepare, noisy, report, all + 2 x (profile, train, evaluate)

    for ablation, gpu, cpus, device in (("bsrnn", "1", "6", "auto"), ("mamba", "0", "5", "cpu")):
        for rule in ("profile", "train", "evaluate"):
            assert jobs[rule, ablation]["resources"]["gpu"] == gpu, (rule, ablation)
        # Locally a training and its profile hold one core for their worker processes
        # besides their torch threads (resources.threads).
        assert jobs["evaluate", ablation]["threads"] == 2
        for rule in ("profile", "train"):
            assert jobs[rule, ablation]["threads"] == 3, (rule, ablation)
            assert " --threads 2 " in jobs[rule, ablation]["shell"], (rule, ablation)
            assert jobs[rule, ablation]["resources"]["cpus_per_task"] == cpus
            assert jobs[rule, ablation]["resources"]["mem_mb"] == "2000"   # train_mem_mb
        assert f" --device {device} " in jobs["evaluate", ablation]["shell"]
        # on SLURM an evaluation gets CPUs for its threads and its scoring workers
        assert jobs["evaluate", ablation]["resources"]["cpus_per_task"] == str(
            2 + config["evaluation"]["workers"])
    for rule in ("prepare_data", "evaluate_noisy", "report"):
        assert "gpu" not in jobs[rule, None]["resources"], rule


def test_a_training_without_worker_processes_holds_only_its_threads(tmp_path):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["training"].update(pesq_workers=0, data_workers=0)
    path = write_config(tmp_path / "no_workers.yaml", config)
    result = snakemake(tmp_path, "-n", "-p", "--cores", "4", config=path)
    assert result.returncode == 0, result.stderr
    jobs = [job for job in planned_rules(result.stdout) if job["rule"] in ("profile", "train")]
    assert jobs
    for job in jobs:
        assert job["threads"] == config["resources"]["threads"], job
        assert f" --threads {config['resources']['threads']} " in job["shell"], job


def test_make_report_passes_gpus_after_the_target():
    def command(*args: str) -> str:
        out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "report", *args],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        (line,) = [ln for ln in out.stdout.splitlines() if "snakemake" in ln]
        return line.split("/snakemake ", 1)[1]

    assert command() == "--cores 4 report"
    assert command("GPUS=2", "CORES=8") == "--cores 8 report --resources gpu=2"
    assert command("CONFIG=x.yaml", "GPUS=1") == (
        "--cores 4 report --configfile x.yaml --replace-workflow-config --resources gpu=1")


def test_make_report_config_runs_that_config_alone(tmp_path):
    """CONFIG replaces config.yaml: the tiny config's two ablations are planned, not the
    default's six on top of them."""
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "report",
                          f"CONFIG={TINY_CONFIG}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    (line,) = [ln for ln in out.stdout.splitlines() if "/snakemake " in ln]
    args = line.split("/snakemake ", 1)[1].split()
    result = snakemake(tmp_path, "-n", *args, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result.stdout)["train"] == 2


# --------------------------------------------------------------------------- README

def readme_commands() -> list[str]:
    """Every `snakemake ...` and `make report ...` command README.md shows, in code blocks
    (comments included) and in inline code, whitespace normalised."""
    text = (ROOT / "README.md").read_text()
    fence = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
    pieces = [part for block in fence.findall(text) for line in block.splitlines()
              for part in line.split("#")]
    pieces += re.findall(r"`([^`]+)`", fence.sub("", text))
    commands = []
    for piece in pieces:
        found = re.search(r"(?<![\w./=-])(?:snakemake\s+\S|make report).*$", piece.strip())
        command = " ".join(found.group(0).split()) if found else None
        # `snakemake --report` packs a finished run: the end-to-end test builds it;
        # `snakemake --lint` plans nothing: test_lint_is_clean runs it
        if command and not {"--report", "--lint"} & set(command.split()) \
                and command not in commands:
            commands.append(command)
    return commands


README_COMMANDS = readme_commands()


def test_readme_shows_the_local_gpu_and_slurm_commands():
    assert "snakemake --profile slurm" in README_COMMANDS
    assert "make report GPUS=2" in README_COMMANDS
    assert any("--resources gpu=" in c and c.startswith("snakemake") for c in README_COMMANDS)


@pytest.mark.parametrize("command", README_COMMANDS)
def test_readme_command_dry_runs(command, tmp_path):
    """Each command as shown, run from the project root (a make command as make would run
    it), plans the whole pipeline. Without a --configfile it plans config.yaml; a config
    that names a dataset this machine lacks is planned with the synthetic corpus instead."""
    words = command.split()
    if words[0] == "make":
        out = subprocess.run(["make", "-n", "-o", ".venv/.installed", *words[1:]], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        (line,) = [ln for ln in out.stdout.splitlines() if "/snakemake " in ln]
        words = ["snakemake", *line.split("/snakemake ", 1)[1].split()]
    args = words[1:]
    configs = [args[i + 1] for i, word in enumerate(args) if word == "--configfile"]
    extra = [] if configs else ["--configfile", str(ROOT / "config.yaml")]
    for path in configs:
        data = yaml.safe_load((ROOT / path).read_text()).get("data", {})
        if data.get("source") == "voicebank" and not Path(data.get("root") or "").is_dir():
            extra += ["--config", "data={source: synthetic}"]
    result = snakemake(tmp_path, "-n", *args, *extra, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert planned_jobs(result.stdout)["report"] == 1


@pytest.mark.parametrize("mode", ["-n", "--lint"])
def test_parsing_linting_and_dry_runs_write_no_results(tmp_path, mode):
    result = snakemake(tmp_path, mode, config=shutil.copy(TINY_CONFIG, tmp_path / "tiny.yaml"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert not (tmp_path / "results").exists()
