#!/usr/bin/env bash
# Stop the one-node SLURM that .ci/slurm/start.sh started: cancel its jobs, then stop exactly the
# processes whose pids it recorded in $MADBENCH_SLURM_DIR/pids (default /tmp/madbench-slurm),
# slurmd first and munged last (SIGTERM, SIGKILL after 15 s). A pid whose process is gone or is no
# longer the daemon it names (pid reuse) is left alone. The state directory (configs, logs) stays
# for inspection; the next start.sh replaces it.
set -euo pipefail

STATE=${MADBENCH_SLURM_DIR:-/tmp/madbench-slurm}
say() { echo "slurm-ci: $*"; }

if ! compgen -G "$STATE/pids/*.pid" >/dev/null; then
    say "nothing to stop (no pid files in $STATE/pids)"
    exit 0
fi

# Jobs still running would outlive slurmd (their slurmstepd is not one of our pids).
export SLURM_CONF=$STATE/etc/slurm.conf
ctld_pid=$(cat "$STATE/pids/slurmctld.pid" 2>/dev/null || true)
if [[ -n $ctld_pid ]] && kill -0 "$ctld_pid" 2>/dev/null; then
    timeout 10 scancel --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 20); do
        [[ -z $(timeout 5 squeue -h 2>/dev/null) ]] && break
        sleep 0.5
    done
fi

# alive PID: the process exists and is not a zombie
alive() { [[ -r /proc/$1/stat ]] && [[ $(cut -d' ' -f3 "/proc/$1/stat") != Z ]]; }

for name in slurmd slurmctld slurmdbd mariadbd munged; do
    file=$STATE/pids/$name.pid
    [[ -f $file ]] || continue
    pid=$(cat "$file")
    if alive "$pid" && [[ $(tr '\0' ' ' <"/proc/$pid/cmdline") == *"$name"* ]]; then
        kill -TERM "$pid"
        for _ in $(seq 30); do
            alive "$pid" || break
            sleep 0.5
        done
        if alive "$pid"; then
            say "$name (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
            kill -KILL "$pid"
        fi
        say "stopped $name (pid $pid)"
    else
        say "$name (pid $pid) was not running"
    fi
    rm -f "$file"
done

# the link start.sh made for srun inside jobs (only if it still points into our state directory)
link=/etc/slurm/slurm.conf
if [[ -L $link && $(readlink "$link") == "$STATE/etc/slurm.conf" ]]; then
    rm -f "$link"
fi
