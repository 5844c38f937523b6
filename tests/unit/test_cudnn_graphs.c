/* test_cudnn_graphs.c: cuDNN accepts the operation graphs of the CUDA backend's cuDNN routes
 * (LOCO_CUDA_CONV=cudnn, LOCO_CUDA_FLASH=cudnn) for every conv and self-attention shape of
 * SD 1.5 and SD-XL at batch 8 (16 samples with guidance), their VAEs, and the dtypes they run in.
 *
 * Building a graph up to its finalize needs the library but no GPU, so this runs wherever
 * libcudnn.so.9 loads (the toolkit of these machines carries it) and checks on a machine without
 * a GPU what can be checked there: every attribute's name, type and value, and that cuDNN finds
 * the tensors, padding and strides consistent (a y whose dims do not follow from x, w and the
 * padding fails the operation's finalize). Then, for the GPUs the device tool lends (H200 and
 * H100), what cuDNN would do there, from its JSON descriptions of them: that its heuristics
 * offer engines for every shape, that the routes' numerical-note filter keeps one, and that the
 * first kept one's execution plan builds (cuDNN compiles its fused attention's kernels then,
 * with NVRTC). Numerics and speed need a GPU (test_cuda_optin's cuda_conv2d_cudnn and
 * cuda_attention_cudnn). Skipped where the library is absent or loco was built without it (the
 * emulator builds only test_cuda_*). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_probe.h"
#include "loco_test.h"

typedef struct conv_case {
    const char *what;
    loco_dtype dt;
    int64_t N, Cin, H, W, Cout, k;
    int stride;
    int pad[4];
} conv_case;

#define SAME3 {1, 1, 1, 1}
#define NONE {0, 0, 0, 0}

static const conv_case conv_cases[] = {
    /* SD 1.5 UNet, 64x64 latents, batch 16 */
    {"sd1 conv_in", LOCO_F16, 16, 4, 64, 64, 320, 3, 1, SAME3},
    {"sd1 320@64", LOCO_F16, 16, 320, 64, 64, 320, 3, 1, SAME3},
    {"sd1 down 320", LOCO_F16, 16, 320, 64, 64, 320, 3, 2, SAME3},
    {"sd1 320->640@32", LOCO_F16, 16, 320, 32, 32, 640, 3, 1, SAME3},
    {"sd1 1280@8", LOCO_F16, 16, 1280, 8, 8, 1280, 3, 1, SAME3},
    {"sd1 2560->1280@16", LOCO_F16, 16, 2560, 16, 16, 1280, 3, 1, SAME3},
    {"sd1 960->320@64", LOCO_F16, 16, 960, 64, 64, 320, 3, 1, SAME3},
    {"sd1 conv_out", LOCO_F16, 16, 320, 64, 64, 4, 3, 1, SAME3},
    /* SD-XL UNet, 128x128 latents, batch 16 */
    {"sdxl 320@128", LOCO_F16, 16, 320, 128, 128, 320, 3, 1, SAME3},
    {"sdxl 640@64", LOCO_F16, 16, 640, 64, 64, 640, 3, 1, SAME3},
    {"sdxl 1280@32", LOCO_F16, 16, 1280, 32, 32, 1280, 3, 1, SAME3},
    {"sdxl down 640", LOCO_F16, 16, 640, 64, 64, 640, 3, 2, SAME3},
    {"sdxl bf16 320@128", LOCO_BF16, 16, 320, 128, 128, 320, 3, 1, SAME3},
    /* VAE decoders: SD 1.5's in f16, SD-XL's upcast to f32 (TF32), batch 8, chunks of 4 where
     * 8 samples reach 2^31 elements */
    {"sd1 vae conv_in", LOCO_F16, 8, 4, 64, 64, 512, 3, 1, SAME3},
    {"sd1 vae 512@128", LOCO_F16, 8, 512, 128, 128, 512, 3, 1, SAME3},
    {"sdxl vae 512@128", LOCO_F32, 8, 512, 128, 128, 512, 3, 1, SAME3},
    {"sdxl vae 512->256@512", LOCO_F32, 8, 512, 512, 512, 256, 3, 1, SAME3},
    {"sdxl vae 256@512", LOCO_F32, 8, 256, 512, 512, 256, 3, 1, SAME3},
    {"sdxl vae 256@1024 chunk", LOCO_F32, 4, 256, 1024, 1024, 256, 3, 1, SAME3},
    {"sdxl vae 128@1024", LOCO_F32, 8, 128, 1024, 1024, 128, 3, 1, SAME3},
    {"sdxl vae conv_out", LOCO_F32, 8, 128, 1024, 1024, 3, 3, 1, SAME3},
    /* the VAE encoder's downsampler pads only bottom and right */
    {"vae encoder down", LOCO_F32, 1, 128, 512, 512, 128, 3, 2, {0, 1, 0, 1}},
    /* a 1x1 is a GEMM in the backend, but cuDNN takes it too */
    {"1x1", LOCO_F16, 2, 64, 16, 16, 32, 1, 1, NONE},
};

