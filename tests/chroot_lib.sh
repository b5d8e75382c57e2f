# shellcheck shell=bash
# tests/chroot_lib.sh - sourced by tests/real_slurm/chroot.sh and tests/pythons/sid.sh: a
# Debian chroot made with debootstrap (minbase, from Debian's mirror), the checkout
# bind-mounted into it while a command runs, and a venv with the tests' requirements.
#
# The caller sets, before sourcing:
#   PROG      its name, for messages
#   SUITE     the chroot's Debian release (trixie, bookworm, sid, ...)
#   R         the chroot's folder (absolute, not /)
#   MIRROR    the Debian mirror
#   CHECKOUT  the checkout (this repository) on the machine
#   CHROOT_ENV   (array) extra VAR=value for every command in the chroot
# and may set CHROOT_PATH_PREFIX (put before the system PATH inside the chroot).
#
# Inside the chroot the checkout is at $INNER and the venv at $VENV (on the chroot's own
# filesystem, so the machine's .venv-test in the checkout is never touched).

INNER=/opt/autoexp
VENV=/opt/autoexp-venv
WHEELS=/opt/autoexp-wheels
SYSTEM_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CHECKOUT_MOUNTED=0

chroot_log() { echo "$PROG: $*" >&2; }
chroot_die() { echo "$PROG: ERROR: $*" >&2; exit 1; }
chroot_refuse() { echo "$PROG: refused: $*" >&2; exit 3; }

# Exit 3 unless root on Debian or Ubuntu; sets HOST_ID and HOST_VERSION (/etc/os-release).
chroot_require_root_debian() {
  local ids
  [ "${EUID:-$(id -u)}" = 0 ] || chroot_refuse "must run as root (debootstrap, chroot and mount need it)"
  # shellcheck disable=SC1091
  HOST_ID=$( . /etc/os-release 2>/dev/null && echo "${ID:-}")
  # shellcheck disable=SC1091
  HOST_VERSION=$( . /etc/os-release 2>/dev/null && echo "${VERSION_ID:-}")
  # shellcheck disable=SC1091
  ids=" $( . /etc/os-release 2>/dev/null && echo "${ID:-} ${ID_LIKE:-}") "
  case "$ids" in
    *" debian "*|*" ubuntu "*) ;;
    *) chroot_refuse "needs Debian or Ubuntu (/etc/os-release says ID/ID_LIKE '$(echo $ids)')" ;;
  esac
  command -v apt-get >/dev/null 2>&1 || chroot_refuse "needs apt-get, which is not on PATH"
}

# A command inside the chroot: a clean environment (nothing of the caller's shell but
# CHROOT_ENV), in the checkout when it is mounted, else in /.
in_chroot() {
  local dir=/
  mountpoint -q "$R$INNER" && dir=$INNER
  chroot "$R" /usr/bin/env -i PATH="${CHROOT_PATH_PREFIX:+$CHROOT_PATH_PREFIX:}$SYSTEM_PATH" HOME=/root \
    LANG=C.UTF-8 TERM="${TERM:-dumb}" "${CHROOT_ENV[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$dir" "$@"
}

# proc, optionally a fresh sysfs (no cgroup mounts: the machine's cgroups stay out of
# sight), and the machine's /dev, /dev/pts, /dev/shm.
chroot_mount_system() { # [with-sys]
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc" || chroot_die "cannot mount proc in $R"
  if [ "${1:-}" = with-sys ]; then
    mountpoint -q "$R/sys" || mount -t sysfs sysfs "$R/sys" || chroot_die "cannot mount sysfs in $R"
  fi
  mountpoint -q "$R/dev" || mount --bind /dev "$R/dev" || chroot_die "cannot bind /dev into $R"
  mkdir -p "$R/dev/pts" "$R/dev/shm"
  mountpoint -q "$R/dev/pts" || mount --bind /dev/pts "$R/dev/pts" || chroot_die "cannot bind /dev/pts into $R"
  mountpoint -q "$R/dev/shm" || mount --bind /dev/shm "$R/dev/shm" || chroot_die "cannot bind /dev/shm into $R"
}

chroot_unmount_system() {
  local m
  for m in dev/shm dev/pts dev sys proc; do
    mountpoint -q "$R/$m" && { umount "$R/$m" 2>/dev/null || umount -l "$R/$m" || chroot_log "could not unmount $R/$m"; }
  done
  return 0
}

# The checkout at $INNER while this script runs (chroot_unmount_checkout takes it down;
# the callers do so on EXIT). A mount left by a killed run is reused when it is this
# checkout, else refused.
chroot_mount_checkout() {
  mkdir -p "$R$INNER"
  if mountpoint -q "$R$INNER"; then
    [ "$(stat -c '%d:%i' "$R$INNER")" = "$(stat -c '%d:%i' "$CHECKOUT")" ] \
      || chroot_die "$R$INNER is a mount of another folder; unmount it first (umount $R$INNER)"
    CHECKOUT_MOUNTED=1
    return 0
  fi
  mount --bind "$CHECKOUT" "$R$INNER" || chroot_die "cannot bind $CHECKOUT to $R$INNER"
  CHECKOUT_MOUNTED=1
}

