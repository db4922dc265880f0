#!/usr/bin/env bash
# Stop the daemons tests/slurm/start_slurm.sh started, by the PIDs it recorded.
set -u
STATE=${1:?usage: stop_slurm.sh STATE_DIR}
# Let jobs end while slurmd is alive (otherwise their slurmstepd lingers): cancel what is left
# on this private cluster and wait for the queue to empty.
if [ -s "$STATE/slurm.conf" ] && [ -s "$STATE/slurmctld.pid" ]; then
    export SLURM_CONF="$STATE/slurm.conf"
    scancel --quiet -u "$(id -un)" 2>/dev/null
    for _ in $(seq 100); do
        [ -z "$(squeue -h 2>/dev/null)" ] && break
        sleep 0.2
    done
fi
for name in slurmd slurmctld munged.started; do
    f="$STATE/$name.pid"
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
done
