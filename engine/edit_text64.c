/* edit_text64.c: the CLIP text transformer evaluated in float64 on the host, for the rows and
 * key/value pairs of closed-form edits.
 *
 * Why: the edit systems are ill-conditioned. On the tiny SD 1.x fixture the Diff-QuickFix system
 * λI + KᵀK has eigenvalues from 0.003 to 5925, and a relative perturbation of 1e-7 of its keys
 * (fp32 rounding) moves W* by 5e-6. Keys computed in fp32 therefore determine the edit only to
 * ~1e-5, differently on every backend; computed in float64 from the model's weights they define
 * it to ~1e-12 and loco matches the reference (tools/fixtures/refs_edits.py, torch in float64)
 * far inside 1e-6. The numbers are the same function the model computes, evaluated exactly.
 *
 * Mirrors engine/clip_text.c / transformers' CLIPTextModel: token + position embeddings, per
 * layer x += out_proj(causal_attention(LN1(x))), x += fc2(act(fc1(LN2(x)))), final LayerNorm. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edit_internal.h"

/* A parameter of the encoder widened to float64 into dst. A float32 tensor of the CPU backend is
 * read in place; others are downloaded through `stage` (numel floats, may be NULL for CPU). */
static loco_status fill_param(const loco_clip_text *te, const char *name, int64_t numel, double *dst, float *stage,
                              loco_err *err) {
    const loco_tensor *t = loco_clip_text_param(te, name);
    if (!t) return loco_err_set(err, LOCO_ENOTFOUND, "text encoder: no parameter '%s'", name);
    if (loco_tensor_numel(t) != numel)
        return loco_err_set(err, LOCO_EINVAL, "text encoder: '%s' has %lld elements, expected %lld", name,
                            (long long)loco_tensor_numel(t), (long long)numel);
    const float *src = NULL;
    if (loco_backend_device(t->be) == LOCO_DEVICE_CPU && t->dtype == LOCO_F32) {
        src = t->data;
    } else {
        if (!stage) return loco_err_set(err, LOCO_EINVAL, "text encoder: no staging buffer for '%s'", name);
        loco_status st = loco_tensor_download_f32(t, stage, err);
        if (st) return st;
        src = stage;
    }
    for (int64_t i = 0; i < numel; i++) dst[i] = src[i];
    return LOCO_OK;
}

/* A parameter as a fresh float64 array (the small ones: embeddings, final norm). */
static loco_status get_param(const loco_clip_text *te, const char *name, int64_t numel, double **out, loco_err *err) {
    *out = NULL;
    double *d = malloc((size_t)numel * sizeof *d);
    float *f = malloc((size_t)numel * sizeof *f);
    loco_status st = (!f || !d) ? loco_err_set(err, LOCO_ENOMEM, "text encoder: out of memory for '%s'", name)
                                : fill_param(te, name, numel, d, f, err);
    free(f);
    if (st) free(d);
    else *out = d;
    return st;
}

static void layer_norm(const double *x, int rows, int D, const double *g, const double *b, double eps, double *y) {
    for (int r = 0; r < rows; r++) {
        const double *xr = x + (size_t)r * D;
        double *yr = y + (size_t)r * D;
        double m = 0, v = 0;
        for (int d = 0; d < D; d++) m += xr[d];
        m /= D;
        for (int d = 0; d < D; d++) v += (xr[d] - m) * (xr[d] - m);
        v /= D;
        const double inv = 1.0 / sqrt(v + eps);
        for (int d = 0; d < D; d++) yr[d] = (xr[d] - m) * inv * g[d] + b[d];
    }
}

/* y [rows, O] = x [rows, I] Wᵀ + b */
static void linear(const double *x, int rows, int in_f, const double *w, const double *b, int O, double *y) {
    for (int r = 0; r < rows; r++) memcpy(y + (size_t)r * O, b, (size_t)O * sizeof *y);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, O, in_f, 1.0, x, in_f, w, in_f, 1.0, y, O);
}

static double act(loco_act a, double x) {
    switch (a) {
    case LOCO_ACT_QUICK_GELU: return x / (1.0 + exp(-1.702 * x));
    case LOCO_ACT_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case LOCO_ACT_GELU_TANH: return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    case LOCO_ACT_SILU: return x / (1.0 + exp(-x));
    default: return x;
    }
}

