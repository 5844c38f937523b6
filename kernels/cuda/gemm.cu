/* gemm.cu: every matrix product goes through cuBLASLt here (linear layers, 1x1 and im2col
 * convolutions, the materialised attention path), plus the loco_linear hook.
 *
 * cuBLASLt needs a descriptor set and an algorithm choice per shape; building them costs tens
 * of microseconds, so they are cached per exact problem (shape, strides, dtypes, epilogue and
 * pointer alignment) in a small hash table in the backend's state. A model's GEMM shapes
 * repeat every step, so after the first step every call is a lookup.
 *
 * Precision: f16/bf16 operands accumulate in fp32 (CUBLAS_COMPUTE_32F). f32 activations use
 * TF32 tensor cores (10-bit mantissa like f16 but f32 range): that mode exists for models
 * that overflow f16 (SD-XL's VAE), where range matters and 1e-3 relative error does not. */
#include <string.h>

#include "cuda_internal.h"

#define PLAN_PROBE 8
#define EPI_BIAS_SHIFT 16 /* cuda_gemm_key.epilogue: cublasLtEpilogue_t below, bias alignment above */
#define EPI_MASK ((1u << EPI_BIAS_SHIFT) - 1)

static cudaDataType_t lt_type(loco_dtype t) {
    switch (t) {
    case LOCO_F16: return CUDA_R_16F;
    case LOCO_BF16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
    }
}

/* Largest power of two (<= 256) dividing the address, the batch stride and the leading
 * dimension in bytes: what the chosen kernel may assume for vector loads. */
static int32_t alignment(const void *p, int64_t ld, int64_t stride, int batch, size_t es) {
    uintptr_t v = (uintptr_t)p | (uintptr_t)(ld * (int64_t)es);
    if (batch > 1) v |= (uintptr_t)(stride * (int64_t)es);
    int32_t a = 256;
    while (a > 1 && v % (uintptr_t)a) a >>= 1;
    return a;
}

static uint64_t key_hash(const cuda_gemm_key *k) {
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void plan_free(cuda_gemm_plan *p) {
    if (!p->valid) return;
    cublasLtMatrixLayoutDestroy(p->la);
    cublasLtMatrixLayoutDestroy(p->lb);
    cublasLtMatrixLayoutDestroy(p->ld);
    cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

void cuda_gemm_plans_destroy(cuda_impl *c) {
    if (!c->plans) return;
    for (int i = 0; i < CUDA_GEMM_PLANS; i++) plan_free(&c->plans[i]);
    free(c->plans);
    c->plans = NULL;
}

static loco_status layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld,
                          int batch, int64_t stride, loco_err *err) {
    CUDA_TRY(cuda_check_lt(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld),
                           "cublasLtMatrixLayoutCreate", err));
    if (batch > 1) {
        int32_t b = batch;
        CUDA_TRY(cuda_check_lt(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &b, sizeof b),
                               "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)", err));
        CUDA_TRY(cuda_check_lt(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                                &stride, sizeof stride),
                               "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)", err));
    }
    return LOCO_OK;
}

/* Below this many flops a GEMM keeps the heuristic's choice: timing would cost more than it
 * could save, and small GEMMs are launch-bound anyway. */
#define GEMM_TUNE_MIN_FLOP 2e8
#define GEMM_TUNE_REPS 3

/* LOCO_CUDA_GEMM_TUNE=1: time each candidate algorithm of a new plan (p->algo is the first) on
 * the operands of the call that builds it,
 * GEMM_TUNE_REPS runs after one warm-up, writing into a scratch D (C = D = scratch, so an
 * accumulating GEMM's real output is not added to repeatedly), and keep the fastest. Once per
 * plan, and never inside a graph capture: a plan first met while capturing keeps the
 * heuristic's choice for good, so eager calls and graph replays run the same algorithm and give
 * the same bits. A candidate that cuBLASLt refuses is skipped; if timing itself fails the
 * heuristic's choice stays. The choice depends on timings, so two processes may pick different
 * algorithms and differ at fp16 rounding: off by default. (A plan evicted from the cache and
 * rebuilt is tuned again and may pick differently; with 512 slots for a model's few dozen
 * shapes that takes a server running many models at once.) Why: cuBLASLt's first heuristic choice is a model's guess, and the
 * run-4 profile has GEMMs of the same size running at 250 and 520 TFLOP/s (unmeasured: op_bench's
 * @tuned rows and gpu-check's tuned pipeline run say whether it pays). */
