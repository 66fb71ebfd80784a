#!/usr/bin/env bash
# Does the CPU fast path (bf16 autocast + channels_last) train as well as plain fp32? Two seeds of
# ResNet-20 each way, 2000 iterations (about 5 epochs, lr drops at 1000 and 1500) on the JPEG
# CIFAR-10 copy; same seeds, so same initial weights and same batches. About 40 minutes on 2 cores.
# Then: python benchmarks/summarize.py --accuracy outputs (the runs behind the README are copied
# into benchmarks/accuracy/: python benchmarks/summarize.py --accuracy benchmarks/accuracy)
set -euo pipefail
root=${1:-../shared/data/cifar10-jpeg.tar.xz}
for seed in 0 1; do
  for way in "bf16 true" "fp32 false"; do
    set -- $way
    resexp train depth=20 data=folder data.root="$root" schedule.iterations=2000 \
      schedule.eval_every=500 seed=$seed device=cpu precision=$1 channels_last=$2 \
      name=fastpath-$1 progress=lines
  done
done
