#!/usr/bin/env bash
# One call on a bare GPU machine: the CUDA tests, the speed benchmark at 256x256 (plain,
# previous and default paths) and a short Ped2 train + evaluate with the defaults, each step
# under its own time limit, everything written to OUT_DIR (at most 8 files).
#
#   benchmarks/gpu_check.sh DATA OUT_DIR
#
# DATA: a Ped2 frame tree (a folder holding ped2/) or a tar of one (e.g. ped2_256_gray.tar).
# Needs only the machine's own Python with torch, OpenCV, scikit-learn/-image, matplotlib,
# tqdm and pytest; no network. About 7.5 minutes with the default limits; EPOCHS (2),
# SPEED_SIZES (256x256) and the *_LIMIT variables (seconds) change them. A dry run of the
# script itself on a CPU: DEVICE=cpu SPEED_SIZES=32x32 TRAIN_FLAGS="--h 32 --w 48" EPOCHS=1.
set -u
data=${1:?usage: benchmarks/gpu_check.sh DATA OUT_DIR}
out=${2:?usage: benchmarks/gpu_check.sh DATA OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1
summary="$out/summary.txt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() {  # step NAME LIMIT LOG COMMAND...: run with a time limit, record status and seconds
    local name=$1 limit=$2 log=$3
    shift 3
    local began=$SECONDS
    timeout "$limit" "$@" >"$log" 2>&1
    local status=$?
    echo "$name: exit $status after $((SECONDS - began)) s (limit $limit s)" | tee -a "$summary"
}

{
    echo "gpu_check at $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
} | tee "$summary"

if [ -f "$data" ]; then
    tar -xf "$data" -C "$work" && data_root=$work
else
    data_root=$data
fi

step "cuda tests" "${TESTS_LIMIT:-120}" "$out/tests.log" \
    python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_fast_path.py
step "speed benchmark" "${SPEED_LIMIT:-210}" "$out/speed.log" \
    python benchmarks/speed.py --sizes "${SPEED_SIZES:-256x256}" --device "${DEVICE:-cuda}" --variants none \
    --frames 96 --train_steps 30 --repeats 2 --json "$out/cuda_256x256.json"
step "ped2 train" "${TRAIN_LIMIT:-110}" "$out/train.log" \
    python train.py --dataset_type ped2 --dataset_path "$data_root" --epochs "${EPOCHS:-2}" \
    --num_workers 8 --output_root "$work/exp" --exp_dir gpu_check --device "${DEVICE:-cuda}" \
    ${TRAIN_FLAGS:-}
cp "$work/exp/ped2/gpu_check/log.jsonl" "$out/train_log.jsonl" 2>/dev/null
step "ped2 evaluate" "${EVAL_LIMIT:-60}" "$out/evaluate.log" \
    python evaluate.py --dataset_type ped2 --dataset_path "$data_root" \
    --checkpoint "$work/exp/ped2/gpu_check/checkpoint.pth" --report "$out/ped2_report.json" \
    --device "${DEVICE:-cuda}"
tail -n 3 "$out/evaluate.log" >>"$summary"
echo "outputs in $out: $(ls "$out" | tr '\n' ' ')" | tee -a "$summary"