static void gemm_tune(cuda_impl *c, const cuda_gemm *g, cuda_gemm_plan *p, const cublasLtMatmulAlgo_t *cand,
                      int n_cand) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(c->stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) return;
    if (2.0 * (double)g->m * (double)g->n * (double)g->k * (double)g->batch < GEMM_TUNE_MIN_FLOP) return;
    const size_t esd = loco_dtype_size(g->d_dtype);
    /* the highest element cuBLASLt writes, + 1 (an im2col slice's D is a window of y: ldd > m) */
    const size_t d_elems = (size_t)((g->batch > 1 ? g->stride_d * (g->batch - 1) : 0) + g->ldd * (g->n - 1) + g->m);
    void *scratch = NULL;
    cudaEvent_t ev[2] = {NULL, NULL};
    loco_err ignored;
    /* from the main cache even while a graph pool records: the pool would keep the scratch's
     * size as part of its peak for as long as the graph lives. Tuning is optional: when memory
     * is short it is skipped rather than paid for with other shapes' graphs (and a reclaim must
     * not run while the active pool is hidden here) */
    cuda_graph_pool *pool = c->active_pool;
    c->active_pool = NULL;
    c->reclaim_blocked++;
    const loco_status got = cuda_alloc_get(c, d_elems * esd, &scratch, &ignored);
    c->reclaim_blocked--;
    c->active_pool = pool;
    if (got != LOCO_OK) return;
    if (cudaEventCreate(&ev[0]) == cudaSuccess && cudaEventCreate(&ev[1]) == cudaSuccess) {
        float alpha = g->alpha, beta = g->beta, best_ms = 0.0f;
        int best = -1;
        for (int i = 0; i < n_cand; i++) {
            const cublasLtMatmulAlgo_t *a = &cand[i];
            cublasStatus_t s = cublasLtMatmul(c->lt, p->op, &alpha, g->a, p->la, g->b, p->lb, &beta, scratch, p->ld,
                                              scratch, p->ld, a, c->lt_ws, c->lt_ws_size, c->stream);
            if (s != CUBLAS_STATUS_SUCCESS) continue;
            cudaEventRecord(ev[0], c->stream);
            for (int r = 0; r < GEMM_TUNE_REPS && s == CUBLAS_STATUS_SUCCESS; r++)
                s = cublasLtMatmul(c->lt, p->op, &alpha, g->a, p->la, g->b, p->lb, &beta, scratch, p->ld, scratch,
                                   p->ld, a, c->lt_ws, c->lt_ws_size, c->stream);
            cudaEventRecord(ev[1], c->stream);
            float ms = 0.0f;
            if (s != CUBLAS_STATUS_SUCCESS || cudaEventSynchronize(ev[1]) != cudaSuccess ||
                cudaEventElapsedTime(&ms, ev[0], ev[1]) != cudaSuccess)
                continue;
            if (best < 0 || ms < best_ms) best = i, best_ms = ms;
        }
        if (best >= 0) p->algo = cand[best];
    }
    if (ev[0]) cudaEventDestroy(ev[0]);
    if (ev[1]) cudaEventDestroy(ev[1]);
    cuda_alloc_put(c, scratch);
    /* a refused candidate or a failed event call leaves CUDA's last error set, which the next
     * kernel launch's check would report as its own; every launch before this one was checked,
     * and a sticky device error survives this call and shows at the next */
    cudaGetLastError();
}

