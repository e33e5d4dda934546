#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost, to try `--launcher slurm` on a laptop and for CI.
# Debian/Ubuntu, run as root. Idempotent: a daemon whose recorded PID is alive is left as it is.
#
#   bash slurm/start_local_slurm.sh      # then: python -m benchmark run ... --launcher slurm --slurm-profile local
#   bash slurm/stop_local_slurm.sh       # stops exactly the daemons this script started (by recorded PID)
#
# Environment:
#   SLURM_LOCAL_PIDDIR=DIR      where the PIDs of the started daemons are recorded (default /run/dfkd-local-slurm)
#   SLURM_LOCAL_ACCOUNTING=1|0  1 (default): MariaDB + slurmdbd as well, so that `sacct` works (submitit and
#                               `benchmark status` read job states from it); 0: lighter, squeue only
#   SLURM_LOCAL_CPUS=N          CPUs the node advertises (default: nproc); N > nproc oversubscribes
#
# Pitfalls this handles: there is no systemd in containers, so the daemons are started by hand; munge needs
# its key and run dir; `cred_expire` and the scheduler intervals are shortened so that a requeued job starts
# again within seconds (SLURM holds a requeued batch job for about cred_expire seconds); everything is bound
# to 127.0.0.1 (MariaDB listens on its unix socket only). A daemon already running that this script did not
# start (e.g. from another copy of this recipe) is used but not recorded, so the stop script leaves it alone.
set -euo pipefail
ACCT=${SLURM_LOCAL_ACCOUNTING:-1}
PIDDIR=${SLURM_LOCAL_PIDDIR:-/run/dfkd-local-slurm}
NCPU=$(nproc); CPUS=${SLURM_LOCAL_CPUS:-$NCPU}
HN=$(hostname -s)
MEM=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
t0=$EPOCHREALTIME
log() { echo "[local-slurm $(awk -v a="$EPOCHREALTIME" -v b="$t0" 'BEGIN{printf "%5.1f", a-b}')s] $*"; }
# alive NAME [PIDFILE]: the PID in PIDFILE (default: our record) is running and is NAME
alive() { local f=${2:-$PIDDIR/$1.pid}; [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null \
          && [[ $(cat /proc/"$(cat "$f")"/comm 2>/dev/null) == "$1" ]]; }
wait_for() { local n=$1; shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
             echo "timeout waiting for: $*" >&2; return 1; }
# start_daemon NAME SYSTEM_PIDFILE CMD...: start unless running; record the PID only when we started it
start_daemon() {
  local name=$1 sysfile=$2; shift 2
  if alive "$name"; then log "$name pid $(cat "$PIDDIR/$name.pid") (already running)"; return 0; fi
  if alive "$name" "$sysfile"; then log "$name pid $(cat "$sysfile") (running, not started by us: left alone)"; return 0; fi
  "$@"
  wait_for 60 alive "$name" "$sysfile" || { echo "$name did not start; see /var/log/slurm/ or the daemon's log" >&2; return 1; }
  cp "$sysfile" "$PIDDIR/$name.pid"
  log "$name pid $(cat "$PIDDIR/$name.pid") (started)"
}

# 1. packages
PKGS="slurmctld slurmd slurm-client munge"; [[ $ACCT == 1 ]] && PKGS+=" slurmdbd mariadb-server"
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  log "installing $PKGS"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
fi
log "packages ok (slurm $(dpkg-query -W -f='${Version}' slurmctld))"

# 2. configuration
mkdir -p "$PIDDIR" /etc/slurm /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
if [[ ! -s /etc/munge/munge.key ]]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
EXTRA=""; (( CPUS > NCPU )) && EXTRA="SlurmdParameters=config_overrides"
if [[ $ACCT == 1 ]]; then
  ACCTCONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none"
else
  ACCTCONF="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.txt"
fi
NEWCONF=$(cat <<CONF
# written by slurm/start_local_slurm.sh (dfkd benchmark): a one-node cluster on 127.0.0.1
ClusterName=localcluster
SlurmctldHost=${HN}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
${ACCTCONF}
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=300
${EXTRA}
NodeName=${HN} NodeAddr=127.0.0.1 NodeHostname=${HN} CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HN} Default=YES MaxTime=INFINITE State=UP
CONF
)
if [[ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$NEWCONF" ]]; then
  echo "$NEWCONF" > /etc/slurm/slurm.conf
  alive slurmctld /run/slurmctld.pid && echo "WARNING: slurm.conf changed while slurmctld runs; run the stop script, then this one" >&2
fi
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=${HN}
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
CONF
chmod 600 /etc/slurm/slurmdbd.conf

# 3. daemons, in dependency order
start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged --force
if [[ $ACCT == 1 ]]; then
  install -d -o mysql -g root -m 0755 /run/mysqld
  [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  start_daemon mariadbd /run/mysqld/mysqld.pid bash -c 'setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
      --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid --innodb-buffer-pool-size=256M \
      --innodb-lock-wait-timeout=900 --log-error=/var/lib/mysql/local-slurm.err </dev/null >/dev/null 2>&1 &'
  wait_for 60 mariadb -e 'select 1'
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  start_daemon slurmdbd /run/slurmdbd.pid slurmdbd
  wait_for 60 sacctmgr -n show cluster
  sacctmgr -n -P show cluster format=cluster | grep -qx localcluster || sacctmgr -i add cluster localcluster >/dev/null
fi
start_daemon slurmctld /run/slurmctld.pid slurmctld
wait_for 60 bash -c 'scontrol ping | grep -q UP'
start_daemon slurmd /run/slurmd.pid slurmd
node_ok() { sinfo -h -N -n "$HN" -o %T | grep -qE '^(idle|mixed|allocated|completing)'; }
if ! wait_for 40 node_ok; then scontrol update NodeName="$HN" State=RESUME || true; wait_for 20 node_ok; fi
sinfo
log "cluster ready; PIDs recorded in $PIDDIR: $(cd "$PIDDIR" && for f in *.pid; do [[ -e $f ]] && printf '%s=%s ' "${f%.pid}" "$(cat "$f")"; done)"
