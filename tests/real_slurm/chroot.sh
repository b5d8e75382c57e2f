#!/usr/bin/env bash
# tests/real_slurm/chroot.sh - the real-SLURM tier against the other SLURM generation, on
# the same machine: a Debian chroot of the other release runs its own single-node cluster
# (tests/real_slurm/setup.sh inside it) beside the machine's own, and the tier's tests run
# inside the chroot against it.
#
#   Debian 12 (SLURM 22.05) machine: a Debian 13 "trixie" chroot, SLURM 24.11
#   Debian 13 (SLURM 24.11) machine: a Debian 12 "bookworm" chroot, SLURM 22.05
#
#   bash tests/real_slurm/chroot.sh start [--fresh]   make or update the chroot, start its
#                                   cluster (setup.sh), print setup.sh's "real-slurm: READY" line
#   bash tests/real_slurm/chroot.sh test [PYTEST ARGS]   run tests/real_slurm in the chroot
#                                   (AUTOEXP_REAL_SLURM=1; conftest.py runs setup.sh --fresh)
#   bash tests/real_slurm/chroot.sh stop [--wipe] [--umount]   stop the chroot's cluster
#                                   (--wipe: also its state and accounting DB; --umount:
#                                   then unmount proc, sys and dev from the chroot)
#   bash tests/real_slurm/chroot.sh status     the chroot's daemons and their pids
#   bash tests/real_slurm/chroot.sh run CMD... a command in the chroot, in the checkout
#
# The chroot is made with `debootstrap --variant=minbase` from Debian's mirror the first
# time (about 25 s), then reused. It gets its own /proc, a fresh sysfs (no cgroup mounts:
# the chroot's slurmd never touches the machine's cgroups), the machine's /dev, and, while
# a command of this script runs, the checkout bind-mounted at /opt/autoexp (read-write: the
# tests build autoexp.pyz from it). The mount is taken down again when the command ends,
# also when it fails; the cluster's daemons keep running, and so proc, sys and dev stay
# mounted in the chroot: `stop --umount` before removing the chroot's folder.
#
# The chroot's cluster has its own ports, ClusterName, munge key and socket, MariaDB data
# and state, so both clusters run at once. Its daemons are found only through the chroot's
# pidfiles, and a pid counts only when /proc/PID/comm is the daemon's name and
# /proc/PID/root is the chroot: the machine's own daemons are never signalled.
#
# Exit codes: 0 done; 1 failed (the tests failed, or the chroot or its cluster could not be
# set up); 2 bad arguments; 3 refused: not root, not Debian/Ubuntu, or no other release known.
#
# Settings (environment):
#   AUTOEXP_CHROOT_SUITE    the chroot's Debian release (default: the other one, see above)
#   AUTOEXP_CHROOT_DIR      where the chroot lives (default /srv/autoexp-SUITE)
#   AUTOEXP_CHROOT_MIRROR   the Debian mirror (default http://deb.debian.org/debian)
#   AUTOEXP_CHROOT_CTLD_PORT=7817, AUTOEXP_CHROOT_SLURMD_PORT=7818,
#   AUTOEXP_CHROOT_DBD_PORT=7819, AUTOEXP_CHROOT_DB_PORT=3307   the chroot cluster's ports
#   AUTOEXP_SLURM_*         other setup.sh settings (CPUS, MIN_JOB_AGE, ...) are passed on
set -uo pipefail
PROG=real-slurm-chroot

usage() { sed -n '2,41p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
CMD=$1
shift
case "$CMD" in start|test|stop|status|run) ;; -h|--help) sed -n '2,41p' "$0"; exit 0 ;; *) usage ;; esac

CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../chroot_lib.sh
. "$CHECKOUT/tests/chroot_lib.sh"
log() { chroot_log "$@"; }

chroot_require_root_debian
SUITE=${AUTOEXP_CHROOT_SUITE:-}
if [ -z "$SUITE" ]; then
  case "$HOST_ID:$HOST_VERSION" in
    debian:12) SUITE=trixie ;;     # SLURM 24.11 beside the machine's 22.05
    debian:13) SUITE=bookworm ;;   # SLURM 22.05 beside the machine's 24.11
    *) chroot_refuse "no other SLURM generation known for $HOST_ID $HOST_VERSION (Debian 12 or 13 expected); set AUTOEXP_CHROOT_SUITE" ;;
  esac
