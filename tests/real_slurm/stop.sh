#!/usr/bin/env bash
# tests/real_slurm/stop.sh - stop the test cluster that setup.sh started.
#
#   bash tests/real_slurm/stop.sh [--wipe] [--keep-db] [--quiet]
#
#   --wipe     cancel every job first (only if slurmctld and slurmd run: after a crash,
#              use setup.sh --fresh instead), then delete slurmctld's and slurmd's state and
#              drop the accounting database (the next setup.sh starts at job id 1)
#   --keep-db  leave mariadbd running (it is stopped only if setup.sh started it)
#
# Daemons are stopped by the pid in their pidfile, checked against /proc/PID/comm.
set -uo pipefail
PROG=real-slurm-stop
WIPE=0; KEEPDB=0; QUIET=0
for a in "$@"; do
  case "$a" in
    --wipe) WIPE=1 ;;
    --keep-db) KEEPDB=1 ;;
    --quiet) QUIET=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "$PROG: unknown argument: $a (see --help)" >&2; exit 2 ;;
  esac
done
[ "${EUID:-$(id -u)}" = 0 ] || { echo "$PROG: refused: must run as root" >&2; exit 3; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

if [ "$WIPE" = 1 ] && pid_of slurmctld >/dev/null && pid_of slurmd >/dev/null; then
  cancel_all_jobs 30 || log "some jobs did not end"
fi
stop_daemons slurmd slurmctld slurmdbd
if [ "$WIPE" = 1 ]; then
  log "wiping $CTLD_SPOOL, $SLURMD_SPOOL and the accounting database"
  rm -rf "${CTLD_SPOOL:?}"/* "${SLURMD_SPOOL:?}"/*
  mariadb -e "DROP DATABASE IF EXISTS \`$DB_NAME\`" 2>/dev/null || log "could not drop $DB_NAME (mariadbd down?)"
fi
if [ "$KEEPDB" = 0 ] && [ -e "$MARKERS/mariadbd.started" ]; then
  stop_daemon mariadbd
  rm -f "$MARKERS/mariadbd.started"
fi
stop_daemon munged
echo "real-slurm: STOPPED"
