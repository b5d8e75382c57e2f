#!/usr/bin/env bash
# tests/real_slurm/setup.sh - a real single-node SLURM for autoexp's real-SLURM test tier.
#
# Installs the Debian/Ubuntu SLURM packages when missing, writes a cluster config tuned
# for test speed, starts munged, mariadbd, slurmdbd, slurmctld and slurmd by hand (no
# systemd needed) when they are not running, and waits until the node takes jobs and
# sacct answers. Then prints one line, "real-slurm: READY ...", on stdout; progress goes
# to stderr.
#
# Idempotent: packages are installed only when missing, config files rewritten only
# when their content changes (then the daemons reading them are restarted), daemons
# started only when not running. A second run changes nothing and takes about a second.
#
#   bash tests/real_slurm/setup.sh [--fresh] [--quiet]
#
#   --fresh  then cancel every job through SLURM (slurmd has re-attached to the job
#            steps of a previous run by then, so no job process survives), stop the
#            SLURM daemons, wipe slurmctld's and slurmd's state and the accounting
#            database, and start again (job ids restart at 1). Jobs that were running
#            when a daemon was killed do not come back cleanly (they end "launch failed
#            requeued held"): use --fresh then.
#   --quiet  no progress on stderr
#
# Exit codes: 0 ready; 1 the cluster could not be set up (reason and daemon log tails on
# stderr); 2 bad arguments; 3 refused: not root, or not Debian/Ubuntu with apt-get.
#
# Runs on Debian 12 (SLURM 22.05) and Debian 13 (SLURM 24.11), on the machine itself or in
# a chroot beside another cluster (tests/real_slurm/chroot.sh runs it in one, on other ports).
#
# Settings (environment):
#   AUTOEXP_SLURM_CPUS=8          CPUs the node advertises (more than the machine has:
#                                 a 4-task array runs at once on 2 cores)
#   AUTOEXP_SLURM_MIN_JOB_AGE=3   seconds a finished job stays in squeue (MinJobAge)
#   AUTOEXP_SLURM_MSG_TIMEOUT=4   MessageTimeout: with slurmctld down, squeue/sbatch fail
#                                 after about this long instead of 9 s
#   AUTOEXP_SLURM_CGROUP=auto     auto|yes|no: proctrack/cgroup + task/cgroup (cgroup v1
#                                 only; auto falls back when slurmd will not start)
#   AUTOEXP_SLURM_WAIT=120        seconds to wait for each daemon and the node
#   AUTOEXP_SLURM_CLUSTER=autoexp ClusterName
#   AUTOEXP_SLURM_CTLD_PORT=6817, AUTOEXP_SLURM_SLURMD_PORT=6818, AUTOEXP_SLURM_DBD_PORT=6819,
#   AUTOEXP_SLURM_DB_PORT=3306    the ports of slurmctld, slurmd, slurmdbd and MariaDB
#   AUTOEXP_SLURM_LOGDIR=/var/log/slurm, AUTOEXP_SLURM_CTLD_SPOOL=/var/spool/slurmctld,
#   AUTOEXP_SLURM_SLURMD_SPOOL=/var/spool/slurmd, AUTOEXP_SLURM_MARKERS=/var/lib/autoexp-real-slurm
#                                 where logs, state and this script's markers live
#   stop.sh and daemon.sh must be given the same settings.
#
# The companions: stop.sh (stop everything), daemon.sh (stop/start one daemon).
set -uo pipefail

PROG=real-slurm-setup
FRESH=0
QUIET=0
for a in "$@"; do
  case "$a" in
    --fresh) FRESH=1 ;;
    --quiet) QUIET=1 ;;
    -h|--help) sed -n '2,48p' "$0"; exit 0 ;;
    *) echo "$PROG: unknown argument: $a (see --help)" >&2; exit 2 ;;
  esac
done

refuse() { echo "$PROG: refused: $*" >&2; exit 3; }
[ "${EUID:-$(id -u)}" = 0 ] || refuse "must run as root (it installs packages and starts the SLURM daemons)"
os_ids=$( . /etc/os-release 2>/dev/null && echo "${ID:-} ${ID_LIKE:-}")
case " $os_ids " in
  *" debian "*|*" ubuntu "*) ;;
  *) refuse "needs Debian or Ubuntu (/etc/os-release says '${os_ids# }')" ;;