TEST(cudnn_conv_graphs_finalize) {
    int checked = 0;
    for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++) {
        const conv_case *c = &conv_cases[i];
        loco_err err;
        loco_err_clear(&err);
        const loco_status st = loco_cuda_cudnn_conv_graph_check(c->dt, c->N, c->Cin, c->H, c->W, c->Cout, c->k, c->k,
                                                                c->stride, c->pad, NULL, NULL, &err);
        if (st == LOCO_EUNSUPPORTED && strncmp(err.msg, "cuDNN unavailable", 17) == 0) {
            CHECK(checked == 0); /* the library does not come and go */
            SKIP("%s", err.msg);
        }
        CHECK_MSG(st == LOCO_OK, "%s (%s): %s", c->what, loco_dtype_name(c->dt), err.msg);
        checked++;
    }
}

/* Shapes cuDNN must refuse say so, rather than build a graph: a kernel larger than the padded
 * image has no output pixels. */
TEST(cudnn_conv_graph_refuses_an_empty_output) {
    loco_err err;
    loco_err_clear(&err);
    const int pad[4] = {0, 0, 0, 0};
    loco_status st = loco_cuda_cudnn_conv_graph_check(LOCO_F16, 1, 8, 2, 2, 8, 3, 3, 1, pad, NULL, NULL, &err);
    if (st == LOCO_EUNSUPPORTED && strncmp(err.msg, "cuDNN unavailable", 17) == 0) SKIP("%s", err.msg);
    CHECK_MSG(st != LOCO_OK, "a 3x3 kernel over a 2x2 image built a graph");
    CHECK(err.msg[0] != 0);
}

typedef struct sdpa_case {
    const char *what;
    int64_t B, H, L, D;
} sdpa_case;

static const sdpa_case sdpa_cases[] = {
    {"sd1 64x64 level", 16, 8, 4096, 40},   {"sd1 32x32 level", 16, 8, 1024, 80},
    {"sd1 16x16 level", 16, 8, 256, 160},   {"sdxl 64x64 level", 16, 10, 4096, 64},
    {"sdxl 32x32 level", 16, 20, 1024, 64}, {"sd2 head dim 64", 16, 5, 4096, 64},
};

