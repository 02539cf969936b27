#!/usr/bin/env bash
# gpu-watchdog pod entrypoint. Two ways to run a pod (docs/runpod.md has the env contract):
#  - standalone: starts munged, Slurm (slurmctld on the head, configless slurmd on workers), the
#    exporters and, on the head when VLLM_MODEL is set, vLLM with tool calling;
#  - managed by the Ansible playbooks (WATCHDOG_SERVICES=sshd, WATCHDOG_STATE_DIR set, what
#    provision.yml does): starts only sshd; the roles own every other daemon (gw-supervise), so
#    each daemon has exactly one owner. The configuration Ansible writes lands on the pod's
#    volume (WATCHDOG_STATE_DIR), and at the next start (a resumed pod, whose container disk
#    RunPod wiped) its services are started again from there without Ansible.
# Its own children run under a small supervisor that restarts them with backoff, forwards
# SIGTERM/SIGINT and exits once they are gone. SIGHUP restarts every child.
set -euo pipefail
# A shell cannot trap a signal that was ignored when it started (POSIX): `trap ... HUP` then
# does nothing, silently. Started under nohup (SIGHUP ignored) or as a background job of a
# script (SIGINT ignored), the supervisor below would neither reload on SIGHUP nor forward
# SIGINT. So start once more with the three at their defaults (`env --default-signal`: coreutils
# 8.31 or later, as in Debian 12 and Ubuntu 22.04+).
if [[ -z ${WATCHDOG_SIGNALS_RESET:-} ]] && [[ "$(trap -p HUP INT TERM)" == *"trap -- ''"* ]]; then
    export WATCHDOG_SIGNALS_RESET=1
    exec env --default-signal=HUP,INT,TERM bash "$0" "$@"
fi
# Job control: children get their own process groups and, unlike plain background jobs of a
# script, do not ignore SIGINT, so forwarding it works.
set -m

# ----------------------------------------------------------------------------- settings
ROLE="${WATCHDOG_ROLE:-}"
HEAD_ADDR="${WATCHDOG_HEAD_ADDR:-}"
NODE_NAME="${WATCHDOG_NODE_NAME:-$(hostname)}"
MUNGE_KEY_PATH="${WATCHDOG_MUNGE_KEY_PATH:-/etc/munge/munge.key}"
MUNGED_USER="${WATCHDOG_MUNGED_USER:-munge}"
MUNGE_RUN_DIR="${WATCHDOG_MUNGE_RUN_DIR:-/run/munge}"
SLURM_CONF_PATH="${SLURM_CONF:-/etc/slurm/slurm.conf}"
SLURMCTLD_PORT="${WATCHDOG_SLURMCTLD_PORT:-6817}"
SLURM_BOOTSTRAP="${WATCHDOG_SLURM_BOOTSTRAP:-1}"
SLURMD_DYNAMIC="${WATCHDOG_SLURMD_DYNAMIC:-0}"
SSH_DIR="${WATCHDOG_SSH_DIR:-/root/.ssh}"
BACKOFF_INITIAL="${WATCHDOG_BACKOFF_INITIAL:-1}"
BACKOFF_MAX="${WATCHDOG_BACKOFF_MAX:-30}"
# A child that ran this long before it died starts again from the initial backoff.
HEALTHY_AFTER="${WATCHDOG_HEALTHY_AFTER:-60}"
STOP_TIMEOUT="${WATCHDOG_STOP_TIMEOUT:-20}"
POLL="${WATCHDOG_POLL_INTERVAL:-0.5}"
# Managed pods: where the configuration survives a stop (a directory on the pod's volume), the
# paths kept there (each becomes a symlink into it), and gw-supervise's directories.
STATE_DIR="${WATCHDOG_STATE_DIR:-}"
PERSIST_PATHS="${WATCHDOG_PERSIST_PATHS:-/etc/ssh /root/.ssh /etc/munge /etc/slurm /var/spool/slurmctld /opt/gpu-watchdog/etc /opt/gpu-watchdog/secrets /opt/gpu-watchdog/services /opt/gpu-watchdog/bin /opt/gpu-watchdog/data /opt/gpu-watchdog/log /opt/gpu-watchdog/sim}"
SUPERVISE_CONF_DIR="${WATCHDOG_SUPERVISE_CONF_DIR:-/opt/gpu-watchdog/services}"
SUPERVISE_RUN_DIR="${WATCHDOG_SUPERVISE_RUN_DIR:-/opt/gpu-watchdog/run}"

log() {
    local level=$1
    shift
    printf 'ts=%s level=%s component=entrypoint %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$level" "$*" >&2
}

die() {
    log error "msg=\"$*\""
    exit 2
}

is_int() { [[ $1 =~ ^[0-9]+$ ]]; }

