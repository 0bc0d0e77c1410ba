#!/usr/bin/env bash
# Stop the daemons that tests/slurm/start_cluster.sh started, by the PIDs it
# recorded (daemons it found already running are left alone). Jobs still in the
# queue are cancelled first so no job processes outlive the cluster.
#
# Usage: tests/slurm/stop_cluster.sh [--purge]
#   --purge  also forget all SLURM state: job queue, logs and the accounting database.
set -uo pipefail

STATE_DIR=${MBSNET_SLURM_STATE_DIR:-/run/mbsnet-slurm}
log() { echo "[stop_cluster $(date +%T)] $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 1; }
purge=0
case "${1:-}" in
  "") ;;
  --purge) purge=1 ;;
  *) log "usage: $0 [--purge]"; exit 2 ;;
esac

# recorded NAME -> prints the recorded pid if it is still a live NAME process
recorded() {
  local pid
  pid=$(tr -dc 0-9 <"$STATE_DIR/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
  echo "$pid"
}

stop() {  # NAME
  local pid i
  if ! pid=$(recorded "$1"); then
    rm -f "$STATE_DIR/$1.pid"
    return 0
  fi
  log "stopping $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 60; i++)); do
    recorded "$1" >/dev/null || break
    sleep 0.5
  done
  if recorded "$1" >/dev/null; then
    log "$1 still running after 30 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$STATE_DIR/$1.pid"
}

if recorded slurmctld >/dev/null; then
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs
    for ((i = 0; i < 30; i++)); do
      [ -z "$(timeout 5 squeue -h -t PD,R,CG -o %A 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi

stop slurmd
stop slurmctld
stop slurmdbd
if [ "$purge" = 1 ] && mariadb-admin ping >/dev/null 2>&1; then
  log "dropping the accounting database"
  mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db'
fi
stop mariadbd
stop munged

if [ "$purge" = 1 ]; then
  log "removing SLURM state and logs"
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/* /var/log/slurm/*
fi
exit 0
