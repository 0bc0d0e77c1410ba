"""Config validation: every value checked before work starts, in the package and the workflow."""

from __future__ import annotations

import copy

import pytest
import yaml

from mbsnet.config import validate_config
from mbsnet.errors import ConfigError

from .helpers import TINY_CONFIG
from .snakemake_runs import snakemake, write_config

TINY = yaml.safe_load(TINY_CONFIG.read_text())

BAD_OVERRIDES = [
    ({"epochz": 3}, "ablations.mamba.training: Additional properties are not allowed "
                    "('epochz' was unexpected)"),
    ({"batch_size": 0}, "ablations.mamba.training.batch_size: 0 is less than the minimum of 1"),
    ({"lr": -1.0}, "ablations.mamba.training.lr: -1.0 is less than or equal to the minimum of 0"),
    ({"lr": "fast"}, "ablations.mamba.training.lr: 'fast' is not of type 'number'"),
    ({"loss": {"compres": 0.3}}, "ablations.mamba.training.loss: Additional properties are "
                                 "not allowed ('compres' was unexpected)"),
]


def with_override(override: dict) -> dict:
    config = copy.deepcopy(TINY)
    config["ablations"]["mamba"]["training"] = override
    return config


@pytest.mark.parametrize(("override", "message"), BAD_OVERRIDES,
                         ids=["unknown-key", "zero-batch", "negative-lr", "string-lr",
                              "nested-unknown-key"])
def test_per_ablation_training_overrides_are_validated(override, message):
    with pytest.raises(ConfigError) as caught:
        validate_config(with_override(override), source="tiny.yaml")
    assert message in str(caught.value)


def test_valid_overrides_pass_and_merge():
    config = validate_config(with_override({"batch_size": 4, "loss": {"compress": 0.5}}))
    assert config["ablations"]["mamba"]["training"] == {"batch_size": 4,
                                                        "loss": {"compress": 0.5}}


def test_evaluation_workers_range_agrees_with_the_command_line():
    config = copy.deepcopy(TINY)
    config["evaluation"]["workers"] = 0
    with pytest.raises(ConfigError, match="evaluation.workers: 0 is less than the minimum of 1"):
        validate_config(config)


def test_no_validation_speakers_is_an_error_when_training_validates_on_them():
    config = copy.deepcopy(TINY)
    config["data"]["valid_speakers"] = 0
    with pytest.raises(ConfigError, match="data.valid_speakers is 0, so there is no "
                                          "validation split, but ablation 'bsrnn'"):
        validate_config(config)
    config["training"]["validate_on"] = "test"
    assert validate_config(config)["data"]["valid_speakers"] == 0


def test_dry_run_fails_on_a_bad_override(tmp_path):
    path = write_config(tmp_path / "bad.yaml", with_override({"epochz": 3}))
    result = snakemake(tmp_path, "-n", config=path, timeout=300)
    assert result.returncode != 0
    assert "ablations.mamba.training: Additional properties" in result.stdout + result.stderr
