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
# also when it fails; the cluster's daemons keep running.
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

usage() { sed -n '2,44p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
CMD=$1
shift
case "$CMD" in start|test|stop|status|run) ;; -h|--help) sed -n '2,44p' "$0"; exit 0 ;; *) usage ;; esac

refuse() { echo "$PROG: refused: $*" >&2; exit 3; }
log() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: ERROR: $*" >&2; exit 1; }

[ "${EUID:-$(id -u)}" = 0 ] || refuse "must run as root (debootstrap, chroot and mount need it)"
# shellcheck disable=SC1091
os=$( . /etc/os-release 2>/dev/null && echo "${ID:-}|${ID_LIKE:-}|${VERSION_ID:-}")
case "|${os%|*}|" in
  *"|debian|"*|*"|ubuntu|"*|*" debian|"*|*"|debian "*) ;;
  *) refuse "needs Debian or Ubuntu (/etc/os-release says ID and ID_LIKE '${os%|*}')" ;;
esac
HOST_VERSION=${os##*|}
SUITE=${AUTOEXP_CHROOT_SUITE:-}
if [ -z "$SUITE" ]; then
  case "${os%%|*}:$HOST_VERSION" in
    debian:12) SUITE=trixie ;;     # SLURM 24.11 beside the machine's 22.05
    debian:13) SUITE=bookworm ;;   # SLURM 22.05 beside the machine's 24.11
    *) refuse "no other SLURM generation known for ${os%%|*} $HOST_VERSION (Debian 12 or 13 expected); set AUTOEXP_CHROOT_SUITE" ;;
  esac
fi
case "$SUITE" in *[!a-z]*|"") refuse "AUTOEXP_CHROOT_SUITE must be a Debian release name, not '$SUITE'" ;; esac

