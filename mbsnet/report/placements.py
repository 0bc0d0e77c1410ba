"""Where each ablation's profile and trainings ran, with which selective scan and batch, and
where the two disagree (the report's "Devices and scans")."""

from __future__ import annotations

from dataclasses import dataclass

from .loading import Results, System

NOT_RECORDED = "not recorded"
NO_SCAN = "none (no Mamba block)"


@dataclass
class Placement:
    """Where an ablation's profile and trainings ran and which selective scan they ran
    (as profile.json and train_summary.json record them), and how the two disagree."""

    system: str
    profile_device: str
    profile_scan: str
    train_device: str
    train_scan: str
    notes: list[str]
    train_batch: str = NOT_RECORDED
    train_throughput: str = NOT_RECORDED


def _device_and_scan(record: dict) -> tuple[str, str]:
    device = str(record["device"]) if record.get("device") else NOT_RECORDED
    scan = NOT_RECORDED if "scan" not in record else NO_SCAN if record["scan"] is None \
        else str(record["scan"])
    return device, scan


def _training_layout(summary: dict) -> tuple[str, str, str]:
    """A train_summary's devices (each process's, for several), its batch (global, and how
    processes and micro-batches divide it) and its throughput in utterances/s."""
    device, _ = _device_and_scan(summary)
    processes = summary.get("processes", 1)
    if processes > 1 and summary.get("process_devices"):
        device = f"{processes} processes: {', '.join(map(str, summary['process_devices']))}"
    if "batch_size" not in summary:
        return device, NOT_RECORDED, NOT_RECORDED
    batch = str(summary["batch_size"])
    accumulate = summary.get("accumulate", 1)
    if processes > 1 or accumulate > 1:
        batch += (f" = {processes} x {accumulate} x {summary.get('micro_batch')} "
                  "(processes x micro-batches x items)")
    rate = summary.get("utterances_per_second")
    return device, batch, NOT_RECORDED if rate is None else f"{rate:.2f}"


def device_kind(device: str) -> str:
    """What a device string names regardless of its index: ``cpu`` or the GPU's model
    (``cuda:1 = GPU 5 (NVIDIA A100)`` -> ``NVIDIA A100``)."""
    if "(" in device and device.endswith(")"):
        return device[device.index("(") + 1:-1]
    return device.split(":")[0]


def _by_seed(values: dict[int, str]) -> str:
    """One value, or each distinct value with its seeds."""
    distinct = list(dict.fromkeys(values.values()))
    if len(distinct) == 1:
        return distinct[0]
    return "; ".join(f"{v} (seed {', '.join(str(s) for s, w in values.items() if w == v)})"
                     for v in distinct)


def _notes(profile_device: str, profile_scan: str,
           trained: dict[int, tuple[str, str]]) -> list[str]:
    """Where the trainings' device kinds or scans differ from the profile's."""
    notes = []
    kinds = {device_kind(d) for d, _ in trained.values() if d != NOT_RECORDED}
    other = sorted(kinds - {device_kind(profile_device)})
    if profile_device != NOT_RECORDED and other:
        notes.append(f"profiled on {device_kind(profile_device)} but trained on "
                     f"{', '.join(other)}: the memory budget was checked on another device")
    scans = sorted({sc for _, sc in trained.values() if sc != NOT_RECORDED} - {profile_scan})
    if profile_scan != NOT_RECORDED and scans:
        notes.append(f"profiled with the {profile_scan} scan but trained with "
                     f"{', '.join(scans)}")
    return notes


def _placement(system: System) -> Placement:
    profile = system.profile
    profile_device, profile_scan = _device_and_scan(profile) \
        if isinstance(profile, dict) else (str(profile), str(profile))
    summaries = {run.seed: run.train_summary for run in system.runs
                 if run.seed is not None and isinstance(run.train_summary, dict)}
    trained = {seed: _device_and_scan(s) for seed, s in summaries.items()}
    layouts = {seed: _training_layout(s) for seed, s in summaries.items()}
    if trained:
        train_device = _by_seed({s: d for s, (d, _, _) in layouts.items()})
        train_scan = _by_seed({s: sc for s, (_, sc) in trained.items()})
        train_batch = _by_seed({s: b for s, (_, b, _) in layouts.items()})
        throughput = _by_seed({s: r for s, (_, _, r) in layouts.items()})
    else:
        train_device = train_scan = train_batch = throughput = "not trained"
    notes = _notes(profile_device, profile_scan, trained) if isinstance(profile, dict) else []
    return Placement(system.name, profile_device, profile_scan, train_device, train_scan,
                     notes, train_batch, throughput)


def placements(results: Results) -> list[Placement]:
    """One :class:`Placement` per ablation; what is absent says why."""
    return [_placement(system) for system in results.ablations]
