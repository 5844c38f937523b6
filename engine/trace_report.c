/* trace_report.c: what a causal-tracing job hands back besides images: the JSON table of scores
 * and the text-encoder heatmaps. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

static const char *const module_names[LOCO_TRACE_MOD_COUNT] = {"self_attn", "mlp"};

/* Low end white, high end the module's colour (purple for attention, green for MLP, as the
 * ROME/[P1] causal-tracing plots). */
static void shade(double f, loco_trace_module m, uint8_t rgb[3]) {
    static const double hi[LOCO_TRACE_MOD_COUNT][3] = {{84, 39, 143}, {0, 109, 44}};
    if (!(f >= 0)) f = 0;
    if (f > 1) f = 1;
    for (int k = 0; k < 3; k++) rgb[k] = (uint8_t)lround(255.0 + f * (hi[m][k] - 255.0));
}

loco_status loco_trace_heatmap(const loco_trace_result *r, loco_trace_module m, int cell, loco_image *out,
                               loco_err *err) {
    memset(out, 0, sizeof *out);
    if ((unsigned)m >= LOCO_TRACE_MOD_COUNT) return loco_err_set(err, LOCO_EINVAL, "heatmap: unknown module");
    if (r->n_layers < 1 || r->n_positions < 1)
        return loco_err_set(err, LOCO_EINVAL, "heatmap: the trace has no text-encoder states");
    if (cell < 1 || cell > 256) return loco_err_set(err, LOCO_EINVAL, "heatmap: cell size %d (1..256)", cell);
    /* scale from the corrupted score (no effect) to the best restored state of either module,
     * so the two module maps share one scale */
    double lo = r->corrupted.cosine, hi = lo;
    for (int i = 0; i < r->n_layers * LOCO_TRACE_MOD_COUNT * r->n_positions; i++) {
        const double c = r->text[i].score.cosine;
        if (c > hi) hi = c;
        if (c < lo) lo = c;
    }
    const double span = hi > lo ? hi - lo : 1.0;
    loco_status st = loco_image_alloc(r->n_positions * cell, r->n_layers * cell, 3, out, err);
    if (st) return st;
    for (int l = 0; l < r->n_layers; l++)
        for (int q = 0; q < r->n_positions; q++) {
            uint8_t rgb[3];
            shade((loco_trace_text_entry(r, l, m, q)->score.cosine - lo) / span, m, rgb);
            for (int y = 0; y < cell; y++)
                for (int x = 0; x < cell; x++) {
                    uint8_t *px = out->data + ((size_t)(l * cell + y) * out->width + (size_t)(q * cell + x)) * 3;
                    /* a one-pixel grid line keeps neighbouring cells apart */
                    const int edge = cell >= 4 && (x == cell - 1 || y == cell - 1);
                    px[0] = edge ? 230 : rgb[0];
                    px[1] = edge ? 230 : rgb[1];
                    px[2] = edge ? 230 : rgb[2];
                }
        }
    return LOCO_OK;
}

static json_t *score_json(const loco_clip_score *s) {
    json_t *o = json_object();
    json_object_set_new(o, "cosine", loco_json_real(s->cosine));
    json_object_set_new(o, "clip_score", loco_json_real(s->score));
    return o;
}

static json_t *entry_json(const loco_trace_entry *e, int text, double threshold) {
    json_t *o = json_object();
    json_object_set_new(o, "site", json_string(e->site));
    json_object_set_new(o, "kind", json_string(loco_site_kind_name(e->kind)));
    if (text) {
        json_object_set_new(o, "layer", json_integer(e->layer));
        json_object_set_new(o, "position", json_integer(e->position));
    }
    json_object_set_new(o, "cosine", loco_json_real(e->score.cosine));
    json_object_set_new(o, "clip_score", loco_json_real(e->score.score));
    json_object_set_new(o, "indirect_effect", loco_json_real(e->indirect_effect));
    if (!isnan(threshold)) json_object_set_new(o, "causal", json_boolean(e->score.score > threshold));
    return o;
}

