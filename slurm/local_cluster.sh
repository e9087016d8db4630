#!/usr/bin/env bash
# A real Slurm cluster on one Debian 12 machine, for tests and the demo (no systemd needed):
#   munged, MariaDB + slurmdbd (accounting, so sacct and submitit's job states are real), slurmctld,
#   and NODES slurmd daemons (node1..nodeN, all on 127.0.0.1, one port each).
# Idempotent: only what is not running is started; a changed slurm.conf restarts the Slurm daemons
# (controller state is kept so job ids keep growing and never collide with old sacct records).
# On a real cluster none of this runs: jobs use the site's Slurm.
#
# Usage: bash slurm/local_cluster.sh start|stop|status      (start and stop need root)
# Env:   NODES=2  CPUS_PER_NODE=$(nproc)  MEM_PER_NODE=<80% of RAM / NODES, MB>  GPUS_PER_NODE=0 (fake gres)
#        PARTITION=debug  READY_TIMEOUT_S=60
set -euo pipefail

ACTION=${1:-}
NODES=${NODES:-2}
CPUS_PER_NODE=${CPUS_PER_NODE:-$(nproc)}
TOTAL_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
MEM_PER_NODE=${MEM_PER_NODE:-$(( TOTAL_MB * 8 / 10 / NODES ))}
GPUS_PER_NODE=${GPUS_PER_NODE:-0}
PARTITION=${PARTITION:-debug}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-60}

PACKAGES="slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
RUN_DIR=/run/slurm
CONF_DIR=/etc/slurm
SPOOL_CTLD=/var/spool/slurmctld
SPOOL_D=/var/spool/slurmd
LOG_DIR=/var/log/slurm
NODE_BASE_PORT=17000
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurm-local
T0=$(date +%s)

say() { echo "[local_cluster +$(( $(date +%s) - T0 ))s] $*"; }
die() { echo "local_cluster: $*" >&2; exit 1; }

# running PIDFILE NAME: the pid file names a live process called NAME.
# PID 1 on these machines does not reap orphans, so a killed daemon can linger as a zombie: not running.
running() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ] \
    && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

stop_daemon() {  # PIDFILE NAME
  if running "$1" "$2"; then
    kill "$(cat "$1")"
    for _ in $(seq 1 100); do running "$1" "$2" || break; sleep 0.1; done
    running "$1" "$2" && kill -9 "$(cat "$1")"
  fi
  rm -f "$1"
}

# wait_running PIDFILE NAME: daemons write their pid file after forking; wait for it (slurmctld may not notice a
# restarted slurmd at all, so the readiness check below cannot be relied on for this)
wait_running() {
  for _ in $(seq 1 100); do running "$1" "$2" && return 0; sleep 0.1; done
  die "$2 did not start (no live process in $1); see $LOG_DIR/"
}

node_range() { if [ "$NODES" -eq 1 ]; then echo node1; else echo "node[1-$NODES]"; fi; }

stop_slurm_daemons() {
  local pf
  for pf in "$RUN_DIR"/slurmd-*.pid; do [ -e "$pf" ] && stop_daemon "$pf" slurmd; done
  stop_daemon "$RUN_DIR/slurmctld.pid" slurmctld
}

db_up() { mysqladmin ping >/dev/null 2>&1; }

cmd_stop() {
  [ "$(id -u)" -eq 0 ] || die "stop needs root"
  stop_slurm_daemons
  stop_daemon "$RUN_DIR/slurmdbd.pid" slurmdbd
  if [ -x /etc/init.d/mariadb ] && db_up; then /etc/init.d/mariadb stop >/dev/null; fi
  stop_daemon /run/munge/munged.pid munged
  say "stopped"
}

cmd_status() {
  local pf rc=0
  for d in "/run/munge/munged.pid munged" "$RUN_DIR/slurmdbd.pid slurmdbd" "$RUN_DIR/slurmctld.pid slurmctld"; do
    set -- $d
    if running "$1" "$2"; then echo "$2: running (pid $(cat "$1"))"; else echo "$2: not running"; rc=1; fi
  done
  for pf in "$RUN_DIR"/slurmd-*.pid; do
    [ -e "$pf" ] || continue
    if running "$pf" slurmd; then echo "$(basename "$pf" .pid): running (pid $(cat "$pf"))"
    else echo "$(basename "$pf" .pid): not running"; rc=1; fi
  done
  if db_up; then echo "mariadb: running"; else echo "mariadb: not running"; rc=1; fi
  command -v sinfo >/dev/null && sinfo 2>&1 || true
  return $rc
}

install_packages() {
  local missing="" p
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  say "installing Debian packages:$missing"
  apt-get update -qq >/dev/null
  # postinst scripts try to start services through invoke-rc.d; without an init system that is refused, harmlessly
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  if ! running /run/munge/munged.pid munged; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged
    say "munged started"
  fi
  munge -n | unmunge >/dev/null || die "munge self-test failed (see /var/log/munge/munged.log)"
}

# install_if_changed NEW DEST MODE: returns 0 if DEST was replaced
install_if_changed() {
  if cmp -s "$1" "$2"; then rm -f "$1"; return 1; fi
  install -m "$3" "$1" "$2"; rm -f "$1"; return 0
}

