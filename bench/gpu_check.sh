#!/usr/bin/env bash
# The whole GPU check as one command, for an offline GPU machine (../shared/GPU.md):
#
#   bash bench/gpu_check.sh            # from the project root; results in ${OUT:-bench-out}/
#
# 1. installs the carried Pyro wheels (.whl/*.whl: pyro-ppl, pyro-api, and pytest's wheels too if
#    the machine has no pytest) into /tmp/site without the network, and puts it and the project
#    on PYTHONPATH;
# 2. runs the CUDA-marked tests (pytest -q -m cuda, without the modules that need hypothesis or
#    ArviZ, which the GPU machine lacks; two of them compile with inductor) -> pytest-cuda.log;
# 3. runs every benchmark with --device cuda -> NAME.json (stderr in NAME.err), sized so that the
#    whole script takes under 5 minutes: the streamed run of a 10^7-row memory-mapped file
#    (bench/memmap_run.py) first, then EM, SVI against EM, scaling and the VAE step;
# 4. the compiled SVI steps (issue 15; GPU_CHECK_COMPILED=0 leaves them out): bench/gmm_step.py
#    (eager, graph, inductor with CUDA graphs) and bench/vae_step.py with its compiled rows, each
#    compile 10-60 s, so these add up to 6 minutes.
# A step that fails is recorded and the rest still run; the exit status is the number of failed
# steps. GPU_CHECK_BUNDLE=1 packs every result into one file, OUT/gpu-check.tgz, for runners that
# bring back only a few files (the lent machine's brings back 8; unpack with tar -xzf). Without a GPU, GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1 GPU_CHECK_INSTALL=0 runs the same
# steps on the CPU, quick (the CUDA tests are then skipped), as a dry run of the script itself.
set -u -o pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-bench-out}"
PYTHON="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
QUICK=()
[ "${GPU_CHECK_QUICK:-0}" = 1 ] && QUICK=(--quick)
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

if [ "${GPU_CHECK_INSTALL:-1}" = 1 ]; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no wheels in .whl/: download them once where there is a network (../shared/GPU.md)" >&2
    exit 100
  fi
  rm -rf /tmp/site  # a pytest left there by an earlier run would shadow the machine's own
  WHEELS=(.whl/pyro*.whl)  # pytest's wheels only where the machine has no pytest of its own
  "$PYTHON" -c 'import pytest' 2>/dev/null || WHEELS=(.whl/*.whl)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${WHEELS[@]}" || exit 101
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

failed=()
step() {  # step NAME SECONDS COMMAND...: stdout to NAME.json, stderr to NAME.err
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" >"$OUT_DIR/$name.json" 2>"$OUT_DIR/$name.err"; then
    echo "ok   $name ($((SECONDS - start)) s)"
  else
    echo "FAIL $name ($((SECONDS - start)) s, exit $?): see $OUT_DIR/$name.err"
    failed+=("$name")
  fi
}

{
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$PYTHON" -c 'import torch, sys; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
} >"$OUT_DIR/machine.txt" 2>&1

start=$SECONDS
if timeout 330 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider --ignore=tests/test_fuzz.py \
  --ignore=tests/gallery/test_arviz_export.py >"$OUT_DIR/pytest-cuda.log" 2>&1; then
  echo "ok   pytest -m cuda ($((SECONDS - start)) s)"
else
  echo "FAIL pytest -m cuda ($((SECONDS - start)) s): see $OUT_DIR/pytest-cuda.log"
  failed+=(pytest-cuda)
fi

D=(--device "$DEVICE")
if [ ${#QUICK[@]} -eq 0 ]; then ROWS=10000000; else ROWS=200000; fi
MEMMAP="${TMPDIR:-/tmp}/gmm-scaling-$ROWS.npy"  # 320 MB at 10^7 rows; deleted below
step make_memmap 60 "$PYTHON" bench/make_memmap.py "$MEMMAP" --num-data "$ROWS" --dim 4
# the run command on the file: in memory, then streamed; B = 10,000 rows a step on the GPU
step memmap_run 150 "$PYTHON" bench/memmap_run.py "$MEMMAP" "${D[@]}" --batch-size 10000 --small-rows $((ROWS / 10))
# scikit-learn on 2 CPU cores (the issue's baseline); ours float64 and float32
step gmm_em 90 "$PYTHON" bench/gmm_em.py "${D[@]}" "${QUICK[@]}" --threads 2 --repeats 3
step gmm_em_float32 60 "$PYTHON" bench/gmm_em.py "${D[@]}" "${QUICK[@]}" --threads 2 --repeats 3 --dtype float32
step vae_step 60 "$PYTHON" bench/vae_step.py "${D[@]}" "${QUICK[@]}" --no-compiled
step gmm_svi_vs_em 60 "$PYTHON" bench/gmm_svi_vs_em.py "${D[@]}" "${QUICK[@]}" --threads 2
step scaling 120 "$PYTHON" bench/scaling.py "${D[@]}" "${QUICK[@]}" --threads 2 --max-steps 2000 --memmap "$MEMMAP"
rm -f "$MEMMAP"
if [ "${GPU_CHECK_COMPILED:-1}" = 1 ]; then
  step gmm_step 150 "$PYTHON" bench/gmm_step.py "${D[@]}" --threads 2
  step gmm_step_cpu1 150 "$PYTHON" bench/gmm_step.py --device cpu --threads 1 --modes off,graph
  step vae_step_compiled 200 "$PYTHON" bench/vae_step.py "${D[@]}" "${QUICK[@]}"
fi

if [ "${GPU_CHECK_BUNDLE:-0}" = 1 ]; then
  (cd "$OUT_DIR" && tar -czf gpu-check.tgz --remove-files -- *.json *.err *.log *.txt 2>/dev/null)
fi
echo "results in $OUT_DIR; $((SECONDS)) s in all; failed: ${failed[*]:-none}"
exit ${#failed[@]}