wants() {
    local name
    for name in "${SERVICES[@]}"; do
        [[ $name == "$1" ]] && return 0
    done
    return 1
}

# ----------------------------------------------------------------------------- checks
check_env() {
    case "$ROLE" in
        head | worker) ;;
        "") die "WATCHDOG_ROLE is not set: it must be head or worker" ;;
        *) die "WATCHDOG_ROLE must be head or worker, not '$ROLE'" ;;
    esac
    if [[ $ROLE == worker && -z $HEAD_ADDR ]] && wants slurmd; then
        die "WATCHDOG_HEAD_ADDR is not set: a worker needs the head's address (e.g. <head_pod_id>.runpod.internal)"
    fi
    if wants munged && [[ -z ${MUNGE_KEY:-} && -z ${MUNGE_KEY_FILE:-} && ! -s $MUNGE_KEY_PATH ]]; then
        die "no munge key: set MUNGE_KEY (base64) or MUNGE_KEY_FILE, or provide $MUNGE_KEY_PATH"
    fi
    if [[ -n ${MUNGE_KEY_FILE:-} && ! -r $MUNGE_KEY_FILE ]]; then
        die "MUNGE_KEY_FILE=$MUNGE_KEY_FILE is not a readable file"
    fi
    for value in "$BACKOFF_INITIAL" "$BACKOFF_MAX" "$HEALTHY_AFTER" "$STOP_TIMEOUT" "$SLURMCTLD_PORT"; do
        is_int "$value" || die "backoff, timeout and port settings must be whole numbers, got '$value'"
    done
}

# Writes the key without it ever reaching a log, argv or a child's environment.
install_munge_key() {
    local dir tmp
    dir=$(dirname "$MUNGE_KEY_PATH")
    mkdir -p "$dir"
    tmp=$(mktemp "$dir/.munge.key.XXXXXX")
    if [[ -n ${MUNGE_KEY:-} ]]; then
        if ! printf '%s' "$MUNGE_KEY" | base64 -d >"$tmp" 2>/dev/null; then
            rm -f "$tmp"
            die "MUNGE_KEY is not valid base64 (the value is not shown)"
        fi
    elif [[ -n ${MUNGE_KEY_FILE:-} ]]; then
        cat -- "$MUNGE_KEY_FILE" >"$tmp"
    else
        rm -f "$tmp"
        unset MUNGE_KEY
        return 0
    fi
    unset MUNGE_KEY
    if (($(wc -c <"$tmp") < 32)); then
        rm -f "$tmp"
        die "the munge key is shorter than 32 bytes; generate one with: dd if=/dev/urandom bs=1 count=1024 | base64 -w0"
    fi
    chmod 0400 "$tmp"
    if [[ $(id -u) == 0 ]] && id "$MUNGED_USER" >/dev/null 2>&1; then
        chown "$MUNGED_USER:" "$tmp"
    fi
    mv -f "$tmp" "$MUNGE_KEY_PATH"
    log info "msg=\"munge key installed\" path=$MUNGE_KEY_PATH"
}

# A config the head can start with before Ansible writes the real one: configless, dynamic
# nodes allowed, container-safe plugins.
bootstrap_slurm_conf() {
    [[ $ROLE == head && $SLURM_BOOTSTRAP == 1 && ! -e $SLURM_CONF_PATH ]] || return 0
    mkdir -p "$(dirname "$SLURM_CONF_PATH")"
    cat >"$SLURM_CONF_PATH" <<EOF
# Written by the gpu-watchdog pod entrypoint; the Ansible slurm_head role replaces it.
ClusterName=${SLURM_CLUSTER_NAME:-gpu-watchdog}
SlurmctldHost=${NODE_NAME}
SlurmctldPort=${SLURMCTLD_PORT}
SlurmctldParameters=enable_configless
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ReturnToService=2
MaxNodeCount=${SLURM_MAX_NODES:-64}
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    log info "msg=\"wrote a bootstrap slurm.conf\" path=$SLURM_CONF_PATH"
}

setup_ssh() {
    [[ -n ${PUBLIC_KEY:-} ]] || return 0
    mkdir -p "$SSH_DIR"
    chmod 700 "$SSH_DIR"
    touch "$SSH_DIR/authorized_keys"
    # PUBLIC_KEY may hold several keys, one per line (the operator's and the head's automation
    # key). A resumed pod keeps authorized_keys on its volume: add each key once.
    local key
    while IFS= read -r key; do
        [[ -n $key ]] || continue
        grep -qxF -- "$key" "$SSH_DIR/authorized_keys" || printf '%s\n' "$key" >>"$SSH_DIR/authorized_keys"
    done <<<"$PUBLIC_KEY"
    chmod 600 "$SSH_DIR/authorized_keys"
}

