#!/usr/bin/env bash
# Stop the daemons that slurm/start_local_slurm.sh started, by their recorded PIDs only (each PID is checked
# against /proc/PID/comm first, so a recycled PID is never signalled). Jobs still queued or running are
# cancelled through SLURM first, so their job processes end too. Safe to run twice, or after a failed start.
set -uo pipefail
PIDDIR=${SLURM_LOCAL_PIDDIR:-/run/dfkd-local-slurm}
[[ -d $PIDDIR ]] || { echo "nothing recorded in $PIDDIR"; exit 0; }
ours() { local f=$PIDDIR/$1.pid; [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null \
         && [[ $(cat /proc/"$(cat "$f")"/comm 2>/dev/null) == "$1" ]]; }
if ours slurmctld; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [[ -n ${jobs// } ]]; then
    echo "cancelling jobs: $jobs"
    scancel $jobs
    for _ in $(seq 30); do [[ -z $(squeue -h -t R,CG -o %A 2>/dev/null) ]] && break; sleep 0.5; done
  fi
fi
for d in slurmd slurmctld slurmdbd mariadbd munged; do   # the reverse of the start order
  f=$PIDDIR/$d.pid; [[ -s $f ]] || continue
  pid=$(cat "$f")
  if ours "$d"; then
    t=$EPOCHREALTIME; kill -TERM "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then echo "$d ($pid) did not exit, sending KILL"; kill -KILL "$pid"; fi
    echo "stopped $d pid $pid ($(awk -v a="$EPOCHREALTIME" -v b="$t" 'BEGIN{printf "%.1f", a-b}')s)"
  else
    echo "$d pid $pid not running (or the PID was reused); skipped"
  fi
  rm -f "$f"
done
exit 0