static loco_status plan_build(cuda_impl *c, const cuda_gemm *g, const cuda_gemm_key *key, cuda_gemm_plan *p,
                              loco_err *err) {
    memset(p, 0, sizeof *p);
    p->key = *key;
    cublasComputeType_t compute = g->ab_dtype == LOCO_F32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cudaDataType_t tab = lt_type(g->ab_dtype), td = lt_type(g->d_dtype);
    loco_status st = cuda_check_lt(cublasLtMatmulDescCreate(&p->op, compute, CUDA_R_32F), "cublasLtMatmulDescCreate",
                                   err);
    if (st != LOCO_OK) return st;
    int32_t ta = g->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = g->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    uint32_t epi = (uint32_t)key->epilogue & EPI_MASK; /* the bits above hold the bias alignment */
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res[CUDA_GEMM_TUNE_ALGOS];
    const int want = c->gemm_tune ? CUDA_GEMM_TUNE_ALGOS : 1;
    int found = 0;
    uint64_t ws = c->lt_ws_size;
    uint32_t al_a = (uint32_t)key->align_a, al_b = (uint32_t)key->align_b, al_d = (uint32_t)key->align_d;
    if (st == LOCO_OK)
        st = cuda_check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta),
                           "cublasLtMatmulDescSetAttribute(TRANSA)", err);
    if (st == LOCO_OK)
        st = cuda_check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb),
                           "cublasLtMatmulDescSetAttribute(TRANSB)", err);
    if (st == LOCO_OK)
        st = cuda_check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
                           "cublasLtMatmulDescSetAttribute(EPILOGUE)", err);
    /* The heuristic reads the bias pointer's value to learn its alignment (cublasLt.h, BIAS_POINTER):
     * left NULL it would assume a perfectly aligned bias and could pick a kernel that faults on
     * the real one. The key holds the bias alignment, so every later user of the plan has a bias
     * at least as aligned as this one. */
    if (st == LOCO_OK && g->bias)
        st = cuda_check_lt(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias,
                                                          sizeof g->bias),
                           "cublasLtMatmulDescSetAttribute(BIAS_POINTER)", err);
    /* stored (pre-op) shapes: op(A) is m x k, op(B) is k x n */
    if (st == LOCO_OK)
        st = layout(&p->la, tab, g->transa ? g->k : g->m, g->transa ? g->m : g->k, g->lda, g->batch, g->stride_a, err);
    if (st == LOCO_OK)
        st = layout(&p->lb, tab, g->transb ? g->n : g->k, g->transb ? g->k : g->n, g->ldb, g->batch, g->stride_b, err);
    if (st == LOCO_OK) st = layout(&p->ld, td, g->m, g->n, g->ldd, g->batch, g->stride_d, err);
    if (st == LOCO_OK)
        st = cuda_check_lt(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate", err);
    if (st == LOCO_OK)
        st = cuda_check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                                sizeof ws),
                           "cublasLtMatmulPreferenceSetAttribute", err);
    if (st == LOCO_OK)
        st = cuda_check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                                &al_a, sizeof al_a),
                           "cublasLtMatmulPreferenceSetAttribute", err);
    if (st == LOCO_OK)
        st = cuda_check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                                &al_b, sizeof al_b),
                           "cublasLtMatmulPreferenceSetAttribute", err);
    if (st == LOCO_OK)
        st = cuda_check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                                &al_d, sizeof al_d),
                           "cublasLtMatmulPreferenceSetAttribute", err);
    if (st == LOCO_OK)
        st = cuda_check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                                &al_d, sizeof al_d),
                           "cublasLtMatmulPreferenceSetAttribute", err);
    if (st == LOCO_OK) {
        cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->la, p->lb, p->ld, p->ld, pref, want, res,
                                                          &found);
        cublasLtMatmulAlgo_t cand[CUDA_GEMM_TUNE_ALGOS];
        int n_cand = 0;
        for (int i = 0; s == CUBLAS_STATUS_SUCCESS && i < found; i++)
            if (res[i].state == CUBLAS_STATUS_SUCCESS) cand[n_cand++] = res[i].algo;
        if (n_cand > 0) {
            p->algo = cand[0];
            if (n_cand > 1) gemm_tune(c, g, p, cand, n_cand);
        } else if (s == CUBLAS_STATUS_SUCCESS || s == CUBLAS_STATUS_NOT_SUPPORTED ||
                   s == CUBLAS_STATUS_INVALID_VALUE) { /* INVALID_VALUE: how some versions refuse a combination */
            st = loco_err_set(err, LOCO_EUNSUPPORTED,
                              "cuBLASLt has no algorithm for a %s x %s -> %s GEMM m=%lld n=%lld k=%lld "
                              "(epilogue %u, batch %d, %s)",
                              cuda_dt(g->ab_dtype), cuda_dt(g->ab_dtype), cuda_dt(g->d_dtype), (long long)g->m,
                              (long long)g->n, (long long)g->k, epi, g->batch, cublasLtGetStatusName(s));
        } else {
            st = cuda_check_lt(s, "cublasLtMatmulAlgoGetHeuristic", err);
        }
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    p->valid = 1; /* so plan_free releases whatever was created */
    if (st != LOCO_OK) {
        if (p->la) cublasLtMatrixLayoutDestroy(p->la);
        if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
        if (p->ld) cublasLtMatrixLayoutDestroy(p->ld);
        if (p->op) cublasLtMatmulDescDestroy(p->op);
        memset(p, 0, sizeof *p);
    }
    return st;
}

