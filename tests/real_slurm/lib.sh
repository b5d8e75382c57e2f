# shellcheck shell=bash
# Shared by setup.sh, stop.sh and daemon.sh (sourced, not run): where the local test
# cluster keeps its files, and how its daemons are found, started and stopped.
#
# Daemons are found through their pidfile, and only a live process whose /proc/PID/comm
# is the daemon's name and whose root directory is ours counts: nothing is ever looked up
# or killed by name matching, and a daemon of another root (the host's, seen from a chroot
# that shares its PID namespace, or a chroot's, seen from the host) is never touched, even
# when a stale pidfile names its pid.

SLURM_CONF=/etc/slurm/slurm.conf
SLURMDBD_CONF=/etc/slurm/slurmdbd.conf
CGROUP_CONF=/etc/slurm/cgroup.conf
MARIADB_CNF=/etc/mysql/mariadb.conf.d/90-autoexp-real-slurm.cnf
# Where this cluster keeps its state, and what it listens on. The defaults are SLURM's and
# MariaDB's own; a second cluster beside this one (chroot.sh runs the other SLURM
# generation in a Debian chroot on this machine) sets its own ports and name. The same
# settings must reach setup.sh, stop.sh and daemon.sh (harness.py passes AUTOEXP_SLURM_* on).
LOGDIR=${AUTOEXP_SLURM_LOGDIR:-/var/log/slurm}
CTLD_SPOOL=${AUTOEXP_SLURM_CTLD_SPOOL:-/var/spool/slurmctld}
SLURMD_SPOOL=${AUTOEXP_SLURM_SLURMD_SPOOL:-/var/spool/slurmd}
MARKERS=${AUTOEXP_SLURM_MARKERS:-/var/lib/autoexp-real-slurm}  # what setup started (mariadbd) or found broken (cgroup)
CLUSTER=${AUTOEXP_SLURM_CLUSTER:-autoexp}
CTLD_PORT=${AUTOEXP_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${AUTOEXP_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${AUTOEXP_SLURM_DBD_PORT:-6819}
DB_PORT=${AUTOEXP_SLURM_DB_PORT:-3306}
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=autoexp-real-slurm             # a local DB reachable only through localhost
PARTITION=debug

# name -> pidfile
pidfile_of() {
  case "$1" in
    munged) echo /run/munge/munged.pid ;;
    mariadbd) echo /run/mysqld/mysqld.pid ;;
    slurmdbd) echo /run/slurmdbd.pid ;;
    slurmctld) echo /run/slurmctld.pid ;;
    slurmd) echo /run/slurmd.pid ;;
    *) return 1 ;;
  esac
}

T0=${T0:-$(date +%s.%N)}
QUIET=${QUIET:-0}
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { [ "$QUIET" = 1 ] || echo "${PROG:-real-slurm}: $*" >&2; }

# The pid of a running daemon (pidfile, comm and a state that is not zombie/dead), else 1.
pid_of() { # name
  local pf p st
  pf=$(pidfile_of "$1") || return 1
  p=$( { tr -dc '0-9' < "$pf"; } 2>/dev/null) || return 1  # the pidfile may vanish meanwhile
  [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$1" ] || return 1
  [ "/proc/$p/root" -ef / ] || return 1  # same root directory (device and inode) as ours
  st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1)
  case "$st" in Z|X|x|"") return 1 ;; esac
  echo "$p"
}

# SIGTERM the daemon by its pid, wait for it (SIGKILL after $2 s), drop its pidfile
# (a stale /run/slurmctld.pid makes the slurmctld package's prerm fail).
stop_daemon() { # name [grace]
  local p pf n
  p=$(pid_of "$1") || return 0
  pf=$(pidfile_of "$1")
  log "stopping $1 (pid $p)"
  kill "$p" 2>/dev/null || true
  n=$(( ${2:-30} * 10 ))
  while [ "$n" -gt 0 ] && pid_of "$1" >/dev/null; do sleep 0.1; n=$((n - 1)); done
  if pid_of "$1" >/dev/null; then
    log "$1 (pid $p) ignored SIGTERM; sending SIGKILL"
    kill -9 "$p" 2>/dev/null || true
    sleep 0.3
  fi
  rm -f "$pf"
}

