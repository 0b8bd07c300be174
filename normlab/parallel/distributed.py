"""Multi-process runs: one process per host (or per accelerator), all running the same command.

Every process calls `initialize()` before it touches a device, then runs the same `train()`:
together they form one JAX job whose devices make up the config's mesh. Each process reads
only its rows of every batch; all of them write and restore checkpoints together; process 0
alone writes metrics, the progress line and the summary, and the others log warnings and
errors only.

Explicitly (any launcher), e.g. two hosts:

    normlab train --config configs/mnist_mlp.py --workdir /shared/run \\
        --coordinator host0:7777 --num-processes 2 --process-id 0     # on host0
    normlab train ... --coordinator host0:7777 --num-processes 2 --process-id 1   # on host1

Under SLURM, inside an `srun` step of a job with several tasks, `initialize()` with no
arguments detects the job (coordinator, process count and id) from SLURM's variables: the
coordinator is process 0 on the step's first node, at the port JAX derives from the job id
($JAX_COORDINATOR_PORT overrides it), and 127.0.0.1 when all tasks share one node.

The coordinator listens on the address it is given (not on every interface, JAX's default):
`bind_address`, else $JAX_COORDINATOR_BIND_ADDRESS, else the coordinator address the other
processes are told to use, explicit or detected. Tests use 127.0.0.1 only.

    initialize("127.0.0.1:7777", num_processes=2, process_id=0)
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Mapping

import jax

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")


_SLURM_PORT_BASE = 65536 - 4096  # JAX's SLURM detection: a port in [61440, 65535] per job


def under_slurm() -> bool:
    """True inside an `srun` step of a SLURM job with more than one task."""
    if not all(name in os.environ for name in SLURM_VARIABLES):
        return False
    return int(os.environ["SLURM_NTASKS"]) > 1


def first_slurm_host(node_list: str) -> str:
    """The first host of a SLURM node list, as JAX's SLURM detection reads it.

        first_slurm_host("node[007-015,020],gpu3")    # "node007"
    """
    head = re.match(r"[^,\[]*", node_list).group(0)
    rest = node_list[len(head) :]
    if rest.startswith("["):  # a bracketed range: its first number
        return head + re.match(r"[^,\-\]]*", rest[1:]).group(0)
    return head


def slurm_coordinator_address(environ: Mapping[str, str] | None = None) -> str:
    """host:port of process 0 of the current SLURM step: 127.0.0.1 when every task runs on one
    node (so nothing listens beyond the node), else the step's first host."""
    env = os.environ if environ is None else environ
    port = env.get("JAX_COORDINATOR_PORT") or _SLURM_PORT_BASE + int(env["SLURM_JOB_ID"]) % 4096
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES")
    node_list = env["SLURM_STEP_NODELIST"]
    one_node = int(nodes) == 1 if nodes else not re.search(r"[,\[]", node_list)
    return f"{'127.0.0.1' if one_node else first_slurm_host(node_list)}:{port}"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    bind_address: str | None = None,
    timeout_s: int = 300,
) -> bool:
    """Joins a multi-process job; returns whether this process is part of one.

    Give all three of `coordinator_address` ("host:port"), `num_processes` and `process_id`,
    or none: then the job is detected under SLURM, and otherwise this is a single-process run
    (nothing to do). ValueError for a partial or inconsistent set.
    """
    given = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise ValueError(
                "multi-process: give all of --coordinator, --num-processes and --process-id, "
                f"got coordinator={coordinator_address!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r}"
            )
        if ":" not in coordinator_address:
            raise ValueError(
                f"multi-process: coordinator must be host:port, got {coordinator_address!r}"
            )
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"multi-process: need num_processes >= 1 and 0 <= process_id < num_processes, "
                f"got num_processes={num_processes}, process_id={process_id}"
            )
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            coordinator_bind_address=bind_address
            or os.environ.get("JAX_COORDINATOR_BIND_ADDRESS")
            or coordinator_address,
            initialization_timeout=timeout_s,
        )
    elif under_slurm():
        # given no bind address JAX would listen on [::], every interface of the node
        coordinator = slurm_coordinator_address()
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["SLURM_NTASKS"]),
            process_id=int(os.environ["SLURM_PROCID"]),
            coordinator_bind_address=bind_address
            or os.environ.get("JAX_COORDINATOR_BIND_ADDRESS")
            or coordinator,
            initialization_timeout=timeout_s,
        )
    else:
        return False
    if jax.process_index() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --coordinator, --num-processes and --process-id to a command's parser."""
    group = parser.add_argument_group(
        "multi-process", "one JAX job over several processes (auto-detected under SLURM srun)"
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the job")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1")


def initialize_from_args(args: argparse.Namespace) -> bool:
    """`initialize` from the arguments `add_arguments` defined."""
    return initialize(args.coordinator, args.num_processes, args.process_id)