fi
case "$SUITE" in *[!a-z]*|"") chroot_refuse "AUTOEXP_CHROOT_SUITE must be a Debian release name, not '$SUITE'" ;; esac
R=${AUTOEXP_CHROOT_DIR:-/srv/autoexp-$SUITE}
case "$R" in /?*) ;; *) chroot_refuse "AUTOEXP_CHROOT_DIR must be an absolute path other than /" ;; esac
MIRROR=${AUTOEXP_CHROOT_MIRROR:-http://deb.debian.org/debian}

# setup.sh's settings for the chroot's cluster (and any other AUTOEXP_SLURM_* given)
CHROOT_ENV=(
  PYTHONDONTWRITEBYTECODE=1
  "AUTOEXP_SLURM_CLUSTER=$SUITE"
  "AUTOEXP_SLURM_CTLD_PORT=${AUTOEXP_CHROOT_CTLD_PORT:-7817}"
  "AUTOEXP_SLURM_SLURMD_PORT=${AUTOEXP_CHROOT_SLURMD_PORT:-7818}"
  "AUTOEXP_SLURM_DBD_PORT=${AUTOEXP_CHROOT_DBD_PORT:-7819}"
  "AUTOEXP_SLURM_DB_PORT=${AUTOEXP_CHROOT_DB_PORT:-3307}"
)
while IFS='=' read -r k v; do
  case "$k" in
    AUTOEXP_SLURM_CLUSTER|AUTOEXP_SLURM_*_PORT) ;;
    AUTOEXP_SLURM_*) CHROOT_ENV+=("$k=$v") ;;
  esac
done < <(env)
trap chroot_unmount_checkout EXIT

# ------------------------------------------------------------------ daemons, seen from here
pidfile_of() {
  case "$1" in
    munged) echo /run/munge/munged.pid ;;
    mariadbd) echo /run/mysqld/mysqld.pid ;;
    slurmdbd|slurmctld|slurmd) echo "/run/$1.pid" ;;
  esac
}
DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"
# pid of the chroot's daemon: its pidfile in the chroot, alive, named so, rooted in the chroot
chroot_pid() {
  local p st
  p=$( { tr -dc '0-9' < "$R$(pidfile_of "$1")"; } 2>/dev/null) || return 1
  [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$1" ] || return 1
  [ "$(readlink "/proc/$p/root" 2>/dev/null)" = "$(readlink -f "$R")" ] || return 1
  st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1)
  case "$st" in Z|X|x|"") return 1 ;; esac
  echo "$p"
}

# the chroot with a fresh sysfs and the tests' python (setup.sh installs SLURM itself)
make_chroot() { chroot_make with-sys python3 python3-venv; }

status_line() {
  local d p line="" running=0
  for d in $DAEMONS; do
    if p=$(chroot_pid "$d"); then line="$line $d=$p"; running=$((running + 1)); else line="$line $d=-"; fi
  done
  echo "real-slurm-chroot: $SUITE root=$R$line"
  [ "$running" -gt 0 ]
}

# ------------------------------------------------------------------ commands
case "$CMD" in
  start)
    fresh=()
    for a in "$@"; do
      case "$a" in --fresh) fresh=(--fresh) ;; *) echo "$PROG: unknown argument: $a" >&2; exit 2 ;; esac
    done
    make_chroot
    chroot_mount_checkout
    in_chroot bash "$INNER/tests/real_slurm/setup.sh" "${fresh[@]}"
    exit $?
    ;;
  test)
    make_chroot
    chroot_mount_checkout
    chroot_venv
    t0=$(date +%s)
    in_chroot env AUTOEXP_REAL_SLURM=1 AUTOEXP_REAL_SLURM_TMP=/tmp/autoexp-real-slurm \
      "$VENV/bin/python" -m pytest -p no:cacheprovider -ra --timeout=600 tests/real_slurm "$@"
    rc=$?
    log "tests/real_slurm in the $SUITE chroot: exit $rc after $(( $(date +%s) - t0 ))s"
    exit $rc
    ;;
  run)
    [ $# -ge 1 ] || usage
    make_chroot
    chroot_mount_checkout
    in_chroot "$@"
    exit $?
    ;;
  status)
    [ -d "$R" ] || { echo "real-slurm-chroot: $SUITE root=$R absent"; exit 1; }
    status_line
    exit $?
    ;;
  stop)
    wipe=(); umount_all=0
    for a in "$@"; do
      case "$a" in
        --wipe) wipe=(--wipe) ;;
        --umount) umount_all=1 ;;
        *) echo "$PROG: unknown argument: $a" >&2; exit 2 ;;
      esac
    done
    [ -d "$R" ] || { echo "real-slurm-chroot: STOPPED (no $R)"; exit 0; }
    if [ -e "$R/usr/sbin/slurmctld" ] && [ -e "$R/usr/bin/apt-get" ]; then
      chroot_mount_system with-sys
      chroot_mount_checkout
      in_chroot bash "$INNER/tests/real_slurm/stop.sh" "${wipe[@]}" \
        || log "stop.sh in the chroot failed; stopping what is left from outside"
      chroot_unmount_checkout
    fi
    # whatever still runs (stop.sh keeps a mariadbd it did not start): by pidfile, comm and root
    for d in slurmd slurmctld slurmdbd mariadbd munged; do
      p=$(chroot_pid "$d") || continue
      log "stopping $d (pid $p)"
      kill "$p" 2>/dev/null
      for _ in $(seq 1 150); do chroot_pid "$d" >/dev/null || break; sleep 0.2; done
      if chroot_pid "$d" >/dev/null; then log "$d (pid $p) ignored SIGTERM; SIGKILL"; kill -9 "$p" 2>/dev/null; fi
    done
    [ "$umount_all" = 1 ] && chroot_unmount_system
    echo "real-slurm-chroot: STOPPED ($SUITE, $R)"
    ;;
esac
