#!/usr/bin/env bash
# Bring up ck_dagster's test cluster: a real single-node SLURM 22.05 on this machine
# (Debian bookworm, as root, no systemd): munged, mariadb + slurmdbd (so `sacct` works),
# slurmctld and slurmd, with fake GPUs as gres.
#
# Preemption: PreemptType=preempt/partition_prio is set, so a test adds a higher-priority
# partition at run time (`scontrol create PartitionName=urgent PriorityTier=10 ...`, and debug's
# PreemptMode=CANCEL so that its preempted jobs end PREEMPTED), then deletes it: see the
# `preemptor` fixture in ck_dagster_tests/assets/test_resume.py. Not here for good: sinfo lists
# every partition to root, Hidden=YES or not, which would change the preflight's messages.
#
# Safe to run again: installs only missing packages, rewrites the config only when it changed
# (then restarts slurmctld/slurmd), starts only daemons that are down, and returns once the node
# accepts jobs. Jobs already queued or running survive a re-run with an unchanged config.
#
# Knobs (environment):
#   CK_SLURM_GPUS=4            fake GPUs on the node (gres gpu:N backed by /dev/fakegpuN); 0 = none
#   CK_SLURM_CPUS=64           CPUs the node advertises (SlurmdParameters=config_overrides)
#   CK_SLURM_MEM_MB=409600     memory the node advertises (400G: 40G/80G/320G requests fit)
#   CK_SLURM_FEATURES=gpu80    node features for --constraint
#   CK_SLURM_ACCOUNTING=slurmdbd   slurmdbd (mariadb, sacct works) or none
#   CK_SLURM_CGROUP=auto       yes/no/auto: task/cgroup with ConstrainRAMSpace (a job over --mem
#                              ends OUT_OF_MEMORY); auto = yes when the cgroup-v1 memory controller
#                              accepts a new group here
#   CK_SLURM_CRED_EXPIRE=10    seconds a requeued job waits before it may start again (SLURM's
#                              default is 120)
#   CK_SLURM_READY_TIMEOUT=60  seconds to wait for the node to accept jobs
set -euo pipefail

GPUS=${CK_SLURM_GPUS:-4}
CPUS=${CK_SLURM_CPUS:-64}
MEM_MB=${CK_SLURM_MEM_MB:-409600}
FEATURES=${CK_SLURM_FEATURES:-gpu80}
ACCOUNTING=${CK_SLURM_ACCOUNTING:-slurmdbd}
CGROUP=${CK_SLURM_CGROUP:-auto}
CRED_EXPIRE=${CK_SLURM_CRED_EXPIRE:-10}
READY_TIMEOUT=${CK_SLURM_READY_TIMEOUT:-60}

ETC=/etc/slurm
LOGS=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CLUSTER=ck
DB_PASSWORD=ck-slurm-local   # mariadb listens on 127.0.0.1 only

started_at=$(date +%s.%N)
say() { printf '[local-slurm %s] %s\n' "$(date +%T)" "$*"; }
fail() { printf '[local-slurm] ERROR: %s\n' "$*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# running_pid PIDFILE COMM: print the pid when that process is alive and really is COMM.
running_pid() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

# wait_for SECONDS COMMAND...: retry COMMAND every 0.1 s until it succeeds or time runs out.
wait_for() {
  local tries=$(($1 * 10)); shift
  while ! "$@" >/dev/null 2>&1; do
    tries=$((tries - 1)); [ "$tries" -gt 0 ] || return 1
    sleep 0.1
  done
}

[ "$(id -u)" = 0 ] || fail "run me as root (I install packages and start daemons)"
case "$ACCOUNTING" in slurmdbd|none) ;; *) fail "CK_SLURM_ACCOUNTING must be slurmdbd or none";; esac

