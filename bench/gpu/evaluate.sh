#!/bin/bash
# Omniglot rows of docs/results.md on a lent GPU, step 2 of 2 (after bench/gpu/train.sh on the same machine,
# or with its archives unpacked from RESTORE): resume every run to LIMIT2 minutes of training (Reptile: to its
# train.steps), then evaluate on the fixed test episodes (Reptile: the last, fully annealed weights).
source bench/gpu/common.sh
if [ ! -d $R/maml-20w5s ]; then
  for f in ${RESTORE:-.gpu/a1}/*.tgz; do mkdir -p $R; tar xzf $f -C $R || exit 1; done
  install_wheels || exit 1
  echo "fresh machine: restored runs from .gpu/a1"
fi
[ -d $R/maml-20w5s ] || { echo NO RUNS; exit 3; }
LIMIT2=${LIMIT2:-11}; pids=()
for c in $OTHERS; do
  ( python3 -m quickstudy resume $R/$c --time-limit $LIMIT2 --json --quiet >$R/$c.resume.json 2>>$R/$c.log;
    python3 -m quickstudy eval $R/$c --json >$R/$c.eval.json 2>>$R/$c.log ) &
  pids+=($!)
done
for c in $REPTILES; do
  ( python3 -m quickstudy resume $R/$c --time-limit 12 --json --quiet >$R/$c.resume.json 2>>$R/$c.log;
    python3 -m quickstudy eval $R/$c --checkpoint last --json >$R/$c.eval.json 2>>$R/$c.log ) &
  pids+=($!)
done
wait_with_deadline 545 "quickstudy (resume|eval)" "${pids[@]}"
echo "A2 done after $(( $(date +%s) - T0 )) s"
python3 -c "import torch; print('hardware', torch.cuda.get_device_name(0), torch.__version__)"
for c in $OTHERS $REPTILES; do echo "$c $(python3 -c "import json,sys; d=json.load(open('$R/$c.eval.json')); print(d.get('mean'), d.get('ci95'), d.get('trained_steps'), d.get('train_seconds'))" 2>&1 | tail -1)"; grep -i -m3 "error\|Traceback" $R/$c.log; done
cd $R && tar czf $OUT/a2_others.tgz --exclude=tensorboard --exclude='*.pt' $OTHERS *.log *.json *.txt && tar czf $OUT/a2_reptile.tgz --exclude=tensorboard --exclude='*.pt' $REPTILES
ls -la $OUT