# Stop several daemons at once (each takes about 2 s after SIGTERM), then wait for all.
stop_daemons() { # name...
  local d
  for d in "$@"; do stop_daemon "$d" & done
  wait
}

wait_until() { # seconds description cmd...
  local secs=$1 what=$2 end
  shift 2
  end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.1
  done
  log "$what ($(elapsed)s)"
}

ctld_up() { scontrol ping 2>/dev/null | grep -q "is UP"; }
dbd_up() { sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1; }

# Starting one daemon. The daemons fork themselves; every stdio is redirected so that a
# caller that captures our output (subprocess with pipes) is never kept waiting, and they
# start in / so that none keeps the caller's folder busy (chroot.sh unmounts the checkout
# that the tests run from once they are done; the daemons keep running).
start_munged() {
  pid_of munged >/dev/null && return 0
  install -d -o munge -g munge -m 0755 /run/munge
  log "starting munged"
  ( cd / && { runuser -u munge -- /usr/sbin/munged < /dev/null >> "$LOGDIR/munged.out" 2>&1 \
      || runuser -u munge -- /usr/sbin/munged --force < /dev/null >> "$LOGDIR/munged.out" 2>&1; } ) \
    || return 1
}

start_mariadbd() {
  mariadb-admin ping >/dev/null 2>&1 && return 0
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >> "$LOGDIR/mariadbd.log" 2>&1
  log "starting mariadbd"
  ( cd / && setsid -f /usr/sbin/mariadbd --user=mysql < /dev/null >> "$LOGDIR/mariadbd.log" 2>&1 )
  mkdir -p "$MARKERS" && touch "$MARKERS/mariadbd.started"
  wait_until "${WAIT:-120}" "mariadbd answers" mariadb-admin ping
}

start_slurm_daemon() { # slurmdbd|slurmctld|slurmd
  pid_of "$1" >/dev/null && return 0
  log "starting $1"
  ( cd / && exec "/usr/sbin/$1" < /dev/null >> "$LOGDIR/$1.out" 2>&1 )
}

# Start slurmdbd and wait until it answers.
start_dbd_and_wait() {
  start_slurm_daemon slurmdbd || return 1
  wait_until "${WAIT:-120}" "slurmdbd answers" dbd_up
}

# Start slurmctld and wait until it answers pings.
start_ctld_and_wait() {
  start_slurm_daemon slurmctld || return 1
  wait_until "${WAIT:-120}" "slurmctld answers" ctld_up
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n 1; }
node_usable() { case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac; }

# Wait until the node takes jobs; a node that came back DOWN/DRAINED is resumed once.
wait_node_usable() { # seconds
  local end resumed=0 st
  end=$(( $(date +%s) + $1 ))
  until node_usable; do
    st=$(node_state)
    case "$st" in
      down*|drain*|fail*)
        if [ "$resumed" = 0 ]; then
          log "node is '$st'; resuming it"
          scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
          resumed=1
        fi ;;
    esac
    [ "$(date +%s)" -lt "$end" ] || return 1
    sleep 0.1
  done
  log "node is $(node_state) ($(elapsed)s)"
}

# Cancel every job of the cluster and wait until the controller forgets them running.
cancel_all_jobs() { # seconds
  local ids end
  ctld_up || return 0
  ids=$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')
  [ -n "${ids// /}" ] || return 0
  log "cancelling jobs: $ids"
  # shellcheck disable=SC2086
  scancel $ids 2>/dev/null || true
  end=$(( $(date +%s) + $1 ))
  while [ -n "$(squeue -h -o '%A' 2>/dev/null)" ]; do
    [ "$(date +%s)" -lt "$end" ] || { log "jobs still listed after ${1}s: $(squeue -h -o '%A|%T' | tr '\n' ' ')"; return 1; }
    sleep 0.2
  done
}

daemon_log_tails() {
  local f
  for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" "$LOGDIR/slurmdbd.log" \
           "$LOGDIR/slurmctld.out" "$LOGDIR/slurmd.out" "$LOGDIR/slurmdbd.out"; do
    [ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 12 "$f" >&2; }
  done
  return 0
}
