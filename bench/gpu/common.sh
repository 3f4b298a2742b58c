# Sourced by bench/gpu/train.sh and bench/gpu/evaluate.sh, from the repository root.
set -u
T0=$(date +%s)
R=runs/gpu
OUT=$(realpath -m "${OUT:-runs/gpu/out}"); mkdir -p "$OUT"
OTHERS="maml-20w5s protonet-5w5s protonet-20w5s fomaml-5w5s fomaml-20w1s fomaml-20w5s metasgd-5w5s"
REPTILES="reptile-5w1s reptile-5w5s reptile-20w1s reptile-20w5s"

# wheels of what the GPU image lacks (pydantic) from .whl/, unless SKIP_PIP is set
install_wheels() {
  [ -n "${SKIP_PIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
}

export PYTHONPATH=/tmp/site:$PWD/src QUICKSTUDY_DATA=${QUICKSTUDY_DATA:-$PWD/.gpu} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1

# wait_with_deadline SECONDS PATTERN PID...: wait for the PIDs; SECONDS after the start, terminate the processes
# matching PATTERN (SIGTERM, then SIGKILL 10 s later; SIGINT would not do: background jobs of a script ignore it),
# so that the archives are still written inside the device call's limit; such a run keeps its last checkpoint
# (train.checkpoint_every). The sleeps do not hold the caller's stdout (a pipe would wait for them).
wait_with_deadline() {
  local deadline=$1 pattern=$2
  shift 2
  ( sleep $((deadline - ($(date +%s) - T0))) >/dev/null 2>&1; echo WATCHDOG; pkill -TERM -f "$pattern"
    sleep 10 >/dev/null 2>&1; pkill -KILL -f "$pattern" ) &
  local watchdog=$!
  wait "$@"
  kill $watchdog 2>/dev/null  # before it wakes; its orphaned sleep holds no pipe
}
