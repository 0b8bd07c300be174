#!/usr/bin/env bash
# A real single-node SLURM cluster on 127.0.0.1, started and stopped by PID (no systemd).
#
#   sudo apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
#   eval "$(bash scripts/slurm_local.sh start /tmp/slurm)"   # prints `export SLURM_CONF=...`
#   sinfo; sbatch --wrap 'hostname'; squeue
#   bash scripts/slurm_local.sh stop /tmp/slurm
#
# `start DIR` writes DIR/slurm.conf (one node named after `hostname`, all its CPUs, partition
# "debug"), starts munged with its own key and socket, slurmctld and slurmd, waits until the node
# is idle and prints the export line on stdout (everything else goes to stderr). `stop DIR` kills
# the three daemons by the PIDs in their pid files and waits until they are gone. `status DIR`
# says which are alive. Must run as root: the daemons run as root (SlurmUser=root).
# Ports: SLURMCTLD_PORT (default 6817) and SLURMD_PORT (default 6818), so that a test can run
# its own cluster beside another one. SLURM_LOCAL_CPUS (default: nproc) sets the CPUs the node
# offers; more than the machine has oversubscribes it (jobs that mostly wait run side by side).
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
S=$(mkdir -p "$2" && cd "$2" && pwd)
PIDFILES=("$S/slurmd.pid" "$S/slurmctld.pid" "$S/munge/munged.pid")

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

kill_wait() {
  local f pid pids=()
  for f in "$@"; do
    if alive "$f"; then pids+=("$(cat "$f")"); kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  done
  rm -f "$@"
}

stop() {
  # slurmd and slurmctld together (each takes seconds to exit), munged after them
  kill_wait "${PIDFILES[0]}" "${PIDFILES[1]}"
  kill_wait "${PIDFILES[2]}"
}

start() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: the local SLURM cluster runs its daemons as root; run this as root" >&2
    exit 1
  fi
  for bin in munged mungekey slurmctld slurmd sinfo; do
    command -v "$bin" >/dev/null || {
      echo "error: $bin not found; install: apt-get install slurmctld slurmd slurm-client munge" >&2
      exit 1
    }
  done
  if [[ $S =~ [[:space:]] ]]; then
    echo "error: slurm.conf cannot hold paths with spaces: '$S'" >&2
    exit 1
  fi
  local d=$S
  while [[ $d != / ]]; do  # munged refuses a socket below a folder others cannot enter
    d=$(dirname "$d")
    if [[ $(( 8#$(stat -c %a "$d") & 1 )) -eq 0 ]]; then
      echo "error: munged needs every parent of $S to be enterable by all (o+x); $d is not" >&2
      exit 1
    fi
  done
  stop  # a previous cluster in the same DIR
  trap 'echo "error: start failed; logs in $S/log" >&2; stop' ERR
  mkdir -p "$S"/{munge,key,state,spool,log}
  chmod 755 "$S" "$S/munge"
  chmod 700 "$S/key"
  [[ -s $S/key/munge.key ]] || mungekey --create --keyfile="$S/key/munge.key"
  chmod 600 "$S/key/munge.key"
  munged --key-file="$S/key/munge.key" --socket="$S/munge/munge.socket" \
    --pid-file="$S/munge/munged.pid" --log-file="$S/log/munged.log" --seed-file="$S/key/munged.seed"

  local host cpus mem
  host=$(hostname)
  cpus=${SLURM_LOCAL_CPUS:-$(nproc)}
  # slurmd drains a node that has less memory than slurm.conf claims, so ask slurmd itself
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  cat >"$S/slurm.conf" <<EOF
ClusterName=normlab-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$S/munge/munge.socket
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=300
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$S/slurm.conf
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  local state=""
  for _ in $(seq 300); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.1
  done
  if [[ $state != idle ]]; then
    echo "error: the node did not become idle (state: '${state}'); logs in $S/log" >&2
    stop
    exit 1
  fi
  trap - ERR
  echo "local SLURM cluster up: node $host, $cpus CPUs, partition debug; logs in $S/log" >&2
  echo "export SLURM_CONF=$SLURM_CONF"
}

case $action in
  start) start ;;
  stop) stop ;;
  status)
    for f in "${PIDFILES[@]}"; do
      if alive "$f"; then echo "$(basename "$f" .pid): running (pid $(cat "$f"))"
      else echo "$(basename "$f" .pid): stopped"; fi
    done ;;
  *) usage ;;
esac
