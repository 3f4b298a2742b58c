#!/bin/bash
# Omniglot rows of docs/results.md on a lent GPU, step 1 of 2 (step 2: bench/gpu/evaluate.sh), run from the
# repository root on the GPU machine: `bash bench/gpu/train.sh`. Trains 11 configs side by side, one CPU
# thread each. Non-Reptile configs: the published schedule, cut at LIMIT1 minutes of training (resumed by
# step 2). Reptile: its linear annealing must finish, so a 45 s probe measures its steps/s under the same
# load and train.steps is set to what fits in REPTILE_TOTAL minutes. Data: QUICKSTUDY_DATA (default .gpu).
# Wheels for packages the GPU image lacks (pydantic) are installed from .whl/ unless SKIP_PIP is set.
source bench/gpu/common.sh
install_wheels || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, quickstudy; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" || exit 1
mkdir -p $R
LIMIT1=${LIMIT1:-7}; REPTILE_TOTAL=${REPTILE_TOTAL:-10.5}
mains=()
for c in $OTHERS; do
  python3 -m quickstudy train configs/omniglot/$c.yaml --out $R/$c --time-limit $LIMIT1 --json --quiet >$R/$c.train.json 2>$R/$c.log &
  mains+=($!)
done
probes=()
for c in $REPTILES; do
  python3 -m quickstudy train configs/omniglot/$c.yaml --out $R/probe-$c --time-limit 0.75 --json --quiet train.val_episodes=10 >/dev/null 2>$R/probe-$c.log &
  probes+=($!)
done
wait "${probes[@]}"
START_R=$(date +%s)
for c in $REPTILES; do
  N=$(python3 - "$R/probe-$c/metrics.csv" "$REPTILE_TOTAL" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["split"] == "train" and r.get("elapsed")]
last = rows[-1]
rate = int(last["step"]) / float(last["elapsed"])
print(max(500, int(rate * float(sys.argv[2]) * 60 * 0.85) // 100 * 100))
PY
)
  echo "$c: probe $(tail -1 $R/probe-$c/metrics.csv | cut -d, -f1,9) -> train.steps=$N" | tee -a $R/reptile_steps.txt
  echo "$c train.steps=$N train.val_episodes=100" >> $R/reptile_overrides.txt
  LIM=$(python3 -c "print(max(1.0, round($LIMIT1 - ($START_R - $T0) / 60 + 0.3, 2)))")
  python3 -m quickstudy train configs/omniglot/$c.yaml --out $R/$c --time-limit $LIM --json --quiet train.steps=$N train.val_episodes=100 >$R/$c.train.json 2>$R/$c.log &
  mains+=($!)
done
wait_with_deadline 540 "quickstudy train" "${mains[@]}"
echo "A1 done after $(( $(date +%s) - T0 )) s"
for c in $OTHERS $REPTILES; do echo "$c $(tail -1 $R/$c/metrics.csv | cut -c1-120)"; grep -i -m3 "error\|Traceback" $R/$c.log; done
nvidia-smi --query-gpu=memory.used --format=csv,noheader
cd $R && tar czf $OUT/a1_a.tgz --exclude=tensorboard maml-20w5s protonet-5w5s protonet-20w5s *.log *.txt *.json; tar czf $OUT/a1_b.tgz --exclude=tensorboard fomaml-5w5s fomaml-20w1s fomaml-20w5s metasgd-5w5s; tar czf $OUT/a1_reptile.tgz --exclude=tensorboard $REPTILES
ls -la $OUT