loco_status cuda_gemm_run(cuda_impl *c, const cuda_gemm *g, loco_err *err) {
    if (g->m <= 0 || g->n <= 0 || g->batch <= 0) return LOCO_OK;
    size_t esab = loco_dtype_size(g->ab_dtype), esd = loco_dtype_size(g->d_dtype);
    cuda_gemm_key key;
    memset(&key, 0, sizeof key); /* padding takes part in hashing and comparison */
    key.m = g->m;
    key.n = g->n;
    key.k = g->k;
    key.lda = g->lda;
    key.ldb = g->ldb;
    key.ldd = g->ldd;
    key.batch = g->batch > 1 ? g->batch : 1;
    if (key.batch > 1) {
        key.stride_a = g->stride_a;
        key.stride_b = g->stride_b;
        key.stride_d = g->stride_d;
    }
    key.transa = g->transa;
    key.transb = g->transb;
    key.ab_dtype = g->ab_dtype;
    key.d_dtype = g->d_dtype;
    key.epilogue = g->bias ? (g->gelu_tanh ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                           : (g->gelu_tanh ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
    /* the bias pointer's alignment decides the kernel too (plan_build): it rides in the key's
     * epilogue field above EPI_MASK (cuda_gemm_key has no field of its own for it) */
    if (g->bias) key.epilogue |= alignment(g->bias, 0, 0, 1, esd) << EPI_BIAS_SHIFT;
    key.align_a = alignment(g->a, g->lda, g->stride_a, key.batch, esab);
    key.align_b = alignment(g->b, g->ldb, g->stride_b, key.batch, esab);
    key.align_d = alignment(g->d, g->ldd, g->stride_d, key.batch, esd);

    uint64_t h = key_hash(&key);
    cuda_gemm_plan *plan = NULL;
    for (int i = 0; i < PLAN_PROBE && !plan; i++) {
        cuda_gemm_plan *p = &c->plans[(h + (uint64_t)i) % CUDA_GEMM_PLANS];
        if (p->valid && memcmp(&p->key, &key, sizeof key) == 0) plan = p;
    }
    if (!plan) {
        cuda_gemm_plan *slot = NULL;
        for (int i = 0; i < PLAN_PROBE && !slot; i++) {
            cuda_gemm_plan *p = &c->plans[(h + (uint64_t)i) % CUDA_GEMM_PLANS];
            if (!p->valid) slot = p;
        }
        if (!slot) { /* all probed slots taken: evict one, round-robin */
            slot = &c->plans[(h + (uint64_t)(c->plan_next++ % PLAN_PROBE)) % CUDA_GEMM_PLANS];
            plan_free(slot);
        }
        CUDA_TRY(plan_build(c, g, &key, slot, err));
        plan = slot;
    }
    if (g->bias)
        CUDA_TRY(cuda_check_lt(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias,
                                                              sizeof g->bias),
                               "cublasLtMatmulDescSetAttribute(BIAS_POINTER)", err));
    float alpha = g->alpha, beta = g->beta;
    return cuda_check_lt(cublasLtMatmul(c->lt, plan->op, &alpha, g->a, plan->la, g->b, plan->lb, &beta, g->d, plan->ld,
                                        g->d, plan->ld, &plan->algo, c->lt_ws, c->lt_ws_size, c->stream),
                         "cublasLtMatmul", err);
}

/* ---- what the linear ops share -------------------------------------------------------------- */

/* x and y in the activation dtype, as every GEMM route here needs. */
static loco_status check_act_pair(const char *op, const loco_tensor *y, const loco_tensor *x, loco_err *err) {
    if (x->dtype == y->dtype && cuda_is_act_dtype(y->dtype)) return LOCO_OK;
    return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda %s: input %s, output %s (both must be the activation dtype)", op,
                        cuda_dt(x->dtype), cuda_dt(y->dtype));
}