# --- packages ---------------------------------------------------------------------------------
packages=(slurmctld slurmd slurm-client munge)
[ "$ACCOUNTING" = slurmdbd ] && packages+=(slurmdbd mariadb-server)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  t=$(date +%s.%N)
  # No systemd here: keep the packages' postinst from starting services we start ourselves.
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy_added=1
  fi
  rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  } >/tmp/ck-local-slurm-apt.log 2>&1 || rc=$?
  [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || { tail -n 30 /tmp/ck-local-slurm-apt.log >&2; fail "apt-get install failed"; }
  say "installed in $(since "$t")s"
fi

# --- this machine -----------------------------------------------------------------------------
node=$(hostname -s)
getent hosts "$node" >/dev/null || { say "adding $node to /etc/hosts"; echo "127.0.0.1 $node" >>/etc/hosts; }

if [ "$CGROUP" = auto ]; then
  CGROUP=no
  probe=/sys/fs/cgroup/memory/ck-local-slurm-probe.$$
  if mkdir "$probe" 2>/dev/null; then rmdir "$probe"; CGROUP=yes; fi
fi
if [ "$CGROUP" = yes ]; then
  task_plugin=task/cgroup
  over_memory=""
else  # without cgroups an over-memory job is killed by the accounting poller and ends FAILED
  task_plugin=task/none
  over_memory=JobAcctGatherParams=OverMemoryKill
fi

mkdir -p "$ETC" "$LOGS" "$CTLD_SPOOL" "$SLURMD_SPOOL" /run/munge
chown munge:munge /run/munge

# --- configuration ----------------------------------------------------------------------------
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT

gres_types="" node_gres=""
if [ "$GPUS" -gt 0 ]; then gres_types=GresTypes=gpu; node_gres="Gres=gpu:$GPUS"; fi
node_features=""; [ -n "$FEATURES" ] && node_features="Feature=$FEATURES"
if [ "$ACCOUNTING" = slurmdbd ]; then
  accounting_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
  accounting_lines=AccountingStorageType=accounting_storage/none
fi

cat >"$staging/slurm.conf" <<EOF
# Written by ck_dagster scripts/local-slurm/start.sh; edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$node
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=$task_plugin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=1000
SchedulerType=sched/backfill
# Start jobs as soon as they are queued; pick up requeued jobs within seconds of their begin time.
SchedulerParameters=batch_sched_delay=0,sched_interval=10,bf_interval=5
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=86400
MaxJobCount=200000
KillWait=5
InactiveLimit=0
Waittime=0
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
$over_memory
$accounting_lines
$gres_types
NodeName=$node CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM_MB $node_gres $node_features State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$node MaxTime=INFINITE State=UP
PartitionName=nomig Nodes=$node MaxTime=INFINITE State=UP
EOF

# slurmd accepts only character or block devices as gres files: /dev/fakegpuN are /dev/null twins.
echo AutoDetect=off >"$staging/gres.conf"
for ((i = 0; i < GPUS; i++)); do
  [ -c "/dev/fakegpu$i" ] || mknod -m 666 "/dev/fakegpu$i" c 1 3
  echo "NodeName=$node Name=gpu File=/dev/fakegpu$i" >>"$staging/gres.conf"
done

cat >"$staging/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainDevices=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
EOF

cat >"$staging/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
LogFile=$LOGS/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF

config_changed=0
for f in slurm.conf gres.conf cgroup.conf slurmdbd.conf; do
  if ! cmp -s "$staging/$f" "$ETC/$f"; then install -m 644 "$staging/$f" "$ETC/$f"; config_changed=1; fi
done
chmod 600 "$ETC/slurmdbd.conf"
say "node $node: CPUs=$CPUS RealMemory=${MEM_MB}MB ${node_gres:-no gres} ${node_features}; $task_plugin; accounting=$ACCOUNTING"

# --- munge ------------------------------------------------------------------------------------
munge_works() { munge -n | unmunge; }
if [ ! -s /etc/munge/munge.key ]; then
  say "creating the munge key"
  mungekey --create --force --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
if ! munge_works >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --force
  wait_for 5 munge_works || fail "munged does not answer"
fi

# --- accounting: mariadb + slurmdbd -----------------------------------------------------------
if [ "$ACCOUNTING" = slurmdbd ]; then
  if ! mariadb-admin ping >/dev/null 2>&1; then
    say "starting mariadbd"
    mkdir -p /run/mysqld /var/log/mysql; chown mysql:mysql /run/mysqld /var/log/mysql
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
      --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
      --log-error=/var/log/mysql/error.log </dev/null >/dev/null 2>&1 &
    wait_for 30 mariadb-admin ping || fail "mariadb did not start; see /var/log/mysql/error.log"
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  if ! running_pid /run/slurmdbd.pid slurmdbd >/dev/null; then
    say "starting slurmdbd"
    slurmdbd
  fi
  wait_for 30 sacctmgr -n show cluster || { tail -n 20 "$LOGS/slurmdbd.log" >&2; fail "slurmdbd does not answer"; }
  sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

# --- slurmctld + slurmd -----------------------------------------------------------------------
stop_daemon() {  # PIDFILE COMM
  local pid
  pid=$(running_pid "$1" "$2") || return 0
  kill "$pid"
  wait_for 10 test ! -d "/proc/$pid" || kill -9 "$pid" 2>/dev/null || true
}
if [ "$config_changed" = 1 ]; then
  if running_pid /run/slurmctld.pid slurmctld >/dev/null || running_pid /run/slurmd.pid slurmd >/dev/null; then
    say "configuration changed: restarting slurmctld and slurmd"
    stop_daemon /run/slurmd.pid slurmd
    stop_daemon /run/slurmctld.pid slurmctld
  fi
fi
if ! running_pid /run/slurmctld.pid slurmctld >/dev/null; then
  say "starting slurmctld"
  slurmctld || { tail -n 20 "$LOGS/slurmctld.log" >&2; fail "slurmctld did not start"; }
fi
if ! running_pid /run/slurmd.pid slurmd >/dev/null; then
  say "starting slurmd"
  slurmd || { tail -n 20 "$LOGS/slurmd.log" >&2; fail "slurmd did not start"; }
fi

# --- wait until the node takes jobs -----------------------------------------------------------
state="" resumed=0 deadline=$(($(date +%s) + READY_TIMEOUT))
while [ "$(date +%s)" -le "$deadline" ]; do
  state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n 1 || true)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    *drain*|*down*|*fail*)
      [ "$resumed" = 1 ] || scontrol update nodename="$node" state=resume 2>/dev/null || true
      resumed=1 ;;
  esac
  sleep 0.2
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) sinfo -R >&2 || true
     tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2
     fail "node $node is not ready after ${READY_TIMEOUT}s (state '${state:-none}')" ;;
esac
say "cluster up: node $node is $state, ready in $(since "$started_at")s"
sinfo