/* Causal multi-head attention of one sequence: q, k, v, out [L, D]. */
static void attention(const double *q, const double *k, const double *v, int L, int D, int heads, double *out,
                      double *scores) {
    const int hd = D / heads;
    const double scale = 1.0 / sqrt((double)hd);
    for (int h = 0; h < heads; h++) {
        for (int i = 0; i < L; i++) {
            double mx = -INFINITY;
            for (int j = 0; j <= i; j++) {
                double s = 0;
                for (int c = 0; c < hd; c++) s += q[(size_t)i * D + h * hd + c] * k[(size_t)j * D + h * hd + c];
                scores[j] = s * scale;
                if (scores[j] > mx) mx = scores[j];
            }
            double sum = 0;
            for (int j = 0; j <= i; j++) sum += (scores[j] = exp(scores[j] - mx));
            double *o = out + (size_t)i * D + h * hd;
            for (int c = 0; c < hd; c++) o[c] = 0;
            for (int j = 0; j <= i; j++) {
                const double p = scores[j] / sum;
                for (int c = 0; c < hd; c++) o[c] += p * v[(size_t)j * D + h * hd + c];
            }
        }
    }
}

/* One layer's parameters in float64, pointing into an arena made once per forward pass: the
 * layers are widened one after another into the same memory (no fresh pages per layer). */
typedef struct layer_w {
    double *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b, *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} layer_w;

#define LAYER_PARAMS 16

static void layer_sizes(const loco_clip_text_config *c, int64_t sizes[LAYER_PARAMS]) {
    const int64_t D = c->hidden_size, F = c->intermediate_size;
    const int64_t s[LAYER_PARAMS] = {D, D, D * D, D, D * D, D, D * D, D, D * D, D, D, D, F * D, F, D * F, D};
    memcpy(sizes, s, sizeof s);
}

