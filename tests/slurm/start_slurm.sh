#!/usr/bin/env bash
# Start a single-node Slurm cluster on loopback for tests (Debian/Ubuntu, run as root).
#
#   tests/slurm/start_slurm.sh STATE_DIR     installs slurm-wlm + munge if missing, writes
#                                            STATE_DIR/slurm.conf, starts munged (unless one is
#                                            already running), slurmctld and slurmd, waits until
#                                            the node is idle; prints "SLURM_CONF=STATE_DIR/slurm.conf".
#   tests/slurm/stop_slurm.sh STATE_DIR      stops what this script started, by PID.
#
# Exit status 3 means Slurm cannot be installed/started here (the caller skips, showing stderr).
set -euo pipefail
STATE=${1:?usage: start_slurm.sh STATE_DIR}
mkdir -p "$STATE"/spool "$STATE"/state
STATE=$(cd "$STATE" && pwd)

cannot() { echo "start_slurm.sh: $*" >&2; exit 3; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || cannot "slurm-wlm/munge are not installed and we are not root"
    command -v apt-get >/dev/null || cannot "no apt-get to install slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    (apt-get install -y -q slurm-wlm munge >"$STATE/apt.log" 2>&1 ||
        { apt-get update -q >>"$STATE/apt.log" 2>&1 &&
          apt-get install -y -q slurm-wlm munge >>"$STATE/apt.log" 2>&1; }) ||
        cannot "apt-get install slurm-wlm munge failed (see $STATE/apt.log)"
fi
[ "$(id -u)" = 0 ] || cannot "starting slurmd needs root"

# munge: reuse a running daemon, else start one (as the munge user) and remember its PID.
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
        (command -v mungekey >/dev/null && mungekey --create) ||
            dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged || cannot "munged did not start"
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$STATE/munged.started.pid"
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
PORT_BASE=${SLURM_TEST_PORT_BASE:-16817}
cat >"$STATE/slurm.conf" <<CONF
ClusterName=shiftbenchtest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT_BASE
SlurmdPort=$((PORT_BASE + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$STATE/slurm.conf"
slurmctld -f "$SLURM_CONF" -i || cannot "slurmctld did not start (see $STATE/slurmctld.log)"
slurmd -f "$SLURM_CONF" || cannot "slurmd did not start (see $STATE/slurmd.log)"
for _ in $(seq 100); do
    if sinfo -h -o %t 2>/dev/null | grep -q idle; then echo "SLURM_CONF=$SLURM_CONF"; exit 0; fi
    sleep 0.2
done
cannot "the node did not become idle: $(sinfo 2>&1 | tail -n 2)"
