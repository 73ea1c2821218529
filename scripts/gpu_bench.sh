#!/usr/bin/env bash
# The GPU benchmark (`kdflow bench throughput --profile gpu`) on a machine whose Python has torch but not
# kdflow's other dependencies, with no network: everything it needs travels in .gpu/ beside the checkout.
#
#   scripts/gpu_bench.sh prepare          here, with network: wheels of what such an image lacks
#                                         (mlflow-skinny + its SQL store, kfp), the CIFAR-10 tarball and the
#                                         ResNet-56 checkpoint from ../shared, into .gpu/ (git-ignored)
#   scripts/gpu_bench.sh throughput       there: both pairs' images/s against their ceilings   (~6 min on an H200)
#   scripts/gpu_bench.sh pipeline         there: the CIFAR-10 pipeline figure (kdflow run, 100 epochs)
#   scripts/gpu_bench.sh all              there: both, one after the other
#
# Results (the Markdown section, results JSON, logs, nvidia-smi) go to $OUT (default /tmp/kdflow-gpu-bench/out);
# append the section to docs/benchmarks.md by hand after reading it. PYTHON=... picks the interpreter,
# PROFILE=... the profile (quick checks this script's plumbing on any machine in seconds).
set -uo pipefail

MODE=${1:-all}
PY=${PYTHON:-python3}
PROFILE=${PROFILE:-gpu}
OUT=${OUT:-/tmp/kdflow-gpu-bench/out}
WORK=${WORK:-/tmp/kdflow-gpu-bench}
CARRY=.gpu
EPOCHS=${EPOCHS:-100}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_bench.log"

say() { echo "gpu_bench: $*" | tee -a "$LOG" >&2; }

if [ "$MODE" = prepare ]; then
  mkdir -p "$CARRY/whl" "$CARRY/data"
  grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
  for f in ../shared/data/cifar10-jpg.tar.gz ../shared/models/cifar10-resnet/resnet56-4bfd9763.th; do
    if [ -f "$f" ]; then cp -u "$f" "$CARRY/data/"; else say "missing $f: the pipeline figure will be skipped"; fi
  done
  MLFLOW_VERSION=$(.venv/bin/python -c 'import mlflow; print(mlflow.__version__)' 2>/dev/null || echo 3.1.4)
  # Wheels for CPython 3.12 on x86-64 Linux with their dependencies; the install there takes from them only
  # what the image lacks (pip keeps what is installed and satisfies the requirement).
  python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$CARRY/whl" "mlflow-skinny==$MLFLOW_VERSION" sqlalchemy alembic "kfp==2.17.3" \
    "kfp-kubernetes==2.17.3" boto3 || { say "pip download failed"; exit 1; }
  # What the image already has (torch, numpy, ...) must not travel: it would only exceed the size limit.
  rm -f "$CARRY"/whl/{torch,numpy,nvidia_,triton,pandas,pyarrow,scipy}*.whl
  du -sh "$CARRY"
  exit 0
fi

exec > >(tee -a "$LOG") 2>&1
say "mode $MODE, profile $PROFILE, python $($PY -c 'import sys; print(sys.version.split()[0])')"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || say "no nvidia-smi (no GPU?)"

# kdflow's dependencies: from the carried wheels, only what is missing; then kdflow itself, without touching
# the image's torch (no build isolation: nothing can be fetched there).
if ! $PY -c 'import kdflow.cli, mlflow, kfp, boto3' 2>/dev/null; then
  if ls "$CARRY"/whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-index --find-links "$CARRY/whl" mlflow-skinny sqlalchemy alembic kfp \
      kfp-kubernetes boto3 || say "installing the carried wheels failed (see above)"
  else
    say "no carried wheels in $CARRY/whl: run 'scripts/gpu_bench.sh prepare' here first and carry $CARRY"
  fi
  $PY -m pip install --quiet --no-deps --no-build-isolation -e . || say "pip install -e . failed"
fi
if ! $PY -c 'import kdflow.cli, mlflow, torch' ; then
  say "kdflow cannot be imported with its dependencies: nothing measured"
  exit 2
fi
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
         torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'

kdflow() { $PY -c 'from kdflow.cli import entrypoint; entrypoint()' "$@"; }
status=0
if [ "$MODE" = throughput ] || [ "$MODE" = all ]; then
  kdflow bench throughput --profile "$PROFILE" --pairs imagenet,cifar --no-pipeline --workdir "$WORK/throughput" \
    --output "$OUT/benchmarks-throughput.md" || { say "throughput failed"; status=1; }
  cp "$WORK/throughput/throughput-results.json" "$OUT/" 2>/dev/null
fi
if [ "$MODE" = pipeline ] || [ "$MODE" = all ]; then
  kdflow bench throughput --profile "$PROFILE" --pairs none --pipeline-epochs "$EPOCHS" \
    --cifar "$CARRY/data/cifar10-jpg.tar.gz" --cifar-teacher "$CARRY/data/resnet56-4bfd9763.th" \
    --workdir "$WORK/pipeline" --output "$OUT/benchmarks-pipeline.md" || { say "pipeline figure failed"; status=1; }
  cp "$WORK/pipeline/pipeline.log" "$OUT/" 2>/dev/null
fi
say "done (status $status); results in $OUT"
exit $status
