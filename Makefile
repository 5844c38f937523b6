# loco: one entry point for build, test, run, bench and fixtures.
#   make            build libloco.a, the CLI (build/loco) and the daemon (build/locod)
#   make test       install what is missing, build, run every test that needs no GPU
#   make run        start the daemon on the bundled demo model
#   make fixtures   regenerate tests/fixtures with diffusers/transformers (needs PyPI torch)
#   make bench      CPU benchmarks (bench/)
#   make asan       build everything with AddressSanitizer + UBSan into build-asan/

BUILD     ?= build
CC        ?= gcc
NVCC      ?= nvcc
PYTHON    ?= .venv/bin/python
SANITIZE  ?=
OPT       ?= -O2

PKGS      := jansson libmicrohttpd libuv sqlite3 spng libutf8proc openssl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS    ?= $(OPT) -g
CFLAGS    += -std=c17 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -fopenmp -pthread \
             -I. -Ikernels -Iengine -Iproto -Iserver $(PKG_CFLAGS) $(SANITIZE)
LDLIBS    := $(PKG_LIBS) -lopenblas -lm -lpthread -fopenmp $(SANITIZE)

# CUDA is compiled whenever nvcc exists (it must compile and link in `make test` even with no
# GPU); LOCO_CUDA=0 builds kernels/cuda_stub.c instead.
LOCO_CUDA ?= $(shell command -v $(NVCC) >/dev/null 2>&1 && echo 1 || echo 0)
CUDA_HOME ?= $(shell dirname $$(dirname $$(command -v $(NVCC) 2>/dev/null)) 2>/dev/null)
CUDA_ARCHS ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
NVCCFLAGS ?= -O3 -std=c++17 --expt-relaxed-constexpr -Xcompiler -fPIC,-Wall -Ikernels -I.

