#!/usr/bin/env bash
# A private Slurm cluster on this host for the tests in tests/slurm/: one slurmctld, two slurmd (nodes n1, n2;
# 4 CPUs, 4096 MB and 2 fake GPUs each, all on 127.0.0.1), munge, and optionally accounting (MariaDB +
# slurmdbd, so that `sacct` — the SLURM executor's default status command — works).
#
#   SLURM_TEST_DIR=/tmp/x tests/slurm/cluster.sh up        # idempotent; SLURM_TEST_ACCOUNTING=1 adds slurmdbd
#   SLURM_TEST_DIR=/tmp/x tests/slurm/cluster.sh down      # stops only the daemons whose pids this dir recorded
#   SLURM_TEST_DIR=/tmp/x tests/slurm/cluster.sh down --purge   # and deletes the state dir
#
# Needs root and Debian's packages: slurmctld slurmd slurm-client munge (+ slurmdbd mariadb-server).
# Exit status 3: a package is missing (the test fixture turns that into a skip, or a failure when CI=true).
# Facts and gotchas behind every line: /work/shared/reference/slurm-on-one-host.md (e.g. the config must be
# /etc/slurm/slurm.conf: SLURM_CONF does not survive the job-step plugin).
set -euo pipefail

STATE=${SLURM_TEST_DIR:?set SLURM_TEST_DIR to a state directory}
ACCOUNTING=${SLURM_TEST_ACCOUNTING:-0}
CTLD_PORT=${SLURM_TEST_CTLD_PORT:-6817}
DBD_PORT=${SLURM_TEST_DBD_PORT:-6819}
NODE_PORT=${SLURM_TEST_NODE_PORT:-17001}  # n1 uses this port, n2 the next one
CLUSTER=lmrepro
ETC=/etc/slurm
LINKED=(slurm.conf gres.conf slurmdbd.conf)