TEST(cudnn_sdpa_graphs_finalize) {
    int checked = 0;
    for (size_t i = 0; i < sizeof sdpa_cases / sizeof sdpa_cases[0]; i++)
        for (int packed = 0; packed < 2; packed++)
            for (int bf = 0; bf < 2; bf++) {
                const sdpa_case *c = &sdpa_cases[i];
                loco_err err;
                loco_err_clear(&err);
                const loco_dtype dt = bf ? LOCO_BF16 : LOCO_F16;
                const loco_status st =
                    loco_cuda_cudnn_sdpa_graph_check(dt, c->B, c->H, c->L, c->L, c->D, packed, NULL, NULL, &err);
                if (st == LOCO_EUNSUPPORTED && strncmp(err.msg, "cuDNN unavailable", 17) == 0) {
                    CHECK(checked == 0);
                    SKIP("%s", err.msg);
                }
                CHECK_MSG(st == LOCO_OK, "%s (%s, %s): %s", c->what, loco_dtype_name(dt),
                          packed ? "packed q|k|v" : "apart", err.msg);
                checked++;
            }
}

/* ---- engines and plans on described GPUs ----------------------------------------------------- */

/* cuDNN's JSON device descriptions of the GPUs the device tool lends (the fields of
 * cudaDeviceProp that cuDNN reads). The H200's memory, SM count, L2 and clocks are as a lent
 * machine reported them (nvidia-smi: 143771 MiB, PyTorch: 132 SMs and 60 MB of L2, clocks
 * 1980 / 3201 MHz; the device tool's notes on that machine); the H100's are the H100 80GB HBM3's
 * published ones (81559 MiB as nvidia-smi lists it, 50 MB of L2, 2619 MHz memory). Both are
 * compute capability 9.0 with the same per-SM limits; the heuristics read them (an sm_80
 * description gets another attention engine). */
static const char *const h200_json =
    "{\"deviceName\":\"NVIDIA H200\",\"deviceVer\":900,\"driverVer\":13000,\"multiProcessorCount\":132,"
    "\"totalGlobalMem\":150754820096,\"l2CacheSize\":62914560,\"smClockRateKHz\":1980000,"
    "\"memClockRateKHz\":3201000,\"maxGridSize\":[2147483647,65535,65535],\"maxBlockSize\":[1024,1024,64],"
    "\"regsPerBlock\":65536,\"warpSize\":32,\"maxSharedMemoryPerBlock\":49152,"
    "\"maxSharedMemoryPerBlockOptin\":232448,\"reservedSharedMemoryPerBlock\":1024,\"maxRegistersPerSM\":65536,"
    "\"maxCtasPerSM\":32,\"maxThreadsPerBlock\":1024,\"maxThreadsPerSM\":2048,\"pciDeviceId\":0,"
    "\"isTccDriver\":0,\"supportCoopLaunch\":1,\"cudaDeviceId\":0}";
static const char *const h100_json =
    "{\"deviceName\":\"NVIDIA H100 80GB HBM3\",\"deviceVer\":900,\"driverVer\":13000,\"multiProcessorCount\":132,"
    "\"totalGlobalMem\":85520809984,\"l2CacheSize\":52428800,\"smClockRateKHz\":1980000,"
    "\"memClockRateKHz\":2619000,\"maxGridSize\":[2147483647,65535,65535],\"maxBlockSize\":[1024,1024,64],"
    "\"regsPerBlock\":65536,\"warpSize\":32,\"maxSharedMemoryPerBlock\":49152,"
    "\"maxSharedMemoryPerBlockOptin\":232448,\"reservedSharedMemoryPerBlock\":1024,\"maxRegistersPerSM\":65536,"
    "\"maxCtasPerSM\":32,\"maxThreadsPerBlock\":1024,\"maxThreadsPerSM\":2048,\"pciDeviceId\":0,"
    "\"isTccDriver\":0,\"supportCoopLaunch\":1,\"cudaDeviceId\":0}";

static const struct {
    const char *name, *json;
} described[] = {{"H200", h200_json}, {"H100", h100_json}};

enum {
    CUDA_ERROR_STUB_LIBRARY = 34, /* what every call of the toolkit's stub libcuda.so returns */
    CUDNN_STATUS_DRIVER = 5001,   /* cuDNN's CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER */
};
typedef enum driver_kind { NO_DRIVER = -1, STUB_DRIVER = 0, REAL_DRIVER = 1 } driver_kind;