esac
command -v apt-get >/dev/null 2>&1 || refuse "needs apt-get, which is not on PATH"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

CPUS_WANTED=${AUTOEXP_SLURM_CPUS:-8}
MIN_JOB_AGE=${AUTOEXP_SLURM_MIN_JOB_AGE:-3}
MSG_TIMEOUT=${AUTOEXP_SLURM_MSG_TIMEOUT:-4}
CGROUP_MODE=${AUTOEXP_SLURM_CGROUP:-auto}
WAIT=${AUTOEXP_SLURM_WAIT:-120}
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)

die() {
  echo "$PROG: ERROR: $*" >&2
  daemon_log_tails
  exit 1
}

# ------------------------------------------------------------------ packages
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  aptlog=/var/log/autoexp-real-slurm-apt.log
  log "installing ${missing[*]} (apt-get log: $aptlog)"
  # no systemd here, and the package scripts must not start daemons through init.d
  policy_made=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && policy_made=1
  fi
  apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >> "$aptlog" 2>&1
  }
  ok=1
  if ! apt_install; then
    log "apt-get install failed; running apt-get update and trying again"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >> "$aptlog" 2>&1
    apt_install || ok=0
  fi
  [ "$policy_made" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$ok" = 1 ] || { tail -n 20 "$aptlog" >&2; die "apt-get install ${missing[*]} failed (see $aptlog)"; }
  log "packages installed ($(elapsed)s)"
fi
for c in munged mariadbd slurmdbd slurmctld slurmd; do
  [ -x "/usr/sbin/$c" ] || die "/usr/sbin/$c is missing although its package is installed"
done

# ------------------------------------------------------------------ host, folders, munge key
HOST=$(hostname -s 2>/dev/null || hostname)
[ -n "$HOST" ] || die "this machine has no host name"
# NodeName must be the short host name; resolve it locally so nothing depends on DNS
if ! awk -v h="$HOST" '$1 !~ /^#/ { for (i = 2; i <= NF; i++) if ($i == h) f = 1 } END { exit !f }' /etc/hosts; then
  log "adding '127.0.0.1 $HOST' to /etc/hosts"
  echo "127.0.0.1 $HOST" >> /etc/hosts
fi
mkdir -p "$MARKERS"
install -d -o slurm -g slurm -m 0755 "$LOGDIR" "$CTLD_SPOOL"
install -d -o root -g root -m 0755 "$SLURMD_SPOOL" /etc/slurm
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating the munge key"
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 0600 /etc/munge/munge.key

# ------------------------------------------------------------------ configs
# "slurm 22.05.8", "slurm 24.11.5": the daemons say so without a configuration (the
# clients of 24.11 need one), so this works before the first slurm.conf is written
VERSION=$(slurmctld -V 2>/dev/null | awk '{print $2; exit}')
[ -n "$VERSION" ] || die "'slurmctld -V' printed no version"
VMAJOR=${VERSION%%.*}
# "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
HW=$(slurmd -C 2>/dev/null | head -n 1)
HW_CPUS=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$HW")
HW_MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$HW")
[ -n "$HW_CPUS" ] && [ -n "$HW_MEM" ] || die "cannot read the hardware from 'slurmd -C': $HW"
MEM=$(( HW_MEM * 95 / 100 ))  # below MemTotal, or the node drains for "Low RealMemory"
if [ -n "$CPUS_WANTED" ] && [ "$CPUS_WANTED" != "$HW_CPUS" ]; then
  # advertise more CPUs than exist: slurmd must not correct them from the hardware
  NODE_HW="CPUs=$CPUS_WANTED"; CPUS=$CPUS_WANTED; SLURMD_PARAMS="SlurmdParameters=config_overrides"
else
  NODE_HW=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//' <<<"$HW"); CPUS=$HW_CPUS; SLURMD_PARAMS=""
fi
DEFMEM=$(( MEM / CPUS )); [ "$DEFMEM" -gt 2048 ] && DEFMEM=2048

cgroup_v1_usable() {
  [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ] || return 1
  [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ] && [ -d /sys/fs/cgroup/freezer ] || return 1
  local probe=/sys/fs/cgroup/memory/autoexp_real_slurm_probe.$$
  mkdir "$probe" 2>/dev/null && rmdir "$probe"
}
case "$CGROUP_MODE" in
  yes) USE_CGROUP=1 ;;
  no) USE_CGROUP=0 ;;
  auto) if [ ! -e "$MARKERS/cgroup-broken" ] && cgroup_v1_usable; then USE_CGROUP=1; else USE_CGROUP=0; fi ;;
  *) echo "$PROG: AUTOEXP_SLURM_CGROUP must be auto, yes or no" >&2; exit 2 ;;