# Each path of PERSIST_PATHS becomes a symlink to its copy under STATE_DIR/root (made from the
# image's content the first time), so what Ansible writes there outlives the container disk.
persist_paths() {
    [[ -n $STATE_DIR ]] || return 0
    local path saved
    mkdir -p "$STATE_DIR/root"
    for path in $PERSIST_PATHS; do
        saved="$STATE_DIR/root$path"
        [[ -L $path && $(readlink "$path") == "$saved" ]] && continue
        if [[ ! -e $saved ]]; then
            mkdir -p "$(dirname "$saved")"
            if [[ -e $path ]]; then cp -a "$path" "$saved"; else mkdir -p "$saved"; fi
        fi
        rm -rf "$path"
        mkdir -p "$(dirname "$path")"
        ln -s "$saved" "$path"
    done
    log info "msg=\"configuration kept on the volume\" state_dir=$STATE_DIR"
}

supervise_cmd() {
    local sup=/opt/gpu-watchdog/bin/gw-supervise
    [[ -f $sup ]] || sup=$(command -v gw-supervise || echo /usr/local/bin/gw-supervise)
    python3 "$sup" --conf-dir "$SUPERVISE_CONF_DIR" --run-dir "$SUPERVISE_RUN_DIR" "$@"
}

# A pod that Ansible configured before (definitions on the volume): start its services again.
restore_services() {
    [[ -n $STATE_DIR ]] || return 0
    compgen -G "$SUPERVISE_CONF_DIR/*.json" >/dev/null || return 0
    log info "msg=\"starting the services Ansible configured\" conf_dir=$SUPERVISE_CONF_DIR"
    if supervise_cmd start-all >&2; then
        log info "msg=\"services started\""
    else
        log warn "msg=\"some services did not start\" hint=\"gw-supervise status; logs in /opt/gpu-watchdog/log\""
    fi
}

# ----------------------------------------------------------------------------- services
# Each svc_<name> runs in a background subshell and execs the program, so the supervisor's
# pid for the child is the program itself.
svc_munged() {
    # /run may be a fresh tmpfs: munged needs its socket directory, owned by its user.
    mkdir -p "$MUNGE_RUN_DIR"
    if [[ $(id -u) == 0 && -n $MUNGED_USER ]]; then
        chown "$MUNGED_USER:" "$MUNGE_RUN_DIR" 2>/dev/null || true
        exec runuser -u "$MUNGED_USER" -- munged -F --key-file="$MUNGE_KEY_PATH"
    fi
    exec munged -F --key-file="$MUNGE_KEY_PATH"
}

svc_sshd() {
    mkdir -p /run/sshd
    # The image carries no host keys (every pod gets its own, kept on the volume when managed).
    ssh-keygen -A >/dev/null 2>&1 || true
    exec "$(command -v sshd || echo /usr/sbin/sshd)" -D -e
}

svc_slurmctld() { exec slurmctld -D -f "$SLURM_CONF_PATH"; }

svc_slurmd() {
    local args=(-D --conf-server "${HEAD_ADDR}:${SLURMCTLD_PORT}" -N "$NODE_NAME")
    if [[ $SLURMD_DYNAMIC == 1 ]]; then
        args+=(-Z --conf "Gres=gpu:${RUNPOD_GPU_COUNT:-1}")
    fi
    exec slurmd "${args[@]}"
}

svc_gpu_exporter() {
    local extra=()
    read -r -a extra <<<"${GPU_EXPORTER_ARGS:-}"
    exec gpu-exporter "${extra[@]}"
}

svc_slurm_exporter() {
    local extra=()
    read -r -a extra <<<"${SLURM_EXPORTER_ARGS:-}"
    exec slurm-exporter "${extra[@]}"
}

svc_vllm() {
    local extra=()
    read -r -a extra <<<"${VLLM_EXTRA_ARGS:-}"
    # Loopback by default: the agent runs beside it; nothing else should reach it unauthenticated.
    exec vllm serve "$VLLM_MODEL" --host "${VLLM_HOST:-127.0.0.1}" --port "${VLLM_PORT:-8000}" \
        --enable-auto-tool-choice --tool-call-parser "${VLLM_TOOL_CALL_PARSER:-hermes}" "${extra[@]}"
}

services_for_role() {
    if [[ -n ${WATCHDOG_SERVICES:-} ]]; then
        # An explicit list, e.g. when Ansible's roles manage the rest.
        read -r -a SERVICES <<<"${WATCHDOG_SERVICES//,/ }"
        local name
        for name in "${SERVICES[@]}"; do
            declare -F "svc_$name" >/dev/null || die "WATCHDOG_SERVICES: unknown service '$name'"
        done
        return 0
    fi
    SERVICES=(munged)
    [[ -n ${PUBLIC_KEY:-} ]] && SERVICES+=(sshd)
    if [[ $ROLE == head ]]; then
        SERVICES+=(slurmctld gpu_exporter slurm_exporter)
        [[ -n ${VLLM_MODEL:-} ]] && SERVICES+=(vllm)
    else
        SERVICES+=(slurmd gpu_exporter)
    fi
    return 0
}

