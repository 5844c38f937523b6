/* cpu_attention.c: multi-head attention on the CPU, softmax(scale · q·kᵀ) · v per sample and
 * head, with the causal mask and kv_index of backend.h.
 *
 * Heads are not split out of [B, L, H*D]: sgemm reads each head in place with a row stride of
 * H*D (3*H*D for packed q|k|v rows) and writes its output the same way. Queries go in tiles, so the score matrix of one tile
 * (tile x Lk floats, ~512 KiB) lives in a per-thread buffer that stays in cache from the q·kᵀ
 * sgemm through the softmax into the ·v sgemm; a 4096x4096 self-attention never materialises
 * its 64 MB score matrix. The softmax leaves rows unnormalised and the 1/sum is applied to the
 * tile's D-wide output instead of its Lk-wide probabilities. */
#include "cpu_internal.h"
#include "cpu_math.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>

#define SCORE_FLOATS (1 << 20) /* per-thread score tile target: 512 KiB */
#define MAX_TILE 512

typedef struct attn_job {
    float *out;
    const float *q, *k, *v;
    const int *kv_index;
    int B, Lq, Lk, Bk, H, D, HD;
    int in_rs; /* row stride of q, k and v: HD, or 3 HD when packed */
    int tq, ntiles; /* query rows per tile, tiles per (sample, head) */
    float scale;
    int causal;
    float *scores; /* threads * tq * Lk */
    float *inv;    /* threads * tq */
} attn_job;

/* In place: s[i] = exp(s[i] - max) for i < n_valid, 0 for n_valid <= i < n; returns the sum. */
CPU_MULTIVERSION static float softmax_row(float *s, int n_valid, int n) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int i = 0; i < n_valid; i++) m = s[i] > m ? s[i] : m;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < n_valid; i++) {
        float e = expf(s[i] - m);
        s[i] = e;
        sum += e;
    }
    for (int i = n_valid; i < n; i++) s[i] = 0.0f;
    return sum;
}

CPU_MULTIVERSION static void scale_row(float *o, int n, float f) {
#pragma omp simd
    for (int i = 0; i < n; i++) o[i] *= f;
}

static void attn_range(void *ctx, size_t b, size_t e, int tid) {
    const attn_job *j = ctx;
    float *S = j->scores + (size_t)tid * j->tq * j->Lk;
    float *inv = j->inv + (size_t)tid * j->tq;
    for (size_t t = b; t < e; t++) {
        int tile = (int)(t % (size_t)j->ntiles);
        int h = (int)(t / (size_t)j->ntiles % (size_t)j->H);
        int bq = (int)(t / (size_t)j->ntiles / (size_t)j->H);
        int kb = j->kv_index ? j->kv_index[bq] : bq;
        int i0 = tile * j->tq, rows = j->Lq - i0 < j->tq ? j->Lq - i0 : j->tq;
        /* causal: no query of this tile sees a key past its last row */
        int keys = j->causal && i0 + rows < j->Lk ? i0 + rows : j->Lk;
        const float *qt = j->q + ((size_t)bq * j->Lq + i0) * j->in_rs + (size_t)h * j->D;
        const float *kt = j->k + (size_t)kb * j->Lk * j->in_rs + (size_t)h * j->D;
        const float *vt = j->v + (size_t)kb * j->Lk * j->in_rs + (size_t)h * j->D;
        float *ot = j->out + ((size_t)bq * j->Lq + i0) * j->HD + (size_t)h * j->D;

        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, j->D, j->scale, qt, j->in_rs, kt, j->in_rs,
                    0.0f, S, keys);
        for (int r = 0; r < rows; r++) {
            int valid = j->causal ? (i0 + r + 1 < keys ? i0 + r + 1 : keys) : keys;
            inv[r] = 1.0f / softmax_row(S + (size_t)r * keys, valid, keys);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, j->D, keys, 1.0f, S, keys, vt, j->in_rs, 0.0f,
                    ot, j->HD);
        for (int r = 0; r < rows; r++) scale_row(ot + (size_t)r * j->HD, j->D, inv[r]);
    }
}

loco_status cpu_attention(loco_backend *be, loco_tensor *out, const loco_tensor *q, const loco_tensor *k,
                          const loco_tensor *v, const loco_attention_params *p, loco_err *err) {
    if (q->shape[1] > INT_MAX || k->shape[1] > INT_MAX || q->shape[2] > INT_MAX || q->shape[0] > INT_MAX)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "attention: sizes exceed sgemm's int range");
    const int HD = (int)out->shape[2];
    const float *qd = (const float *)q->data;
    attn_job j = {
        .out = (float *)out->data, .q = qd, .k = p->qkv_packed ? qd + HD : (const float *)k->data,
        .v = p->qkv_packed ? qd + 2 * HD : (const float *)v->data, .kv_index = p->kv_index, .B = (int)q->shape[0],
        .Lq = (int)q->shape[1], .Lk = (int)k->shape[1], .Bk = (int)k->shape[0], .H = p->heads, .HD = HD,
        .in_rs = (int)q->shape[2], .scale = p->scale, .causal = p->causal != 0,
    };
    j.D = j.HD / j.H;
    int tq = SCORE_FLOATS / j.Lk;
    tq = tq < 16 ? 16 : tq > MAX_TILE ? MAX_TILE : tq;
    if (tq > j.Lq) tq = j.Lq;
    j.tq = tq;
    j.ntiles = (j.Lq + tq - 1) / tq;
    int threads = cpu_threads(be);
    size_t score_floats = (size_t)threads * tq * j.Lk, bytes = (score_floats + (size_t)threads * tq) * sizeof(float);
    float *buf;
    loco_status st = cpu_scratch_get(be, bytes, (void **)&buf, err);
    if (st != LOCO_OK) return st;
    j.scores = buf;
    j.inv = buf + score_floats;
    cpu_parallel_for(be, (size_t)j.B * j.H * j.ntiles, 1, attn_range, &j);
    cpu_scratch_put(be, buf, bytes);
    return LOCO_OK;
}
