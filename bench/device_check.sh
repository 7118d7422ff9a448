#!/usr/bin/env bash
# The prepared GPU check: one call of a lent device machine (about 6 of its 15 minutes).
#
# It measures what this 2-core CPU cannot: what amortised SafeGrad costs next to `standard`
# where a small model's pass is bound by kernel launches rather than by arithmetic (issue
# #10's last target: <= 1.15x standard's step within 2 points of k = 1's refusal; on the
# CPU lab the 2-point band costs ~1.35x, docs/status.md "Session 18"), and that the loop,
# the methods and the evaluation run on CUDA at all.
#
#   bash bench/device_check.sh prepare        # here, once: wheels the device image lacks -> .whl/,
#                                             # the built lab model -> .lab-model/ (both git-ignored)
#   run(command="bash bench/device_check.sh", carry=[".whl", ".lab-model"], timeout_s=540)
#   DEVICE=cpu QUICK=1 bash bench/device_check.sh   # the same steps here, tiny, to check the script
#
# Results land in $OUT (the device tool's folder; runs/device-check elsewhere), at most 8 files:
#   methods-<task>.md/.json          step time x standard: standard, safegrad (k = 1), -k24, -k24b48
#   methods-<task>-one-pass.md/.json the same with each safety batch in one pass (safety_micro_batch=48)
#   lab.md                           refusal / over-refusal / task of safegrad and -k24b48 on CUDA, 3 seeds
#   trainer.md                       safetune's loop against transformers.Trainer (tokens/s)
#   log.txt                          everything printed
# Each step has its own time limit and a failing step does not stop the next: one call gives
# as much as it can.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=(pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5
        typing_extensions==4.16.0 transformers==5.24.0)  # what the device image lacks or has older

if [ "${1:-}" = prepare ]; then
    set -e
    rm -rf .whl && mkdir .whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
    model=${SAFETUNE_LAB_MODEL:-$HOME/.cache/safetune/lab-model}
    test -f "$model/config.json" || { echo "no lab model at $model: run 'safetune lab build' first" >&2; exit 1; }
    rm -rf .lab-model && cp -r "$model" .lab-model
    du -sh .whl .lab-model
    exit 0
fi

DEVICE=${DEVICE:-cuda}
TASK=${TASK:-extract}
OUT=${OUT:-$ROOT/runs/device-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
if [ "$DEVICE" = cuda ]; then
    PYTHON=python3
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$ROOT
    export SAFETUNE_LAB_MODEL=$ROOT/.lab-model HOME=/tmp/device-home
    nvidia-smi -L
else
    PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
fi
export PYTHONUNBUFFERED=1
SCRATCH=$(mktemp -d)
if [ -n "${QUICK:-}" ]; then  # a check of this script, not a measurement
    ROUNDS=1 BLOCK=8 SEEDS="0" STEPS=(--override train.max_steps=24) TRAINER=(--steps 4 --warmup 1 --repeats 2)
else
    ROUNDS=6 BLOCK=48 SEEDS="0 1 2" STEPS=() TRAINER=(--steps 30 --warmup 5 --repeats 4)
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, report, go on
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T), limit ${limit}s)"
    local started=$SECONDS
    timeout "$limit" "$@"
    echo "=== $name: exit $? after $((SECONDS - started))s"
}

step versions 60 $PYTHON -c "import torch, transformers, safetune, sys; print(sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
CONFIGS=safegrad-k24,safegrad-k24b48,safegrad
step methods 120 $PYTHON bench/bench_methods.py --device "$DEVICE" --task "$TASK" --configs $CONFIGS \
    --block $BLOCK --rounds $ROUNDS --results "$OUT" --name "methods-$TASK"
step methods-one-pass 120 $PYTHON bench/bench_methods.py --device "$DEVICE" --task "$TASK" --configs $CONFIGS \
    --block $BLOCK --rounds $ROUNDS --method-override method.safety_micro_batch=48 --results "$OUT" \
    --name "methods-$TASK-one-pass"
step lab 240 $PYTHON bench/lab_bench.py --tasks "$TASK" --configs safegrad,safegrad-k24b48 --settings benign \
    --harmful-configs none --seeds $SEEDS --jobs 1 --override "train.device=$DEVICE" "${STEPS[@]}" \
    --out "$SCRATCH/lab" --results "$SCRATCH/lab-results" --no-readme
cp "$SCRATCH"/lab-results/*.md "$OUT/lab.md" 2>/dev/null
step trainer 120 $PYTHON bench/bench_trainer.py --device "$DEVICE" "${TRAINER[@]}" --name device-trainer
mv bench/results/device-trainer.md "$OUT/trainer.md" 2>/dev/null; rm -f bench/results/device-trainer.json
rm -rf "$SCRATCH"
ls -la "$OUT"
