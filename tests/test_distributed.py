"""Data-parallel training and gradient accumulation on the CPU (gloo, no GPU needed):
the batch layout and its errors, how processes find each other, sharded batches, the
pieces of a batch giving the whole batch's step, and whole runs under torchrun: the same
weights as one process, resume after kill -9 (with 2 processes or 1), SIGTERM to one
rank, a crashed rank, a non-finite step on one rank only."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from mbsnet import gpu_claim
from mbsnet.config import ablation_config, validate_config
from mbsnet.errors import ConfigError
from mbsnet.profiling.profile import (
    MemoryBudgetError,
    check_budget,
    profile_ablation,
    suggest_accumulate,
)
from mbsnet.train import batches, loop
from mbsnet.train import checkpoint as ckpt
from mbsnet.train import gan as gan_module
from mbsnet.train.distributed import Launch, Layout, first_host, joined, launch_for
from mbsnet.train.gan import EnhancementGan
from mbsnet.train.microbatches import BatchRows, GlobalBatchDropout, pieces

from .helpers import BIN, ROOT, TINY_CONFIG
from .snakemake_runs import planned_rules, snakemake, write_config
from .tiny_training import STRUCTURES, fixed_batch, read_log, tiny_config

# Same weights up to float32 rounding, measured as |a - b| / |b| over all of a network's
# weights (generator and discriminator each). Not 0: the pieces' losses are summed in
# another order than the whole batch's mean (two half-batch means, averaged), and the matrix
# products of another batch size round differently, which changes the last bits of the
# gradients (measured for abl2's one step, whole batch against two micro-batches: 8.6e-7
# relative with the chunked scan, 2.5e-6 with the native one, whose per-sequence results are
# bitwise the same at any batch size); Adam then carries them on, and
# as it scales every weight's step by that weight's own gradient history, a weight whose
# gradient is near 0 can differ relatively much, so single near-zero tensors (biases
# initialised at 0) are not compared alone. A logic error (a missing or doubled share, a
# wrong dropout mask or power iteration) differs by 1e-3 or more.
RELATIVE_TOLERANCE = 1e-5
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "GROUP_RANK", "TORCHELASTIC_RUN_ID")


pytestmark = pytest.mark.usefixtures("one_thread")


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest |a - b| / |b| of a network (keys ``network.name``), all its floating-
    point tensors taken as one vector."""
    assert a.keys() == b.keys()
    worst = 0.0
    for net in {key.split(".", 1)[0] for key in a}:
        keys = [k for k in a if k.startswith(f"{net}.") and a[k].is_floating_point()]
        x, y = (torch.cat([d[k].flatten().double() for k in keys]) for d in (a, b))
        worst = max(worst, float((x - y).norm() / y.norm()))
    return worst


def networks(run_dir: Path) -> dict[str, torch.Tensor]:
    """Generator and discriminator weights of a run's last checkpoint."""
    state = ckpt.load_checkpoint(run_dir / "checkpoint" / "last.pt")["trainer"]
    return {f"{net}.{k}": v for net in ("generator", "discriminator")
            for k, v in state[net].items()}


def assert_identical_runs(expected: Path, got: Path) -> None:
    assert networks(expected).keys() == networks(got).keys()
    assert all(torch.equal(a, b) for a, b in zip(networks(expected).values(),
                                                 networks(got).values(), strict=True))

    def losses(directory: Path) -> list[tuple]:
        return [(line["step"], line["gen_loss"], line["disc_loss"])
                for line in read_log(directory / "train_log.jsonl") if line["kind"] == "step"]
    assert losses(expected) == losses(got)


# -- the layout of a batch ------------------------------------------------------------

def test_layout_divides_the_global_batch():
    layout = Layout.of({"batch_size": 12, "devices": 2, "accumulate": 3})
    assert (layout.process_batch, layout.micro_batch) == (6, 2)
    assert Layout.of({"batch_size": 6}) == Layout(6, 1, 1)      # absent keys: 1


