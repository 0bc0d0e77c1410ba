"""Fidelity to the original code (Fazazl2020/BSRNN, commit b42e05f).

Every case directory of the upstream fixtures (tests/data/upstream/README.md), or of the
folder named by $MBSNET_FIDELITY_FIXTURES, is one test: the network its model.yaml describes,
with its weights.pt loaded strictly, must turn input.pt into expected.pt within the case's
tolerance. Also: the two configs that reproduce the original (configs/original_recipe.yaml,
configs/as_coded_twins.yaml) validate and say what the original scripts did.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mbsnet.config import load_config
from mbsnet.models import Discriminator, build_model

from .helpers import ROOT

FIXTURES_ENV = "MBSNET_FIDELITY_FIXTURES"
DEFAULT_FIXTURES = ROOT / "tests" / "data" / "upstream"
UPSTREAM_CASES = {"bsrnn", "discriminator", "abl1_exact", "abl1_as_coded", "abl2_exact",
                  "abl2_as_coded", "abl3_exact", "abl3_as_coded", "optimized_exact",
                  "optimized_as_coded"}
CASE_FILES = ("model.yaml", "weights.pt", "input.pt", "expected.pt", "meta.json")


def fixture_root() -> Path:
    return Path(os.environ.get(FIXTURES_ENV) or DEFAULT_FIXTURES)


def case_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` (at any depth) that holds a model.yaml."""
    return sorted(path.parent for path in root.rglob("model.yaml")) if root.is_dir() else []


CASES = case_dirs(fixture_root())


def build_network(settings: dict) -> nn.Module:
    """The network a case's model.yaml describes: the discriminator, or a BandSplitNet."""
    if "discriminator_ndf" in settings:
        return Discriminator(settings["discriminator_ndf"])
    return build_model(settings)


def relative_error(output: torch.Tensor, expected: torch.Tensor) -> float:
    """max|output - expected| / max|expected|, complex values as (real, imag) pairs."""
    if expected.is_complex():
        output, expected = torch.view_as_real(output), torch.view_as_real(expected)
    return ((output - expected).abs().max() / expected.abs().max()).item()


def test_fixture_folder_holds_the_cases():
    root = fixture_root()
    assert CASES, f"no case directory (a folder with model.yaml) under {root}"
    for case in CASES:
        missing = [name for name in CASE_FILES if not (case / name).is_file()]
        assert not missing, f"{case}: missing {', '.join(missing)}"
    if FIXTURES_ENV not in os.environ:
        assert {case.name for case in CASES} == UPSTREAM_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.relative_to(fixture_root()).as_posix()
                                             for c in CASES])
def test_output_matches_the_original(case):
    settings = yaml.safe_load((case / "model.yaml").read_text())
    tolerance = json.loads((case / "meta.json").read_text())["tolerance_rel"]
    network = build_network(settings)
    network.load_state_dict(torch.load(case / "weights.pt", weights_only=True), strict=True)
    network.eval()
    inputs = torch.load(case / "input.pt", weights_only=True)
    expected = torch.load(case / "expected.pt", weights_only=True)["output"]
    with torch.no_grad():
        output = network(**inputs)
    assert output.shape == expected.shape
    assert output.dtype == expected.dtype
    error = relative_error(output, expected)
    assert error <= tolerance, f"{case.name}: relative error {error:.3g} > {tolerance:g}"


def test_relative_error_compares_complex_values_as_pairs():
    expected = torch.tensor([3 + 4j, 1 - 2j], dtype=torch.complex64)
    output = expected + torch.tensor([0.5j, 0], dtype=torch.complex64)
    assert relative_error(output, expected) == pytest.approx(0.5 / 4)   # largest part: 4
    assert relative_error(expected, expected) == 0


def test_a_case_folder_named_by_the_environment_is_tested(tmp_path):
    """Any folder of cases in this format is picked up, at any depth, and a case whose
    expected output is off by more than its tolerance fails."""
    shutil.copytree(DEFAULT_FIXTURES / "bsrnn", tmp_path / "mine" / "good")
    shutil.copytree(DEFAULT_FIXTURES / "bsrnn", tmp_path / "bad")
    expected = torch.load(tmp_path / "bad" / "expected.pt", weights_only=True)
    torch.save({"output": expected["output"] * 1.001}, tmp_path / "bad" / "expected.pt")
    env = {**os.environ, FIXTURES_ENV: str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
         f"{Path(__file__).name}::test_output_matches_the_original"],
        cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "PASSED test_fidelity.py::test_output_matches_the_original[mine/good]" in done.stdout
    assert "FAILED test_fidelity.py::test_output_matches_the_original[bad]" in done.stdout
    assert "bad: relative error 0.000999" in done.stdout
    assert "1 failed, 1 passed" in done.stdout


# --- the configs that reproduce the original --------------------------------------------

