"""The results tree's one description (mbsnet.layout): docs/results.md draws the same tree,
and the paths it gives are the ones training and the workflow use."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest

from mbsnet import layout
from mbsnet.train.paths import RunPaths

from .helpers import ROOT


def documented_paths(text: str) -> set[str]:
    """Every path the tree at the top of docs/results.md names, relative to results/.

    A line is ``<indent><entries>``, then optionally two or more spaces and a comment;
    entries are separated by ``, ``, each a path relative to the nearest folder (an entry
    ending in ``/``) above it with less indent.
    """
    tree = text.split("```", 2)[1].strip("\n").splitlines()
    assert tree[0] == f"{layout.RESULTS}/", tree[0]
    paths, folders = set(), [(-1, PurePosixPath())]      # (indent, folder) from the root
    for line in tree[1:]:
        indent = len(line) - len(line.lstrip(" "))
        entries = re.split(r" {2,}", line.strip(), maxsplit=1)[0]
        while folders[-1][0] >= indent:
            folders.pop()
        for entry in entries.split(", "):
            full = folders[-1][1] / entry
            paths.add(str(full))
            if entry.endswith("/"):
                folders.append((indent, full))
    return paths


def with_parents(paths: set[str]) -> set[str]:
    """The paths and every folder above them (a folder need not be listed on its own)."""
    return {str(parent) for p in paths for parent in [PurePosixPath(p), *PurePosixPath(p).parents]
            if str(parent) != "."}


def test_docs_tree_and_layout_name_the_same_paths():
    documented = with_parents(documented_paths((ROOT / "docs" / "results.md").read_text()))
    described = with_parents(set(layout.patterns().values()))
    assert sorted(documented - described) == [], "in docs/results.md only"
    assert sorted(described - documented) == [], "in mbsnet/layout.py only"


def test_the_comparison_sees_a_renamed_or_missing_path():
    text = (ROOT / "docs" / "results.md").read_text()
    described = with_parents(set(layout.patterns().values()))
    renamed = with_parents(documented_paths(text.replace("checkpoint/", "checkpoints/")))
    assert "{ablation}/seed{seed}/checkpoints/last.pt" in renamed - described
    assert "{ablation}/seed{seed}/checkpoint/last.pt" in described - renamed
    dropped = with_parents(documented_paths(text.replace("    prepare.json ", "    ")))
    assert described - dropped == {"data/prepare.json"}


def test_fill_puts_the_wildcards_in_and_refuses_a_missing_or_unknown_one():
    assert layout.fill(layout.TRAIN_LOG, ablation="abl1", seed=2) == "abl1/seed2/train_log.jsonl"
    assert layout.path("out", layout.PROFILE, ablation="bsrnn") == Path("out/bsrnn/profile.json")
    assert layout.run_dir("results", "abl1", 0) == Path("results/abl1/seed0")
    assert layout.ablation_dir("results", "abl1") == Path("results/abl1")
    with pytest.raises(ValueError, match="no value for seed"):
        layout.fill(layout.EVAL_METRICS, ablation="abl1")
    with pytest.raises(ValueError, match="no placeholder for seed"):
        layout.fill(layout.PROFILE, ablation="abl1", seed=0)


def test_each_rule_has_a_log_and_a_benchmark_named_alike():
    assert layout.log("train", ablation="abl1", seed=0) == "logs/train/abl1_seed0.log"
    assert layout.log("evaluate_noisy") == "logs/evaluate/noisy.log"
    assert layout.log("profile") == "logs/profile/{ablation}.log"
    assert layout.benchmark("evaluate", ablation="a", seed=1) == "benchmarks/evaluate/a_seed1.tsv"
    assert layout.RULE_LOGS.keys() == layout.RULE_BENCHMARKS.keys()
    with pytest.raises(ValueError, match="no rule 'training'"):
        layout.log("training")


def test_paths_relative_to_the_folder_a_command_writes():
    assert layout.within(layout.RUN, layout.LAST_CHECKPOINT) == "checkpoint/last.pt"
    assert layout.within(layout.EVAL, layout.EXAMPLE_WAV) == "example/{utt_id}.wav"
    assert layout.within(layout.NOISY_EVAL, layout.NOISY_SUMMARY) == "summary.json"
    assert layout.within(layout.DATA, layout.PREPARE_RECORD) == "prepare.json"
    with pytest.raises(ValueError, match="is not under"):
        layout.within(layout.RUN, layout.PROFILE)


def test_training_writes_where_the_layout_says(tmp_path):
    paths = RunPaths(layout.run_dir(tmp_path, "abl1", 3))
    where = {"model": layout.MODEL, "log": layout.TRAIN_LOG, "summary": layout.TRAIN_SUMMARY,
             "checkpoint_dir": layout.CHECKPOINT, "last": layout.LAST_CHECKPOINT,
             "best": layout.BEST_CHECKPOINT, "live_log": layout.LIVE_LOG,
             "tensorboard": layout.TENSORBOARD}
    for attribute, pattern in where.items():
        assert getattr(paths, attribute) == layout.path(tmp_path, pattern, ablation="abl1",
                                                         seed=3), attribute


def test_no_ablation_may_be_named_like_a_top_level_folder():
    assert layout.reserved_names() == {"config", "data", "noisy", "logs", "benchmarks"}


def test_the_workflow_names_no_results_path_of_its_own():
    """The rules take every path from mbsnet.layout (common.smk's results(), rule_log(),
    rule_benchmark()): a quoted path under results/ in a rule file would bypass it."""
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    quoted = re.compile(r"""["'](?:results|logs|benchmarks|\{ablation\})/""")
    found = [f"{f.name}:{n}" for f in files
             for n, line in enumerate(f.read_text().splitlines(), 1)
             if quoted.search(line.split("#", 1)[0])]
    assert found == []