# ----------------------------------------------------------------------------- supervisor
declare -A PID=() STARTED=() FAILS=() NEXT=() RELOADING=()
SHUTDOWN=""
RELOAD=0

start_service() {
    local name=$1
    "svc_$name" &
    PID[$name]=$!
    STARTED[$name]=$SECONDS
    log info "msg=started service=$name pid=${PID[$name]}"
}

backoff_for() {
    local fails=$1 delay=$BACKOFF_INITIAL
    while ((fails > 1 && delay < BACKOFF_MAX)); do
        delay=$((delay * 2))
        fails=$((fails - 1))
    done
    ((delay > BACKOFF_MAX)) && delay=$BACKOFF_MAX
    echo "$delay"
}

# Note children that exited and schedule their restart.
reap() {
    local name pid code ran delay
    for name in "${SERVICES[@]}"; do
        pid=${PID[$name]:-}
        [[ -n $pid ]] || continue
        kill -0 "$pid" 2>/dev/null && continue
        code=0
        wait "$pid" || code=$?
        PID[$name]=""
        [[ -n $SHUTDOWN ]] && continue
        if [[ -n ${RELOADING[$name]:-} ]]; then
            RELOADING[$name]=""
            FAILS[$name]=0
            NEXT[$name]=0
            log info "msg=\"stopped for reload\" service=$name pid=$pid code=$code"
            continue
        fi
        ran=$((SECONDS - STARTED[$name]))
        if ((ran >= HEALTHY_AFTER)); then
            FAILS[$name]=0
        fi
        FAILS[$name]=$((${FAILS[$name]:-0} + 1))
        delay=$(backoff_for "${FAILS[$name]}")
        NEXT[$name]=$((SECONDS + delay))
        log warn "msg=\"exited, restarting\" service=$name pid=$pid code=$code ran_s=$ran restart_in_s=$delay"
    done
}

start_due() {
    local name
    for name in "${SERVICES[@]}"; do
        [[ -z ${PID[$name]:-} && ${NEXT[$name]:-0} -le $SECONDS ]] && start_service "$name"
    done
    return 0
}

# Each child leads its own process group (job control is on), so the signal reaches what it
# started too (vLLM's workers, say).
signal_children() {
    local sig=$1 name pid
    for name in "${SERVICES[@]}"; do
        pid=${PID[$name]:-}
        [[ -n $pid ]] || continue
        kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true
    done
    return 0
}

shutdown() {
    local sig=$1 deadline name alive
    log info "msg=\"stopping on $sig\""
    signal_children "$sig"
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ((SECONDS < deadline)); do
        alive=0
        for name in "${SERVICES[@]}"; do
            [[ -n ${PID[$name]:-} ]] && kill -0 "${PID[$name]}" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    signal_children KILL
    for name in "${SERVICES[@]}"; do
        [[ -n ${PID[$name]:-} ]] && { wait "${PID[$name]}" 2>/dev/null || true; }
    done
    if [[ -n $STATE_DIR ]] && compgen -G "$SUPERVISE_RUN_DIR/*.pid" >/dev/null; then
        supervise_cmd stop --all >/dev/null 2>&1 || true
    fi
    log info "msg=stopped"
    exit 0
}

reload() {
    local name
    log info "msg=\"SIGHUP: restarting every service\""
    for name in "${SERVICES[@]}"; do
        [[ -n ${PID[$name]:-} ]] && RELOADING[$name]=1
        FAILS[$name]=0
        NEXT[$name]=0
    done
    signal_children TERM
}

supervise() {
    local name
    # A pipe nobody writes to: reading it with a timeout is a sleep without a process.
    exec {TICK_FD}<> <(:)
    trap 'SHUTDOWN=TERM' TERM
    trap 'SHUTDOWN=INT' INT
    trap 'RELOAD=1' HUP
    start_due
    while true; do
        [[ -n $SHUTDOWN ]] && shutdown "$SHUTDOWN"
        if ((RELOAD)); then
            RELOAD=0
            reload
        fi
        # A builtin sleep (no child to reap or report); a trapped signal cuts it short.
        read -r -t "$POLL" -u "$TICK_FD" _ || true
        [[ -n $SHUTDOWN ]] && shutdown "$SHUTDOWN"
        reap
        start_due
    done
}

main() {
    services_for_role
    check_env
    persist_paths
    install_munge_key
    bootstrap_slurm_conf
    setup_ssh
    log info "msg=\"starting\" role=$ROLE node=$NODE_NAME services=$(
        IFS=,
        echo "${SERVICES[*]}"
    )"
    restore_services &
    supervise
}

main "$@"
