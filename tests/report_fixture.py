"""A small synthetic results tree (docs/results.md) for the report's tests.

Every file is generated here: manifest and short WAVs, per-utterance metrics, summaries,
profiles and training logs with known values, so tests can check the report's numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile
import yaml
from scipy import stats

from mbsnet import layout
from mbsnet.data.manifest import pair_paths
from mbsnet.metrics import METRICS

from .corpus import Utterance, speechlike, write_corpus

RATE = 16000
NOISES = ("car", "babble", "cafe")
SNRS = (0.0, 5.0, 10.0)
#: metric shift of each system over the noisy input (PESQ-like units; SI-SDR ×6)
QUALITY = {"noisy": 0.0, "bsrnn": 0.8, "abl1": 1.1, "abl2": 0.6, "abl3": 0.9, "optimized": 1.0,
           "optimized_as_coded": 1.0}
PARAMS = {"bsrnn": (2_410_000, 2_400_000), "abl1": (2_610_000, 1_800_000),
          "abl2": (2_590_000, 2_600_000), "abl3": (2_020_000, 2_000_000),
          "optimized": (2_290_000, 2_300_000), "optimized_as_coded": (2_290_000, 2_300_000)}
#: the study's lineage; a parent is written to the config when both are in the tree
PARENTS = {"abl1": "bsrnn", "abl2": "abl1", "abl3": "abl2", "optimized": "abl2",
           "optimized_as_coded": "optimized"}
#: (device, scan) recorded by each ablation's profile and training (default: cpu, chunked)
PLACES = {"bsrnn": ("cpu", None), "abl1": ("cuda:0 (NVIDIA H100)", "mamba_ssm")}
TRAINED_ON = {"abl1": ("cuda:1 = GPU 3 (NVIDIA H100)", "mamba_ssm")}
# abl2 trains as 2 data-parallel processes with 2 micro-batches each (training.devices,
# training.accumulate); the others as one process
LAYOUTS = {"abl2": {"processes": 2, "process_devices": ["cpu", "cpu"], "batch_size": 8,
                    "accumulate": 2, "micro_batch": 2, "utterances_per_second": 3.25}}
_TIME = {"type": "mamba", "axis": "time", "bidirectional": True, "d_state": 4}
_BAND = {"type": "mamba", "axis": "band", "bidirectional": True, "d_state": 4}
_OPTIMIZED = {"channels": 16, "decoder": "lightweight", "final_norm": True,
              "stages": [{"repeat": 2, "blocks": [{**_TIME, "bidirectional": False}]},
                         {"blocks": [{"type": "mlp", "axis": "band"}]}]}
#: small models that differ from their parents as the study's do
MODELS = {
    "bsrnn": {"channels": 8, "decoder": "uniform",
              "stages": [{"repeat": 2, "blocks": [{"type": "lstm", "axis": "time"}]},
                         {"blocks": [{"type": "lstm", "axis": "band", "bidirectional": True}]}]},
    "abl1": {"channels": 16, "decoder": "uniform", "stages": [{"blocks": [_TIME]}]},
    "abl2": {"channels": 16, "decoder": "uniform", "stages": [{"blocks": [_TIME, _BAND]}]},
    "abl3": {"channels": 16, "decoder": "adaptive", "stages": [{"blocks": [_TIME, _BAND]}]},
    "optimized": _OPTIMIZED,
    "optimized_as_coded": {**_OPTIMIZED, "scan": "as_coded", "init": "original"},
}


def make_results_tree(
    root: Path,
    ablations: Iterable[str] = ("bsrnn", "abl1", "abl2"),
    seeds: Iterable[int] = (0,),
    n_test: int = 12,
    failed_training: Iterable[str] = (),
    never_run: Iterable[str] = (),
    no_profile: Iterable[str] = (),
    save_wavs: bool = False,
    examples: bool = True,
    lineage: bool = True,
) -> tuple[Path, Path]:
    """Write ``root/config.yaml`` and ``root/results``; return both paths.

    ``failed_training``: a log and a workflow log that stop mid-run, nothing else;
    ``never_run``: configured but no files at all; ``no_profile``: trained and evaluated but
    without profile.json; ``examples``: each evaluation's eval/example/ holds the first test
    utterance enhanced, as `mbsnet evaluate` writes it (False: a tree from before it did);
    ``save_wavs``: eval/wavs/ holds the first two; ``lineage``: write PARENTS into the config
    (else every ablation is compared with the baseline). abl1 has a skipped step, a resumed
    run, a failed PESQ on one utterance and a pre-flight memory warning; optimized_as_coded
    scores like optimized.
    """
    ablations, seeds = list(ablations), list(seeds)
    results = root / layout.RESULTS
    entries = {a: {"claimed_params": PARAMS[a][1], "model": MODELS[a]} for a in ablations}
    for name, entry in entries.items():
        if lineage and PARENTS.get(name) in entries:
            entry["parent"] = PARENTS[name]
    config = {"data": {"source": "synthetic"}, "seeds": seeds, "ablations": entries,
              "evaluation": {"save_wavs": save_wavs}, "report": {"baseline": "bsrnn"}}
    config_path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    utts = _write_data(results, n_test)
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0.0, 0.3, size=n_test)
    _write_eval(layout.path(results, layout.NOISY_METRICS),
                layout.path(results, layout.NOISY_SUMMARY), "noisy", utts, difficulty, rng,
                failed=None)
    for name in ablations:
        if name in never_run:
            continue
        if name in failed_training:
            _write_failed_training(results, name, seeds[0])
            continue
        if name not in no_profile:
            _write_profile(layout.path(results, layout.PROFILE, ablation=name), name)
        for seed in seeds:
            _write_run(results, name, seed, utts, difficulty, rng, examples, save_wavs)
    return config_path, results


def _write_run(results: Path, name: str, seed: int, utts: list[dict], difficulty: np.ndarray,
               rng: np.random.Generator, examples: bool, save_wavs: bool) -> None:
    """One seed's training and evaluation, with the enhanced example (and saved WAVs)."""
    run = {"ablation": name, "seed": seed}
    _write_training(results, name, seed, abl1=name == "abl1")
    _write_eval(layout.path(results, layout.EVAL_METRICS, **run),
                layout.path(results, layout.EVAL_SUMMARY, **run), name, utts,
                difficulty + 0.05 * seed, rng,
                failed=utts[2]["utt_id"] if name == "abl1" else None)
    for i, utt in enumerate(utts[:2]):
        clean, _ = soundfile.read(results / layout.DATA / utt["clean"])
        # drawn whatever is saved, so the metrics of the next systems stay the same
        enhanced = clean + 0.01 * rng.standard_normal(clean.size)
        if examples and i == 0:
            _wav(layout.path(results, layout.EXAMPLE_WAV, utt_id=utt["utt_id"], **run), enhanced)
        if save_wavs:
            _wav(layout.path(results, layout.SAVED_WAV, utt_id=utt["utt_id"], **run), enhanced)


