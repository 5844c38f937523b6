#!/usr/bin/env bash
# bench/gpu/prepare.sh: packs what a lent GPU machine needs to run bench/gpu-check.sh, on a
# machine that can build loco (Debian 12 with scripts/install-deps.sh, x86-64). The lent machines
# have nvcc, PyTorch and transformers, but not loco's C libraries (jansson, libmicrohttpd, ...)
# nor diffusers, and nothing can be fetched there.
#
#   .gpu/kit.tar.xz   bin/: test_cuda_ops, test_cuda_optin, test_cuda_pipeline, test_cuda_methods,
#                     test_cuda_full_size, test_cudnn_graphs, op_bench, pipeline_bench,
#                     locogen_batched, trace_graphs (stripped)
#                     lib/: every shared library they load beyond glibc, libstdc++/libgcc_s and
#                     CUDA's own (which come from the GPU machine's CUDA 13)
#   .gpu/SOURCE_HASH  hash of the C/CUDA sources the kit was built from; gpu-check.sh refuses a
#                     kit that does not match the tree it runs in
#   .whl/             the diffusers wheel (pure Python; its other needs are on the machine)
#
# Usage: bench/gpu/prepare.sh            build, pack, fetch the wheel
#        bench/gpu/prepare.sh --hash     print the source hash only (gpu-check.sh uses it)
# Then call the device tool with carry [".gpu", ".whl"] and the command bench/gpu-check.sh
# (bench/gpu/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."

source_hash() {
    find Makefile kernels engine proto server tests/unit bench -type f \
        \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name Makefile \) -print0 2>/dev/null |
        LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}
if [ "${1:-}" = "--hash" ]; then
    source_hash
    exit 0
fi

DIFFUSERS_VERSION=0.42.1
BINS="build/tests/test_cuda_ops build/tests/test_cuda_optin build/tests/test_cuda_pipeline build/tests/test_cuda_methods
build/tests/test_cuda_full_size build/tests/test_cudnn_graphs build/bench/gpu/op_bench build/bench/gpu/pipeline_bench
build/bench/locogen_batched build/bench/trace_graphs"

echo "prepare: building (make -j$(nproc))"
# shellcheck disable=SC2086
make -j"$(nproc)" $BINS >/dev/null

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
for b in $BINS; do
    cp "$b" "$stage/bin/"
    strip "$stage/bin/$(basename "$b")"
done
# shared libraries by soname, resolved through ldd, minus what the GPU machine brings itself
# shellcheck disable=SC2086
ldd $BINS | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | sort -u |
    while read -r soname path; do
        case "$soname" in
        libc.so* | libm.so* | libmvec.so* | libdl.so* | libpthread.so* | librt.so* | ld-linux* | \
            libstdc++.so* | libgcc_s.so* | libcudart.so* | libcublas.so* | libcublasLt.so*) ;;
        *) cp -L "$path" "$stage/lib/$soname" ;;
        esac
    done
glibc_need="$(objdump -T "$stage"/bin/* "$stage"/lib/* 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
mkdir -p .gpu
# xz -9e: its 64 MiB window spans the binaries, which share most of their code (libloco), so the
# kit is about 11 MB instead of 17 with the default window: the working tree that travels to a
# lent machine is limited to 64 MiB, fixtures and wheels included
XZ_OPT=-9e tar -cJf .gpu/kit.tar.xz -C "$stage" bin lib
source_hash >.gpu/SOURCE_HASH
echo "$(date -u +%Y-%m-%dT%H:%MZ) on $(uname -m), needs $glibc_need" >.gpu/BUILT
echo "prepare: .gpu/kit.tar.xz $(du -h .gpu/kit.tar.xz | cut -f1) ($(ls "$stage/lib" | wc -l) libraries; needs $glibc_need)"

if ! ls .whl/diffusers-"$DIFFUSERS_VERSION"-*.whl >/dev/null 2>&1; then
    echo "prepare: fetching the diffusers $DIFFUSERS_VERSION wheel into .whl/"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
        -d .whl "diffusers==$DIFFUSERS_VERSION"
fi
ls -la .whl/ | sed 's/^/prepare: /'
# keep the kit and the wheels out of commits (the device tool carries ignored paths when named)
gitdir="$(git rev-parse --git-dir 2>/dev/null || true)"
if [ -n "$gitdir" ]; then
    mkdir -p "$gitdir/info"
    for d in /.gpu/ /.whl/; do
        grep -qxF "$d" "$gitdir/info/exclude" 2>/dev/null || echo "$d" >>"$gitdir/info/exclude"
    done
fi
echo "prepare: working tree that travels: about $(($(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) / 1048576)) MiB tracked + $(du -sm .gpu .whl | awk '{s += $1} END {print s}') MiB carried (limit 64 MiB)"