@pytest.mark.parametrize(("settings", "message"), [
    ({"batch_size": 6, "devices": 4},
     r"ablation 'abl1': training.batch_size 6 cannot be split into training.devices \(4\) x "
     r"training.accumulate \(1\) = 4 equal micro-batches; make batch_size a multiple of 4"),
    ({"batch_size": 6, "devices": 2, "accumulate": 2}, r"training.accumulate \(2\) = 4"),
    ({"batch_size": 6, "accumulate": 0}, r"training.accumulate must be an integer >= 1"),
])
def test_a_batch_that_does_not_divide_names_the_keys(settings, message):
    with pytest.raises(ConfigError, match=message):
        Layout.of(settings, "abl1")


def test_schema_rejects_zero_devices_and_accumulate():
    for key in ("devices", "accumulate"):
        with pytest.raises(ConfigError, match=f"training.{key}: 0 is less than the minimum"):
            tiny_config(**{key: 0})


def test_a_bad_layout_stops_training_before_any_work(manifest, tmp_path):
    with pytest.raises(ConfigError, match="training.batch_size 2 cannot be split"):
        loop.train(tiny_config(accumulate=4), "bsrnn", 0, tmp_path / "run", manifest)
    assert not (tmp_path / "run").exists()


# -- how the processes are started ----------------------------------------------------

def test_launch_from_torchrun_and_from_srun():
    torchrun = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "h", "MASTER_PORT": "29500", "GROUP_RANK": "0"}
    assert Launch.from_environment(torchrun) == Launch("torchrun", 1, 4, 1, 2, "0", "env://")
    srun = {"SLURM_JOB_ID": "123", "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4",
            "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    assert Launch.from_environment(srun) == Launch("srun", 3, 4, 1, None, "1",
                                                   "tcp://gpu07:20123")
    assert Launch.from_environment({**srun, "MASTER_PORT": "4000"}).init_method \
        == "tcp://gpu07:4000"
    # a SLURM batch script is no job step: no launch
    assert Launch.from_environment({"SLURM_JOB_ID": "1", "SLURM_PROCID": "0"}) is None


@pytest.mark.parametrize(("nodelist", "first"), [
    ("localhost", "localhost"), ("a,b", "a"), ("node[01-04,07],gpu9", "node01"),
    ("gpu-[3,5]", "gpu-3"), ("n[1]", "n1")])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    assert first_host(nodelist) == first


