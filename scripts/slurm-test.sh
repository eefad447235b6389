#!/usr/bin/env bash
# The Slurm scale-out test (`make test-slurm`; docs/scale-out.md). Starts a real one-node
# Slurm cluster on this machine (munged, slurmctld and slurmd run directly, no systemd, every
# file in a temporary folder), runs suites/ci-slurm.toml through `gauntlet slurm --submit`
# (one job array per stage over 3 shards, then merge + report), and checks that the merged
# results equal a single-process run of the same suite. Then submits the chain again and
# checks that every task found its jobs cached.
#
# Needs root (slurmd launches jobs as their user; apt-get installs slurm-wlm and munge when
# they are missing). With GAUNTLET_SLURM_OPTIONAL=1 (set by .ci/run) a machine that cannot
# run it (not root, or the packages cannot be installed) prints SKIPPED and exits 0;
# otherwise that is a failure. GAUNTLET_SLURM_KEEP=1 keeps the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
suite="$repo/suites/ci-slurm.toml"
shards=3
started=$SECONDS

say() { echo "slurm-test: $*"; }
cannot_run() {
    if [[ "${GAUNTLET_SLURM_OPTIONAL:-0}" == 1 ]]; then
        say "SKIPPED: $*"
        exit 0
    fi
    say "FAILED: $*" >&2
    exit 1
}
fail() {
    say "FAILED: $*" >&2
    exit 1
}

# --- Slurm and munge from Debian's packages --------------------------------------------
tools=(sbatch squeue scontrol sinfo slurmctld slurmd munged mungekey)
missing_tools() { for t in "${tools[@]}"; do command -v "$t" >/dev/null || echo "$t"; done; }
if [[ $(id -u) != 0 ]]; then
    cannot_run "needs root: slurmd must start jobs as their user, and apt-get installs slurm-wlm and munge (running as $(id -un))"
fi
install_seconds=0
if [[ -n "$(missing_tools)" ]]; then
    command -v apt-get >/dev/null || cannot_run "slurm-wlm and munge are not installed and there is no apt-get"
    say "installing slurm-wlm and munge with apt-get"
    t0=$SECONDS
    apt_log=$(mktemp)
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge; } >"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        rm -f "$apt_log"
        cannot_run "apt-get could not install slurm-wlm and munge (output above)"
    fi
    rm -f "$apt_log"
    install_seconds=$((SECONDS - t0))
    [[ -z "$(missing_tools)" ]] || cannot_run "still missing after apt-get: $(missing_tools | tr '\n' ' ')"
fi

# --- the binary --------------------------------------------------------------------------
"${CARGO:-cargo}" build --release -p gauntlet
work=$(mktemp -d /tmp/gauntlet-slurm.XXXXXX)
# munged requires everyone to be able to reach its socket's folder.
chmod 755 "$work"
# The "shared filesystem": a folder whose name has a space, so the generated scripts'
# quoting is exercised by a real sbatch and slurmstepd.
shared="$work/shared fs"
mkdir -p "$shared/bin"
# A copy, so that a concurrent rebuild of target/ cannot change the binary between the
# single-process run and the array tasks.
gauntlet="$shared/bin/gauntlet"
cp "$repo/target/release/gauntlet" "$gauntlet"

