/* locogen_report.c: the LocoGen result table (JSON) and the image grid. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "locogen.h"

loco_status loco_locogen_grid(const loco_locogen_result *r, int pad, loco_image *out, loco_err *err) {
    memset(out, 0, sizeof *out);
    const int n = r->n_prompts * r->n_seeds * r->per_set;
    if (!r->images || n < 1) return loco_err_set(err, LOCO_EINVAL, "locogen grid: the result kept no images");
    for (int i = 0; i < n; i++)
        if (!r->images[i].data) return loco_err_set(err, LOCO_EINVAL, "locogen grid: image %d is missing", i);
    return loco_image_grid(r->images, n, r->per_set, pad, out, err);
}

static json_t *window_json(const loco_locogen_window *w, const loco_pipeline *p) {
    json_t *o = json_object();
    if (w->start >= 0) {
        /* end is the window's last layer (inclusive), and indices spells the window out, so
         * "layers 8..9" cannot be misread as a three-layer window */
        json_object_set_new(o, "start", json_integer(w->start));
        json_object_set_new(o, "end", json_integer(w->end - 1));
        json_object_set_new(o, "size", json_integer(w->end - w->start));
        json_t *indices = json_array();
        for (int l = w->start; l < w->end; l++) json_array_append_new(indices, json_integer(l));
        json_object_set_new(o, "indices", indices);
        json_t *layers = json_array();
        /* the layers' module paths, so a result reads without the model at hand */
        int ns;
        const loco_site *sites = loco_unet_sites(loco_pipeline_unet((loco_pipeline *)p), &ns);
        for (int l = w->start; l < w->end; l++)
            for (int i = 0; i < ns; i++)
                if (sites[i].kind == LOCO_SITE_CROSS_ATTN && sites[i].cross_index == l)
                    json_array_append_new(layers, json_string(sites[i].name));
        json_object_set_new(o, "layers", layers);
        json_object_set_new(o, "rank", json_integer(w->rank));
    }
    json_object_set_new(o, "mean_cosine_original", loco_json_real(w->mean_cosine_original));
    json_object_set_new(o, "mean_cosine_altered", loco_json_real(w->mean_cosine_altered));
    json_object_set_new(o, "mean_clip_score_original", loco_json_real(w->mean_score_original));
    json_object_set_new(o, "mean_clip_score_altered", loco_json_real(w->mean_score_altered));
    json_object_set_new(o, "objective", loco_json_real(w->objective));
    return o;
}

loco_status loco_locogen_result_json(const loco_locogen_result *r, const loco_locogen_params *g,
                                     const loco_pipeline *p, json_t **out, loco_err *err) {
    json_t *o = json_object();
    if (!o) return loco_err_set(err, LOCO_ENOMEM, "locogen json: out of memory");
    json_object_set_new(o, "method", json_string("locogen"));
    json_object_set_new(o, "kind", json_string(loco_attribute_kind_name(g->kind)));
    json_object_set_new(o, "ranking", json_string(g->kind == LOCO_ATTR_FACT
                                                      ? "highest mean CLIP cosine against the altered prompts"
                                                      : "lowest mean CLIP cosine against the original prompts"));
    json_object_set_new(o, "window", json_integer(r->window));
    json_object_set_new(o, "cross_attention_layers", json_integer(r->n_cross));
    json_object_set_new(o, "unet_calls", json_integer(r->n_calls));
    json_t *pr = json_array(), *al = json_array(), *sd = json_array();
    for (int i = 0; i < g->n_prompts; i++) {
        json_array_append_new(pr, json_string(g->prompts[i]));
        json_array_append_new(al, json_string(g->altered[i]));
    }
    for (int s = 0; s < g->n_seeds; s++) json_array_append_new(sd, json_integer((json_int_t)g->seeds[s]));
    json_object_set_new(o, "prompts", pr);
    json_object_set_new(o, "altered_prompts", al);
    json_object_set_new(o, "seeds", sd);
    json_object_set_new(o, "baseline", window_json(&r->baseline, p));
    json_t *ws = json_array();
    for (int k = 0; k < r->n_windows; k++) json_array_append_new(ws, window_json(&r->windows[k], p));
    json_object_set_new(o, "windows", ws);
    json_object_set_new(o, "best_window", r->n_windows ? window_json(&r->windows[r->best], p) : json_null());
    /* per image: [prompt][seed][0 = unedited, 1 + w] */
    json_t *img = json_array();
    for (int i = 0; i < r->n_prompts; i++)
        for (int s = 0; s < r->n_seeds; s++)
            for (int k = 0; k < r->per_set; k++) {
                const int idx = loco_locogen_index(r, i, s, k);
                json_t *e = json_object();
                json_object_set_new(e, "prompt", json_integer(i));
                json_object_set_new(e, "seed", json_integer((json_int_t)g->seeds[s]));
                json_object_set_new(e, "window_start", k ? json_integer(r->windows[k - 1].start) : json_null());
                json_object_set_new(e, "cosine_original", loco_json_real(r->cos_original[idx]));
                json_object_set_new(e, "cosine_altered", loco_json_real(r->cos_altered[idx]));
                json_array_append_new(img, e);
            }
    json_object_set_new(o, "images", img);
    json_object_set_new(o, "seconds", loco_json_real(r->seconds));
    *out = o;
    return LOCO_OK;
}
