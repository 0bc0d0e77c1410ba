"""The results tree (docs/results.md): where every file the pipeline writes lies.

One description for the workflow's rules, the training loop, the report and the tests, so
that renaming a file or folder is one edit here (and one in docs/results.md, which a test
compares with this module). Torch-free: the Snakefile and ``mbsnet watch`` import it.

Each pattern is a path relative to the results directory, with Snakemake-style
placeholders: ``{ablation}``, ``{seed}`` (the bare number: ``seed{seed}`` is ``seed0``),
``{split}``, ``{utt_id}`` and ``{start_time}``. The rules take the patterns as they are
(``workflow/rules/common.smk``'s ``results()`` puts :data:`RESULTS` in front); Python code
fills them with :func:`fill` or :func:`path`, or with the shortcuts below.
"""

from __future__ import annotations

import string
from pathlib import Path

#: The workflow's results directory, relative to Snakemake's working directory.
RESULTS = "results"

#: The validated config with defaults, which every job reads (Snakemake's onstart).
RESOLVED_CONFIG = "config/resolved.yaml"

# data/: mbsnet prepare (rule prepare_data)
DATA = "data"
MANIFEST = f"{DATA}/manifest.tsv"
#: what the corpus was prepared from: a rerun with the same settings skips the work
PREPARE_RECORD = f"{DATA}/prepare.json"
CLEAN_WAV = f"{DATA}/{{split}}/clean/{{utt_id}}.wav"
NOISY_WAV = f"{DATA}/{{split}}/noisy/{{utt_id}}.wav"

# noisy/eval/: the noisy input scored as a system (rule evaluate_noisy)
NOISY_EVAL = "noisy/eval"
NOISY_METRICS = f"{NOISY_EVAL}/metrics.tsv"
NOISY_SUMMARY = f"{NOISY_EVAL}/summary.json"

# {ablation}/: one folder per configured ablation
ABLATION = "{ablation}"
PROFILE = f"{ABLATION}/profile.json"
RUN = f"{ABLATION}/seed{{seed}}"
MODEL = f"{RUN}/model.pt"
TRAIN_LOG = f"{RUN}/train_log.jsonl"
TRAIN_SUMMARY = f"{RUN}/train_summary.json"
# Not declared to Snakemake, which deletes a failed job's outputs: a rerun resumes from here.
CHECKPOINT = f"{RUN}/checkpoint"
LAST_CHECKPOINT = f"{CHECKPOINT}/last.pt"
BEST_CHECKPOINT = f"{CHECKPOINT}/best.pt"
#: the training log as it is written (copied to TRAIN_LOG when the training ends)
LIVE_LOG = f"{CHECKPOINT}/train_log.jsonl"
TENSORBOARD = f"{RUN}/tensorboard"
EVAL = f"{RUN}/eval"
EVAL_METRICS = f"{EVAL}/metrics.tsv"
EVAL_SUMMARY = f"{EVAL}/summary.json"
#: the report's example utterance, enhanced (a directory output of rule evaluate)
EXAMPLE = f"{EVAL}/example"
EXAMPLE_WAV = f"{EXAMPLE}/{{utt_id}}.wav"
#: every test utterance, enhanced: only with evaluation.save_wavs (undeclared)
WAVS = f"{EVAL}/wavs"
SAVED_WAV = f"{WAVS}/{{utt_id}}.wav"

# mbsnet report (rule report)
REPORT_HTML = "report.html"
SUMMARY_TSV = "summary.tsv"
SUMMARY_MD = "summary.md"

LOGS = "logs"
BENCHMARKS = "benchmarks"
#: everything Snakemake printed during a run of mbsnet watch
SNAKEMAKE_LOG = f"{LOGS}/snakemake/{{start_time}}.log"

