#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine, for tests and for trying `perceiver submit`.
#
#   tools/slurm_cluster.sh start    # idempotent: (re)writes the config, starts what is not running
#   tools/slurm_cluster.sh stop     # stops its daemons (by their pid files), removes its hosts lines
#   tools/slurm_cluster.sh status   # daemons, nodes, queue; exit 0 only if the cluster answers
#   tools/slurm_cluster.sh env      # prints `export SLURM_CONF=...` for a shell: eval "$(... env)"
#
# Needs the Debian packages slurmctld slurmd slurm-client munge (tools/ci_slurm_setup.sh installs
# them) and root (slurmd runs jobs as their submitting user, and /etc/hosts gets n1, n2).
# PERCEIVER_SLURM_DIR and PERCEIVER_SLURM_PORT (controller; the nodes use the next two ports) make
# it private: several clusters can run on one host, each reached only through its own SLURM_CONF.
#
# What it builds, all under $PERCEIVER_SLURM_DIR (default /tmp/perceiver-slurm):
#   munge/      a private munge key, socket and munged (does not touch a system munged)
#   slurm.conf  one partition `debug` (the default) with nodes n1 and n2; both names map to
#               127.0.0.1 and are served by two slurmd daemons on different ports, each in its
#               own mount namespace with a private /dev/shm (like two machines)
#   spool/ state/ log/ run/   daemon state, logs and pid files
# Nothing outside it is written except /etc/hosts lines tagged with $DIR (removed by `stop`);
# /etc/slurm is never touched: Slurm commands reach this cluster through SLURM_CONF (see `env`),
# and jobs inherit it.
set -euo pipefail

DIR=$(realpath -m "${PERCEIVER_SLURM_DIR:-/tmp/perceiver-slurm}")
CTLD_PORT=${PERCEIVER_SLURM_PORT:-16817}
NODES=(n1 n2)
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
HOSTS_TAG="# perceiver test slurm cluster $DIR"

