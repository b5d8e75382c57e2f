#!/usr/bin/env bash
# tests/real_slurm/daemon.sh - stop or start one daemon of the test cluster, for the
# outage scenarios (slurmctld or slurmdbd away while autoexp watches).
#
#   bash tests/real_slurm/daemon.sh stop|start slurmctld|slurmdbd|slurmd
#   bash tests/real_slurm/daemon.sh status munged|mariadbd|slurmdbd|slurmctld|slurmd
#
# stop: SIGTERM by pidfile pid (checked against /proc/PID/comm), wait until it is gone.
# start: start it when it is not running, and wait until it answers (slurmctld: ping;
# slurmdbd: sacctmgr; slurmd: the node takes jobs again).
# status: print the pid and exit 0 when it runs, exit 1 when not.
set -uo pipefail
PROG=real-slurm-daemon
usage() { echo "usage: $0 stop|start slurmctld|slurmdbd|slurmd, or $0 status munged|mariadbd|slurmdbd|slurmctld|slurmd" >&2; exit 2; }
[ $# = 2 ] || usage
case "$1:$2" in
  stop:slurm*|start:slurm*|status:slurm*|status:munged|status:mariadbd) ;;
  *) usage ;;
esac
case "$2" in slurmctld|slurmdbd|slurmd|munged|mariadbd) ;; *) usage ;; esac
[ "${EUID:-$(id -u)}" = 0 ] || { echo "$PROG: refused: must run as root" >&2; exit 3; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
WAIT=${AUTOEXP_SLURM_WAIT:-120}

case "$1" in
  stop) stop_daemon "$2"; log "$2 stopped ($(elapsed)s)" ;;
  start)
    case "$2" in
      slurmctld) start_ctld_and_wait || { daemon_log_tails; exit 1; } ;;
      slurmdbd) start_dbd_and_wait || { daemon_log_tails; exit 1; } ;;
      slurmd) { start_slurm_daemon slurmd && wait_node_usable "$WAIT"; } || { daemon_log_tails; exit 1; } ;;
    esac ;;
  status) pid_of "$2" || exit 1 ;;
esac