# Each rule's log and benchmark file, without the logs/ or benchmarks/ folder and suffix.
_RULE_FILES = {
    "prepare_data": "prepare_data",
    "profile": "profile/{ablation}",
    "train": "train/{ablation}_seed{seed}",
    "evaluate": "evaluate/{ablation}_seed{seed}",
    "evaluate_noisy": "evaluate/noisy",
    "report": "report",
}
#: every rule's log (its output and errors), by rule name
RULE_LOGS = {rule: f"{LOGS}/{name}.log" for rule, name in _RULE_FILES.items()}
#: every rule's benchmark (run time and memory), by rule name
RULE_BENCHMARKS = {rule: f"{BENCHMARKS}/{name}.tsv" for rule, name in _RULE_FILES.items()}


def placeholders(pattern: str) -> set[str]:
    """The names of the placeholders in ``pattern``."""
    return {name for _, name, _, _ in string.Formatter().parse(pattern) if name}


def fill(pattern: str, **wildcards: object) -> str:
    """``pattern`` with its placeholders filled: a path relative to the results directory,
    as the report shows it. Raises ValueError naming a placeholder left without a value
    or a value the pattern has no place for (a misspelt name must not pass unnoticed)."""
    needed, given = placeholders(pattern), set(wildcards)
    if needed - given:
        raise ValueError(f"{pattern}: no value for {', '.join(sorted(needed - given))}")
    if given - needed:
        raise ValueError(f"{pattern}: no placeholder for {', '.join(sorted(given - needed))}")
    return pattern.format(**wildcards)


def path(root: str | Path, pattern: str, **wildcards: object) -> Path:
    """``pattern`` filled (:func:`fill`), under the results directory ``root``."""
    return Path(root) / fill(pattern, **wildcards)


def ablation_dir(root: str | Path, ablation: str) -> Path:
    """``root/{ablation}``: the ablation's profile and its runs."""
    return path(root, ABLATION, ablation=ablation)


def run_dir(root: str | Path, ablation: str, seed: int | str) -> Path:
    """``root/{ablation}/seed{seed}``: one training run, its checkpoints and evaluation."""
    return path(root, RUN, ablation=ablation, seed=seed)


def within(folder: str, pattern: str) -> str:
    """``pattern`` relative to ``folder``, another pattern above it: what a command given
    that folder writes there, e.g. ``within(RUN, LAST_CHECKPOINT)`` is ``checkpoint/last.pt``
    under ``mbsnet train --out RUN_DIR``, ``within(DATA, MANIFEST)`` is ``manifest.tsv``."""
    prefix = folder.rstrip("/") + "/"
    if not pattern.startswith(prefix):
        raise ValueError(f"{pattern} is not under {prefix}")
    return pattern[len(prefix):]


def log(rule: str, **wildcards: object) -> str:
    """The log of ``rule`` relative to the results directory: the pattern (no wildcards)
    or, given the rule's wildcards, one job's log (e.g. ``logs/train/abl1_seed0.log``)."""
    return _rule_file(RULE_LOGS, rule, wildcards)


def benchmark(rule: str, **wildcards: object) -> str:
    """The benchmark file of ``rule`` relative to the results directory, like :func:`log`."""
    return _rule_file(RULE_BENCHMARKS, rule, wildcards)


def _rule_file(files: dict[str, str], rule: str, wildcards: dict[str, object]) -> str:
    if rule not in files:
        raise ValueError(f"no rule {rule!r} (rules: {', '.join(files)})")
    return fill(files[rule], **wildcards) if wildcards else files[rule]


def patterns() -> dict[str, str]:
    """Every path of the tree by name: this module's patterns, then each rule's log and
    benchmark as ``log:RULE`` and ``benchmark:RULE`` (for the tests that compare the tree
    with docs/results.md and with a finished run)."""
    named = {name: value for name, value in globals().items()
             if name.isupper() and not name.startswith("_") and isinstance(value, str)
             and name != "RESULTS"}
    named.update({f"log:{rule}": value for rule, value in RULE_LOGS.items()})
    named.update({f"benchmark:{rule}": value for rule, value in RULE_BENCHMARKS.items()})
    return named


def reserved_names() -> set[str]:
    """The top-level folders of the tree besides the ablations' (data, logs, ...): no
    ablation may take one of their names."""
    return {value.split("/")[0] for value in patterns().values()
            if "/" in value and not value.startswith("{")}
