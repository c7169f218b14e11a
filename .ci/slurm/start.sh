#!/usr/bin/env bash
# Start a one-node SLURM on this machine for the pipeline's SLURM test tier (pytest -m slurm).
#
# Needs root and a Debian-like system (apt-get). Installs, if missing, Debian's SLURM (slurmctld,
# slurmd, slurmdbd, client tools), munge and MariaDB; then starts, in this order and each by hand
# (no systemd), with everything it writes under one state directory:
#   munged     private key, standard socket (unless a munged already answers there)
#   mariadbd   private data directory, listening on 127.0.0.1 only
#   slurmdbd   accounting (so that sacct works, as on real clusters), with cluster $CLUSTER,
#              account $ACCOUNT and the calling user in it
#   slurmctld  partitions $CPU_PARTITION (default) and $GPU_PARTITION
#   slurmd     one node advertising $CPUS CPUs, $MEMORY_MB MB and $GPUS fake GPUs (gres files are
#              character devices; the jobs see CUDA_VISIBLE_DEVICES but there is no CUDA)
# and waits until the node is idle. Each daemon runs in the foreground of its own session and its
# pid goes to $STATE/pids/<name>.pid: .ci/slurm/stop.sh stops exactly those processes.
#
# Settings (environment): MADBENCH_SLURM_DIR (state directory, default /tmp/madbench-slurm),
# MADBENCH_SLURM_PORT_BASE (slurmctld port; slurmd, slurmdbd and MariaDB use the next three;
# default 6817). After a start, `source $MADBENCH_SLURM_DIR/env.sh` sets SLURM_CONF for the SLURM
# commands and MADBENCH_SLURM_{ACCOUNT,PARTITION,GPU_PARTITION} for the project's SLURM profile.
# A second start while the cluster answers says so and does nothing. Besides the state directory
# it writes only the link /etc/slurm/slurm.conf (see below; stop.sh removes it).
#
# It lives in .ci/ rather than workflow/: it stands in for a cluster in CI and on a developer's
# machine; nothing of the pipeline that users run on their clusters depends on it.
set -euo pipefail

STATE=${MADBENCH_SLURM_DIR:-/tmp/madbench-slurm}
PORT=${MADBENCH_SLURM_PORT_BASE:-6817}
CLUSTER=madbench
ACCOUNT=madbench_ci
CPU_PARTITION=ci_cpu
GPU_PARTITION=ci_gpu
CPUS=32
MEMORY_MB=131072
GPUS=4
PACKAGES=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)
HERE=$(cd "$(dirname "$0")" && pwd)

say() { echo "slurm-ci: $*"; }
die() { echo "slurm-ci: error: $*" >&2; exit 1; }

# wait_for SECONDS DAEMON WHAT COMMAND...: run COMMAND every 0.5 s until it succeeds; fail at once
# if DAEMON (a name under pids/) has died.
wait_for() {
    local seconds=$1 daemon=$2 what=$3
    shift 3
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$(cat "$STATE/pids/$daemon.pid")" 2>/dev/null; then
            fail_with_logs "$daemon exited while waiting for $what"
        elif ((SECONDS >= deadline)); then
            fail_with_logs "$what not ready after ${seconds}s"
        fi
        sleep 0.5
    done
}