def test_several_devices_need_a_launcher_that_started_them():
    layout = Layout(4, devices=2)
    assert launch_for(Layout(4), "cpu", env={}) is None       # one process: no launcher
    with pytest.raises(ConfigError, match=r"training.devices is 2, so this training runs as 2 "
                       r"processes, but this one was started on its own. Start it with "
                       r"`torchrun --standalone --nproc-per-node 2 --no-python mbsnet train"):
        launch_for(layout, "cpu", env={})
    three = {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3",
             "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    with pytest.raises(ConfigError, match="started by torchrun as one of 3"):
        launch_for(layout, "cpu", env=three)


def test_more_devices_than_visible_gpus_stop_before_training(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(gpu_claim.SIMULATED_ENV, "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(ConfigError, match=r"training.devices is 2, so this machine runs 2 "
                       r"processes with a GPU each, but 1 CUDA device\(s\) are visible"):
        loop.train(tiny_config(device="auto", devices=2), "bsrnn", 0, tmp_path / "run",
                   manifest)
    assert not (tmp_path / "run").exists()


def test_one_process_claims_several_gpus_at_once_or_none(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_claim.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(gpu_claim.SIMULATED_ENV, "3")
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        monkeypatch.delenv(var, raising=False)
    gpu_claim.release()
    other = os.open(tmp_path / "gpu-1.lock", os.O_RDONLY | os.O_CREAT)
    try:
        import fcntl
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        claims = gpu_claim.claim_devices(2, poll_seconds=0.01)
        assert [(c.index, c.physical) for c in claims] == [(0, "0"), (2, "2")]
        gpu_claim.release()
        with pytest.raises(ConfigError, match="4 CUDA devices are needed but 3 are visible"):
            gpu_claim.claim_devices(4)
    finally:
        gpu_claim.release()
        os.close(other)


# -- shares and pieces of a batch -----------------------------------------------------

def test_each_rank_reads_its_slice_of_every_global_batch():
    full = list(batches.EpochBatchSampler(7, 4, steps=3, seed=2))
    shares = [batches.EpochBatchSampler(7, 4, steps=3, seed=2, shard=(rank, 2))
              for rank in range(2)]
    for sampler in (*shares,):
        sampler.start(0, 1)    # a resume mid-epoch: the same global position for any count
    got = [list(sampler) for sampler in shares]
    assert [a + b for a, b in zip(*got, strict=True)] == full[1:]
    assert all(len(batch) == 2 for share in got for batch in share)
    with pytest.raises(ValueError, match="share 0 of 3 of a batch of 4"):
        batches.EpochBatchSampler(7, 4, steps=3, seed=2, shard=(0, 3))


def test_pieces_cover_the_share_and_say_where_they_sit():
    got = pieces(4, 2, rank=1, world=3)
    assert [(p.start, p.stop, p.global_start, p.global_size, p.weight) for p in got] == \
        [(0, 2, 4, 12, 0.5), (2, 4, 6, 12, 0.5)]
    assert [p.weight for p in pieces(3, 2)] == [2 / 3, 1 / 3]


def test_global_batch_dropout_drops_each_item_as_the_whole_batch_would():
    x = torch.randn(6, 5) + 3
    dropout = torch.nn.Dropout(0.3)
    torch.manual_seed(7)
    whole = dropout(x)
    rows = BatchRows()
    piecewise = GlobalBatchDropout(0.3, rows)
    got = []
    for piece in pieces(3, 2, rank=1, world=2):            # rows 3-4, then 5
        torch.manual_seed(7)
        rows.piece = piece
        got.append(piecewise(x[3:][piece.items]))
    assert torch.equal(torch.cat(got), whole[3:])
    assert torch.equal(piecewise.eval()(x), x)


def recording(step, module: torch.nn.Module, into: dict, name: str):
    """``step`` of an optimizer, first keeping ``module``'s gradients in ``into[name]``."""
    def recorded(*args, **kwargs):
        into[name] = {f"{name}.{k}": p.grad.clone() for k, p in module.named_parameters()
                      if p.grad is not None}
        return step(*args, **kwargs)
    return recorded


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_micro_batches_give_the_whole_batchs_step(name):
    """accumulate: 2 computes one batch's step: the gradients of both networks (the
    MetricGAN term, the discriminator's dropout masks and PESQ targets included), the
    spectral norms' power iterations and the random numbers drawn."""
    seen = []
    for accumulate in (1, 2):
        config = tiny_config(batch_size=4, accumulate=accumulate)
        torch.manual_seed(0)
        trainer = EnhancementGan(ablation_config(config, name), config, torch.device("cpu"))
        assert trainer.micro_batch == 4 // accumulate
        grads: dict = {}
        for net, optimizer in (("generator", trainer.gen_optimizer),
                               ("discriminator", trainer.disc_optimizer)):
            optimizer.step = recording(optimizer.step, getattr(trainer, net), grads, net)
        outcome = trainer.train_step(*fixed_batch(4), use_metric_loss=True)
        assert not outcome["skipped"]
        assert outcome["disc_loss"] is not None
        buffers = [b.clone() for b in trainer.discriminator.buffers()]
        seen.append((grads, outcome, buffers, torch.rand(3)))
    (whole, whole_outcome, whole_buffers, whole_rng), (parts, outcome, buffers, rng) = seen
    assert whole.keys() == parts.keys() == {"generator", "discriminator"}
    for net in whole:
        assert relative_difference(parts[net], whole[net]) <= RELATIVE_TOLERANCE, net
    assert outcome["gen_loss"] == pytest.approx(whole_outcome["gen_loss"], rel=1e-6)
    assert outcome["disc_loss"] == pytest.approx(whole_outcome["disc_loss"], rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(buffers, whole_buffers, strict=True))
    assert torch.equal(rng, whole_rng)


# -- whole runs under torchrun --------------------------------------------------------

def run_config(tmp_path: Path, **training) -> Path:
    """A config file of the tiny models: 2 epochs x 5 steps (10 steps), batch 2."""
    settings = {"steps_per_epoch": 5, "data_workers": 0, **training}
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**settings)))
    return path


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS
           and not k.startswith("SLURM_")}
    return dict(env, PATH=f"{BIN}{os.pathsep}{env['PATH']}", OMP_NUM_THREADS="1")


