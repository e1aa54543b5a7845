#!/usr/bin/env bash
# Stop the test cluster that start.sh brought up, touching only the daemons named in its pidfiles.
#
#   stop.sh              cancel queued/running jobs, then stop every daemon (munged included)
#   stop.sh slurmctld    stop only the daemons named (slurmctld slurmd slurmdbd mariadbd munged);
#                        jobs are left alone, so `stop.sh slurmctld && start.sh` is a controller
#                        restart under running jobs
#   CK_SLURM_WIPE=1      with a full stop: also forget all jobs (controller state, accounting
#                        database, completion log); job ids then restart at 1
set -uo pipefail

WIPE=${CK_SLURM_WIPE:-0}
say() { printf '[local-slurm %s] %s\n' "$(date +%T)" "$*"; }

[ "$(id -u)" = 0 ] || { echo "[local-slurm] ERROR: run me as root" >&2; exit 1; }

declare -A PIDFILE=(
  [slurmd]=/run/slurmd.pid [slurmctld]=/run/slurmctld.pid [slurmdbd]=/run/slurmdbd.pid
  [mariadbd]=/run/mysqld/mysqld.pid [munged]=/run/munge/munged.pid
)
ORDER=(slurmd slurmctld slurmdbd mariadbd munged)

running_pid() {  # PIDFILE COMM
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

stop_daemon() {  # COMM: SIGTERM, wait up to 30 s, then SIGKILL
  local comm=$1 pidfile=${PIDFILE[$1]} pid
  pid=$(running_pid "$pidfile" "$comm") || { say "$comm is not running"; return 0; }
  say "stopping $comm (pid $pid)"
  kill "$pid" 2>/dev/null
  for _ in $(seq 300); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  say "$comm (pid $pid) still there after 30 s: SIGKILL"
  kill -9 "$pid" 2>/dev/null
  rm -f "$pidfile"
}

if [ "$#" -gt 0 ]; then
  for comm in "$@"; do
    [ -n "${PIDFILE[$comm]:-}" ] || { echo "[local-slurm] ERROR: unknown daemon '$comm' (one of: ${ORDER[*]})" >&2; exit 2; }
  done
  for comm in "${ORDER[@]}"; do
    for wanted in "$@"; do [ "$wanted" = "$comm" ] && stop_daemon "$comm"; done
  done
  exit 0
fi

# Full stop: cancel jobs first so no job processes outlive slurmd.
if running_pid /run/slurmctld.pid slurmctld >/dev/null; then
  mapfile -t jobs < <(squeue -h -o %i 2>/dev/null)
  if [ "${#jobs[@]}" -gt 0 ]; then
    say "cancelling ${#jobs[@]} job(s)"
    scancel "${jobs[@]}" 2>/dev/null
    for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
for comm in slurmd slurmctld slurmdbd; do stop_daemon "$comm"; done
if [ "$WIPE" = 1 ] && running_pid /run/mysqld/mysqld.pid mariadbd >/dev/null; then
  say "dropping the accounting database"
  mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db'
fi
stop_daemon mariadbd
stop_daemon munged
if [ "$WIPE" = 1 ]; then
  say "forgetting all jobs"
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/* /var/log/slurm/jobcomp.log
fi
say "stopped"
