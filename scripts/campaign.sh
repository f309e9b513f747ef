#!/usr/bin/env bash
# Keep a training campaign going in the background of a working session, and its state committed.
#   scripts/campaign.sh models/accurate-v1 [commit-every-minutes]
# Continues the campaign until it finishes (restarting it if the process dies), and commits the
# campaign directory alone (`git commit -- DIR`, other work in the tree is left as it is) at most
# every N minutes (default 60) whenever an epoch has finished since the last commit.
set -uo pipefail
cd "$(dirname "$0")/.."
run_dir=${1:?usage: scripts/campaign.sh RUN_DIR [commit-every-minutes]}
every_s=$(( ${2:-60} * 60 ))
emotion=${EMOTION_BIN:-.venv/bin/emotion}
log="$run_dir/../.${run_dir##*/}.log"

commit_state() {
    git add -- "$run_dir" && git commit -q -m "Campaign $run_dir: state after epoch $(python3 -c \
        "import json,sys; print(json.load(open('$run_dir/campaign.json'))['epochs_done'])")" -- "$run_dir" \
        || true  # nothing new, or the index is busy: the next round commits
}

last_commit=$(date +%s)
while true; do
    nice -n 2 "$emotion" train --resume "$run_dir" >>"$log" 2>&1 &
    trainer=$!
    while kill -0 "$trainer" 2>/dev/null; do
        sleep 30
        if (( $(date +%s) - last_commit >= every_s )); then commit_state; last_commit=$(date +%s); fi
    done
    wait "$trainer"; status=$?
    commit_state; last_commit=$(date +%s)
    if [[ $status -eq 0 ]] && grep -q '"finished": true' <(tail -n 1 "$log"); then break; fi
    echo "$(date -u +%FT%TZ) trainer exited with $status; resuming in 10 s" >>"$log"
    sleep 10
done
