#!/usr/bin/env bash
# `make bench`: the CPU benchmarks, each printing ratios against a peer measured in the same run.
# Record the output, with the CPU model (lscpu), in bench/RESULTS.md. Never part of `make test`.
# SD-XL at 1024² needs about 16 GB of memory and several minutes per UNet call on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}/bench
echo "== CPU: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores)"
echo "== sgemm rate";                 "$B/cpu_sgemm_rate"
echo "== ops on SD 1.5 shapes";       "$B/cpu_ops_rate"
echo "== SD 1.5 UNet, 512²";          "$B/unet_cpu" sd1 512 1 2
echo "== SD-XL UNet, 512²";           "$B/unet_cpu" sdxl 512 1 1
if [ "${LOCO_BENCH_SDXL_1024:-1}" = 1 ]; then
  echo "== SD-XL UNet, 1024²";        "$B/unet_cpu" sdxl 1024 1 1
fi
[ -x "$B/edit_cpu" ] && { echo "== closed-form edits"; "$B/edit_cpu"; }
[ -x "$B/locogen_batched" ] && { echo "== LocoGen batched vs one by one"; "$B/locogen_batched"; }
exit 0
