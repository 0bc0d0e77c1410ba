#!/usr/bin/env bash
# Install the Debian packages the test suite needs beyond the Python venv:
#   slurm   munge, slurmctld, slurmd, slurm-client, slurmdbd, mariadb-server
#           (the local SLURM cluster of tests/test_slurm.py, see tests/slurm/)
#   report  chromium (renders report.html in the report test)
#
# Usage: scripts/install-system-deps.sh [slurm] [report]    (no argument: both)
#
# Does nothing (exit 0) unless running as root on Debian: elsewhere the tests that
# need these packages skip with a reason. Idempotent and quiet: when everything is
# installed it only asks dpkg; `apt-get update` runs only when something is missing.
# Daemons are never started by the installation (the cluster scripts start them).
# Set MBSNET_SKIP_SYSTEM_DEPS=1 to skip installing altogether.
set -euo pipefail

log() { echo "[install-system-deps] $*" >&2; }

declare -A GROUPS_PKGS=(
  [slurm]="procps munge slurm-client slurmctld slurmd slurmdbd mariadb-server"
  [report]="chromium"
)

groups=("$@")
[ "${#groups[@]}" -gt 0 ] || groups=(slurm report)
wanted=()
for g in "${groups[@]}"; do
  [ -n "${GROUPS_PKGS[$g]:-}" ] || { log "unknown group '$g' (expected: ${!GROUPS_PKGS[*]})"; exit 2; }
  read -r -a pkgs <<<"${GROUPS_PKGS[$g]}"
  wanted+=("${pkgs[@]}")
done

if [ "${MBSNET_SKIP_SYSTEM_DEPS:-0}" = 1 ]; then
  log "MBSNET_SKIP_SYSTEM_DEPS=1: not installing ${wanted[*]}"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || [ ! -r /etc/debian_version ] || ! command -v apt-get >/dev/null; then
  exit 0   # not root on Debian: the tests needing these packages skip
fi

missing=()
for p in "${wanted[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  [ "${status:0:2}" = ii ] || missing+=("$p")
done
[ "${#missing[@]}" -gt 0 ] || exit 0

log "installing: ${missing[*]}"
# policy-rc.d stops the maintainer scripts from starting munge/mariadb/slurm*;
# an existing policy file is left alone.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt_log=$(mktemp /tmp/install-system-deps.XXXXXX.log)
apt_opts=(-q -y -o DPkg::Lock::Timeout=600 --no-install-recommends)
if ! { apt-get -q -o DPkg::Lock::Timeout=600 update &&
       DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}"; } \
     >"$apt_log" 2>&1; then
  tail -n 30 "$apt_log" >&2
  log "apt-get failed (full log: $apt_log)"
  exit 1
fi
rm -f "$apt_log"
log "installed: ${missing[*]}"
