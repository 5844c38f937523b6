/* emu_cublaslt.cc: the cuBLASLt calls of kernels/cuda/gemm.cu, on the CPU (cuda_emu.h).
 *
 * D = epilogue(alpha op(A) op(B) + beta C) in cuBLASLt's column-major terms, with the
 * descriptor and layout attributes gemm.cu sets (transposes, bias / GELU epilogues, strided
 * batches), computed as an fp32 sgemm. The heuristic checks what cuBLASLt would refuse (shapes
 * that do not chain, leading dimensions shorter than a column) and offers one algorithm. */
#include "emu_internal.h"

#include <cblas.h>
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

namespace {

struct matmul_desc {
    cublasComputeType_t compute;
    int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
    uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    const void *bias = nullptr;
};

struct matrix_layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch = 1;
    int64_t stride = 0;
};

size_t type_size(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }
bool type_ok(cudaDataType_t t) { return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF; }

float load(const void *p, cudaDataType_t t, size_t i) {
    if (t == CUDA_R_32F) return ((const float *)p)[i];
    uint16_t v;
    memcpy(&v, (const char *)p + 2 * i, 2);
    return emu::b16_to_f32(v, t == CUDA_R_16BF);
}

void store(void *p, cudaDataType_t t, size_t i, float x) {
    if (t == CUDA_R_32F) {
        ((float *)p)[i] = x;
    } else if (t == CUDA_R_16BF) {
        const __nv_bfloat16_raw b = __float2bfloat16_rn(x);
        memcpy((char *)p + 2 * i, &b.x, 2);
    } else {
        const __half_raw h = __float2half_rn(x);
        memcpy((char *)p + 2 * i, &h.x, 2);
    }
}

/* The GEMM's shape if the layouts chain (op(A) m x k, op(B) k x n, C and D m x n). */
cublasStatus_t check(const matmul_desc *op, const matrix_layout *a, const matrix_layout *b, const matrix_layout *c,
                     const matrix_layout *d, uint64_t *m, uint64_t *n, uint64_t *k) {
    if (!op || !a || !b || !c || !d) return CUBLAS_STATUS_INVALID_VALUE;
    *m = op->transa == CUBLAS_OP_N ? a->rows : a->cols;
    *k = op->transa == CUBLAS_OP_N ? a->cols : a->rows;
    const uint64_t kb = op->transb == CUBLAS_OP_N ? b->rows : b->cols;
    *n = op->transb == CUBLAS_OP_N ? b->cols : b->rows;
    if (kb != *k || d->rows != *m || d->cols != *n || c->rows != *m || c->cols != *n) return CUBLAS_STATUS_INVALID_VALUE;
    for (const matrix_layout *l : {a, b, c, d})
        if (l->ld < (int64_t)l->rows || !type_ok(l->type) || l->batch != d->batch) return CUBLAS_STATUS_INVALID_VALUE;
    if (a->type != b->type || c->type != d->type) return CUBLAS_STATUS_NOT_SUPPORTED;
    /* the combinations gemm.cu asks for and cuBLASLt offers: 32F in, 32F out (with FAST_TF32 or
     * 32F compute); 16F / 16BF in, the same or 32F out (32F compute) */
    if (a->type == CUDA_R_32F ? d->type != CUDA_R_32F : (d->type != a->type && d->type != CUDA_R_32F))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (op->compute == CUBLAS_COMPUTE_32F_FAST_TF32 && a->type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (op->compute != CUBLAS_COMPUTE_32F && op->compute != CUBLAS_COMPUTE_32F_FAST_TF32)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return CUBLAS_STATUS_SUCCESS;
}

/* FAST_TF32 multiplies A and B as TF32: 10 mantissa bits, rounded to nearest. */
float tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7F800000u) != 0x7F800000u) u = (u + 0x1000u) & 0xFFFFE000u;
    memcpy(&x, &u, 4);
    return x;
}