chroot_unmount_checkout() {
  [ "$CHECKOUT_MOUNTED" = 1 ] || return 0
  # lazily if something still runs in it: the mount must never outlive the command (a
  # `rm -rf` of the chroot would go through it into the checkout)
  umount "$R$INNER" 2>/dev/null || umount -l "$R$INNER" || chroot_log "could not unmount $R$INNER"
  CHECKOUT_MOUNTED=0
}

# Make the chroot when it is missing, mount what it needs, keep package scripts from
# starting daemons, and install the Debian packages given that are missing.
chroot_make() { # [with-sys] package...
  local sys="" t0 dlog=/var/log/autoexp-debootstrap-$SUITE.log missing=() p
  if [ "${1:-}" = with-sys ]; then sys=with-sys; shift; fi
  if [ ! -x "$R/usr/bin/apt-get" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
      chroot_log "installing debootstrap"
      { DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap \
          || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; }; } \
        > /var/log/autoexp-debootstrap-install.log 2>&1 \
        || chroot_die "cannot install debootstrap (see /var/log/autoexp-debootstrap-install.log)"
    fi
    [ -e "/usr/share/debootstrap/scripts/$SUITE" ] || chroot_die "this machine's debootstrap does not know '$SUITE'"
    t0=$(date +%s)
    chroot_log "debootstrap --variant=minbase $SUITE $R (log: $dlog)"
    mkdir -p "$R"
    debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR" > "$dlog" 2>&1 \
      || { tail -n 20 "$dlog" >&2; chroot_die "debootstrap of $SUITE into $R failed"; }
    chroot_log "debootstrap done in $(( $(date +%s) - t0 ))s"
  fi
  chroot_mount_system $sys
  # no init in a chroot: package scripts must never start a daemon
  if [ ! -e "$R/usr/sbin/policy-rc.d" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d" && chmod 0755 "$R/usr/sbin/policy-rc.d"
  fi
  # minbase has no /etc/hosts: localhost must resolve without DNS
  grep -qs '^127\.0\.0\.1[[:space:]].*\blocalhost\b' "$R/etc/hosts" || echo "127.0.0.1 localhost" >> "$R/etc/hosts"
  for p in "$@"; do
    in_chroot dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  chroot_log "installing ${missing[*]} in the chroot"
  { in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
      || { in_chroot apt-get update -q && \
           in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }; } \
    > "$R/var/log/autoexp-chroot-apt.log" 2>&1 \
    || { tail -n 20 "$R/var/log/autoexp-chroot-apt.log" >&2; chroot_die "apt-get install ${missing[*]} failed in the chroot"; }
}

# $VENV with tests/requirements.txt. pip in the chroot installs offline, from wheels this
# machine downloads for the chroot's Python: the chroot need not trust a TLS-intercepting
# proxy that this machine's CA bundle trusts. Rebuilt when the requirements change.
chroot_venv() {
  local req="$CHECKOUT/tests/requirements.txt" pyver host_py c
  pyver=$(in_chroot python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') || chroot_die "no python3 in the chroot"
  if [ -x "$R$VENV/bin/python" ] && cmp -s "$req" "$R$VENV/autoexp-requirements.txt" \
      && [ "$(cat "$R$VENV/autoexp-python" 2>/dev/null)" = "$pyver" ]; then
    return 0
  fi
  host_py=${AUTOEXP_PIP_PYTHON:-}
  if [ -z "$host_py" ]; then
    for c in "$CHECKOUT/.venv-test/bin/python" python3; do
      if "$c" -m pip --version >/dev/null 2>&1; then host_py=$c; break; fi
    done
  fi
  [ -n "$host_py" ] || chroot_die "no python with pip here to download the tests' wheels (set AUTOEXP_PIP_PYTHON)"
  chroot_log "downloading the tests' wheels for Python ${pyver%.*} ($host_py -m pip download)"
  mkdir -p "$R$WHEELS"
  "$host_py" -m pip download -q --disable-pip-version-check --only-binary=:all: --implementation cp \
      --python-version "${pyver%.*}" -d "$R$WHEELS" -r "$req" >&2 || chroot_die "pip download failed"
  chroot_log "making $VENV in the chroot (Python $pyver)"
  rm -rf "$R$VENV"
  in_chroot python3 -m venv "$VENV" || chroot_die "python3 -m venv failed in the chroot"
  cp "$req" "$R$WHEELS/requirements.txt"
  in_chroot "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-index \
      --find-links "$WHEELS" -r "$WHEELS/requirements.txt" >&2 || chroot_die "pip install in the chroot failed"
  cp "$req" "$R$VENV/autoexp-requirements.txt"
  echo "$pyver" > "$R$VENV/autoexp-python"
}