log() { echo "slurm_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() {  # pid_alive PIDFILE: true if the file names a live process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

need_tools() {
    local missing=()
    for t in munged slurmctld slurmd sinfo scontrol sbatch unshare; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    if ((${#missing[@]})); then
        die "missing ${missing[*]}; install with: apt-get install -y slurmctld slurmd slurm-client munge" \
            "(or run tools/ci_slurm_setup.sh)"
    fi
    [[ $(id -u) == 0 ]] || die "must run as root (slurmd switches to the job owner's uid; /etc/hosts is edited)"
    unshare --mount --propagation private true 2>/dev/null \
        || die "cannot create a mount namespace (unshare --mount): each node needs its own /dev/shm;" \
               "in a container, run it with --cap-add SYS_ADMIN (or --privileged)"
}

write_hosts() {  # one tagged line per node, even if another cluster has the same names
    local n
    for n in "${NODES[@]}"; do
        grep -qxF "127.0.0.1 $n  $HOSTS_TAG" /etc/hosts || echo "127.0.0.1 $n  $HOSTS_TAG" >>/etc/hosts
    done
}

remove_hosts() {  # in place: /etc/hosts may be a bind mount that cannot be replaced by a rename
    local n kept patterns=()
    for n in "${NODES[@]}"; do patterns+=(-e "127.0.0.1 $n  $HOSTS_TAG"); done
    kept=$(grep -vxF "${patterns[@]}" /etc/hosts || true)
    [[ $kept == "$(cat /etc/hosts)" ]] || printf '%s\n' "$kept" >/etc/hosts
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    # Both slurmd daemons share this machine's memory; each node offers 40% of it.
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.4}' /proc/meminfo)
    mkdir -p "$DIR"/{munge,spool,state,log,run}
    chmod 0700 "$DIR/munge"
    cat >"$CONF.tmp" <<EOF
# Written by tools/slurm_cluster.sh: a two-node test cluster on one machine ($host).
ClusterName=perceiver
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# short scheduling passes: a requeued job starts soon after its BeginTime
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
# seconds between SIGTERM and SIGKILL when a job is requeued, cancelled or times out
KillWait=30
# finished jobs stay visible to scontrol/squeue for this many seconds
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=60
MessageTimeout=20
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=[$((CTLD_PORT + 1))-$((CTLD_PORT + 2))] CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    if [[ -f $CONF ]] && cmp -s "$CONF" "$CONF.tmp"; then
        rm "$CONF.tmp"
    else
        mv "$CONF.tmp" "$CONF"
    fi
}

start_munge() {
    local key=$DIR/munge/munge.key
    if [[ ! -s $key ]]; then
        dd if=/dev/urandom of="$key.tmp" bs=1 count=1024 status=none
        chmod 0400 "$key.tmp"
        mv "$key.tmp" "$key"
    fi
    if ! pid_alive "$DIR/munge/munged.pid"; then
        rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
        munged --force --key-file="$key" --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" \
            --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    fi
}

start_daemons() {
    export SLURM_CONF=$CONF
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        slurmctld -f "$CONF"
    fi
    local n
    for n in "${NODES[@]}"; do
        mkdir -p "$DIR/spool/$n"
        if ! pid_alive "$DIR/run/slurmd-$n.pid"; then
            # Each node gets its own /dev/shm, as separate machines would have: the ranks of a
            # node coordinate through shared memory (mosaicml-streaming), and two nodes on one
            # host must not see each other's segments.
            unshare --mount --propagation private \
                sh -c 'mount -t tmpfs -o mode=1777 tmpfs /dev/shm && exec "$@"' sh \
                slurmd -f "$CONF" -N "$n"
        fi
    done
}

wait_ready() {  # the controller answers and both nodes are idle (or already running jobs)
    export SLURM_CONF=$CONF
    local i states
    for i in $(seq 1 60); do
        states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)
        if [[ -n $states ]] && ! grep -Evq ' (idle|mix|alloc|comp)$' <<<"$states" \
            && [[ $(wc -l <<<"$states") -ge ${#NODES[@]} ]]; then
            log "ready: $(tr '\n' ' ' <<<"$states")(SLURM_CONF=$CONF)"
            return 0
        fi
        # nodes that came back after a restart may be DOWN: ReturnToService=2 fixes most; nudge the rest
        if ((i % 10 == 0)); then
            scontrol update NodeName=n[1-2] State=RESUME >/dev/null 2>&1 || true
        fi
        sleep 1
    done
    sinfo -N -l >&2 || true
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR"/log/slurmd-*.log >&2 || true
    die "cluster did not become ready in 60 s (logs under $DIR/log)"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
    local pid i
    [[ -s $2 ]] || return 0
    pid=$(cat "$2")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$1 (pid $pid) did not stop; sending SIGKILL"
            kill -9 "$pid"
        fi
    fi
    rm -f "$2"
}

cmd_start() {
    need_tools
    write_hosts
    write_config
    start_munge
    start_daemons
    wait_ready
}

cmd_stop() {
    local n
    for n in "${NODES[@]}"; do
        stop_pidfile "slurmd $n" "$DIR/run/slurmd-$n.pid"
    done
    stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
    stop_pidfile munged "$DIR/munge/munged.pid"
    remove_hosts
    log "stopped"
}

cmd_status() {
    local name pidfile rc=0
    for name in munged slurmctld slurmd-n1 slurmd-n2; do
        case $name in
            munged) pidfile=$DIR/munge/munged.pid ;;
            *) pidfile=$DIR/run/$name.pid ;;
        esac
        if pid_alive "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: stopped"; rc=1; fi
    done
    if [[ -f $CONF ]]; then
        SLURM_CONF=$CONF sinfo -N -o '%N %P %t %c %m' || rc=1
        SLURM_CONF=$CONF squeue || rc=1
    fi
    return $rc
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    env) printf 'export SLURM_CONF=%q\n' "$CONF" ;;
    *) echo "usage: $0 {start|stop|restart|status|env}" >&2; exit 2 ;;
esac