/* A stored matrix as fp32 (rounded to TF32 with `tf`), same layout. */
std::vector<float> to_f32(const void *p, const matrix_layout *l, int64_t batch_index, bool tf) {
    if (l->rows == 0 || l->cols == 0) return std::vector<float>(1, 0.0f);
    const size_t n = (size_t)l->ld * (l->cols - 1) + l->rows;
    std::vector<float> f(n);
    const size_t base = (size_t)(batch_index * l->stride);
    for (size_t i = 0; i < n; i++) f[i] = tf ? tf32(load(p, l->type, base + i)) : load(p, l->type, base + i);
    return f;
}

} /* namespace */

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    *h = (cublasLtHandle_t)malloc(1);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasLtGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_INTERNAL_ERROR";
    }
}
const char *cublasLtGetStatusString(cublasStatus_t s) { return cublasLtGetStatusName(s); }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute, cudaDataType_t scale) {
    if (scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    matmul_desc *m = new matmul_desc();
    m->compute = compute;
    *d = (cublasLtMatmulDesc_t)m;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete (matmul_desc *)d;
    return CUBLAS_STATUS_SUCCESS;
}
/* An attribute's value into its field: sizes must agree. */
static cublasStatus_t set_field(void *field, size_t field_size, const void *buf, size_t size) {
    if (size != field_size) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(field, buf, size);
    return CUBLAS_STATUS_SUCCESS;
}

/* The attributes gemm.cu sets; any other is not modelled here, and says so. */
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t size) {
    matmul_desc *m = (matmul_desc *)d;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return set_field(&m->transa, sizeof m->transa, buf, size);
    case CUBLASLT_MATMUL_DESC_TRANSB: return set_field(&m->transb, sizeof m->transb, buf, size);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set_field(&m->epilogue, sizeof m->epilogue, buf, size);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set_field(&m->bias, sizeof m->bias, buf, size);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    matrix_layout *m = new matrix_layout();
    m->type = type;
    m->rows = rows;
    m->cols = cols;
    m->ld = ld;
    *l = (cublasLtMatrixLayout_t)m;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete (matrix_layout *)l;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t l, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t size) {
    matrix_layout *m = (matrix_layout *)l;
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: return set_field(&m->batch, sizeof m->batch, buf, size);
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: return set_field(&m->stride, sizeof m->stride, buf, size);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    *p = (cublasLtMatmulPreference_t)malloc(1);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    free(p);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t size) {
    (void)p, (void)attr, (void)buf, (void)size;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *returned) {
    (void)h, (void)pref;
    uint64_t m, n, k;
    *returned = 0;
    cublasStatus_t s = check((const matmul_desc *)op, (const matrix_layout *)a, (const matrix_layout *)b,
                             (const matrix_layout *)c, (const matrix_layout *)d, &m, &n, &k);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    memset(&results[0], 0, sizeof results[0]);
    results[0].state = CUBLAS_STATUS_SUCCESS;
    *returned = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t opd, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t al, const void *B, cublasLtMatrixLayout_t bl, const void *beta,
                              const void *C, cublasLtMatrixLayout_t cl, void *D, cublasLtMatrixLayout_t dl,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_size, cudaStream_t stream) {
    (void)h, (void)algo, (void)ws, (void)ws_size;
    const matmul_desc *op = (const matmul_desc *)opd;
    const matrix_layout *a = (const matrix_layout *)al, *b = (const matrix_layout *)bl, *c = (const matrix_layout *)cl,
                        *d = (const matrix_layout *)dl;
    uint64_t m, n, k;
    cublasStatus_t s = check(op, a, b, c, d, &m, &n, &k);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    const uint32_t epi = op->epilogue;
    const bool bias = epi == CUBLASLT_EPILOGUE_BIAS || epi == CUBLASLT_EPILOGUE_GELU_BIAS;
    const bool gelu = epi == CUBLASLT_EPILOGUE_GELU || epi == CUBLASLT_EPILOGUE_GELU_BIAS;
    if (epi != CUBLASLT_EPILOGUE_DEFAULT && !bias && !gelu) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (bias && !op->bias) return CUBLAS_STATUS_INVALID_VALUE;
    if (C == D && (c->ld != d->ld || c->stride != d->stride)) return CUBLAS_STATUS_INVALID_VALUE; /* in place: one layout */
    const bool tf = op->compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    /* enqueued on the stream with everything it reads from the host taken now (the scalars,
     * the descriptors, which the caller may change for its next call), as cuBLASLt does */
    const float al_ = *(const float *)alpha, be_ = *(const float *)beta;
    const matmul_desc o = *op;
    const matrix_layout la = *a, lb = *b, lc = *c, ld = *d;
    emu::enqueue(stream, [=]() {
        std::vector<float> acc((size_t)m * n);
        for (int32_t bi = 0; bi < ld.batch; bi++) {
            std::vector<float> fa = to_f32(A, &la, bi, tf), fb = to_f32(B, &lb, bi, tf);
            if (k > 0)
                cblas_sgemm(CblasColMajor, o.transa == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                            o.transb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, (int)m, (int)n, (int)k, 1.0f,
                            fa.data(), (int)la.ld, fb.data(), (int)lb.ld, 0.0f, acc.data(), (int)m);
            else
                std::fill(acc.begin(), acc.end(), 0.0f);
            for (uint64_t j = 0; j < n; j++)
                for (uint64_t i = 0; i < m; i++) {
                    float t = al_ * acc[j * m + i];
                    if (be_ != 0.0f) t += be_ * load(C, lc.type, (size_t)(bi * lc.stride) + j * lc.ld + i);
                    if (bias) t += load(o.bias, ld.type, i);
                    if (gelu) t = 0.5f * t * (1.0f + tanhf(0.7978845608f * (t + 0.044715f * t * t * t)));
                    store(D, ld.type, (size_t)(bi * ld.stride) + j * ld.ld + i, t);
                }
        }
    });
    return CUBLAS_STATUS_SUCCESS;
}

} /* extern "C" */