ENGINE_SRC  := $(sort $(wildcard engine/*.c))
KERNELS_SRC := $(sort $(wildcard kernels/*.c kernels/cpu/*.c))
PROTO_SRC   := $(sort $(wildcard proto/*.c))
SERVER_SRC  := $(sort $(filter-out server/locod_main.c,$(wildcard server/*.c)))
CLI_SRC     := $(sort $(wildcard engine/cli/*.c))
ifeq ($(LOCO_CUDA),1)
CUDA_SRC    := $(sort $(wildcard kernels/cuda/*.cu))
CUDA_LIBS   := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublasLt -lcublas -lstdc++
else
KERNELS_SRC += kernels/cuda_stub.c
CUDA_SRC    :=
CUDA_LIBS   :=
endif
KERNELS_SRC := $(filter-out kernels/cuda_stub.c,$(KERNELS_SRC)) $(if $(CUDA_SRC),,kernels/cuda_stub.c)

LIB_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(ENGINE_SRC) $(KERNELS_SRC) $(PROTO_SRC)) \
             $(patsubst %.cu,$(BUILD)/%.cu.o,$(CUDA_SRC))
SRV_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(SERVER_SRC))
CLI_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(CLI_SRC))
TEST_SRC  := $(sort $(wildcard tests/unit/test_*.c))
TEST_BIN  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRC))
BENCH_SRC := $(sort $(wildcard bench/*.c))
BENCH_BIN := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

LOCOD_MAIN := $(wildcard server/locod_main.c)

.PHONY: all test unit-tests deps run fixtures bench asan clean

all: $(BUILD)/libloco.a $(BUILD)/loco $(if $(LOCOD_MAIN),$(BUILD)/locod) $(TEST_BIN)

# A build folder remembers its flavour (CUDA on or off, optimisation, sanitizers): when a later
# make asks for another one, everything is rebuilt instead of linking objects or an archive
# of the old flavour (an archive made with CUDA, reused by a LOCO_CUDA=0 build, fails to link).
BUILD_FLAVOUR := cuda=$(LOCO_CUDA) opt=$(OPT) sanitize=$(SANITIZE)
FLAVOUR_STAMP := $(BUILD)/.flavour
$(shell mkdir -p $(BUILD) && { [ "$$(cat $(FLAVOUR_STAMP) 2>/dev/null)" = "$(BUILD_FLAVOUR)" ] || \
	echo "$(BUILD_FLAVOUR)" > $(FLAVOUR_STAMP); })

$(BUILD)/%.o: %.c $(FLAVOUR_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/%.cu.o: %.cu $(FLAVOUR_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(CUDA_ARCHS) -MMD -MP -c $< -o $@

# conv_wgmma.cu, conv_tma.cu, attention_wgmma*.cu, gemm_wgmma.cu and wgmma_probe.cu use Hopper's wgmma, which only the
# arch-specific sm_90a target has (CUDA 12.0 or newer): those files alone are built for it, whatever CUDA_ARCHS says (the
# backend never launches their kernels on other devices, and checks that the image it got is
# the sm_90a one)
$(BUILD)/kernels/cuda/conv_wgmma.cu.o $(BUILD)/kernels/cuda/wgmma_probe.cu.o $(BUILD)/kernels/cuda/attention_wgmma.cu.o \
    $(BUILD)/kernels/cuda/attention_wgmma_ws.cu.o $(BUILD)/kernels/cuda/gemm_wgmma.cu.o \
    $(BUILD)/kernels/cuda/conv_tma.cu.o: \
    override CUDA_ARCHS = -gencode arch=compute_90a,code=sm_90a

$(BUILD)/libloco.a: $(LIB_OBJ) $(FLAVOUR_STAMP)
	@rm -f $@
	ar rcs $@ $(LIB_OBJ)

$(BUILD)/loco: $(CLI_OBJ) $(BUILD)/libloco.a
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libloco.a $(CUDA_LIBS) $(LDLIBS)

$(BUILD)/locod: $(BUILD)/server/locod_main.o $(SRV_OBJ) $(BUILD)/libloco.a
	$(CC) $(CFLAGS) -o $@ $^ $(CUDA_LIBS) $(LDLIBS)

# every test binary depends on every test header (a few helpers each, cheap to rebuild)
TEST_HDR  := $(wildcard tests/unit/*.h)
$(BUILD)/tests/%: tests/unit/%.c $(TEST_HDR) $(SRV_OBJ) $(BUILD)/libloco.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(SRV_OBJ) $(BUILD)/libloco.a $(CUDA_LIBS) $(LDLIBS)

# ---- the CUDA backend on the CPU kernel emulator (tests/emu/cuda_emu.h) ----------------------------
# The same kernels/cuda/*.cu compiled as C++ for the CPU, with emulated GPU threads, CUDA runtime
# and cuBLASLt: the GPU tests (test_cuda_*.c) then also run, emulated, on machines without a GPU.
# Not in sanitizer builds: the emulator's fibers switch stacks behind ASan's back.
CXX        ?= g++
EMU_ON     := $(if $(CUDA_SRC),$(if $(SANITIZE),,1),)
# -fno-strict-aliasing: the kernels reinterpret 16-bit pairs and vectors, as nvcc lets them;
# -fno-extern-tls-init: the extern __shared__ arrays are thread_local, without initialisers;
# -fsanitize=alignment: a vector access (uint4, float4, vec16, a 32-bit pair of halves) at an
# address its type does not align stops the test, as a GPU faults with "misaligned address"
# (2-14 % slower on the two emulated tests timed; cp.async and ldmatrix check their own addresses)
EMU_SAN    := -fsanitize=alignment -fno-sanitize-recover=alignment
EMU_CXXFLAGS := $(OPT) -g -std=c++17 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -Wno-maybe-uninitialized \
             -fno-strict-aliasing -fno-extern-tls-init -pthread -Itests/emu -Ikernels -I. -I$(CUDA_HOME)/include $(EMU_SAN)
EMU_CU_OBJ := $(patsubst %.cu,$(BUILD)/emu/%.o,$(CUDA_SRC))
EMU_RT_OBJ := $(patsubst %.cc,$(BUILD)/emu/%.o,$(sort $(wildcard tests/emu/*.cc)))
EMU_TESTS  := $(patsubst tests/unit/%.c,$(BUILD)/tests/emu/%,$(sort $(wildcard tests/unit/test_cuda_*.c)))

all: $(if $(EMU_ON),$(EMU_TESTS))

$(BUILD)/emu/%.o: %.cu tests/emu/cuda_emu.h $(FLAVOUR_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -include tests/emu/cuda_emu.h -x c++ -MMD -MP -c $< -o $@

$(BUILD)/emu/%.o: %.cc $(FLAVOUR_STAMP)
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libloco_emu.a: $(filter-out %.cu.o,$(LIB_OBJ)) $(EMU_CU_OBJ) $(EMU_RT_OBJ) $(FLAVOUR_STAMP)
	@rm -f $@
	ar rcs $@ $(filter-out %.cu.o,$(LIB_OBJ)) $(EMU_CU_OBJ) $(EMU_RT_OBJ)

$(BUILD)/tests/emu/%: tests/unit/%.c $(TEST_HDR) $(SRV_OBJ) $(BUILD)/libloco_emu.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(SRV_OBJ) $(BUILD)/libloco_emu.a $(LDLIBS) -lstdc++ $(EMU_SAN)

# bench/gpu/op_bench on the emulator: tests/test_op_bench_emu.py runs it on a few small rows
$(BUILD)/emu/bench/gpu/op_bench: bench/gpu/op_bench.c $(BUILD)/libloco_emu.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libloco_emu.a $(LDLIBS) -lstdc++ $(EMU_SAN)

all: $(if $(EMU_ON),$(BUILD)/emu/bench/gpu/op_bench)

$(BUILD)/bench/%: bench/%.c bench/bench_util.h $(BUILD)/libloco.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libloco.a $(CUDA_LIBS) $(LDLIBS)

deps:
	scripts/install-deps.sh

# The whole suite: C unit tests (each test case one pytest item), fixture parity, CLI and
# HTTP tests against real processes. GPU-only tests are reported as skipped without a GPU.
test: deps all
	LOCO_BUILD=$(BUILD) $(PYTHON) -m pytest -q -p no:cacheprovider tests

unit-tests: all
	@for t in $(TEST_BIN); do $$t || exit 1; done

run: deps all
	scripts/run-daemon.sh

fixtures:
	tools/make_fixtures.sh

bench: $(BENCH_BIN)
	bench/run-cpu.sh

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer" all

clean:
	rm -rf build build-asan

-include $(LIB_OBJ:.o=.d) $(SRV_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(BUILD)/server/locod_main.d $(EMU_CU_OBJ:.o=.d) \
         $(EMU_RT_OBJ:.o=.d)