def _wav(path: Path, wave: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.clip(wave, -1, 1), RATE, subtype="PCM_16")


def _write_data(results: Path, n_test: int) -> list[dict]:
    """The corpus: 2 train and ``n_test`` test utterances of 0.4 s; returns the test ones'
    manifest fields (WAV paths relative to data/)."""
    rng = np.random.default_rng(1)
    utterances = []
    for i in range(n_test + 2):
        split = "train" if i < 2 else "test"
        noise, snr = NOISES[i % len(NOISES)], SNRS[(i // len(NOISES)) % len(SNRS)]
        clean = speechlike(0.4, 200 + 20 * i, i)
        noisy = clean + 0.3 * 10 ** (-snr / 20) * rng.standard_normal(clean.size) * 0.3
        utterances.append(Utterance(f"{split}_{i:03d}", split, clean, noisy,
                                    speaker=f"spk{i % 2}", noise=noise, snr=snr))
    write_corpus(results / layout.DATA, utterances)
    return [{"utt_id": u.utt_id, "snr": u.snr, "noise": u.noise,
             "clean": pair_paths(u.split, u.utt_id)[0]} for u in utterances if u.split == "test"]


def _write_eval(metrics: Path, summary_json: Path, system: str, utts: list[dict],
                difficulty: np.ndarray, rng: np.random.Generator, failed: str | None) -> None:
    """metrics.tsv with metric = base + quality shift + SNR effect + noise, and summary.json."""
    metrics.parent.mkdir(parents=True, exist_ok=True)
    base = {"pesq_wb": 1.5, "csig": 2.5, "cbak": 2.0, "covl": 2.0, "ssnr": 2.0,
            "stoi": 0.80, "estoi": 0.65, "si_sdr": 5.0}
    scale = {"stoi": 0.05, "estoi": 0.08, "ssnr": 4.0, "si_sdr": 6.0}
    header = ["utt_id", "system", "snr", "noise", *METRICS, "error"]
    lines, values = ["\t".join(header)], {m: [] for m in METRICS}
    for utt, hard in zip(utts, difficulty, strict=True):
        row = {"utt_id": utt["utt_id"], "system": system, "snr": utt["snr"],
               "noise": utt["noise"], "error": ""}
        for m in METRICS:
            s = scale.get(m, 1.0)
            row[m] = base[m] + s * (QUALITY[system] + 0.05 * utt["snr"] - hard
                                    + 0.05 * rng.standard_normal())
        if utt["utt_id"] == failed:
            row["pesq_wb"] = float("nan")
            row["error"] = "pesq_wb: NoUtterancesError: No utterances detected"
        for m in METRICS:
            values[m].append(row[m])
        lines.append("\t".join("nan" if isinstance(row[k], float) and np.isnan(row[k])
                               else f"{row[k]:.6f}" if isinstance(row[k], float) else str(row[k])
                               for k in header))
    metrics.write_text("\n".join(lines) + "\n")
    overall = {}
    for m, v in values.items():
        x = np.asarray(v)
        x = x[np.isfinite(x)]
        ci = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
        overall[m] = {"mean": float(x.mean()), "std": float(x.std(ddof=1)), "ci95": ci,
                      "n": int(x.size)}
    summary = {"system": system, "n": len(utts),
               "failed": {"pesq_wb": int(failed is not None)}, "overall": overall, "by_snr": {}}
    summary_json.write_text(json.dumps(summary, indent=2))


def _epoch_lines(name: str, epochs: int, steps: int, skipped_at: int | None) -> list[dict]:
    lines, step = [], 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps):
            step += 1
            skipped = step == skipped_at
            line = {"kind": "step", "epoch": epoch, "step": step,
                    "gen_loss": None if skipped else 2.0 / step,
                    "disc_loss": None if skipped else 0.1,
                    "lr": 1e-3, "step_seconds": 0.5, "skipped": skipped}
            if skipped:
                line["reason"] = "non-finite generator loss"
            lines.append(line)
        lines.append({"kind": "epoch", "epoch": epoch, "gen_loss": 2.0 / epoch + QUALITY[name] / 10,
                      "val_loss": 1.0 / epoch, "val_pesq": 1.5 + QUALITY[name] * epoch / epochs,
                      "lr": 1e-3, "seconds": 2.0 * steps, "peak_memory_mb": 900.0,
                      "skipped_steps": int(skipped_at is not None and (epoch - 1) * steps
                                           < skipped_at <= epoch * steps),
                      "disc_skipped": 0})
    return lines


def _write_training(results: Path, name: str, seed: int, abl1: bool) -> None:
    layout.run_dir(results, name, seed).mkdir(parents=True, exist_ok=True)
    lines = _epoch_lines(name, epochs=3, steps=4, skipped_at=6 if abl1 else None)
    if abl1:
        lines.insert(9, {"kind": "resume", "epoch": 2, "step": 8,
                         "from": layout.within(layout.RUN, layout.LAST_CHECKPOINT)})
    layout.path(results, layout.TRAIN_LOG, ablation=name, seed=seed).write_text(
        "".join(json.dumps(x) + "\n" for x in lines))
    summary = {"ablation": name, "seed": seed, "epochs": 3, "steps": 12,
               "wall_seconds": 3725.0 + 100 * seed, "skipped_steps": 1 if abl1 else 0,
               "disc_skipped_steps": 0, "best_epoch": 3, "best_key": "val_pesq",
               "best_score": 1.5 + QUALITY[name], "peak_memory_mb": 900.0,
               "resumed": 1 if abl1 else 0, "params": PARAMS[name][0]}
    device, scan = TRAINED_ON.get(name, PLACES.get(name, ("cpu", "chunked")))
    summary.update(device=device, scan=scan, **LAYOUTS.get(name, {
        "processes": 1, "process_devices": [device], "batch_size": 2, "accumulate": 1,
        "micro_batch": 2, "utterances_per_second": 1.5}))
    layout.path(results, layout.TRAIN_SUMMARY, ablation=name, seed=seed).write_text(
        json.dumps(summary, indent=2))


def _write_failed_training(results: Path, name: str, seed: int) -> None:
    layout.run_dir(results, name, seed).mkdir(parents=True, exist_ok=True)
    lines = _epoch_lines(name, epochs=1, steps=4, skipped_at=None)
    layout.path(results, layout.TRAIN_LOG, ablation=name, seed=seed).write_text(
        "".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "st')   # torn last line
    log = results / layout.log("train", ablation=name, seed=seed)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("epoch 2 step 5\nmbsnet train: error: 20 consecutive non-finite steps\n")


def _write_profile(path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    total, claimed = PARAMS[name]
    over = name == "abl1"
    device, scan = PLACES.get(name, ("cpu", "chunked"))
    profile = {"ablation": name, "device": device, "scan": scan,
               "params": {"total": total, "per_module": {"encoder": total // 2}, "claimed": claimed,
                          "ratio": total / claimed},
               "macs_per_second": 3.1e9 + 1e8 * len(name), "flops_per_second": 6.2e9,
               "flops_method": "torch.utils.flop_counter",
               "peak_train_memory_mb": 14000.0 if over else 5000.0 + 100 * len(name),
               "memory_method": "estimate", "train_step_seconds": 0.25,
               "inference_rtf": 0.05, "batch_size": 6, "crop_seconds": 2.0, "budget_gb": 12,
               "within_budget": not over,
               "warnings": ["peak 10.1 GB is 84 % of the 12 GB budget"] if name == "bsrnn" else []}
    path.write_text(json.dumps(profile, indent=2))