/* A layer's weight and bias in y's dtype: converted copies (released by lin_operands_put) when
 * the loaded tensors have another. */
typedef struct lin_operands {
    const void *w, *bias; /* bias NULL when the layer has none */
    void *w_tmp, *bias_tmp;
} lin_operands;

static loco_status lin_operands_get(cuda_impl *c, const loco_tensor *y, const loco_tensor *w, const loco_tensor *bias,
                                    lin_operands *o, loco_err *err) {
    memset(o, 0, sizeof *o);
    CUDA_TRY(cuda_as_dtype(c, w, y->dtype, &o->w, &o->w_tmp, err));
    return bias ? cuda_as_dtype(c, bias, y->dtype, &o->bias, &o->bias_tmp, err) : LOCO_OK;
}

static void lin_operands_put(cuda_impl *c, lin_operands *o) {
    cuda_alloc_put(c, o->w_tmp);
    cuda_alloc_put(c, o->bias_tmp);
    memset(o, 0, sizeof *o);
}

/* ---- loco_linear: y[M, N] = act(x[M, K] w[N, K]^T + bias) -------------------------------------- */

/* Row-major y = x w^T is, in cuBLASLt's column-major terms, D[N x M] = op(A = w)^T . B (= x):
 * A is w read as a K x N column-major matrix (transposed), B is x as K x M, D is y as N x M.
 * The bias then runs along D's rows (length N), which is what the BIAS epilogue adds.
 * cuBLASLt's GELU epilogue is the tanh form (the one PyTorch fuses for gelu(approximate=
 * "tanh")), so only LOCO_ACT_GELU_TANH is fused; exact GELU, SiLU and quick GELU run as one
 * in-place pass afterwards, and so does everything when cuBLASLt offers no fused kernel. */
/* accumulate: y = (x w^T + bias) + y, the same GEMM with beta = 1 (C = D = y); the bias
 * epilogue then adds after the accumulation, which changes only the rounding order. */
