"""Data-parallel training: one run as ``training.devices`` processes, each computing its
share of every batch, with gradients averaged by PyTorch's DistributedDataParallel.

:class:`Layout` divides the global batch (``training.batch_size``, the recipe's) among the
processes and, within each, into ``training.accumulate`` micro-batches.

How the processes start (the workflow's train rule launches them, README "Several GPUs"):

- locally ``torchrun --standalone --nproc-per-node N --no-python mbsnet train ...``: rank,
  world size and rendezvous come from torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``);
- on SLURM ``srun --ntasks N ... mbsnet train ...`` inside a job of N tasks, on one node
  or several: ranks from ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` and ``SLURM_LOCALID``;
  the rendezvous is the first node of the step (``SLURM_STEP_NODELIST``) at a port derived
  from the job id (``MASTER_PORT`` overrides it).

Backend, from the device: NCCL for the tensors on CUDA (with gloo beside it for the few
small exchanges in host memory), gloo on the CPU.

The GPU of each rank: under SLURM, what the scheduler bound to the task (``cuda:0`` when the
task sees one device, else ``cuda:SLURM_LOCALID``). Under torchrun on a workstation, local
rank 0 claims the machine's N devices at once (:func:`mbsnet.gpu_claim.claim_devices`: all
or nothing, so two multi-GPU trainings never each hold half of what they need, and other
mbsnet jobs keep off them), and rank r uses the r-th; ``CUDA_VISIBLE_DEVICES`` limits the
choice as for any job.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..device import describe, device_type, select_device, use_cuda
from ..errors import ConfigError, MbsnetError
from ..gpu_claim import claim_devices, scheduler_assigned, visible_count

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT")
#: The rendezvous port of an srun-launched run: this plus the job id modulo the span.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 20000
#: How long a process waits in a collective for the others. Generous: local rank 0 may wait
#: for free GPUs, and rank 0 writes checkpoints while the others wait at the next step.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Layout:
    """How one optimiser step's batch is divided: ``batch_size`` items (the global batch,
    the recipe's) over ``devices`` processes, each taking them in ``accumulate``
    micro-batches."""

    batch_size: int
    devices: int = 1
    accumulate: int = 1

    @classmethod
    def of(cls, settings: Mapping[str, Any], ablation: str | None = None) -> Layout:
        """The layout of resolved training settings (absent ``devices``/``accumulate``:
        1); ConfigError naming the keys when the batch does not divide."""
        layout = cls(settings["batch_size"], settings.get("devices", 1),
                     settings.get("accumulate", 1))
        where = f"ablation '{ablation}': " if ablation else ""
        for key in ("batch_size", "devices", "accumulate"):
            value = getattr(layout, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}training.{key} must be an integer >= 1, "
                                  f"got {value!r}")
        parts = layout.devices * layout.accumulate
        if layout.batch_size % parts:
            raise ConfigError(
                f"{where}training.batch_size {layout.batch_size} cannot be split into "
                f"training.devices ({layout.devices}) x training.accumulate "
                f"({layout.accumulate}) = {parts} equal micro-batches; make batch_size a "
                f"multiple of {parts} (it is the global batch of the recipe: devices and "
                "accumulate only divide it)")
        return layout

    @property
    def process_batch(self) -> int:
        """Items of each optimiser step on one process."""
        return self.batch_size // self.devices

    @property
    def micro_batch(self) -> int:
        """Items of one forward/backward pass."""
        return self.process_batch // self.accumulate

    def describe(self) -> str:
        """``batch 6``, or ``batch 6 = 2 processes x 3 micro-batches of 1``."""
        if self.devices * self.accumulate == 1:
            return f"batch {self.batch_size}"
        parts = [f"{self.devices} processes"] if self.devices > 1 else []
        parts.append(f"{self.accumulate} micro-batch{'es' * (self.accumulate > 1)} of "
                     f"{self.micro_batch}")
        return f"batch {self.batch_size} = {' x '.join(parts)}"


@dataclass(frozen=True)
class Launch:
    """How this process was started as one of several: by ``launcher`` (torchrun or srun),
    as rank ``rank`` of ``world``, ``local_rank`` on its machine (``node``), which runs
    ``local_world`` of them (None: unknown, srun), meeting the others at ``init_method``."""

    launcher: str
    rank: int
    world: int
    local_rank: int
    local_world: int | None
    node: str
    init_method: str

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Launch | None:
        """torchrun's variables, else those of an srun job step; None: neither."""
        if all(var in env for var in TORCHRUN_VARS):
            return cls("torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]),
                       int(env["LOCAL_RANK"]), int(env["LOCAL_WORLD_SIZE"]),
                       env.get("GROUP_RANK", "0"), "env://")
        if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
            nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost")
            port = env.get("MASTER_PORT") or str(
                SLURM_PORT_BASE + int(env.get("SLURM_JOB_ID", "0")) % SLURM_PORT_SPAN)
            return cls("srun", int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]),
                       int(env.get("SLURM_LOCALID", "0")), None, env.get("SLURM_NODEID", "0"),
                       f"tcp://{first_host(nodes)}:{port}")
        return None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``node[01-04,07],gpu9`` -> ``node01``."""
    match = re.match(r"\s*([^,\[]+)(?:\[([^\]]*)\])?", nodelist)
    if match is None:
        raise MbsnetError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def launch_for(layout: Layout, device_setting: str,
               env: Mapping[str, str] = os.environ) -> Launch | None:
    """This process's launch for a run of ``layout.devices`` processes (None for one: it
    ignores any launcher), after the checks that must stop a run before any work:
    enough visible GPUs, and a launcher that started that many processes."""
    if layout.devices == 1:
        return None
    launch = Launch.from_environment(env)
    if device_type(device_setting) == "cuda" and (launch is None or launch.launcher != "srun"):
        # not srun: one process (devices here), or torchrun, which says how many it started
        here = layout.devices if launch is None or launch.local_world is None \
            else launch.local_world
        visible = visible_count()
        if visible < here:
            raise ConfigError(
                f"training.devices is {layout.devices}, so this machine runs {here} "
                f"processes with a GPU each, but {visible} CUDA device(s) are visible "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); lower "
                "training.devices or set training.device: cpu")
    if launch is None or launch.world != layout.devices:
        started = ("on its own" if launch is None else
                   f"by {launch.launcher} as one of {launch.world}")
        raise ConfigError(
            f"training.devices is {layout.devices}, so this training runs as "
            f"{layout.devices} processes, but this one was started {started}. Start it with "
            f"`torchrun --standalone --nproc-per-node {layout.devices} --no-python mbsnet "
            f"train ...`, or in a SLURM job of {layout.devices} tasks with `srun --ntasks "
            f"{layout.devices} mbsnet train ...` (the workflow's train rule does this)")
    return launch


class Processes:
    """This process's place among the processes of one run, and the collectives the run
    needs. A run of one process (``launch`` None) has no process group: every collective
    is the identity, so the single-process run computes exactly what it always did."""

    def __init__(self, launch: Launch | None = None) -> None:
        self.launch = launch
        self.rank = launch.rank if launch else 0
        self.world = launch.world if launch else 1
        # The last collectives, kept from here: otherwise gloo's worker thread may be the
        # one to free a finished collective, and freeing its tensors needs the GIL, which
        # this thread holds when it tears the process group down and waits for that worker
        # (a hang seen at the end of runs). Freed here, they need nothing.
        self._recent: collections.deque[dist.Work] = collections.deque(maxlen=16)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def name(self) -> str:
        return f"rank {self.rank} of {self.world}"

    # -- collectives (host memory: gloo, beside NCCL on CUDA) ---------------------------

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the processes, in float64."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maxima over the processes."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process."""
        return self.max([float(flag)])[0] > 0

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), by rank."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        """Wait until every process gets here."""
        self.sum([0.0])

    def _reduce(self, values: Sequence[float], op: dist.ReduceOp.RedOpType) -> list[float]:
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64)
        work = dist.all_reduce(tensor, op=op, async_op=True)
        work.wait()
        self._recent.append(work)
        return tensor.tolist()

    # -- devices and models ------------------------------------------------------------

    def device(self, setting: str) -> torch.device:
        """This process's training device for ``training.device`` = ``setting``: the
        single-process choice (:func:`mbsnet.device.select_device`) for one process."""
        if self.launch is None or not self.distributed or device_type(setting) == "cpu":
            return select_device(setting)
        launch = self.launch
        if launch.launcher == "srun" or scheduler_assigned():
            visible = visible_count()
            index = 0 if visible == 1 else launch.local_rank
            if index >= visible:
                raise ConfigError(
                    f"training.devices: task {launch.local_rank} on its node sees {visible} "
                    "CUDA device(s); give every task a GPU (srun --gpus-per-task=1)")
            return use_cuda(index)
        assert launch.local_world is not None  # torchrun's: srun (unknown) returned above
        claimed = ([claim.index for claim in claim_devices(launch.local_world)]
                   if launch.local_rank == 0 else None)
        by_node = {node: indices for node, indices in self.gather((launch.node, claimed))
                   if indices is not None}
        return use_cuda(by_node[launch.node][launch.local_rank])

    def describe_all(self, device: torch.device) -> list[str]:
        """Every process's device, by rank."""
        return self.gather(describe(device))

    def wrap(self, module: nn.Module, device: torch.device,
             find_unused_parameters: bool = False) -> nn.Module:
        """``module`` in DistributedDataParallel when there are several processes (the
        module itself otherwise): its backward averages the gradients over them."""
        if not self.distributed:
            return module
        return DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters)


@contextlib.contextmanager
def joined(launch: Launch | None, device_setting: str) -> Iterator[Processes]:
    """The processes of a run, their process group open inside the block (none for one
    process). Errors leaving the block name this process's rank; a collective that fails
    because another process died says so instead of hanging (the launcher, torchrun or
    ``srun --kill-on-bad-exit``, stops the rest and names the rank that failed first)."""
    processes = Processes(launch)
    if launch is None or not processes.distributed:
        yield processes
        return
    backend = "cpu:gloo,cuda:nccl" if device_type(device_setting) == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=launch.init_method, rank=launch.rank,
                            world_size=launch.world, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield processes
        processes.barrier()  # the last collective is one this process frees (see above)
    except dist.DistError as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MbsnetError(f"{processes.name}: lost contact with the other processes of this "
                          f"training ({detail}); one of them stopped first, and its error "
                          "(or the launcher's summary) names it") from exc
    except MbsnetError as exc:
        raise MbsnetError(f"{processes.name}: {exc}") from exc
    finally:
        dist.destroy_process_group()
