"""Under SLURM the coordinator listens only on the address the other processes are told to use
(issue 15, item 11): 127.0.0.1 when every task is on one node, the first node's host otherwise;
never on a wildcard address (JAX's default `[::]` when given no bind address).

Two real processes form a job through `initialize()` with SLURM's variables set (as `srun`
sets them), on this machine only, and the coordinator's listening sockets are read from
/proc/<pid>/net/tcp{,6} (the sockets whose inodes are among its open files).
"""

import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from normlab.parallel import distributed

REPO = Path(__file__).resolve().parents[1]

WORKER = """
import sys
from normlab.parallel.distributed import initialize
assert initialize(timeout_s=60)
print("READY", flush=True)
sys.stdin.readline()  # hold the job until the test has looked at the sockets
"""

LISTEN = "0A"  # the TCP state column of /proc/net/tcp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _address(hex_address: str) -> tuple[str, int]:
    """/proc/net/tcp{,6}'s `0100007F:1F90` → ("127.0.0.1", 8080) (words in host byte order;
    an IPv4-mapped IPv6 address as its IPv4 address)."""
    host, port = hex_address.split(":")
    words = [bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, len(host), 8)]
    family = socket.AF_INET if len(words) == 1 else socket.AF_INET6
    text = socket.inet_ntop(family, b"".join(words))
    return text.removeprefix("::ffff:") if "." in text else text, int(port, 16)  # v4-mapped


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """Every (host, port) the process `pid` listens on over TCP."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                found.append(_address(fields[1]))
    return found


def _slurm_env(port: int, process_id: int, node_list: str, num_nodes: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "JAX_COORDINATOR")) and k != "XLA_FLAGS"
    }
    return {
        **env,
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": str(process_id),
        "SLURM_LOCALID": str(process_id),
        "SLURM_STEP_NODELIST": node_list,
        "SLURM_STEP_NUM_NODES": str(num_nodes),
        "JAX_COORDINATOR_PORT": str(port),  # instead of the port derived from the job id
    }


def _wait_ready(proc: subprocess.Popen, timeout_s: float = 90) -> None:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    assert line.strip() == "READY", f"worker not ready: {line!r}{proc.stdout.read()[-2000:]}"


@pytest.mark.parametrize(
    ("node_list", "num_nodes", "bound_to"),
    [
        ("localhost", 1, {"127.0.0.1"}),  # one node: loopback, whatever the node is called
        ("localhost,otherhost", 2, {"127.0.0.1", "::1"}),  # the first node's host
    ],
)
def test_the_coordinator_does_not_listen_on_every_interface(node_list, num_nodes, bound_to):
    port = _free_port()
    job = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER],
            cwd=REPO,
            env=_slurm_env(port, i, node_list, num_nodes),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for proc in job:
            _wait_ready(proc)
        listening = listening_addresses(job[0].pid)
    finally:
        for proc in job:
            if proc.poll() is None:
                proc.stdin.write("\n")
                proc.stdin.flush()
        for proc in job:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    on_port = {host for host, p in listening if p == port}
    assert on_port, f"no listener on the coordinator port {port}: {listening}"
    assert not {host for host, _ in listening} & {"0.0.0.0", "::"}, listening
    assert on_port <= bound_to, listening


def test_slurm_detection_hands_jax_the_bind_address(monkeypatch):
    seen = {}
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    for name, value in _slurm_env(6000, 1, "gpu[07-09]", 3).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JAX_COORDINATOR_PORT")
    assert distributed.initialize(timeout_s=5)
    port = 65536 - 4096 + 4242 % 4096  # JAX's port for job 4242
    assert seen["coordinator_address"] == f"gpu07:{port}"
    assert seen["coordinator_bind_address"] == f"gpu07:{port}"
    assert (seen["num_processes"], seen["process_id"]) == (2, 1)


@pytest.mark.parametrize(
    ("node_list", "first"),
    [
        ("node001", "node001"),
        ("node001,host2", "node001"),
        ("node[001-015],host2", "node001"),
        ("node[001,007-015],host2", "node001"),
        ("gpu-a[3]", "gpu-a3"),
    ],
)
def test_first_slurm_host(node_list, first):
    assert distributed.first_slurm_host(node_list) == first


def test_the_coordinator_is_loopback_on_one_node():
    env = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_STEP_NUM_NODES": "1"}
    assert distributed.slurm_coordinator_address(env) == "127.0.0.1:61447"
    assert distributed.slurm_coordinator_address({**env, "SLURM_STEP_NUM_NODES": "2"}) == (
        "node1:61447"
    )
    # without a node count, a node list of one host is one node
    one_host = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n3"}
    assert distributed.slurm_coordinator_address(one_host) == "127.0.0.1:61447"
    assert distributed.slurm_coordinator_address(
        {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n3", "JAX_COORDINATOR_PORT": "9999"}
    ) == "127.0.0.1:9999"