fail_with_logs() {
    echo "slurm-ci: error: $1; the last lines of the logs under $STATE/log:" >&2
    tail -n 15 "$STATE"/log/* >&2 || true
    echo "slurm-ci: stopping what was started" >&2
    MADBENCH_SLURM_DIR=$STATE "$HERE/stop.sh" >&2 || true
    exit 1
}

# launch NAME COMMAND...: run COMMAND in the foreground of a new session, in the background of
# this script, output to log/NAME.out, pid to pids/NAME.pid (setsid execs, so the pid is the
# daemon's).
launch() {
    local name=$1
    shift
    setsid "$@" </dev/null >"$STATE/log/$name.out" 2>&1 &
    echo $! >"$STATE/pids/$name.pid"
}

[[ $(id -u) == 0 ]] || die "needs root (it installs packages and starts daemons)"

# ---- already running?
if compgen -G "$STATE/pids/*.pid" >/dev/null; then
    alive=1
    for f in "$STATE"/pids/*.pid; do kill -0 "$(cat "$f")" 2>/dev/null || alive=0; done
    if ((alive)) && SLURM_CONF=$STATE/etc/slurm.conf timeout 10 sinfo -h >/dev/null 2>&1; then
        say "already running (state in $STATE); stop it with .ci/slurm/stop.sh"
        exit 0
    fi
    say "stale or partial cluster in $STATE: stopping what is left first"
    MADBENCH_SLURM_DIR=$STATE "$HERE/stop.sh"
fi

# ---- packages
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    say "installing ${missing[*]}"
    apt-get update -qq
    # policy-rc.d 101: the packages' init scripts must not start system-wide daemons
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

for port in "$PORT" $((PORT + 1)) $((PORT + 2)) $((PORT + 3)); do
    if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is in use (another SLURM or MariaDB?); set MADBENCH_SLURM_PORT_BASE"
    fi
done

# ---- a fresh state directory (only ever delete one that this script made)
if [[ -e $STATE ]]; then
    [[ -e $STATE/.madbench-slurm ]] || [[ -z $(ls -A "$STATE") ]] ||
        die "$STATE exists and was not made by this script; set MADBENCH_SLURM_DIR"
    rm -rf "$STATE"
fi
mkdir -p "$STATE"/{etc,log,pids,spool/ctld,spool/d,munge,mysql/data,gpus}
touch "$STATE/.madbench-slurm"
chmod 755 "$STATE"
chmod 755 "$STATE/munge"

NODE=$(hostname -s)
USER_NAME=$(id -un)
SLURM_CONF=$STATE/etc/slurm.conf
export SLURM_CONF

# Fake GPUs: gres needs one device file per GPU; character devices of our own (those of
# /dev/null) so that nothing depends on which /dev/tty* a machine has.
for ((i = 0; i < GPUS; i++)); do mknod "$STATE/gpus/gpu$i" c 1 3; done

cat >"$SLURM_CONF" <<EOF
# Written by .ci/slurm/start.sh: a one-node cluster for the SLURM test tier.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/spool/slurmctld.pid
SlurmdPidFile=$STATE/spool/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$CPU_PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=$GPU_PARTITION Nodes=$NODE MaxTime=INFINITE State=UP
EOF
echo "Name=gpu File=$STATE/gpus/gpu[0-$((GPUS - 1))]" >"$STATE/etc/gres.conf"

# Inside a job the plugin's jobstep executor runs `srun` with every SLURM_* variable removed
# (SLURM_CONF included), so srun needs the config at its compiled-in place: a link to ours
# (stop.sh removes it). An /etc/slurm/slurm.conf of someone else's is never touched.
SYSTEM_CONF=/etc/slurm/slurm.conf
if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$SLURM_CONF" ]]; then
    :
elif [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]]; then
    die "$SYSTEM_CONF exists: this machine has a SLURM configuration of its own; not touching it"
else
    mkdir -p /etc/slurm
    ln -s "$SLURM_CONF" "$SYSTEM_CONF"
fi

DB_PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/spool/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$STATE/etc/slurmdbd.conf"

# ---- munge, on its standard socket: SLURM's client commands talk to munged there whatever
# AuthInfo says. A munged that already answers there is used as it is (and left alone by stop.sh).
say "starting munged, mariadbd, slurmdbd, slurmctld, slurmd (state in $STATE)"
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already running: using it"
else
    mungekey --create --keyfile="$STATE/munge/munge.key" >/dev/null
    mkdir -p /run/munge
    launch munged munged --foreground --force --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    wait_for 30 munged munged sh -c 'munge -n </dev/null | unmunge'
fi

# ---- MariaDB (private data directory, TCP on 127.0.0.1 only)
mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql/data" \
    --auth-root-authentication-method=socket --skip-test-db \
    >"$STATE/log/mariadb-install.log" 2>&1 ||
    fail_with_logs "mariadb-install-db failed"
launch mariadbd mariadbd --no-defaults --user=root --datadir="$STATE/mysql/data" \
    --socket="$STATE/mysql/mysqld.sock" --pid-file="$STATE/mysql/mysqld.pid" \
    --port=$((PORT + 3)) --bind-address=127.0.0.1 --skip-name-resolve \
    --log-error="$STATE/log/mariadbd.log" --innodb-buffer-pool-size=64M \
    --innodb-lock-wait-timeout=900
wait_for 60 mariadbd mariadbd mariadb-admin --no-defaults --socket="$STATE/mysql/mysqld.sock" ping
mariadb --no-defaults --socket="$STATE/mysql/mysqld.sock" -u root <<EOF
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF

# ---- accounting: slurmdbd, then the cluster, the account and this user
# slurmdbd reads slurmdbd.conf beside $SLURM_CONF
launch slurmdbd slurmdbd -D
wait_for 60 slurmdbd slurmdbd sacctmgr -n show cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="madbench CI" \
    organization=madbench >/dev/null
sacctmgr -i add user "$USER_NAME" account="$ACCOUNT" defaultaccount="$ACCOUNT" >/dev/null

# ---- controller and node
launch slurmctld slurmctld -D -f "$SLURM_CONF"
wait_for 60 slurmctld slurmctld scontrol ping
launch slurmd slurmd -D -f "$SLURM_CONF"
node_idle() { [[ $(sinfo -h -n "$NODE" -o %t | sort -u) == idle ]]; }
wait_for 60 slurmd "node $NODE (idle)" node_idle

cat >"$STATE/env.sh" <<EOF
# source this: the SLURM commands find the CI cluster, the project's SLURM profile its account
# and partitions (see docs/pipeline.md, "On a SLURM cluster").
export SLURM_CONF=$SLURM_CONF
export MADBENCH_SLURM_ACCOUNT=$ACCOUNT
export MADBENCH_SLURM_PARTITION=$CPU_PARTITION
export MADBENCH_SLURM_GPU_PARTITION=$GPU_PARTITION
EOF
say "up: node $NODE idle ($CPUS CPUs, $MEMORY_MB MB, $GPUS fake GPUs), partitions" \
    "$CPU_PARTITION (default) and $GPU_PARTITION, account $ACCOUNT for $USER_NAME"
say "use it: source $STATE/env.sh; stop it: .ci/slurm/stop.sh"