def train_command(config: Path, manifest: Path, out: Path, processes: int) -> list[str]:
    command = [str(BIN / "mbsnet"), "train", "--config", str(config), "--ablation", "bsrnn",
               "--seed", "0", "--out", str(out), "--data", str(manifest), "--threads", "1"]
    if processes == 1:
        return command
    return [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(processes),
            "--no-python", *command]


def start(config: Path, manifest: Path, out: Path, processes: int = 2) -> subprocess.Popen:
    return subprocess.Popen(train_command(config, manifest, out, processes), env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-4000:]
    return output


def wait_for_steps(out: Path, steps: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until the live log has ``steps`` step lines and a checkpoint of the last of them."""
    log, deadline = out / "checkpoint" / "train_log.jsonl", time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the training ended early:\n{proc.stdout.read()[-3000:]}")
        if log.is_file() and log.read_text().count('"kind": "step"') >= steps:
            last = out / "checkpoint" / "last.pt"
            if last.is_file() and ckpt.load_checkpoint(last)["run"].global_step >= steps:
                return
        assert time.monotonic() < deadline, f"no {steps} steps in {timeout} s"
        time.sleep(0.1)


def worker_pids(torchrun: subprocess.Popen) -> list[int]:
    """The worker processes torchrun started, by local rank."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = {}
        for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            variables = dict(v.split(b"=", 1) for v in environ if b"=" in v)
            if parent == torchrun.pid and b"LOCAL_RANK" in variables:
                found[int(variables[b"LOCAL_RANK"])] = pid
        if len(found) == 2:
            return [found[0], found[1]]
        time.sleep(0.2)
    pytest.fail("torchrun did not start 2 workers")


@pytest.fixture(scope="module")
def two_process_run(manifest, tmp_path_factory):
    """An uninterrupted 10-step run of 2 processes (checkpoint after every step)."""
    tmp = tmp_path_factory.mktemp("two")
    config = run_config(tmp, devices=2, checkpoint_minutes=1e-9)
    out = tmp / "run"
    output = finish(start(config, manifest, out))
    return config, out, output


@pytest.mark.slow
def test_two_processes_and_two_micro_batches_train_like_one_batch(two_process_run, manifest,
                                                                  tmp_path):
    config2, two, output = two_process_run
    one = tmp_path / "one"
    loop.train(tiny_config(steps_per_epoch=5, data_workers=0), "bsrnn", 0, one, manifest,
               threads=1)
    accumulated = tmp_path / "accumulated"
    loop.train(tiny_config(steps_per_epoch=5, data_workers=0, accumulate=2), "bsrnn", 0,
               accumulated, manifest, threads=1)
    reference = networks(one)
    assert relative_difference(networks(two), reference) <= RELATIVE_TOLERANCE
    assert relative_difference(networks(accumulated), reference) <= RELATIVE_TOLERANCE
    # the same pieces summed the same way: 2 processes and 2 micro-batches agree exactly
    assert all(torch.equal(a, b) for a, b in zip(networks(two).values(),
                                                 networks(accumulated).values(), strict=True))

    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["steps"] == 10
    assert (summary["processes"], summary["batch_size"], summary["micro_batch"],
            summary["accumulate"]) == (2, 2, 1, 1)
    assert summary["process_devices"] == ["cpu", "cpu"]
    assert summary["device"] == "cpu"
    assert summary["utterances_per_second"] > 0
    single = json.loads((one / "train_summary.json").read_text())
    assert (single["processes"], single["process_devices"], single["micro_batch"]) == \
        (1, ["cpu"], 2)
    assert json.loads((accumulated / "train_summary.json").read_text())["micro_batch"] == 1
    # only rank 0 writes and prints; validation gathered from both gives one process's means
    assert output.count("done: 10 steps") == 1
    assert "training bsrnn seed 0 on 2 processes (cpu): 2 epochs x 5 steps, batch 2 = " \
        "2 processes x 1 micro-batch of 1" in output
    def validation(run_dir: Path) -> list[float]:
        return [e[key] for e in read_log(run_dir / "train_log.jsonl") if e["kind"] == "epoch"
                for key in ("val_loss", "val_pesq")]
    assert validation(two) == pytest.approx(validation(one), rel=1e-5)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_with_two_or_one_processes(two_process_run, manifest,
                                                                  tmp_path):
    config, reference, _ = two_process_run
    out = tmp_path / "killed"
    proc = start(config, manifest, out)
    wait_for_steps(out, 2, proc)                     # epoch 1, step 2 of 5
    os.killpg(proc.pid, signal.SIGKILL)              # torchrun and both workers
    proc.wait()
    checkpoint = ckpt.load_checkpoint(out / "checkpoint" / "last.pt")["run"]
    assert checkpoint.epoch == 0
    assert 2 <= checkpoint.step < 5
    alone = tmp_path / "alone"
    shutil.copytree(out, alone)

    output = finish(start(config, manifest, out))
    assert "resuming from" in output
    assert json.loads((out / "train_summary.json").read_text())["resumed"] == 1
    assert_identical_runs(reference, out)

    # the same checkpoint continued by a single process: the sampler state is global
    single = yaml.safe_load(config.read_text())
    single["training"]["devices"] = 1
    summary = loop.train(single, "bsrnn", 0, alone, manifest, threads=1)
    assert summary["resumed"] == 1
    assert summary["steps"] == 10
    assert summary["processes"] == 1
    assert relative_difference(networks(alone), networks(reference)) <= RELATIVE_TOLERANCE


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_after_one_checkpoint(two_process_run, manifest,
                                                             tmp_path):
    config, reference, _ = two_process_run
    out = tmp_path / "terminated"
    proc = start(config, manifest, out)
    wait_for_steps(out, 2, proc)
    rank1 = worker_pids(proc)[1]
    os.kill(rank1, signal.SIGTERM)                   # e.g. a preemption seen by one task
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    stopped = re.findall(r"rank (\d) of 2: stopped by SIGTERM after step (\d+); saved", output)
    assert sorted(rank for rank, _ in stopped) == ["0", "1"], output[-3000:]
    step = int(stopped[0][1])
    assert {s for _, s in stopped} == {str(step)}   # the same step on both
    assert ckpt.load_checkpoint(out / "checkpoint" / "last.pt")["run"].global_step == step
    finish(start(config, manifest, out))
    assert_identical_runs(reference, out)


@pytest.mark.slow
def test_a_crashed_rank_stops_the_run_naming_it(manifest, tmp_path):
    config = run_config(tmp_path, devices=2, epochs=20, checkpoint_minutes=1e-9)
    out = tmp_path / "crashed"
    proc = start(config, manifest, out)
    wait_for_steps(out, 1, proc)
    os.kill(worker_pids(proc)[1], signal.SIGKILL)
    killed = time.monotonic()
    output, _ = proc.communicate(timeout=120)        # no hang
    assert proc.returncode != 0
    assert time.monotonic() - killed < 90
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", output), output[-3000:]


# -- a non-finite step on one rank: skipped on all ------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_steps(rank: int, port: int, out: str) -> None:
    """One process of two: a step with a NaN loss on rank 1 only, then a normal step; then
    two steps of every ablation structure (and an as-coded Mamba one, whose D is outside
    the graph)."""
    torch.set_num_threads(1)
    env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
           "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    os.environ.update(env)      # env:// reads them there, as under torchrun
    report: dict = {}
    clean, noisy = (t[rank:rank + 1] for t in fixed_batch(2))
    with joined(Launch.from_environment(env), "cpu") as processes:
        config = tiny_config(devices=2)
        config["ablations"]["abl1_as_coded"] = {"model": {**STRUCTURES["abl1"],
                                                          "scan": "as_coded"}}
        config = validate_config(config)

        def weights(trainer: EnhancementGan) -> list[float]:
            return torch.cat([p.detach().flatten() for p in trainer.generator.parameters()]
                             + [p.detach().flatten()
                                for p in trainer.discriminator.parameters()]).tolist()

        torch.manual_seed(0)
        with EnhancementGan(ablation_config(config, "bsrnn"), config, torch.device("cpu"),
                     processes) as trainer:
            real = gan_module.reconstruction_loss
            if rank == 1:
                gan_module.reconstruction_loss = \
                    lambda *a, **k: real(*a, **k) * float("nan")
            before = weights(trainer)
            report["first"] = trainer.train_step(clean, noisy, use_metric_loss=False)
            report["unchanged"] = weights(trainer) == before
            gan_module.reconstruction_loss = real
            report["second"] = trainer.train_step(clean, noisy, use_metric_loss=False)
            report["bsrnn"] = weights(trainer)
        for name in [*STRUCTURES, "abl1_as_coded"]:
            torch.manual_seed(0)
            with EnhancementGan(ablation_config(config, name), config, torch.device("cpu"),
                         processes) as trainer:
                steps = [trainer.train_step(clean, noisy, use_metric_loss=metric)
                         for metric in (False, True)]
                report[name] = {"skipped": [s["skipped"] for s in steps],
                                "find_unused": trainer._gen.find_unused_parameters,
                                "weights": weights(trainer)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def test_two_processes_skip_a_step_nonfinite_on_one_and_train_every_structure(tmp_path):
    torch.multiprocessing.start_processes(_rank_steps, args=(_free_port(), str(tmp_path)),
                                          nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:          # NaN on rank 1 only: the step is skipped on both
        assert rank["first"]["skipped"]
        assert rank["unchanged"]
        assert "non-finite loss" in rank["first"]["reason"]
        assert not rank["second"]["skipped"]
    assert ranks[0]["second"]["gen_loss"] == ranks[1]["second"]["gen_loss"]
    assert ranks[0]["bsrnn"] == ranks[1]["bsrnn"]               # still the same model
    for name in [*STRUCTURES, "abl1_as_coded"]:
        first, second = (rank[name] for rank in ranks)
        assert first["skipped"] == [False, False], name
        assert first["weights"] == second["weights"], name     # averaged gradients
        assert first["find_unused"] is (name == "abl1_as_coded"), name


# -- the profile: the micro-batch, and accumulate when over budget ---------------------

def test_profile_measures_one_process_at_its_micro_batch():
    config = tiny_config(batch_size=4, devices=2, accumulate=2)
    data = profile_ablation(config, "abl1", torch.device("cpu"), log=lambda line: None)
    assert (data["batch_size"], data["processes"], data["accumulate"],
            data["micro_batch"]) == (4, 2, 2, 1)
    assert data["utterances_per_second"] == pytest.approx(2 / data["train_step_seconds"])
    assert data["suggested_accumulate"] is None


def test_over_budget_profile_suggests_the_accumulate_that_fits():
    layout = Layout(8, devices=2)                      # 4 items per process
    # 100 MB at one item, +50 MB per item: 4 items 250 MB, 2 items 150 MB
    fits = suggest_accumulate(layout, 250.0, 100.0, budget_mb=160.0)
    assert fits == {"accumulate": 2, "micro_batch": 2, "estimated_peak_mb": 150.0}
    assert suggest_accumulate(layout, 250.0, 100.0, budget_mb=90.0) is None
    profile = {"ablation": "abl2", "device": "cpu", "peak_train_memory_mb": 250.0,
               "budget_gb": 160 / 1024, "batch_size": 8, "processes": 2, "micro_batch": 4,
               "crop_seconds": 2.0, "gradient_checkpointing": True, "cpu_lstm_kernel": "native",
               "flops_per_second_by_source": {"lstm": 0.0}, "suggested_accumulate": fits}
    with pytest.raises(MemoryBudgetError, match=(
            r"at batch_size 8 \(micro-batches of 4 on each of 2 process\(es\)\).*To fit with "
            r"the same recipe, set training.accumulate: 2 \(the same global batch in "
            r"micro-batches of 2: estimated 0.15 GB\)")):
        check_budget(profile)


def test_over_budget_profile_measures_one_item_to_suggest(tmp_path, capsys):
    from mbsnet.cli import main
    config = tiny_config(batch_size=4)
    config["resources"]["gpu_memory_gb"] = 1e-4
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "profile.json"
    assert main(["profile", "--config", str(path), "--ablation", "abl1", "--out", str(out),
                 "--inference-runs", "1", "--no-budget-check"]) == 0
    data = json.loads(out.read_text())
    assert "memory_step_one_item" in data["phase_seconds"]
    assert data["suggested_accumulate"] is None        # 0.1 MB: not even one item fits


# -- the workflow ---------------------------------------------------------------------

def snakemake_dry_run(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    path = write_config(workdir / "config.yaml", config)
    return snakemake(workdir, "-n", "-p", *args, config=path, timeout=300)


def train_jobs(stdout: str) -> dict[str, dict]:
    return {job["wildcards"]["ablation"]: job for job in planned_rules(stdout)
            if job["rule"] == "train"}


def test_train_rule_launches_torchrun_and_asks_slurm_for_tasks_and_gpus(tmp_path):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["training"].update(batch_size=4, pesq_workers=1, data_workers=0)
    config["ablations"]["mamba"]["training"] = {"devices": 2}
    config["ablations"]["bsrnn"]["training"] = {"devices": 2, "device": "cpu"}
    local = snakemake_dry_run(tmp_path, config, "--cores", "4")
    assert local.returncode == 0, local.stderr
    jobs = train_jobs(local.stdout)
    assert jobs["mamba"]["shell"].startswith(
        "torchrun --standalone --nproc-per-node 2 --no-python mbsnet train ")
    assert " --threads 1 " in jobs["mamba"]["shell"]
    # each process: its torch thread and a core for its PESQ worker
    assert (jobs["mamba"]["threads"], jobs["mamba"]["resources"]["gpu"],
            jobs["mamba"]["resources"]["mem_mb"]) == (4, "2", "4000")
    assert jobs["bsrnn"]["resources"]["gpu"] == "0"

    slurm = snakemake_dry_run(tmp_path, config, "--cores", "4", "--profile",
                              str(ROOT / "slurm"))
    assert slurm.returncode == 0, slurm.stderr
    jobs = train_jobs(slurm.stdout)
    for ablation, gpus in (("mamba", "2"), ("bsrnn", "0")):
        resources = jobs[ablation]["resources"]
        assert (resources["tasks"], resources["mpi"], resources["gpu"],
                resources["cpus_per_task"]) == ("2", "srun", gpus, "2")
    assert jobs["mamba"]["resources"]["tasks_per_gpu"] == "1"
    assert "tasks_per_gpu" not in jobs["bsrnn"]["resources"]

    single = yaml.safe_load(TINY_CONFIG.read_text())
    plain = train_jobs(snakemake_dry_run(tmp_path, single, "--cores", "4").stdout)["mamba"]
    assert plain["shell"].startswith("mbsnet train ")
    assert not {"tasks", "mpi", "tasks_per_gpu"} & set(plain["resources"])


def test_workflow_stops_on_a_batch_that_does_not_divide(tmp_path):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["ablations"]["mamba"]["training"] = {"devices": 4}
    result = snakemake_dry_run(tmp_path, config, "--cores", "1")
    assert result.returncode != 0
    assert ("ablation 'mamba': training.batch_size 2 cannot be split into training.devices (4)"
            in result.stdout + result.stderr)


def test_validated_config_keeps_devices_absent():
    """No schema default: existing ablations keep their settings hash (no reruns)."""
    resolved = validate_config(yaml.safe_load(TINY_CONFIG.read_text()))
    assert "devices" not in resolved["training"]
    assert "accumulate" not in resolved["training"]