/* With a threshold: the causal states by name (UNet components; text states as site@position). */
static json_t *causal_json(const loco_trace_result *r, double threshold) {
    json_t *o = json_object(), *u = json_array(), *tx = json_array();
    for (int i = 0; i < r->n_unet; i++)
        if (r->unet[i].score.score > threshold) json_array_append_new(u, json_string(r->unet[i].site));
    for (int i = 0; i < r->n_layers * LOCO_TRACE_MOD_COUNT * r->n_positions; i++) {
        const loco_trace_entry *e = &r->text[i];
        if (e->score.score > threshold)
            json_array_append_new(tx, json_pack("{s:s, s:i, s:i}", "site", e->site, "layer", e->layer, "position",
                                                e->position));
    }
    json_object_set_new(o, "threshold", loco_json_real(threshold));
    json_object_set_new(o, "unet", u);
    json_object_set_new(o, "text_encoder", tx);
    return o;
}

static json_t *int_array(const int *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
    return a;
}

loco_status loco_trace_result_json(const loco_trace_result *r, const loco_trace_params *t, json_t **out, loco_err *err) {
    json_t *o = json_object();
    if (!o) return loco_err_set(err, LOCO_ENOMEM, "trace json: out of memory");
    json_object_set_new(o, "method", json_string("causal_tracing"));
    json_object_set_new(o, "prompt", json_string(t->prompt));
    json_object_set_new(o, "subject", json_string(t->subject));
    json_object_set_new(o, "attribute", json_string(t->attribute ? t->attribute : t->prompt));
    json_object_set_new(o, "scope", json_string(loco_trace_scope_name(t->scope)));
    json_object_set_new(o, "seed", json_integer((json_int_t)t->seed));
    json_object_set_new(o, "noise_seed", json_integer((json_int_t)t->noise_seed));
    json_object_set_new(o, "noise_scale", loco_json_real(t->noise_scale));
    json_object_set_new(o, "token_embedding_std", loco_json_real(r->embed_std));
    json_object_set_new(o, "subject_positions", int_array(r->subject_positions, r->n_subject));
    json_object_set_new(o, "eos_position", json_integer(r->eos_position));
    json_object_set_new(o, "unet_calls", json_integer(r->n_calls));
    json_object_set_new(o, "clean", score_json(&r->clean));
    json_object_set_new(o, "corrupted", score_json(&r->corrupted));
    json_t *u = json_array();
    int best = -1;
    for (int i = 0; i < r->n_unet; i++) {
        json_array_append_new(u, entry_json(&r->unet[i], 0, t->causal_threshold));
        if (best < 0 || r->unet[i].score.cosine > r->unet[best].score.cosine) best = i;
    }
    json_object_set_new(o, "unet", u);
    json_object_set_new(o, "best_unet_component", best >= 0 ? json_string(r->unet[best].site) : json_null());
    if (r->n_layers > 0) {
        json_t *tx = json_object();
        json_object_set_new(tx, "layers", json_integer(r->n_layers));
        json_object_set_new(tx, "positions", int_array(r->positions, r->n_positions));
        const loco_trace_entry *bt = NULL;
        for (int m = 0; m < LOCO_TRACE_MOD_COUNT; m++) {
            /* cosine grid [layer][position index], the heatmap's numbers */
            json_t *grid = json_array();
            for (int l = 0; l < r->n_layers; l++) {
                json_t *row = json_array();
                for (int q = 0; q < r->n_positions; q++) {
                    const loco_trace_entry *e = loco_trace_text_entry(r, l, (loco_trace_module)m, q);
                    json_array_append_new(row, loco_json_real(e->score.cosine));
                    if (!bt || e->score.cosine > bt->score.cosine) bt = e;
                }
                json_array_append_new(grid, row);
            }
            json_object_set_new(tx, module_names[m], grid);
        }
        json_t *all = json_array();
        for (int i = 0; i < r->n_layers * LOCO_TRACE_MOD_COUNT * r->n_positions; i++)
            json_array_append_new(all, entry_json(&r->text[i], 1, t->causal_threshold));
        json_object_set_new(tx, "states", all);
        json_t *b = json_object();
        json_object_set_new(b, "site", json_string(bt->site));
        json_object_set_new(b, "layer", json_integer(bt->layer));
        json_object_set_new(b, "position", json_integer(bt->position));
        json_object_set_new(tx, "best_state", b);
        json_object_set_new(o, "text_encoder", tx);
    }
    if (!isnan(t->causal_threshold)) json_object_set_new(o, "causal", causal_json(r, t->causal_threshold));
    json_object_set_new(o, "seconds", loco_json_real(r->seconds));
    *out = o;
    return LOCO_OK;
}
