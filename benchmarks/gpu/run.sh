#!/usr/bin/env bash
# One GPU loan in one command (issue 16): checks, CUDA correctness tests, micro-benchmarks, a
# measured profile (beside the derived one), the engine gpu-only vs neo (vs apex, adaptive) in
# the KV-limited regime, and neo-sim's prediction of the same runs. Everything lands in $OUT (at most 8 files):
#   env.json tests.log micro.json profile.json derived.json engine.json summary.md run.log
#
#   benchmarks/gpu/run.sh                       # on the lent machine: --device cuda, <= 9 min
#   benchmarks/gpu/run.sh --device cpu --quick  # the rehearsal here (tiny model, < 1 min)
#
# Installs nothing from a network. Python packages the machine's image lacks travel as wheels
# in .whl/ (the device tool's README says how); none are needed today: the image has torch,
# transformers, numpy, pandas, scipy, tqdm, safetensors, pytest, hypothesis and ninja.
# Each step has its own time limit, so one that hangs costs its limit and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/../.."

DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: $0 [--device cuda|cpu] [--quick] [--out DIR]" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-benchmarks/results/gpu-loan-$DEVICE}"
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
started=$(date +%s)
stamp() { echo "== $(( $(date +%s) - started )) s: $*"; }

if compgen -G ".whl/*.whl" >/dev/null; then
  stamp "installing carried wheels: $(ls .whl)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/neo-site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/neo-site"
  export NEO_CARRIED_WHEELS="$(ls .whl | tr '\n' ' ')"
fi

if [ "$QUICK" = 1 ]; then
  TESTS=(tests/engine/test_equivalence.py -k "neo-8 or gpu-only-25 or apex")
  PROFILE_ARGS=(--model dummy:tiny --dtype float32 --quick --passes 1)
  LIMIT_BUILD=300 LIMIT_TESTS=240 LIMIT_MICRO=60 LIMIT_PROFILE=240 LIMIT_ENGINE=150 TOTAL=900
else
  TESTS=(tests/engine/test_equivalence.py tests/engine/test_decision_equality.py
         tests/engine/test_host_kernel.py tests/engine/test_sampling.py)
  PROFILE_ARGS=(--model dummy:llama-3-8b --dtype bfloat16 --quick --passes 2)
  # the loan: 9 minutes in all (a command may run 10), each step capped by what is left
  LIMIT_BUILD=180 LIMIT_TESTS=150 LIMIT_MICRO=60 LIMIT_PROFILE=150 LIMIT_ENGINE=240 TOTAL=540
fi
# seconds a step may run: its own limit, or what is left of TOTAL if that is less
cap() { local left=$(( TOTAL - ($(date +%s) - started) )); echo $(( left < $1 ? (left > 1 ? left : 1) : $1 )); }

# The host kernels compile on first use; build them now, beside the first steps.
stamp "building the host kernels (background)"
timeout "$LIMIT_BUILD" "$PY" -c "import time; t = time.time(); from neo_engine.cpu_kernel import load_extension
print('host kernels:', 'built' if load_extension() else 'NOT built (torch fallbacks)', f'in {time.time() - t:.0f} s')" &
build=$!

stamp "env"
timeout 60 "$PY" -m benchmarks.gpu.loan env --device "$DEVICE" --out "$OUT"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv
wait "$build"

stamp "correctness tests on $DEVICE"
NEO_TEST_DEVICE="$DEVICE" timeout "$(cap "$LIMIT_TESTS")" "$PY" -m pytest -p no:cacheprovider \
  "${TESTS[@]}" 2>&1 | tee "$OUT/tests.log" | tail -25

stamp "micro-benchmarks"
timeout "$(cap "$LIMIT_MICRO")" "$PY" -m benchmarks.gpu.loan micro --device "$DEVICE" --out "$OUT"

stamp "neo-profile ${PROFILE_ARGS[*]}"
timeout "$(cap "$LIMIT_PROFILE")" "$PY" -m neo_engine.profiler "${PROFILE_ARGS[@]}" --device "$DEVICE" \
  --output "$OUT/profile.json" 2>&1 | grep -v "profiling:"

PROFILE=()
if [ -f "$OUT/profile.json" ]; then
  stamp "the measured profile against the derived one"
  timeout 60 "$PY" -m benchmarks.gpu.loan derived --device "$DEVICE" --out "$OUT" \
    --profile "$OUT/profile.json"
  PROFILE=(--profile "$OUT/profile.json")
  stamp "engine vs neo-sim, every policy"
else  # the engine comparison still runs, deciding with its own quick probe
  stamp "no profile: engine runs without neo-sim beside them"
fi
limit=$(cap "$LIMIT_ENGINE")
timeout "$limit" "$PY" -m benchmarks.gpu.loan engine --device "$DEVICE" --out "$OUT" \
  "${PROFILE[@]}" --budget-s $(( limit - 10 ))

stamp "summary"
"$PY" -m benchmarks.gpu.loan summary --device "$DEVICE" --out "$OUT"
stamp "done"