esac

slurm_conf() {
  local proctrack=proctrack/linuxproc task=task/none memkill=OverMemoryKill
  [ "$USE_CGROUP" = 1 ] && { proctrack=proctrack/cgroup; task=task/cgroup; memkill=NoOverMemoryKill; }
  cat <<EOF
# Written by autoexp's tests/real_slurm/setup.sh: a one-node test cluster, tuned for speed.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=slurm
AuthType=auth/munge
MpiDefault=none
ProctrackType=$proctrack
TaskPlugin=$task
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=5
JobAcctGatherParams=$memkill
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SchedulerType=sched/backfill
# start a submitted batch job at once, not on the next 3-second tick
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEFMEM
# finished jobs leave squeue soon; clients give up soon when slurmctld is away
MinJobAge=$MIN_JOB_AGE
MessageTimeout=$MSG_TIMEOUT
KillWait=2
InactiveLimit=0
Waittime=0
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# sacct shows --comment (autoexp's tag) only with this flag
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
$SLURMD_PARAMS
NodeName=$HOST NodeAddr=127.0.0.1 $NODE_HW RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

slurmdbd_conf() {
  cat <<EOF
# Written by autoexp's tests/real_slurm/setup.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

# slurmd loads a cgroup plugin even with proctrack/linuxproc and task/none. Without a
# cgroup.conf it autodetects one, and 24.11's slurmd then dies where no cgroup filesystem is
# mounted (a chroot with a fresh sysfs): "No filesystem mounted on /sys/fs/cgroup". So the
# plugin is always named: cgroup/v1 when the cgroup plugins are used, else "disabled" (new
# in 24.05; 22.05 and 23.x do not know it, and 22.05 starts fine with cgroup/v1 there).
cgroup_conf() {
  if [ "$USE_CGROUP" = 1 ]; then
    printf 'CgroupPlugin=cgroup/v1\nConstrainCores=no\nConstrainRAMSpace=yes\nConstrainSwapSpace=no\n'
  elif [ "${VMAJOR:-0}" -ge 24 ] 2>/dev/null; then
    printf 'CgroupPlugin=disabled\n'
  else
    printf 'CgroupPlugin=cgroup/v1\n'
  fi
}

mariadb_cnf() {
  printf '[mysqld]\nport=%s\nbind-address=127.0.0.1\ninnodb_buffer_pool_size=256M\ninnodb_log_file_size=64M\n' "$DB_PORT"
  printf 'innodb_lock_wait_timeout=900\nmax_allowed_packet=16M\n[client]\nport=%s\n' "$DB_PORT"
}

# Replace the file only when the content differs; true when it was written.
write_if_changed() { # path mode owner  (content on stdin)
  local tmp
  tmp=$(mktemp)
  cat > "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1" && [ "$(stat -c '%a %U' "$1")" = "$2 $3" ]; then
    rm -f "$tmp"; return 1
  fi
  install -m "$2" -o "$3" -g "$3" "$tmp" "$1"
  rm -f "$tmp"
  log "wrote $1"
}

SLURM_CHANGED=0; DBD_CHANGED=0; MARIADB_CHANGED=0
write_config_files() {
  slurm_conf | write_if_changed "$SLURM_CONF" 644 root && SLURM_CHANGED=1
  cgroup_conf | write_if_changed "$CGROUP_CONF" 644 root && SLURM_CHANGED=1
  slurmdbd_conf | write_if_changed "$SLURMDBD_CONF" 600 slurm && DBD_CHANGED=1
  mariadb_cnf | write_if_changed "$MARIADB_CNF" 644 root && MARIADB_CHANGED=1
  return 0
}
write_config_files

# ------------------------------------------------------------------ munge, mariadb
start_munged || die "munged did not start (see /var/log/munge/munged.log)"
wait_until 20 "munge works" sh -c 'munge -n | unmunge' || die "munge does not work"

if [ "$MARIADB_CHANGED" = 1 ] && [ -e "$MARKERS/mariadbd.started" ]; then
  stop_daemon mariadbd
fi
start_mariadbd || die "mariadbd did not start (see $LOGDIR/mariadbd.log)"

# The accounting database and its user, made before every start of slurmdbd (also after
# --fresh dropped the database): slurmdbd 24.11 with Debian 13's libmariadb 3.4 dies on
# its first start when it has to create the database itself (it reconnects on the same
# handle, whose next query fails with error 5027, then "fatal: _check_mysql_concat_is_sane").
ensure_database() {
  mariadb -e "CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
              CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
              ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';"
}

# ------------------------------------------------------------------ slurmdbd, slurmctld, slurmd
start_ctld_slurmd() {
  if [ "$SLURM_CHANGED" = 1 ]; then
    stop_daemons slurmd slurmctld
    SLURM_CHANGED=0
  fi
  start_ctld_and_wait || return 1
  start_slurm_daemon slurmd || return 1
  wait_until 10 "slurmd runs" pid_of slurmd
}

start_slurm() {
  if [ "$DBD_CHANGED" = 1 ]; then stop_daemon slurmdbd; DBD_CHANGED=0; fi
  ensure_database || die "cannot create the accounting database $DB_NAME and its user $DB_USER"
  start_dbd_and_wait || die "slurmdbd does not answer"
  if ! start_ctld_slurmd; then
    if [ "$USE_CGROUP" = 1 ] && [ "$CGROUP_MODE" = auto ]; then
      log "slurmd did not start with the cgroup plugins; using proctrack/linuxproc and task/none"
      touch "$MARKERS/cgroup-broken"
      USE_CGROUP=0
      write_config_files
      start_ctld_slurmd || die "slurmd did not start"
    else
      die "slurmctld or slurmd did not start"
    fi
  fi
  wait_node_usable "$WAIT" || die "node $HOST does not take jobs (state '$(node_state)')"
}

start_slurm

# ------------------------------------------------------------------ --fresh
# Jobs are cancelled through the running cluster (slurmd has just re-attached to the job
# steps of any previous run, from its spool folder), so that no job process outlives the
# wipe; only then are the daemons stopped and their state and the accounting DB dropped.
if [ "$FRESH" = 1 ]; then
  log "--fresh: cancelling every job, then wiping slurmctld/slurmd state and the accounting DB"
  cancel_all_jobs 30 || log "some jobs did not end; wiping anyway"
  wait_until 30 "no job step left on the node" sh -c "! ls $SLURMD_SPOOL/${HOST}_* >/dev/null 2>&1" \
    || log "job steps still on the node: $(cd "$SLURMD_SPOOL" && echo "${HOST}"_*)"
  stop_daemons slurmd slurmctld slurmdbd
  rm -rf "${CTLD_SPOOL:?}"/* "${SLURMD_SPOOL:?}"/*
  mariadb -e "DROP DATABASE IF EXISTS \`$DB_NAME\`" || die "cannot drop the accounting database $DB_NAME"
  start_slurm
fi

# ------------------------------------------------------------------ accounting
wait_until "$WAIT" "cluster '$CLUSTER' registered in slurmdbd" \
  sh -c "sacctmgr -n -P show cluster format=cluster | grep -qx '$CLUSTER'" \
  || die "cluster $CLUSTER never registered in slurmdbd"
wait_until "$WAIT" "sacct answers" sacct -n -X -j 1 || die "sacct does not answer"

pids=""
for d in munged mariadbd slurmdbd slurmctld slurmd; do pids="$pids $d=$(pid_of "$d" || echo '?')"; done
echo "real-slurm: READY slurm=$VERSION cluster=$CLUSTER node=$HOST state=$(node_state)" \
     "ports=ctld:$CTLD_PORT,slurmd:$SLURMD_PORT,dbd:$DBD_PORT,mariadb:$DB_PORT" \
     "cpus=$CPUS mem=${MEM}M cgroup=$([ "$USE_CGROUP" = 1 ] && echo v1 || echo none)" \
     "min_job_age=$MIN_JOB_AGE message_timeout=$MSG_TIMEOUT$pids took=$(elapsed)s"