# --- the cluster ---------------------------------------------------------------------------
daemons=()
job_ids=()
cleanup() {
    local status=$?
    if ((${#job_ids[@]})) && [[ -n "${SLURM_CONF:-}" ]]; then
        scancel "${job_ids[@]}" 2>/dev/null || true
    fi
    for pid in "${daemons[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${daemons[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status == 0 && "${GAUNTLET_SLURM_KEEP:-0}" != 1 ]]; then
        rm -rf "$work"
    else
        say "kept $work (logs in slurm/, shared fs/slurm/logs/)"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dump_logs() {
    for f in "$shared"/slurm/logs/*.out; do
        [[ -e "$f" ]] && { echo "== $f"; tail -n 20 "$f"; }
    done
    for f in "$work"/slurm/*.log "$work"/munge/*.log; do
        [[ -e "$f" ]] && { echo "== $f"; tail -n 30 "$f"; }
    done
} >&2

t0=$SECONDS
mkdir -p "$work/munge" "$work/slurm/state" "$work/slurm/spool"
chmod 755 "$work/munge"
mungekey --create --keyfile="$work/munge/munge.key"
munged --foreground --socket="$work/munge/munge.socket" --key-file="$work/munge/munge.key" \
    --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" \
    --seed-file="$work/munge/munged.seed" >"$work/munge/stdout" 2>&1 &
daemons+=($!)

# A port nothing listens on, so a system Slurm (if any) is left alone. Probes 127.0.0.1 only.
free_port() {
    local port=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    echo "$port"
}
ctld_port=$(free_port 16817)
slurmd_port=$(free_port $((ctld_port + 1)))
node=$(hostname -s)
# The node as slurmd detects it; a RealMemory above the real memory drains the node, so 90%.
detected=$(slurmd -C | head -n 1)
cpus=$(grep -o 'CPUs=[0-9]*' <<<"$detected" | cut -d= -f2)
memory=$(grep -o 'RealMemory=[0-9]*' <<<"$detected" | cut -d= -f2)
memory=$((memory * 9 / 10))
export SLURM_CONF="$work/slurm/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=gauntlet-test
# 127.0.0.1 everywhere: no name lookup; NodeName must still be \`hostname -s\`.
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge/munge.socket
StateSaveLocation=$work/slurm/state
SlurmdSpoolDir=$work/slurm/spool
SlurmctldPidFile=$work/slurm/slurmctld.pid
SlurmdPidFile=$work/slurm/slurmd.pid
SlurmctldLogFile=$work/slurm/slurmctld.log
SlurmdLogFile=$work/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# No mail, no accounting database (so no sacct: scontrol show job instead); finished jobs
# stay visible to scontrol for an hour.
MailProg=/bin/true
MinJobAge=3600
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
for _ in $(seq 50); do [[ -S "$work/munge/munge.socket" ]] && break; sleep 0.1; done
[[ -S "$work/munge/munge.socket" ]] || { cat "$work/munge/stdout" >&2; fail "munged did not start"; }
slurmctld -D -f "$SLURM_CONF" >"$work/slurm/slurmctld.stdout" 2>&1 &
daemons+=($!)
slurmd -D -f "$SLURM_CONF" >"$work/slurm/slurmd.stdout" 2>&1 &
daemons+=($!)
state=""
for _ in $(seq 60); do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
    [[ "$state" == idle ]] && break
    sleep 1
done
if [[ "$state" != idle ]]; then
    scontrol show node "$node" >&2 || true
    dump_logs
    fail "node $node is \`$state\`, not idle, 60 s after starting the daemons"
fi
cluster_seconds=$((SECONDS - t0))
say "one-node cluster up in ${cluster_seconds} s (node $node, $cpus CPUs, ports $ctld_port/$slurmd_port)"

# --- the same suite in one process -----------------------------------------------------
t0=$SECONDS
# From the tasks' working directory, so that the data folder is found by the same path and
# suite.resolved.json (which records it) can be compared byte for byte.
(cd "$shared" && "$gauntlet" run "$suite" --results "$shared/single" --quiet)
single_seconds=$((SECONDS - t0))

# --- on Slurm ------------------------------------------------------------------------------
# Submits the chain from $shared; sets `ids` to the job ids in order and waits for them all.
submit_and_wait() {
    local out
    out=$(cd "$shared" && "$gauntlet" slurm "$suite" --shards "$shards" --results-dir "$shared/sharded" \
        --out "$shared/slurm" --report-dir "$shared/report" --gauntlet "$gauntlet" --submit)
    echo "$out"
    mapfile -t ids < <(grep -o 'as job [0-9]*' <<<"$out" | awk '{print $3}')
    ((${#ids[@]} >= 2)) || fail "expected job ids from gauntlet slurm --submit"
    job_ids+=("${ids[@]}")
    local list active
    list=$(IFS=,; echo "${ids[*]}")
    # Poll squeue ourselves: `sbatch --wait` polls with a back-off of up to 32 s.
    for _ in $(seq 900); do
        active=$(squeue -h -j "$list" -o %T | grep -c -v -E '^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)$' || true)
        ((active == 0)) && break
        sleep 1
    done
    ((active == 0)) || { squeue >&2; dump_logs; fail "jobs $list still active after 900 s"; }
    # Every task of every job: COMPLETED with exit code 0.
    local id line bad=0 tasks=0
    for id in "${ids[@]}"; do
        while read -r line; do
            tasks=$((tasks + 1))
            if [[ "$line" != *"JobState=COMPLETED "* || "$line" != *" ExitCode=0:0 "* ]]; then
                bad=1
                grep -o 'JobId=[0-9]*\|ArrayTaskId=[0-9]*\|JobState=[A-Z_]*\|Reason=[^ ]*\|ExitCode=[0-9:]*' <<<"$line" | paste -s -d ' ' >&2
            fi
        done < <(scontrol -o show job "$id")
    done
    ((bad == 0)) || { dump_logs; fail "a Slurm job did not complete (above)"; }
    say "${#ids[@]} jobs, $tasks tasks completed"
}

t0=$SECONDS
submit_and_wait
slurm_seconds=$((SECONDS - t0))
first_ids=("${ids[@]}")

# --- merged results == one process ---------------------------------------------------------
[[ -f "$shared/report/index.html" ]] || fail "the merge job drew no report ($shared/report)"
# Every file byte for byte, the job folders (checkpoints, crafted examples, per-example
# outcomes) included, except those that hold wall times and nothing else reproducible:
# timings.csv and each job's job.json, and the lock file with its last holder's process id
# (as gauntlet_suite::reproducible_files).
if ! diff -r -q -x timings.csv -x job.json -x .gauntlet.lock "$shared/single/ci-slurm" "$shared/sharded/ci-slurm" >&2; then
    dump_logs
    fail "the merged Slurm results differ from the single-process run (files above)"
fi
compared=$(find "$shared/sharded/ci-slurm" -type f ! -name timings.csv ! -name job.json ! -name .gauntlet.lock | wc -l)
say "merged results equal the single-process run byte for byte ($compared files)"

# --- a re-submitted chain skips finished work ------------------------------------------------
t0=$SECONDS
submit_and_wait
resubmit_seconds=$((SECONDS - t0))
for id in "${ids[@]:0:${#ids[@]}-1}"; do
    for log in "$shared"/slurm/logs/*-"${id}"_*.out; do
        grep -q '^ci-slurm: 0 jobs ran' "$log" || { cat "$log" >&2; fail "re-submitted task ran jobs again: $log"; }
    done
done
say "re-submitted chain (jobs ${ids[*]}): every array task found its jobs cached"

say "times: install ${install_seconds} s, cluster start ${cluster_seconds} s, single process ${single_seconds} s, Slurm chain ${slurm_seconds} s (jobs ${first_ids[*]}), re-submission ${resubmit_seconds} s, total $((SECONDS - started)) s with the build"
say "1 passed, 0 failed"