static loco_status layer_w_load(const loco_clip_text *te, int i, int need_mlp, double *arena, float *stage, layer_w *l,
                                loco_err *err) {
    static const char *const sfx[LAYER_PARAMS] = {
        "layer_norm1.weight", "layer_norm1.bias", "self_attn.q_proj.weight", "self_attn.q_proj.bias",
        "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
        "self_attn.out_proj.weight", "self_attn.out_proj.bias", "layer_norm2.weight", "layer_norm2.bias",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"};
    int64_t sizes[LAYER_PARAMS];
    layer_sizes(loco_clip_text_get_config(te), sizes);
    double **dst = (double **)l;
    const int n = need_mlp ? LAYER_PARAMS : 10;
    for (int k = 0; k < n; k++) {
        char name[160];
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.%s", i, sfx[k]);
        dst[k] = arena;
        loco_status st = fill_param(te, name, sizes[k], arena, stage, err);
        if (st) return st;
        arena += sizes[k];
    }
    return LOCO_OK;
}

loco_status edit_text64_forward(const loco_clip_text *te, const int32_t *ids, int n, int L, const edit_text64_req *rq,
                                loco_err *err) {
    const loco_clip_text_config *c = loco_clip_text_get_config(te);
    const int D = c->hidden_size, nl = c->num_hidden_layers, F = c->intermediate_size;
    if (L > c->max_position_embeddings || n <= 0)
        return loco_err_set(err, LOCO_EINVAL, "text encoder (float64): %d tokens, %d rows", L, n);
    const int want = rq->out ? (rq->hidden_index < 0 ? nl + 1 + rq->hidden_index : rq->hidden_index) : -1;
    if (rq->out && (want < 0 || want > nl))
        return loco_err_set(err, LOCO_EINVAL, "text encoder (float64): hidden state %d is outside [-%d, %d]",
                            rq->hidden_index, nl + 1, nl);
    if (rq->capture_layer >= nl)
        return loco_err_set(err, LOCO_EINVAL, "text encoder (float64): layer %d does not exist (0..%d)",
                            rq->capture_layer, nl - 1);
    /* layers to run: through the requested state, and through the captured layer's attention */
    const int last = want > rq->capture_layer ? want : rq->capture_layer + 1;
    const size_t NLD = (size_t)n * L * D;
    double *x = malloc(NLD * sizeof *x), *h = malloc(NLD * sizeof *h), *q = malloc(NLD * sizeof *q),
           *k = malloc(NLD * sizeof *k), *v = malloc(NLD * sizeof *v), *a = malloc(NLD * sizeof *a),
           *o = malloc(NLD * sizeof *o), *sc = malloc((size_t)L * sizeof *sc);
    double *f = malloc((size_t)n * L * F * sizeof *f), *pos = NULL, *lnf_w = NULL, *lnf_b = NULL;
    float *tok = malloc(NLD * sizeof *tok);
    int64_t sizes[LAYER_PARAMS], arena_n = 0, largest = 0;
    layer_sizes(c, sizes);
    for (int i = 0; i < LAYER_PARAMS; i++) {
        arena_n += sizes[i];
        if (sizes[i] > largest) largest = sizes[i];
    }
    double *arena = malloc((size_t)arena_n * sizeof *arena);
    const loco_tensor *probe = loco_clip_text_param(te, "text_model.encoder.layers.0.self_attn.q_proj.weight");
    const int host_f32 = probe && loco_backend_device(probe->be) == LOCO_DEVICE_CPU && probe->dtype == LOCO_F32;
    float *stage = host_f32 ? NULL : malloc((size_t)largest * sizeof *stage);
    loco_tensor gathered = {0};
    layer_w lw = {0};
    loco_status st = LOCO_OK;
    if (!x || !h || !q || !k || !v || !a || !o || !sc || !f || !tok || !arena || (!host_f32 && !stage)) {
        st = loco_err_set(err, LOCO_ENOMEM, "text encoder (float64): out of memory");
        goto done;
    }
    /* token embeddings: gathered on the backend (exact), so the vocabulary table never comes over */
    loco_backend *be = loco_clip_text_backend(te);
    const loco_tensor *table = loco_clip_text_param(te, "text_model.embeddings.token_embedding.weight");
    if (!table) {
        st = loco_err_set(err, LOCO_ENOTFOUND, "text encoder: no token embedding");
        goto done;
    }
    if ((st = loco_tensor_alloc_act(be, 2, (int64_t[]){(int64_t)n * L, D}, &gathered, err)) ||
        (st = loco_embedding(be, &gathered, table, ids, (int64_t)n * L, err)) ||
        (st = loco_tensor_download_f32(&gathered, tok, err)) ||
        (st = get_param(te, "text_model.embeddings.position_embedding.weight", (int64_t)c->max_position_embeddings * D,
                        &pos, err)))
        goto done;
    for (int s = 0; s < n; s++)
        for (int l = 0; l < L; l++)
            for (int d = 0; d < D; d++) {
                const size_t i = ((size_t)s * L + l) * D + d;
                x[i] = (double)tok[i] + pos[(size_t)l * D + d];
            }
    if (want == 0) memcpy(rq->out, x, NLD * sizeof *x);
    for (int i = 0; i < last; i++) {
        const int full = i < last - 1 || want > i; /* the captured layer past the request stops after attention */
        if ((st = layer_w_load(te, i, full, arena, stage, &lw, err))) goto done;
        layer_norm(x, n * L, D, lw.ln1_w, lw.ln1_b, c->layer_norm_eps, h);
        linear(h, n * L, D, lw.q_w, lw.q_b, D, q);
        linear(h, n * L, D, lw.k_w, lw.k_b, D, k);
        linear(h, n * L, D, lw.v_w, lw.v_b, D, v);
        for (int s = 0; s < n; s++) {
            const size_t off = (size_t)s * L * D;
            attention(q + off, k + off, v + off, L, D, c->num_attention_heads, a + off, sc);
        }
        linear(a, n * L, D, lw.o_w, lw.o_b, D, o);
        if (i == rq->capture_layer) {
            if (rq->proj_in) memcpy(rq->proj_in, a, NLD * sizeof *a);
            if (rq->proj_out) memcpy(rq->proj_out, o, NLD * sizeof *o);
        }
        if (full) {
            for (size_t j = 0; j < NLD; j++) x[j] += o[j];
            layer_norm(x, n * L, D, lw.ln2_w, lw.ln2_b, c->layer_norm_eps, h);
            linear(h, n * L, D, lw.fc1_w, lw.fc1_b, F, f);
            for (size_t j = 0; j < (size_t)n * L * F; j++) f[j] = act(c->hidden_act, f[j]);
            linear(f, n * L, F, lw.fc2_w, lw.fc2_b, D, o);
            for (size_t j = 0; j < NLD; j++) x[j] += o[j];
            if (want == i + 1) memcpy(rq->out, x, NLD * sizeof *x);
        }
    }
    if (rq->out && rq->final_ln) {
        if ((st = get_param(te, "text_model.final_layer_norm.weight", D, &lnf_w, err)) ||
            (st = get_param(te, "text_model.final_layer_norm.bias", D, &lnf_b, err)))
            goto done;
        memcpy(h, rq->out, NLD * sizeof *h);
        layer_norm(h, n * L, D, lnf_w, lnf_b, c->layer_norm_eps, rq->out);
    }
done:
    loco_tensor_free(&gathered);
    free(arena);
    free(stage);
    free(x), free(h), free(q), free(k), free(v), free(a), free(o), free(sc), free(f), free(pos), free(tok);
    free(lnf_w), free(lnf_b);
    return st;
}

/* The conditioning rows as the pipeline builds them (engine/text_conditioning.h), in float64. */
loco_status edit_condition_rows64(const loco_pipeline *p, const char *const *prompts, const int *positions, int n,
                                  int clip_skip, double *out, int D_total, loco_err *err) {
    const loco_clip_text *te[2] = {p->text_encoder, p->text_encoder_2};
    const loco_clip_tokenizer *tok[2] = {p->tokenizer, p->tokenizer_2};
    const int xl = p->family == LOCO_FAMILY_SDXL;
    int col = 0;
    for (int e = 0; e < (xl ? 2 : 1); e++) {
        if (!te[e] || !tok[e]) {
            if (xl && e == 0) continue; /* SD-XL refiner layout: encoder 2 only */
            return loco_err_set(err, LOCO_EINVAL, "edit: the model has no text encoder %d", e + 1);
        }
        const int L = loco_clip_tokenizer_max_length(tok[e]), D = loco_clip_text_get_config(te[e])->hidden_size;
        if (col + D > D_total)
            return loco_err_set(err, LOCO_EINVAL, "edit: text states (%d wide) exceed the UNet's %d-d context", col + D,
                                D_total);
        /* SD 1.x/2.x: last_hidden_state (= final LN of hidden_states[-1]), clip_skip k: final LN of
         * hidden_states[-(k+1)]; SD-XL: hidden_states[-(k+2)] without the final LN. The sequences
         * are cut after the last row's position: with causal attention the state at position p
         * depends on tokens 0..p only, so the cut is exact and saves most of the float64 work. */
        int len = 0;
        for (int i = 0; i < n; i++) {
            if (positions[i] < 0 || positions[i] >= L)
                return loco_err_set(err, LOCO_EINVAL, "edit: token position %d is outside 0..%d", positions[i], L - 1);
            if (positions[i] + 1 > len) len = positions[i] + 1;
        }
        int32_t *full = malloc((size_t)L * sizeof *full), *ids = malloc((size_t)n * len * sizeof *ids);
        double *states = malloc((size_t)n * len * D * sizeof *states);
        loco_status st = (!full || !ids || !states) ? loco_err_set(err, LOCO_ENOMEM, "edit: out of memory") : LOCO_OK;
        for (int i = 0; !st && i < n; i++) {
            if ((st = loco_clip_tokenize(tok[e], prompts[i], full, NULL, err)))
                loco_err_prefix(err, "tokenizing '%.200s'", prompts[i]);
            else
                memcpy(ids + (size_t)i * len, full, (size_t)len * sizeof *ids);
        }
        edit_text64_req rq = {.hidden_index = xl ? -(clip_skip + 2) : -(clip_skip + 1), .final_ln = !xl, .out = states,
                              .capture_layer = -1};
        if (!st) st = edit_text64_forward(te[e], ids, n, len, &rq, err);
        for (int i = 0; !st && i < n; i++)
            memcpy(out + (size_t)i * D_total + col, states + ((size_t)i * len + positions[i]) * D, (size_t)D * sizeof *out);
        free(full);
        free(ids);
        free(states);
        if (st) return st;
        col += D;
    }
    if (col != D_total)
        return loco_err_set(err, LOCO_EINVAL, "edit: text states are %d wide, the UNet's context is %d", col, D_total);
    return LOCO_OK;
}
