#!/usr/bin/env bash
# The CPU measurements behind README "Speed" (issue 5). Run from the repository root, on a quiet
# machine (the load average is recorded in each JSON): bash benchmarks/cpu.sh [OUT]
# About 12 minutes on 2 cores. Then: python benchmarks/summarize.py benchmarks/cpu
set -euo pipefail
out=${1:-benchmarks/cpu}
mkdir -p "$out"
# A fresh Inductor cache, so that the first step's time includes a cold torch.compile.
export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)

# 1. The options one by one, ResNet-20, resexp's loop alone (to choose the CPU defaults).
for precision in fp32 bf16; do
  for cl in false true; do
    resexp bench depth=20 bench.baseline=false precision="$precision" channels_last="$cl" \
      compile=false bench.iterations=60 bench.json="$out/options-resnet-20-$precision-cl-$cl.json"
  done
done
resexp bench depth=20 bench.baseline=false compile=true bench.iterations=60 \
  bench.json="$out/options-resnet-20-compile.json"
resexp bench depth=20 bench.baseline=false compile=false threads=1 bench.iterations=60 \
  bench.json="$out/options-resnet-20-threads-1.json"

# Two runs at once, one thread each (what `resexp sweep hydra/launcher=joblib
# hydra.launcher.n_jobs=2 threads=1` does), against one run on both cores above.
for k in 1 2; do
  resexp bench depth=20 bench.baseline=false compile=false threads=1 bench.iterations=60 \
    bench.json="$out/parallel-resnet-20-$k.json" &
done
wait

# 2. resexp's defaults (bf16, channels_last, torch.compile on this CPU) against the conventional
# loop, side by side (alternating blocks).
resexp bench depth=20 bench.iterations=100 bench.json="$out/resnet-20.json"
resexp bench depth=56 bench.iterations=50 bench.json="$out/resnet-56.json"
