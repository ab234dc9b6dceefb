#!/usr/bin/env bash
# Real-size ogbn-proteins on CPU (issue 24): write the synthetic folder, load it through ogb's
# loader, then full-batch detection and one training step per model (paper presets, fp32, cpu
# backend), ONE process at a time, each under /usr/bin/time -v. Figures: benchmarks/RESULTS.md.
#
#   benchmarks/proteins_realsize.sh ROOT OUT [phases...]     (default phases: write load detect step)
#
# Before each run it checks MemAvailable and stops (exit 3) when less than NEED_GB is free, so a
# shared machine is never pushed into swap or the OOM killer.
set -u
ROOT=${1:-/tmp/proteins-full}
OUT=${2:-/tmp/proteins-full-results}
shift 2 2>/dev/null || true
PHASES=${*:-write load detect step}
MODELS=${MODELS:-gt graphit san}
NEED_GB=${NEED_GB:-17}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
export MALLOC_MMAP_THRESHOLD_=65536  # large blocks mmapped: RSS follows the live tensors

available_gb() { awk '/MemAvailable/ {printf "%d", $2 / 1048576}' /proc/meminfo; }
guard() {
    local free; free=$(available_gb)
    if [ "$free" -lt "$NEED_GB" ]; then
        echo "$(date -u +%H:%M:%S) only ${free} GB available (< ${NEED_GB}): stopping before $1" | tee -a "$OUT/log.txt"
        exit 3
    fi
}
run() {  # name, command...
    local name=$1; shift
    guard "$name"
    echo "$(date -u +%H:%M:%S) start $name: $*" | tee -a "$OUT/log.txt"
    /usr/bin/time -v "$@" > "$OUT/$name.json" 2> "$OUT/$name.time.txt"
    local rc=$?
    echo "$(date -u +%H:%M:%S) done $name rc=$rc $(grep -E 'Maximum resident|Elapsed' "$OUT/$name.time.txt" | tr -s ' \t' ' ')" \
        | tee -a "$OUT/log.txt"
}

for phase in $PHASES; do
    case $phase in
        write)
            run write python -c "import json, time; from magnn.data import write_ogb_proteins_raw; t = time.perf_counter(); \
folder = write_ogb_proteins_raw('$ROOT', overwrite=True); print(json.dumps({'folder': str(folder), 'seconds': round(time.perf_counter() - t, 1)}))" ;;
        load)
            run load python "$HERE/proteins_fullbatch.py" --real "$ROOT" --phase load ;;
        detect|step)
            for model in $MODELS; do
                run "$phase-$model" python "$HERE/proteins_fullbatch.py" --real "$ROOT" --phase "$phase" --model "$model"
            done ;;
    esac
done