static loco_status linear_run(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                              const loco_tensor *bias, loco_act act, int accumulate, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    CUDA_TRY(check_act_pair(accumulate ? "linear_accumulate" : "linear", y, x, err));
    int64_t N = w->shape[0], K = w->shape[1];
    int64_t M = N > 0 ? loco_tensor_numel(y) / N : 0; /* from y: x is empty when K == 0 */
    if (M <= 0 || N <= 0) return LOCO_OK;
    if (K <= 0) { /* an empty sum, as on the CPU: y = act(0 + bias), or y += bias */
        if (!accumulate)
            CUDA_TRY(cuda_check(cudaMemsetAsync(y->data, 0, loco_tensor_nbytes(y), c->stream),
                                "cuda linear: cudaMemsetAsync", err));
        if (bias)
            CUDA_TRY(cuda_channel_bias(c, y->data, y->data, y->dtype, bias->data, bias->dtype, M * N, 1, N, err));
        if (act != LOCO_ACT_NONE) CUDA_TRY(cuda_act_apply(c, y->data, y->data, y->dtype, M * N, act, err));
        return LOCO_OK;
    }

    if (c->linear_wgmma_ok && act == LOCO_ACT_NONE) { /* LOCO_CUDA_LINEAR=wgmma (gemm_wgmma.cu), where it applies */
        const loco_status ws = cuda_linear_wgmma(c, y, x, w, bias, accumulate, err);
        if (ws != LOCO_EUNSUPPORTED) return ws;
    }
    lin_operands op;
    loco_status st = lin_operands_get(c, y, w, bias, &op, err);
    const void *bp = op.bias;

    cuda_gemm g;
    memset(&g, 0, sizeof g);
    g.transa = 1;
    g.transb = 0;
    g.m = N;
    g.n = M;
    g.k = K;
    g.lda = K;
    g.ldb = K;
    g.ldd = N;
    g.batch = 1;
    g.ab_dtype = y->dtype;
    g.d_dtype = y->dtype;
    g.a = op.w;
    g.b = x->data;
    g.d = y->data;
    g.bias = bp;
    g.gelu_tanh = act == LOCO_ACT_GELU_TANH;
    g.alpha = 1.0f;
    g.beta = accumulate ? 1.0f : 0.0f;
    int fused_act = g.gelu_tanh;
    if (st == LOCO_OK) {
        st = cuda_gemm_run(c, &g, err);
        /* no fused kernel: plain GEMM + passes. Not only on EUNSUPPORTED: cuBLASLt versions also
         * answer INVALID_VALUE for epilogue combinations they lack; a real device fault fails the
         * retry as well and is reported from there. (A refused plan launched nothing, so an
         * accumulating retry adds to y only once.) */
        if (st != LOCO_OK && st != LOCO_EDEVICE_OOM && (g.bias || g.gelu_tanh)) {
            g.bias = NULL;
            g.gelu_tanh = 0;
            fused_act = 0;
            st = cuda_gemm_run(c, &g, err);
            if (st == LOCO_OK && bp)
                st = cuda_channel_bias(c, y->data, y->data, y->dtype, bp, y->dtype, M * N, 1, N, err);
        }
    }
    if (st == LOCO_OK && act != LOCO_ACT_NONE && !fused_act)
        st = cuda_act_apply(c, y->data, y->data, y->dtype, M * N, act, err);
    lin_operands_put(c, &op);
    return st;
}

extern "C" loco_status cuda_op_linear(loco_backend *be, loco_tensor *y, const loco_tensor *x, const loco_tensor *w,
                                      const loco_tensor *bias, loco_act act, loco_err *err) {
    return linear_run(be, y, x, w, bias, act, 0, err);
}

extern "C" loco_status cuda_op_linear_accumulate(loco_backend *be, loco_tensor *y, const loco_tensor *x,
                                                 const loco_tensor *w, const loco_tensor *bias, loco_err *err) {
    return linear_run(be, y, x, w, bias, LOCO_ACT_NONE, 1, err);
}

/* ---- linear on channel-major activations (backend.h: loco_linear_from/to_channels) ------------ */

/* Sample b of x [B, K, L] is a K x L row-major matrix, i.e. L x K column-major: with transb it is
 * op(B) = K x L, so D[N x L] = op(A = w) . op(B) per sample, written token-major (D's column l
 * is token l) with the bias epilogue along N, as loco_linear's. The transpose costs nothing: it
 * is the order cuBLASLt reads B in. */