def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_original_recipe_is_the_original_training_scripts():
    config = load_config(ROOT / "configs" / "original_recipe.yaml")
    training = config["training"]
    assert {k: training[k] for k in ("epochs", "steps_per_epoch", "batch_size", "crop_seconds",
                                     "lr", "disc_lr", "decay_epoch", "lr_gamma", "grad_clip",
                                     "metricgan_from", "discriminator_ndf", "precision")} == {
        "epochs": 120, "steps_per_epoch": None, "batch_size": 6, "crop_seconds": 2.0,
        "lr": 1e-3, "disc_lr": 1e-3, "decay_epoch": 10, "lr_gamma": 0.98, "grad_clip": 5.0,
        "metricgan_from": 0.5, "discriminator_ndf": 16, "precision": "fp32"}
    assert training["loss"] == {"ri_weight": 0.5, "mag_weight": 0.5, "compress": 0.3,
                                "metric_weight": 1.0}
    assert (training["validate_on"], training["best_key"]) == ("test", "val_loss")
    assert config["data"]["source"] == "voicebank"
    assert config["data"]["valid_speakers"] == 0
    assert config["data"]["root"] == "/path/to/VoiceBank-DEMAND"
    models = {name: entry["model"] for name, entry in config["ablations"].items()}
    assert list(models) == ["bsrnn", "abl1_as_coded", "abl2_as_coded", "abl3_as_coded",
                            "optimized_as_coded"]
    default = load_config(ROOT / "config.yaml")["ablations"]
    assert models["bsrnn"] == default["bsrnn"]["model"]
    for name in ("abl1", "abl2", "abl3", "optimized"):
        assert models[f"{name}_as_coded"] == {**default[name]["model"], "scan": "as_coded",
                                              "init": "original"}


def test_as_coded_twins_is_config_yaml_plus_a_twin_of_every_mamba_ablation():
    twins, default = _raw(ROOT / "configs" / "as_coded_twins.yaml"), _raw(ROOT / "config.yaml")
    assert {k: v for k, v in twins.items() if k != "ablations"} == {
        k: v for k, v in default.items() if k != "ablations"}
    expected = copy.deepcopy(default["ablations"])
    for name in ("abl1", "abl2", "abl3"):
        twin = copy.deepcopy(default["ablations"][name])
        twin["model"].update(scan="as_coded", init="original")
        twin["parent"] = name
        expected[f"{name}_as_coded"] = twin
    assert twins["ablations"] == expected
    assert expected["optimized_as_coded"]["model"] == {
        **default["ablations"]["optimized"]["model"], "scan": "as_coded", "init": "original"}
    resolved = load_config(ROOT / "configs" / "as_coded_twins.yaml")
    assert len(resolved["ablations"]) == 9


# --- benchmarks/ablations.py --scan both: the as_coded scan's cost beside the exact one ---

def _ablations_benchmark():
    spec = importlib.util.spec_from_file_location("ablations_benchmark",
                                                  ROOT / "benchmarks" / "ablations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablations_benchmark_adds_an_as_coded_twin_of_every_exact_mamba_ablation(tmp_path):
    bench = _ablations_benchmark()
    names = ["bsrnn", "abl1", "optimized", "optimized_as_coded"]
    path, twins = bench.with_as_coded_twins(ROOT / "config.yaml", tmp_path, names)
    assert twins == {"abl1_as_coded": "abl1", "optimized_as_coded": "optimized"}
    config = load_config(path)
    assert config["ablations"]["abl1_as_coded"]["model"] == {
        **config["ablations"]["abl1"]["model"], "scan": "as_coded"}
    assert config["ablations"]["optimized_as_coded"]["model"]["init"] == "original"  # kept
    assert bench.beside_their_twins(names, twins) == [
        "bsrnn", "abl1", "abl1_as_coded", "optimized", "optimized_as_coded"]


def test_ablations_benchmark_compares_an_as_coded_row_with_its_exact_twin():
    bench = _ablations_benchmark()

    def row(name, step, peak, scan_flops=1.0):
        return {"ablation": name, "train_step_seconds": step, "peak_train_memory_mb": peak,
                "flops_per_second_by_source": {"scan": scan_flops}}

    rows = [row("bsrnn", 10.0, 3000.0, 0.0), row("abl1", 4.0, 1000.0),
            row("abl1_as_coded", 4.4, 1300.0), row("abl2", 8.0, 1600.0),
            row("abl2_as_coded", 9.0, 1700.0)]
    bench.with_targets(rows, comparable=True,
                       twins={"abl1_as_coded": "abl1", "abl2_as_coded": "abl2"})
    by_name = {r["ablation"]: r for r in rows}
    assert by_name["abl1_as_coded"]["step_vs_exact"] == pytest.approx(1.1)
    assert by_name["abl1_as_coded"]["peak_vs_exact"] == pytest.approx(1.3)
    assert by_name["abl1_as_coded"]["as_coded_target_met"] is False      # memory 1.3x > 1.2x
    assert by_name["abl2_as_coded"]["as_coded_target_met"] is True
    assert "step_vs_exact" not in by_name["abl1"]
    assert by_name["abl1_as_coded"]["original_peak_gb"] == 4.5          # abl1's original
    assert "MISSED" in bench.table([{**r, "params": {"total": 1, "claimed": None},
                                     "macs_per_second": 1.0, "inference_rtf": 0.1,
                                     "wall_seconds": 1.0} for r in rows])