start_accounting() {
  if ! db_up; then
    /etc/init.d/mariadb start >/dev/null || die "MariaDB did not start (see /var/log/mysql/)"
    say "mariadb started"
  fi
  mysql -u root -e "CREATE DATABASE IF NOT EXISTS $DB_NAME;
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost'; FLUSH PRIVILEGES;"
  local new; new=$(mktemp)
  cat > "$new" <<EOF
# written by slurm/local_cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
  if install_if_changed "$new" "$CONF_DIR/slurmdbd.conf" 600; then stop_daemon "$RUN_DIR/slurmdbd.pid" slurmdbd; fi
  if ! running "$RUN_DIR/slurmdbd.pid" slurmdbd; then
    slurmdbd
    # the first start creates the tables (several seconds); sacctmgr answers once it listens
    for _ in $(seq 1 150); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.2; done
    say "slurmdbd started"
  fi
}

write_slurm_conf() {  # returns 0 if the config changed
  local new; new=$(mktemp)
  {
    cat <<EOF
# written by slurm/local_cluster.sh (NODES=$NODES CPUS_PER_NODE=$CPUS_PER_NODE MEM_PER_NODE=$MEM_PER_NODE GPUS_PER_NODE=$GPUS_PER_NODE)
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SPOOL_CTLD
SlurmdSpoolDir=$SPOOL_D/%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldPort=6817
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# fake nodes may claim more CPUs than the machine has
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# a stage whose afterok parent failed is cancelled (reason DependencyNeverSatisfied) instead of pending forever;
# since Slurm 21.08 this lives in DependencyParameters (SchedulerParameters=kill_invalid_depend is ignored)
DependencyParameters=kill_invalid_depend
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
EOF
    local gres="" ports=$(( NODE_BASE_PORT + 1 ))
    [ "$NODES" -gt 1 ] && ports="$ports-$(( NODE_BASE_PORT + NODES ))"
    if [ "$GPUS_PER_NODE" -gt 0 ]; then echo "GresTypes=gpu"; gres=" Gres=gpu:$GPUS_PER_NODE"; fi
    echo "NodeName=$(node_range) NodeHostname=localhost NodeAddr=127.0.0.1 Port=$ports CPUs=$CPUS_PER_NODE RealMemory=$MEM_PER_NODE$gres State=UNKNOWN"
    echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } > "$new"
  if [ "$GPUS_PER_NODE" -gt 0 ]; then
    # gres needs File= entries that exist; plain files do (scheduling works, no devices are bound)
    mkdir -p "$SPOOL_D/fakegpu"
    for g in $(seq 0 $(( GPUS_PER_NODE - 1 ))); do touch "$SPOOL_D/fakegpu/gpu$g"; done
    printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/fakegpu/gpu[0-%d]\n' \
      "$(node_range)" "$SPOOL_D" $(( GPUS_PER_NODE - 1 )) > "$CONF_DIR/gres.conf"
  else
    rm -f "$CONF_DIR/gres.conf"
  fi
  install_if_changed "$new" "$CONF_DIR/slurm.conf" 644
}

add_host_names() {
  # node names must resolve: multi-node jobs use the first node's name as the rendezvous address
  local i
  for i in $(seq 1 "$NODES"); do
    getent hosts "node$i" >/dev/null || echo "127.0.0.1 node$i" >> /etc/hosts
  done
}

wait_until_ready() {
  local states="" deadline=$(( $(date +%s) + READY_TIMEOUT_S ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    states=$(sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')
    case "$states" in
      "") ;;
      *down*|*drain*|*fail*) scontrol update nodename="$(node_range)" state=resume >/dev/null 2>&1 || true ;;
      *'*'*|*unknown*|*not_responding*) ;;
      *) if [ "$(sinfo -h -N -p "$PARTITION" -o '%N' | sort -u | wc -l)" -eq "$NODES" ]; then
           say "ready: $NODES nodes ($states)"; return 0
         fi ;;
    esac
    sleep 0.3
  done
  sinfo -N >&2 || true
  die "nodes not ready after ${READY_TIMEOUT_S}s (states: ${states:-none}); see $LOG_DIR/"
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "start needs root (it installs packages and starts daemons)"
  [ "$NODES" -ge 1 ] 2>/dev/null || die "NODES must be a positive integer, got '$NODES'"
  install_packages
  mkdir -p "$RUN_DIR" "$SPOOL_CTLD" "$SPOOL_D" "$LOG_DIR"
  start_munge
  start_accounting
  if write_slurm_conf; then
    say "slurm.conf changed: restarting the Slurm daemons (controller state kept)"
    stop_slurm_daemons
  fi
  add_host_names
  if ! running "$RUN_DIR/slurmctld.pid" slurmctld; then
    slurmctld; wait_running "$RUN_DIR/slurmctld.pid" slurmctld; say "slurmctld started"
  fi
  local i
  for i in $(seq 1 "$NODES"); do
    mkdir -p "$SPOOL_D/node$i"
    if ! running "$RUN_DIR/slurmd-node$i.pid" slurmd; then
      slurmd -N "node$i"; wait_running "$RUN_DIR/slurmd-node$i.pid" slurmd; say "slurmd node$i started"
    fi
  done
  wait_until_ready
}

case "$ACTION" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status   (env NODES=$NODES)" >&2; exit 2 ;;
esac