extern "C" loco_status cuda_op_linear_from_channels(loco_backend *be, loco_tensor *y, const loco_tensor *x,
                                                    const loco_tensor *w, const loco_tensor *bias, loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    CUDA_TRY(check_act_pair("linear_from_channels", y, x, err));
    const int64_t B = x->shape[0], K = x->shape[1], L = x->shape[2], N = w->shape[0];
    if (B > INT32_MAX)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda linear_from_channels: %lld samples", (long long)B);
    if (K <= 0) { /* an empty sum, as loco_linear's: y = bias */
        CUDA_TRY(cuda_check(cudaMemsetAsync(y->data, 0, loco_tensor_nbytes(y), c->stream),
                            "cuda linear_from_channels: cudaMemsetAsync", err));
        return bias ? cuda_channel_bias(c, y->data, y->data, y->dtype, bias->data, bias->dtype, B * L * N, 1, N, err)
                    : LOCO_OK;
    }
    lin_operands op;
    loco_status st = lin_operands_get(c, y, w, bias, &op, err);
    cuda_gemm g;
    memset(&g, 0, sizeof g);
    g.transa = 1;
    g.transb = 1;
    g.m = N;
    g.n = L;
    g.k = K;
    g.lda = K;
    g.ldb = L;
    g.ldd = N;
    g.batch = (int)B;
    g.stride_a = 0; /* one weight for every sample */
    g.stride_b = K * L;
    g.stride_d = L * N;
    g.ab_dtype = g.d_dtype = y->dtype;
    g.a = op.w;
    g.b = x->data;
    g.d = y->data;
    g.bias = op.bias;
    g.alpha = 1.0f;
    if (st == LOCO_OK) {
        st = cuda_gemm_run(c, &g, err);
        if (st != LOCO_OK && st != LOCO_EDEVICE_OOM && op.bias) { /* no bias epilogue for this one: a pass after */
            g.bias = NULL;
            st = cuda_gemm_run(c, &g, err);
            if (st == LOCO_OK)
                st = cuda_channel_bias(c, y->data, y->data, y->dtype, op.bias, y->dtype, B * L * N, 1, N, err);
        }
    }
    lin_operands_put(c, &op);
    return st;
}

/* Sample b of y [B, N, L] is N x L row-major, i.e. D = L x N column-major = op(A) . op(B) with A =
 * x_b (L x K row-major = K x L column-major, transposed) and B = w (N x K row-major = K x N
 * column-major, as is). The bias now runs along D's columns, which no cuBLASLt epilogue adds: it
 * goes into the one pass that also adds r (or, with r == y, the GEMM accumulates into y with
 * beta = 1 and the pass adds only the bias). */
extern "C" loco_status cuda_op_linear_to_channels(loco_backend *be, loco_tensor *y, const loco_tensor *x,
                                                  const loco_tensor *w, const loco_tensor *bias, const loco_tensor *r,
                                                  loco_err *err) {
    CUDA_TRY(cuda_enter(be, err));
    cuda_impl *c = cuda_of(be);
    CUDA_TRY(check_act_pair("linear_to_channels", y, x, err));
    const int64_t B = x->shape[0], L = x->shape[1], K = x->shape[2], N = w->shape[0];
    if (B > INT32_MAX)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "cuda linear_to_channels: %lld samples", (long long)B);
    const int in_place = r && r->data == y->data;
    if (K <= 0) { /* an empty sum: y = bias (+ r) */
        if (!in_place)
            CUDA_TRY(cuda_check(cudaMemsetAsync(y->data, 0, loco_tensor_nbytes(y), c->stream),
                                "cuda linear_to_channels: cudaMemsetAsync", err));
        const void *res = r && !in_place ? r->data : NULL;
        return bias || res ? cuda_channel_bias_ex(c, y->data, y->data, y->dtype, bias ? bias->data : NULL,
                                                  bias ? bias->dtype : y->dtype, NULL, y->dtype, res, B * N * L, L, N,
                                                  err)
                           : LOCO_OK;
    }
    lin_operands op;
    loco_status st = lin_operands_get(c, y, w, bias, &op, err);
    cuda_gemm g;
    memset(&g, 0, sizeof g);
    g.transa = 1;
    g.transb = 0;
    g.m = L;
    g.n = N;
    g.k = K;
    g.lda = K;
    g.ldb = K;
    g.ldd = L;
    g.batch = (int)B;
    g.stride_a = L * K;
    g.stride_b = 0;
    g.stride_d = N * L;
    g.ab_dtype = g.d_dtype = y->dtype;
    g.a = x->data;
    g.b = op.w;
    g.d = y->data;
    g.alpha = 1.0f;
    g.beta = in_place ? 1.0f : 0.0f;
    if (st == LOCO_OK) st = cuda_gemm_run(c, &g, err);
    const void *res = r && !in_place ? r->data : NULL;
    if (st == LOCO_OK && (op.bias || res))
        st = cuda_channel_bias_ex(c, y->data, y->data, y->dtype, op.bias, y->dtype, NULL, y->dtype, res, B * N * L, L,
                                  N, err);
    lin_operands_put(c, &op);
    return st;
}