/* cuDNN's heuristics offer no engine that compiles at run time unless libcuda.so.1 loads
 * ("RUNTIME_PREREQUISITE_MISSING"). Without a driver the toolkit's stub stands in: the plans
 * are built for a description and never run, and the stub fails every call, so a plan that
 * needs its module loaded stops at that last step. A driver that loads but cannot initialise
 * or has no device is neither: the test skips there. */
static driver_kind driver_or_stub(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    const char *home = getenv("CUDA_HOME");
    char path[512];
    const char *const stubs[] = {"/usr/local/cuda/lib64/stubs/libcuda.so",
                                 "/usr/local/cuda/targets/x86_64-linux/lib/stubs/libcuda.so"};
    if (!h && home && home[0]) {
        snprintf(path, sizeof path, "%s/lib64/stubs/libcuda.so", home);
        h = dlopen(path, RTLD_NOW | RTLD_GLOBAL); /* its soname is libcuda.so.1: cuDNN's dlopen finds it */
    }
    for (size_t i = 0; !h && i < sizeof stubs / sizeof stubs[0]; i++) h = dlopen(stubs[i], RTLD_NOW | RTLD_GLOBAL);
    if (!h) return NO_DRIVER;
    int (*cu_init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
    const int r = cu_init ? cu_init(0) : -1; /* idempotent; makes no context */
    if (r == CUDA_ERROR_STUB_LIBRARY) return STUB_DRIVER;
    if (r != 0) return NO_DRIVER;
    /* A real driver: device 0's primary context made current, as the CUDA runtime does in the
     * backend, so that the plans are built as the routes build them (in a process with one). */
    int (*device_get)(int *, int) = (int (*)(int *, int))dlsym(h, "cuDeviceGet");
    int (*ctx_retain)(void **, int) = (int (*)(void **, int))dlsym(h, "cuDevicePrimaryCtxRetain");
    int (*ctx_set)(void *) = (int (*)(void *))dlsym(h, "cuCtxSetCurrent");
    int dev = 0;
    void *ctx = NULL;
    if (!device_get || !ctx_retain || !ctx_set || device_get(&dev, 0) != 0 || ctx_retain(&ctx, dev) != 0 ||
        ctx_set(ctx) != 0)
        return NO_DRIVER; /* a driver without a usable device */
    return REAL_DRIVER;
}

/* On the stub, a plan that got as far as loading its compiled module: the driver's status from
 * the module loading, which comes after the kernels compiled. */
static int compiled_on_stub(const loco_cudnn_engines *e, driver_kind driver) {
    return driver == STUB_DRIVER && e->status == CUDNN_STATUS_DRIVER && strstr(e->why, "(34)") &&
           (strstr(e->why, "cuLibraryLoad") || strstr(e->why, "cuModuleLoad"));
}

/* What a GPU run would meet first: engines offered and kept, and a plan that builds. */
static int engines_usable(const loco_cudnn_engines *e, driver_kind driver) {
    return e->offered > 0 && e->kept > 0 && (e->built > 0 || compiled_on_stub(e, driver));
}

static void engines_line(const char *what, const char *gpu, const loco_cudnn_engines *e, driver_kind driver) {
    printf("  %-36s %s: engine %lld%s (%d offered, %d kept; %d plans built, %d on tensor cores)%s%s\n", what, gpu,
           e->engine, e->fallback ? " (fallback heuristics)" : "", e->offered, e->kept, e->built, e->tensor_cores,
           e->built ? "" : ", plan ",
           e->built                       ? ""
           : compiled_on_stub(e, driver) ? "compiled (the stub driver loads no module)"
                                         : e->why);
}

#define SKIP_WITHOUT_DRIVER(driver)                                                                              \
    do {                                                                                                         \
        if ((driver) == NO_DRIVER)                                                                               \
            SKIP("no usable libcuda.so.1 and no toolkit stub of it: cuDNN offers no runtime-compiled engine");   \
    } while (0)

/* Every shape f16, packed (the UNets' self-attention) and apart, on the H200; bf16 (the same
 * engines) on the first shape; the H100 the packed f16 ones. Each plan compiles its kernels
 * (about a quarter of a second), and the kit runs this on a lent GPU's clock too. */
TEST(cudnn_sdpa_engines_on_h200_and_h100) {
    const driver_kind driver = driver_or_stub();
    SKIP_WITHOUT_DRIVER(driver);
    int checked = 0;
    for (size_t g = 0; g < sizeof described / sizeof described[0]; g++)
        for (size_t i = 0; i < sizeof sdpa_cases / sizeof sdpa_cases[0]; i++)
            for (int packed = 0; packed < 2; packed++)
                for (int bf = 0; bf < 2; bf++) {
                    if ((bf && i > 0) || (g > 0 && (bf || !packed))) continue;
                    const sdpa_case *c = &sdpa_cases[i];
                    const loco_dtype dt = bf ? LOCO_BF16 : LOCO_F16;
                    loco_cudnn_engines e;
                    loco_err err;
                    loco_err_clear(&err);
                    const loco_status st = loco_cuda_cudnn_sdpa_graph_check(dt, c->B, c->H, c->L, c->L, c->D, packed,
                                                                            described[g].json, &e, &err);
                    if (st == LOCO_EUNSUPPORTED && strncmp(err.msg, "cuDNN unavailable", 17) == 0) {
                        CHECK(checked == 0);
                        SKIP("%s", err.msg);
                    }
                    CHECK_MSG(st == LOCO_OK, "%s: %s", c->what, err.msg);
                    char what[96];
                    snprintf(what, sizeof what, "%s (%s, %s)", c->what, loco_dtype_name(dt),
                             packed ? "packed" : "apart");
                    engines_line(what, described[g].name, &e, driver);
                    CHECK_MSG(engines_usable(&e, driver), "%s on the %s: %d engines offered, %d kept, plan: %s", what,
                              described[g].name, e.offered, e.kept, e.built ? "built" : e.why);
                    checked++;
                }
}

TEST(cudnn_conv_engines_on_h200_and_h100) {
    const driver_kind driver = driver_or_stub();
    SKIP_WITHOUT_DRIVER(driver);
    int checked = 0;
    for (size_t g = 0; g < sizeof described / sizeof described[0]; g++)
        for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++) {
            const conv_case *c = &conv_cases[i];
            loco_cudnn_engines e;
            loco_err err;
            loco_err_clear(&err);
            const loco_status st = loco_cuda_cudnn_conv_graph_check(c->dt, c->N, c->Cin, c->H, c->W, c->Cout, c->k,
                                                                    c->k, c->stride, c->pad, described[g].json, &e,
                                                                    &err);
            if (st == LOCO_EUNSUPPORTED && strncmp(err.msg, "cuDNN unavailable", 17) == 0) {
                CHECK(checked == 0);
                SKIP("%s", err.msg);
            }
            CHECK_MSG(st == LOCO_OK, "%s: %s", c->what, err.msg);
            char what[96];
            snprintf(what, sizeof what, "%s (%s)", c->what, loco_dtype_name(c->dt));
            engines_line(what, described[g].name, &e, driver);
            CHECK_MSG(engines_usable(&e, driver), "%s on the %s: %d engines offered, %d kept, plan: %s", what,
                      described[g].name, e.offered, e.kept, e.built ? "built" : e.why);
            /* the f32 route stands for TF32 on tensor cores (as PyTorch's cuDNN convs with TF32
             * allowed): an f32 conv timed only on plain FP32 engines would run at a third of it */
            CHECK_MSG(e.tensor_cores > 0, "%s on the %s: none of the engines the route would time is on tensor cores",
                      what, described[g].name);
            checked++;
        }
}
