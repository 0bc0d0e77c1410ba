"""The ablation lineage: `parent:` in the config (checked, never a training setting) and the
change of each step spelt out from the two configs."""

from __future__ import annotations

import copy

import pytest
import yaml

from mbsnet.config import (
    ablation_config,
    ablation_parents,
    config_hash,
    load_config,
    validate_config,
)
from mbsnet.errors import ConfigError
from mbsnet.report.changes import block_text, describe_change, model_changes, stage_text
from mbsnet.report.steps import lineage

from .helpers import ROOT, TINY_CONFIG

TINY = yaml.safe_load(TINY_CONFIG.read_text())
MAMBA_TIME = {"type": "mamba", "axis": "time", "bidirectional": True, "d_state": 16}
MAMBA_BAND = {"type": "mamba", "axis": "band", "bidirectional": True, "d_state": 16}


def tiny_with(parents: dict[str, str | None], extra: tuple[str, ...] = ()) -> dict:
    """tiny.yaml with more ablations (copies of `mamba`) and the given parents."""
    config = copy.deepcopy(TINY)
    for name in extra:
        config["ablations"][name] = copy.deepcopy(TINY["ablations"]["mamba"])
    for name, parent in parents.items():
        config["ablations"][name]["parent"] = parent
    return config


# --------------------------------------------------------------------------- the config


def test_parents_default_to_the_baseline():
    config = validate_config(tiny_with({"b": "a"}, extra=("a", "b")))
    assert ablation_parents(config) == {"mamba": "bsrnn", "a": "bsrnn", "b": "a"}
    # a null parent is the same as none; no configured baseline leaves roots
    config = validate_config(tiny_with({"a": None}, extra=("a",)) | {"report": {}})
    assert ablation_parents(config) == {"mamba": "bsrnn", "a": "bsrnn"}
    del config["ablations"]["bsrnn"]
    assert ablation_parents(config) == {}


def test_unknown_parent_is_named():
    with pytest.raises(ConfigError) as caught:
        validate_config(tiny_with({"mamba": "bsrn"}), source="c.yaml")
    assert str(caught.value) == ("c.yaml: ablations.mamba.parent 'bsrn' is not one of the "
                                 "ablations (bsrnn, mamba)")


@pytest.mark.parametrize(("parents", "message"), [
    ({"mamba": "mamba"}, "ablations.mamba.parent: the lineage is a cycle, mamba → mamba;"),
    ({"a": "b", "b": "a"}, "ablations.a.parent: the lineage is a cycle, a → b → a;"),
    ({"a": "c", "b": "a", "c": "b"}, "ablations.a.parent: the lineage is a cycle, a → b → c → a;"),
    # bsrnn is the baseline: `a` without a parent is compared with it
    ({"bsrnn": "a"}, "ablations.bsrnn.parent: the lineage is a cycle, bsrnn → a → bsrnn (a has "
                     "no parent, so it is compared with report.baseline);"),
], ids=["self", "two", "three", "through-the-baseline"])
def test_cycles_are_errors(parents, message):
    with pytest.raises(ConfigError) as caught:
        validate_config(tiny_with(parents, extra=("a", "b", "c")), source="c.yaml")
    assert f"c.yaml: {message} each chain of parents must end at an ablation without one" \
        == str(caught.value)


def test_wrong_type_is_a_schema_error():
    with pytest.raises(ConfigError, match=r"ablations.mamba.parent: 3 is not of type"):
        validate_config(tiny_with({"mamba": 3}))


def test_shipped_configs_declare_the_study():
    assert ablation_parents(load_config(ROOT / "config.yaml")) == {
        "abl1": "bsrnn", "abl2": "abl1", "abl3": "abl2", "optimized": "abl2",
        "optimized_as_coded": "optimized"}
    twins = ablation_parents(load_config(ROOT / "configs" / "as_coded_twins.yaml"))
    for name in ("abl1", "abl2", "abl3", "optimized"):
        assert twins[f"{name}_as_coded"] == name
    recipe = ablation_parents(load_config(ROOT / "configs" / "original_recipe.yaml"))
    assert recipe == {"abl1_as_coded": "bsrnn", "abl2_as_coded": "abl1_as_coded",
                      "abl3_as_coded": "abl2_as_coded", "optimized_as_coded": "abl2_as_coded"}


def test_a_parent_does_not_change_what_an_ablation_trains():
    """The workflow reruns a training when config_hash(ablation_config(...)) changes:
    lineage must only redraw the report."""
    with_lineage = load_config(ROOT / "config.yaml")
    without = copy.deepcopy(with_lineage)
    for entry in without["ablations"].values():
        entry.pop("parent", None)
    for name in with_lineage["ablations"]:
        assert config_hash(ablation_config(with_lineage, name)) == \
            config_hash(ablation_config(without, name))
    assert config_hash(with_lineage) != config_hash(without)     # the report's trigger


