#!/usr/bin/env bash
# GPU readiness in one command (about 4-6 minutes on one H100/H200), from the repository root:
#   bash benchmarks/gpu_check.sh
# 1. the GPU tests (tests/test_gpu.py: cached decoding == full recompute, a train step == the
#    CPU's, bf16 close to f32) with JAX seeing the GPU;
# 2. 50 pretraining steps of experiments/configs/gpt2_124m.py (bf16 compute, batch 64 x 1024 in
#    4 micro-batches) on synthetic tokens, with MFU against a bf16 matmul measured in the same run;
# 3. decode throughput of the engine on that model at batch 1 and 64 against the measured bounds.
# Needs no dataset. Python packages: those of setup.py with a CUDA jax (`pip install -e '.[cuda,test]'`);
# where a package is missing and the machine is offline, put its wheels in $GPT_JAX_WHEELS (default
# .whl/) and they are installed into a scratch directory first. Logs and a summary go to
# $GPU_CHECK_DIR (default runs/gpu_check). Exit status: the number of failed parts.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DIR=${GPU_CHECK_DIR:-runs/gpu_check}
WHEELS=${GPT_JAX_WHEELS:-.whl}
mkdir -p "$DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpt_jax_site "$WHEELS"/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/gpt_jax_site"
fi
if ! $PY -c "import jax, flax, optax, orbax.checkpoint, ml_collections, tokenizers" 2>/dev/null; then
  $PY -m pip install -q -e '.[cuda,test]' || { echo "cannot install the Python packages"; exit 1; }
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} | tee "$DIR/env.txt"
failed=0
part() {  # part <name> <command...>: run, log to $DIR/<name>.log, report its time and status
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*"
  "$@" 2>&1 | tee "$DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$DIR/summary.txt"
  [ "$rc" = 0 ] || failed=$((failed + 1))
}
: > "$DIR/summary.txt"
part tests env JAX_PLATFORMS=cuda,cpu $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -rs
part train $PY benchmarks/train_mfu.py --config experiments/configs/gpt2_124m.py --steps 50
part decode $PY benchmarks/engine_throughput.py --config experiments/configs/gpt2_124m.py --batch 1 64
for name in tests train decode; do tail -n 1 "$DIR/$name.log" | sed "s/^/$name: /"; done | tee -a "$DIR/summary.txt"
exit $failed