R=${AUTOEXP_CHROOT_DIR:-/srv/autoexp-$SUITE}
case "$R" in /*) ;; *) refuse "AUTOEXP_CHROOT_DIR must be an absolute path" ;; esac
[ "$R" != / ] || refuse "AUTOEXP_CHROOT_DIR must not be /"
MIRROR=${AUTOEXP_CHROOT_MIRROR:-http://deb.debian.org/debian}
CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
INNER=/opt/autoexp                  # the checkout, inside the chroot
VENV=/opt/autoexp-venv              # pytest for the tier, inside the chroot (not in the checkout)
WHEELS=/opt/autoexp-wheels
SYSTEM_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# setup.sh's settings for the chroot's cluster
CLUSTER_ENV=(
  "AUTOEXP_SLURM_CLUSTER=$SUITE"
  "AUTOEXP_SLURM_CTLD_PORT=${AUTOEXP_CHROOT_CTLD_PORT:-7817}"
  "AUTOEXP_SLURM_SLURMD_PORT=${AUTOEXP_CHROOT_SLURMD_PORT:-7818}"
  "AUTOEXP_SLURM_DBD_PORT=${AUTOEXP_CHROOT_DBD_PORT:-7819}"
  "AUTOEXP_SLURM_DB_PORT=${AUTOEXP_CHROOT_DB_PORT:-3307}"
)
while IFS='=' read -r k v; do
  case "$k" in
    AUTOEXP_SLURM_CLUSTER|AUTOEXP_SLURM_*_PORT) ;;
    AUTOEXP_SLURM_*) CLUSTER_ENV+=("$k=$v") ;;
  esac
done < <(env)

# A command inside the chroot: a clean environment (no variable of this machine's shell),
# the cluster's settings, in the checkout when it is mounted.
in_chroot() {
  local dir=/
  mountpoint -q "$R$INNER" && dir=$INNER
  chroot "$R" /usr/bin/env -i PATH="$SYSTEM_PATH" HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    PYTHONDONTWRITEBYTECODE=1 "${CLUSTER_ENV[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$dir" "$@"
}

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

# ------------------------------------------------------------------ mounts
mount_system() {
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc" || die "cannot mount proc in $R"
  # a sysfs of its own: the machine's cgroup mounts under /sys/fs/cgroup stay out of sight
  mountpoint -q "$R/sys" || mount -t sysfs sysfs "$R/sys" || die "cannot mount sysfs in $R"
  mountpoint -q "$R/dev" || mount --bind /dev "$R/dev" || die "cannot bind /dev into $R"
  mkdir -p "$R/dev/pts" "$R/dev/shm"
  mountpoint -q "$R/dev/pts" || mount --bind /dev/pts "$R/dev/pts" || die "cannot bind /dev/pts into $R"
  mountpoint -q "$R/dev/shm" || mount --bind /dev/shm "$R/dev/shm" || die "cannot bind /dev/shm into $R"
}

CHECKOUT_MOUNTED=0
mount_checkout() {
  mkdir -p "$R$INNER"
  if mountpoint -q "$R$INNER"; then
    # another command of this script holds it (or an earlier one was killed): use it
    # only when it is this checkout
    [ "$(stat -c '%d:%i' "$R$INNER")" = "$(stat -c '%d:%i' "$CHECKOUT")" ] \
      || die "$R$INNER is a mount of another folder; unmount it first"
    return 0
  fi
  mount --bind "$CHECKOUT" "$R$INNER" || die "cannot bind $CHECKOUT to $R$INNER"
  CHECKOUT_MOUNTED=1
}
unmount_checkout() {
  [ "$CHECKOUT_MOUNTED" = 1 ] || return 0
  umount "$R$INNER" 2>/dev/null || umount -l "$R$INNER" || log "could not unmount $R$INNER"
  CHECKOUT_MOUNTED=0
}
trap unmount_checkout EXIT

# ------------------------------------------------------------------ the chroot itself
make_chroot() {
  local t0 dlog=/var/log/autoexp-debootstrap-$SUITE.log
  if [ ! -x "$R/usr/bin/apt-get" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
      log "installing debootstrap"
      { DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap \
          || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; }; } \
        > /var/log/autoexp-debootstrap-install.log 2>&1 || die "cannot install debootstrap (see /var/log/autoexp-debootstrap-install.log)"
    fi
    [ -e "/usr/share/debootstrap/scripts/$SUITE" ] || die "this debootstrap does not know '$SUITE'"
    t0=$(date +%s)
    log "debootstrap --variant=minbase $SUITE $R (log: $dlog)"
    mkdir -p "$R"
    debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR" > "$dlog" 2>&1 \
      || { tail -n 20 "$dlog" >&2; die "debootstrap of $SUITE failed"; }
    log "debootstrap done in $(( $(date +%s) - t0 ))s"
  fi
  mount_system
  # no init here: package scripts must never start a daemon (mariadbd would take port 3306)
  if [ ! -e "$R/usr/sbin/policy-rc.d" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d" && chmod 0755 "$R/usr/sbin/policy-rc.d"
  fi
  # minbase has no /etc/hosts: localhost must resolve without DNS (slurmdbd's host)
  grep -qs '^127\.0\.0\.1[[:space:]].*\blocalhost\b' "$R/etc/hosts" || echo "127.0.0.1 localhost" >> "$R/etc/hosts"
  # the tests' interpreter: python3 with venv (setup.sh installs SLURM itself)
  if ! in_chroot dpkg-query -W -f='${Status}\n' python3 python3-venv 2>/dev/null | grep -c 'install ok installed' | grep -qx 2; then
    log "installing python3 and python3-venv in the chroot"
    { in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-venv \
        || { in_chroot apt-get update -q && \
             in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-venv; }; } \
      > "$R/var/log/autoexp-python-apt.log" 2>&1 || { tail -n 20 "$R/var/log/autoexp-python-apt.log" >&2; die "cannot install python3 in the chroot"; }
  fi
}

# pytest and pytest-timeout in $VENV: pip in the chroot installs offline, from wheels this
# machine downloads for the chroot's Python (the chroot has no CA bundle for a proxy that
# intercepts TLS, which this machine may have).
make_venv() {
  local req="$CHECKOUT/tests/requirements.txt" pyver host_py
  if [ -x "$R$VENV/bin/python" ] && cmp -s "$req" "$R$VENV/autoexp-requirements.txt"; then
    return 0
  fi
  pyver=$(in_chroot python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "no python3 in the chroot"
  host_py=${AUTOEXP_PIP_PYTHON:-}
  if [ -z "$host_py" ]; then
    for c in "$CHECKOUT/.venv-test/bin/python" python3; do
      if "$c" -m pip --version >/dev/null 2>&1; then host_py=$c; break; fi
    done
  fi
  [ -n "$host_py" ] || die "no python with pip on this machine to download the tests' wheels (set AUTOEXP_PIP_PYTHON)"
  log "downloading the tests' wheels for Python $pyver ($host_py -m pip download)"
  mkdir -p "$R$WHEELS"
  "$host_py" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version "$pyver" \
      --implementation cp -d "$R$WHEELS" -r "$req" >&2 || die "pip download failed"
  log "making $VENV in the chroot (Python $pyver)"
  rm -rf "$R$VENV"
  in_chroot python3 -m venv "$VENV" || die "python3 -m venv failed in the chroot"
  in_chroot "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-index \
      --find-links "$WHEELS" -r "$INNER/tests/requirements.txt" >&2 || die "pip install in the chroot failed"
  cp "$req" "$R$VENV/autoexp-requirements.txt"
}

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
    mount_checkout
    in_chroot bash "$INNER/tests/real_slurm/setup.sh" "${fresh[@]}"
    exit $?
    ;;
  test)
    make_chroot
    mount_checkout
    make_venv
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
    mount_checkout
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
      mount_system
      mount_checkout
      in_chroot bash "$INNER/tests/real_slurm/stop.sh" "${wipe[@]}" \
        || log "stop.sh in the chroot failed; stopping what is left from outside"
      unmount_checkout
    fi
    # whatever still runs (stop.sh keeps a mariadbd it did not start): by pidfile, comm and root
    for d in slurmd slurmctld slurmdbd mariadbd munged; do
      p=$(chroot_pid "$d") || continue
      log "stopping $d (pid $p)"
      kill "$p" 2>/dev/null
      for _ in $(seq 1 150); do chroot_pid "$d" >/dev/null || break; sleep 0.2; done
      if chroot_pid "$d" >/dev/null; then log "$d (pid $p) ignored SIGTERM; SIGKILL"; kill -9 "$p" 2>/dev/null; fi
    done
    if [ "$umount_all" = 1 ]; then
      for m in dev/shm dev/pts dev sys proc; do
        mountpoint -q "$R/$m" && { umount "$R/$m" 2>/dev/null || umount -l "$R/$m" || log "could not unmount $R/$m"; }
      done
    fi
    echo "real-slurm-chroot: STOPPED ($SUITE, $R)"
    ;;
esac
