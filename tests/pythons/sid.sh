#!/usr/bin/env bash
# tests/pythons/sid.sh - run a command of the checkout under Debian sid's python3 (CPython
# 3.14 at the time of writing; pyenv here stops at 3.13), in a Debian sid chroot.
#
#   bash tests/pythons/sid.sh python --version
#   bash tests/pythons/sid.sh python -m pytest -p no:cacheprovider tests/test_e2e.py -k pyz
#   bash tests/pythons/sid.sh suite [PYTEST ARGS]   the fake-SLURM suite (what .ci/run runs)
#
# The command runs in the checkout, bind-mounted at /opt/autoexp while it runs, with a
# venv of sid's python3 first on PATH (python, python3, pytest): tests/requirements.txt,
# installed offline from wheels this machine downloads. `suite` is `python -m pytest -ra
# --timeout=600 tests --ignore=tests/real_slurm`: the built autoexp.pyz and the fake SLURM
# (its shims run with the same interpreter, FAKE_SLURM_PYTHON) under 3.14, and with it
# tests/test_e2e.py's pyz test for 3.14 (the other versions are pyenv's, not in the chroot).
#
# The chroot is made the first time with `debootstrap --variant=minbase sid` from Debian's
# mirror (about 30 s) and reused; python3, python3-venv and procps are installed in it.
# While the command runs it has /proc and the machine's /dev; nothing stays mounted after.
#
# Exit codes: the command's; 1 the chroot could not be set up; 2 bad arguments; 3 refused:
# not root, or not Debian/Ubuntu.
#
# Settings: AUTOEXP_SID_DIR (default /srv/autoexp-sid), AUTOEXP_SID_MIRROR (default
# http://deb.debian.org/debian), AUTOEXP_SID_PACKAGES (more Debian packages to install).
set -uo pipefail
PROG=sid-python
case "${1:-}" in
  "") sed -n '2,23p' "$0" >&2; exit 2 ;;
  -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
esac

CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../chroot_lib.sh
. "$CHECKOUT/tests/chroot_lib.sh"
chroot_require_root_debian
SUITE=sid
R=${AUTOEXP_SID_DIR:-/srv/autoexp-sid}
case "$R" in /?*) ;; *) chroot_refuse "AUTOEXP_SID_DIR must be an absolute path other than /" ;; esac
MIRROR=${AUTOEXP_SID_MIRROR:-http://deb.debian.org/debian}
CHROOT_ENV=()
CHROOT_PATH_PREFIX=$VENV/bin
# nothing of the machine stays mounted in the chroot afterwards (no daemon lives there)
trap 'chroot_unmount_checkout; chroot_unmount_system' EXIT

# shellcheck disable=SC2086
chroot_make python3 python3-venv procps ${AUTOEXP_SID_PACKAGES:-}
chroot_mount_checkout
chroot_venv
if [ "$1" = suite ]; then
  shift
  set -- python -m pytest -p no:cacheprovider -ra --timeout=600 tests --ignore=tests/real_slurm "$@"
fi
chroot_log "$(in_chroot python --version 2>&1) in $R: $*"
in_chroot "$@"