def test_steps_follow_each_chain_to_its_end():
    order, paths = lineage(load_config(ROOT / "config.yaml"))
    assert order == [("bsrnn", "abl1"), ("abl1", "abl2"), ("abl2", "abl3"),
                     ("abl2", "optimized"), ("optimized", "optimized_as_coded")]
    assert paths == [["bsrnn", "abl1", "abl2", "abl3"],
                     ["bsrnn", "abl1", "abl2", "optimized", "optimized_as_coded"]]


# --------------------------------------------------------------------------- the change


def model(*stages: dict, **settings) -> dict:
    return {"channels": 128, "decoder": "uniform", "stages": list(stages), **settings}


def test_added_block():
    old = model({"blocks": [MAMBA_TIME]})
    new = model({"blocks": [MAMBA_TIME, MAMBA_BAND]})
    assert model_changes(old, new) == [
        "stages[0].blocks[1]: added mamba band (bidirectional, d_state 16)"]
    assert model_changes(new, old) == [
        "stages[0].blocks[1]: removed mamba band (bidirectional, d_state 16)"]


def test_changed_decoder_and_keys():
    old = model({"blocks": [MAMBA_TIME]})
    new = model({"repeat": 4, "blocks": [{**MAMBA_TIME, "bidirectional": False, "d_state": 12}]},
                decoder="adaptive", final_norm=True)
    assert model_changes(old, new) == [
        "decoder: uniform → adaptive",
        "final_norm: false → true",
        "stages[0].repeat: 1 → 4",
        "stages[0].blocks[0].bidirectional: true → false",
        "stages[0].blocks[0].d_state: 16 → 12",
    ]


def test_absent_keys_mean_their_defaults():
    spelt_out = model({"repeat": 1, "blocks": [{**MAMBA_TIME, "expand": 1}]}, final_norm=False,
                      scan="exact", init="mamba")
    assert model_changes(model({"blocks": [MAMBA_TIME]}), spelt_out) == []
    assert model_changes(spelt_out, {**spelt_out, "scan": "as_coded", "init": "original"}) == [
        "scan: exact → as_coded", "init: mamba → original"]


def test_replaced_blocks_and_stages_are_spelt_out():
    lstm = {"type": "lstm", "axis": "time"}
    old = model({"repeat": 5, "blocks": [lstm]},
                {"repeat": 5, "blocks": [{"type": "lstm", "axis": "band", "bidirectional": True}]},
                channels=64)
    new = model({"blocks": [MAMBA_TIME]}, {"blocks": [{"type": "mlp", "axis": "band"}]})
    assert model_changes(old, new) == [
        "channels: 64 → 128",
        "stages[0].repeat: 5 → 1",
        "stages[0].blocks[0]: lstm time → mamba time (bidirectional, d_state 16)",
        "stages[1].repeat: 5 → 1",
        "stages[1].blocks[0]: lstm band (bidirectional) → mlp band",
    ]
    assert model_changes(new, model({"blocks": [MAMBA_TIME]})) == ["stages[1]: removed mlp band"]
    assert stage_text({"repeat": 4, "blocks": [MAMBA_TIME, {**MAMBA_BAND, "expand": 2}]}) == \
        ("4 × [mamba time (bidirectional, d_state 16), "
         "mamba band (bidirectional, d_state 16, expand 2)]")
    assert block_text({"type": "lstm", "axis": "time", "d_state": 8}) == "lstm time"


def test_training_overrides_are_part_of_the_change():
    config = validate_config(tiny_with({}, extra=("a",)))
    config["ablations"]["a"]["training"] = {"lr": 5e-4, "loss": {"metric_weight": 0.25}}
    assert describe_change(ablation_config(config, "mamba"), ablation_config(config, "a")) == [
        "training.lr: 0.001 → 0.0005", "training.loss.metric_weight: 1.0 → 0.25"]
    assert describe_change(ablation_config(config, "mamba"),
                           ablation_config(config, "mamba")) == []


def test_the_default_study_spelt_out():
    config = load_config(ROOT / "config.yaml")
    changes = {child: describe_change(ablation_config(config, parent),
                                      ablation_config(config, child))
               for child, parent in ablation_parents(config).items()}
    assert changes["abl2"] == ["stages[0].blocks[1]: added mamba band (bidirectional, "
                               "d_state 16)"]
    assert changes["abl3"] == ["decoder: uniform → adaptive"]
    assert changes["optimized_as_coded"] == ["scan: exact → as_coded", "init: mamba → original"]
    assert changes["abl1"][-1] == "stages[1]: removed 5 × lstm band (bidirectional)"
    assert changes["optimized"][-1] == "stages[1]: added mlp band"