log() { echo "cluster.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

require() {
    local missing=()
    for bin in "$@"; do command -v "$bin" >/dev/null 2>&1 || missing+=("$bin"); done
    if ((${#missing[@]})); then
        log "missing ${missing[*]}: apt-get install slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
        exit 3
    fi
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # seconds, description, command...
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what"
        sleep 0.2
    done
}

write_configs() {
    local accounting_lines="AccountingStorageType=accounting_storage/none"
    if [[ $ACCOUNTING == 1 ]]; then
        accounting_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu"
    fi
    cat >"$STATE/etc/slurm.conf.new" <<EOF
# Written by tests/slurm/cluster.sh for a private test cluster; state in $STATE
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdSpoolDir=$STATE/spool/d-%n
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmdLogFile=$STATE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=300
KillWait=30
InactiveLimit=0
DefMemPerCPU=512
GresTypes=gpu
$accounting_lines
JobCompType=jobcomp/none
NodeName=n[1-2] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$NODE_PORT-$((NODE_PORT + 1))] CPUs=4 RealMemory=4096 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
    echo "NodeName=n[1-2] Name=gpu File=$STATE/dev/gpu[0-1]" >"$STATE/etc/gres.conf.new"
    local changed=0 name
    for name in slurm.conf gres.conf; do
        if ! cmp -s "$STATE/etc/$name.new" "$STATE/etc/$name" 2>/dev/null; then
            mv "$STATE/etc/$name.new" "$STATE/etc/$name"
            changed=1
        else
            rm -f "$STATE/etc/$name.new"
        fi
    done
    echo $changed
}

link_configs() {
    mkdir -p "$ETC"
    local name target
    for name in "${LINKED[@]}"; do
        [[ -f $STATE/etc/$name ]] || continue
        if [[ -L $ETC/$name ]]; then
            target=$(readlink "$ETC/$name")
            if [[ $target != "$STATE/etc/$name" ]] && pid_alive "$(dirname "$(dirname "$target")")/run/slurmctld.pid"; then
                die "$ETC/$name belongs to another running test cluster ($target)"
            fi
        elif [[ -e $ETC/$name ]]; then
            die "$ETC/$name is a real file (a site configuration?); refusing to replace it"
        fi
        ln -sfn "$STATE/etc/$name" "$ETC/$name"
    done
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return # a munged is already running (ours from an earlier `up`, or the host's): use it
    fi
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/run/munged.pid" # ours: `down` stops it
    wait_for 10 munged bash -c 'munge -n | unmunge'
}

start_accounting() {
    local db=$STATE/mysql run=$STATE/mysql-run sock=$STATE/mysql-run/mysqld.sock
    install -d -o mysql -g mysql -m 755 "$run"
    if [[ ! -d $db/mysql ]]; then
        install -d -o mysql -g mysql -m 700 "$db"
        mariadb-install-db --user=mysql --datadir="$db" --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed: $STATE/log/mariadb-install.log"
    fi
    if ! pid_alive "$run/mariadb.pid"; then
        # mariadbd runs as mysql: its pid file and log must be in a mysql-owned dir, or it exits silently.
        mariadbd --user=mysql --datadir="$db" --socket="$sock" --skip-networking \
            --pid-file="$run/mariadb.pid" --log-error="$run/error.log" >/dev/null 2>&1 &
        wait_for 30 "mariadbd (log: $run/error.log)" mariadb --socket="$sock" -e "select 1"
        mariadb --socket="$sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    fi
    umask 077
    cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF
    umask 022
    chmod 600 "$STATE/etc/slurmdbd.conf"
    link_configs
    if ! pid_alive "$STATE/run/slurmdbd.pid"; then
        MYSQL_UNIX_PORT=$sock slurmdbd
        wait_for 30 "slurmdbd (log: $STATE/log/slurmdbd.log)" sacctmgr -n list cluster
    fi
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

nodes_idle() { # both nodes up (sinfo -N lists a node once per partition)
    local states
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
    [[ $(grep -E ' (idle|mixed|allocated)$' <<<"$states" | cut -d' ' -f1 | sort -u | wc -l) == 2 ]]
}

stop_pid_files() { # SIGTERM to the pids recorded in our state dir (and only those), SIGKILL after 10 s
    local file pids=()
    for file in "$@"; do
        pid_alive "$file" && pids+=("$(cat "$file")")
    done
    ((${#pids[@]})) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "${pids[@]}" 2>/dev/null || return 0 # true while any of them is alive
        sleep 0.2
    done
    log "pids ${pids[*]} did not all stop on SIGTERM; sending SIGKILL"
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

up() {
    require slurmctld slurmd sinfo sbatch scontrol munged munge unmunge
    [[ $ACCOUNTING == 1 ]] && require slurmdbd sacctmgr sacct mariadbd mariadb-install-db mariadb
    [[ $(id -u) == 0 ]] || die "must run as root (daemons run as root, configs go to $ETC)"
    mkdir -p "$STATE"/{etc,run,log,spool,ctld,dev}
    chmod 755 "$STATE" # mariadbd (user mysql) must traverse it
    local gpu
    for gpu in 0 1; do
        [[ -e $STATE/dev/gpu$gpu ]] || mknod "$STATE/dev/gpu$gpu" c 1 3 # fake GPUs: clones of /dev/null
    done
    start_munge
    local changed
    changed=$(write_configs)
    link_configs
    [[ $ACCOUNTING == 1 ]] && start_accounting
    if [[ $changed == 1 ]]; then # a new config: restart what runs (a first `up` starts everything)
        stop_pid_files "$STATE"/run/slurmd-n{1,2}.pid "$STATE/run/slurmctld.pid"
    fi
    pid_alive "$STATE/run/slurmctld.pid" || slurmctld
    wait_for 30 "slurmctld (log: $STATE/log/slurmctld.log)" scontrol ping
    local node
    for node in n1 n2; do
        pid_alive "$STATE/run/slurmd-$node.pid" || slurmd -N "$node"
    done
    wait_for 30 "nodes n1 n2 to be idle (logs: $STATE/log/)" nodes_idle
    log "up: $(sinfo -h -o '%P %D %T' | tr '\n' ' ')(state $STATE, accounting=$ACCOUNTING)"
}

down() {
    if command -v scancel >/dev/null && pid_alive "$STATE/run/slurmctld.pid"; then
        scancel --user=root 2>/dev/null || true # this private cluster's jobs only
        sleep 1
    fi
    stop_pid_files "$STATE"/run/slurmd-n{1,2}.pid "$STATE/run/slurmctld.pid"
    stop_pid_files "$STATE/run/slurmdbd.pid" "$STATE/mysql-run/mariadb.pid" "$STATE/run/munged.pid"
    local name
    for name in "${LINKED[@]}"; do
        if [[ -L $ETC/$name && $(readlink "$ETC/$name") == "$STATE/etc/$name" ]]; then
            rm -f "$ETC/$name"
        fi
    done
    if [[ ${1:-} == --purge ]]; then
        rm -rf "$STATE"
    fi
    log "down ($STATE)"
}

case ${1:-} in
up) up ;;
down) down "${2:-}" ;;
status) sinfo -N -o '%N %P %T %C %m %G' ;;
*)
    echo "usage: SLURM_TEST_DIR=dir [SLURM_TEST_ACCOUNTING=1] $0 up|down [--purge]|status" >&2
    exit 2
    ;;
esac
