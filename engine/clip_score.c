/* clip_score.c: CLIPModel folder loading, CLIPImageProcessor preprocessing and CLIP scores. */
#include "clip_score.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "clip_score_impl.h"
#include "clip_tokenizer.h"
#include "data_dir.h"

/* Images per vision-tower call: bounds activation memory for large score batches. */
#define SCORE_CHUNK 16

struct loco_clip_scorer {
    loco_backend *be;
    char *path;
    loco_clip_text *text;
    loco_clip_vision *vision;
    loco_clip_tokenizer *tok;
    loco_clip_preprocess_config pre;
    int dim;
};

/* ---- preprocessing ------------------------------------------------------------------------------ */

void loco_clip_preprocess_config_init(loco_clip_preprocess_config *c, int image_size) {
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    memset(c, 0, sizeof *c);
    c->do_convert_rgb = 1;
    c->do_resize = 1;
    c->shortest_edge = image_size;
    c->resample = LOCO_PIL_BICUBIC;
    c->do_center_crop = 1;
    c->crop_height = c->crop_width = image_size;
    c->do_rescale = 1;
    c->rescale_factor = 1.0 / 255.0;
    c->do_normalize = 1;
    memcpy(c->image_mean, mean, sizeof mean);
    memcpy(c->image_std, std, sizeof std);
}

static int pos_int(const json_t *v, int *out) {
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > (1 << 16)) return -1;
    *out = (int)json_integer_value(v);
    return 0;
}

static loco_status get_bool(const json_t *root, const char *key, int *out, const char *src, loco_err *err) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return LOCO_OK;
    if (!json_is_boolean(v)) return loco_err_set(err, LOCO_EFORMAT, "%s: '%s' must be true or false", src, key);
    *out = json_is_true(v);
    return LOCO_OK;
}

static loco_status get_triplet(const json_t *root, const char *key, float *out, const char *src, loco_err *err) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return LOCO_OK;
    if (json_is_number(v)) {
        out[0] = out[1] = out[2] = (float)json_number_value(v);
        return LOCO_OK;
    }
    if (!json_is_array(v) || json_array_size(v) != 3)
        return loco_err_set(err, LOCO_EFORMAT, "%s: '%s' must be a number or a list of 3 numbers", src, key);
    for (int i = 0; i < 3; i++) {
        const json_t *x = json_array_get(v, (size_t)i);
        if (!json_is_number(x)) return loco_err_set(err, LOCO_EFORMAT, "%s: '%s' must hold numbers", src, key);
        out[i] = (float)json_number_value(x);
    }
    return LOCO_OK;
}

static loco_status parse_pre(const json_t *root, const char *source, loco_clip_preprocess_config *c, loco_err *err) {
    const char *src = source ? source : "preprocessor_config.json";
    if (!json_is_object(root)) return loco_err_set(err, LOCO_EFORMAT, "%s: expected a JSON object", src);
    loco_status st;
    if ((st = get_bool(root, "do_convert_rgb", &c->do_convert_rgb, src, err)) ||
        (st = get_bool(root, "do_resize", &c->do_resize, src, err)) ||
        (st = get_bool(root, "do_center_crop", &c->do_center_crop, src, err)) ||
        (st = get_bool(root, "do_rescale", &c->do_rescale, src, err)) ||
        (st = get_bool(root, "do_normalize", &c->do_normalize, src, err)) ||
        (st = get_triplet(root, "image_mean", c->image_mean, src, err)) ||
        (st = get_triplet(root, "image_std", c->image_std, src, err)))
        return st;
    for (int i = 0; i < 3; i++)
        if (!(c->image_std[i] != 0.0f))
            return loco_err_set(err, LOCO_EFORMAT, "%s: image_std must be non-zero", src);
    const json_t *v = json_object_get(root, "size");
    if (v && !json_is_null(v)) {
        int h = 0, w = 0;
        if (json_is_integer(v)) {
            if (pos_int(v, &c->shortest_edge)) return loco_err_set(err, LOCO_EFORMAT, "%s: bad 'size'", src);
        } else if (json_is_object(v) && json_object_get(v, "shortest_edge")) {
            if (pos_int(json_object_get(v, "shortest_edge"), &c->shortest_edge))
                return loco_err_set(err, LOCO_EFORMAT, "%s: bad 'size.shortest_edge'", src);
        } else if (json_is_object(v) && !pos_int(json_object_get(v, "height"), &h) &&
                   !pos_int(json_object_get(v, "width"), &w)) {
            if (h != w)
                return loco_err_set(err, LOCO_EUNSUPPORTED, "%s: non-square 'size' %dx%d is not supported", src, w, h);
            c->shortest_edge = h;
        } else {
            return loco_err_set(err, LOCO_EFORMAT, "%s: 'size' must be an int or {shortest_edge} or {height, width}",
                                src);
        }
    }
    v = json_object_get(root, "crop_size");
    if (v && !json_is_null(v)) {
        if (json_is_integer(v)) {
            if (pos_int(v, &c->crop_height)) return loco_err_set(err, LOCO_EFORMAT, "%s: bad 'crop_size'", src);
            c->crop_width = c->crop_height;
        } else if (!json_is_object(v) || pos_int(json_object_get(v, "height"), &c->crop_height) ||
                   pos_int(json_object_get(v, "width"), &c->crop_width)) {
            return loco_err_set(err, LOCO_EFORMAT, "%s: 'crop_size' must be an int or {height, width}", src);
        }
    }
    v = json_object_get(root, "resample");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || loco_pil_filter_from_int((int)json_integer_value(v), &c->resample))
            return loco_err_set(err, LOCO_EFORMAT, "%s: 'resample' must be a PIL filter number 0..5", src);
    }
    v = json_object_get(root, "rescale_factor");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return loco_err_set(err, LOCO_EFORMAT, "%s: 'rescale_factor' must be a number", src);
        c->rescale_factor = json_number_value(v);
    }
    return LOCO_OK;
}

loco_status loco_clip_preprocess_config_from_json(const json_t *root, const char *source,
                                                  loco_clip_preprocess_config *c, loco_err *err) {
    loco_clip_preprocess_config tmp = *c; /* on error *c stays as it was */
    loco_status st = parse_pre(root, source, &tmp, err);
    if (!st) *c = tmp;
    return st;
}

/* transformers' get_resize_output_image_size(default_to_square=False): shortest side to `size`,
 * the other int(size * long / short). */
static void resize_size(const loco_clip_preprocess_config *c, int w, int h, int *rw, int *rh) {
    if (!c->do_resize) {
        *rw = w;
        *rh = h;
        return;
    }
    const int s = c->shortest_edge;
    if (w <= h) {
        *rw = s;
        *rh = (int)((double)((long long)s * h) / w);
    } else {
        *rh = s;
        *rw = (int)((double)((long long)s * w) / h);
    }
}

void loco_clip_preprocess_size(const loco_clip_preprocess_config *c, int w, int h, int *out_w, int *out_h) {
    resize_size(c, w, h, out_w, out_h);
    if (c->do_center_crop) {
        *out_w = c->crop_width;
        *out_h = c->crop_height;
    }
}

static int floordiv(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

loco_status loco_clip_preprocess(const loco_clip_preprocess_config *c, const loco_image *img, float *dst,
                                 loco_err *err) {
    if (!img || !img->data || (img->channels != 1 && img->channels != 3))
        return loco_err_set(err, LOCO_EINVAL, "clip preprocess: need a 1- or 3-channel image");
    if (img->channels == 1 && !c->do_convert_rgb)
        return loco_err_set(err, LOCO_EINVAL, "clip preprocess: a gray image needs do_convert_rgb");
    loco_image rgb = {0}, rs = {0};
    const loco_image *cur = img;
    loco_status st = LOCO_OK;
    if (img->channels == 1) {
        /* PIL convert("RGB") from "L" replicates the value */
        if ((st = loco_image_alloc(img->width, img->height, 3, &rgb, err))) return st;
        for (size_t i = 0; i < (size_t)img->width * img->height; i++)
            rgb.data[3 * i] = rgb.data[3 * i + 1] = rgb.data[3 * i + 2] = img->data[i];
        cur = &rgb;
    }
    int rw, rh;
    resize_size(c, cur->width, cur->height, &rw, &rh);
    if (c->do_resize && (rw != cur->width || rh != cur->height)) {
        if ((st = loco_pil_resize(cur, rw, rh, c->resample, &rs, err))) goto done;
        cur = &rs;
    }
    const int H = cur->height, W = cur->width;
    int ch = H, cw = W, top = 0, left = 0;
    if (c->do_center_crop && c->crop_round) {
        /* torchvision CenterCrop: pad a smaller side (left = (crop - size) // 2), else
         * offset = round((size - crop) / 2) with Python's half-to-even round */
        ch = c->crop_height;
        cw = c->crop_width;
        top = ch > H ? -((ch - H) / 2) : (int)nearbyint((H - ch) / 2.0);
        left = cw > W ? -((cw - W) / 2) : (int)nearbyint((W - cw) / 2.0);
    } else if (c->do_center_crop) {
        /* transformers' center_crop: floor offsets, zero padding around a smaller image */
        ch = c->crop_height;
        cw = c->crop_width;
        top = floordiv(H - ch, 2);
        left = floordiv(W - cw, 2);
        if (top < 0 || left < 0 || top + ch > H || left + cw > W) {
            const int nh = ch > H ? ch : H, nw = cw > W ? cw : W;
            const int tp = (nh - H + 1) / 2, lp = (nw - W + 1) / 2; /* ceil((new - orig) / 2) */
            top += tp;
            left += lp;
            /* the padded canvas is [nh, nw] with the image at (tp, lp); the crop is clamped to it */
            const int t0 = top < 0 ? 0 : top, l0 = left < 0 ? 0 : left;
            const int t1 = top + ch > nh ? nh : top + ch, l1 = left + cw > nw ? nw : left + cw;
            if (t1 - t0 != ch || l1 - l0 != cw) {
                st = loco_err_set(err, LOCO_EINVAL, "clip preprocess: crop %dx%d does not fit an image of %dx%d", cw, ch,
                                  W, H);
                goto done;
            }
            top = t0 - tp;
            left = l0 - lp;
        }
    }
    for (int k = 0; k < 3; k++)
        for (int y = 0; y < ch; y++)
            for (int x = 0; x < cw; x++) {
                const int sy = y + top, sx = x + left;
                const uint8_t u = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? cur->data[((size_t)sy * W + sx) * 3 + k] : 0;
                float v = (float)u;
                /* rescale: float64 multiply, then float32 (transformers' rescale); ToTensor divides in float32 */
                if (c->do_rescale)
                    v = c->rescale_by_division ? (float)u / 255.0f : (float)((double)u * c->rescale_factor);
                if (c->do_normalize) v = (v - c->image_mean[k]) / c->image_std[k];
                dst[((size_t)k * ch + y) * cw + x] = v;
            }
done:
    loco_image_free(&rgb);
    loco_image_free(&rs);
    return st;
}

/* ---- the scorer ---------------------------------------------------------------------------------- */

void loco_clip_scorer_free(loco_clip_scorer *s) {
    if (!s) return;
    loco_clip_text_free(s->text);
    loco_clip_vision_free(s->vision);
    loco_clip_tokenizer_free(s->tok);
    free(s->path);
    free(s);
}

int loco_clip_scorer_embed_dim(const loco_clip_scorer *s) { return s->dim; }
const loco_clip_preprocess_config *loco_clip_scorer_preprocess_config(const loco_clip_scorer *s) { return &s->pre; }
const char *loco_clip_scorer_path(const loco_clip_scorer *s) { return s->path; }

static json_t *load_json(const char *path, loco_status *st, loco_err *err) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) *st = loco_err_set(err, errno == ENOENT ? LOCO_ENOTFOUND : LOCO_EFORMAT, "%s:%d: %s", path, je.line, je.text);
    return j;
}

static int exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* transformers' CLIPModel folder: configs, weights and preprocessing. */
static loco_status load_hf(const char *dir, loco_clip_text_config *tc, loco_clip_vision_config *vc,
                           loco_clip_preprocess_config *pc, loco_weights **w, loco_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    loco_status st = LOCO_OK;
    json_t *cfg = load_json(path, &st, err), *pre = NULL;
    if (!cfg) return st;
    if (!json_is_object(json_object_get(cfg, "text_config")) || !json_is_object(json_object_get(cfg, "vision_config"))) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: not a CLIPModel config (text_config and vision_config are required)",
                          path);
        goto done;
    }
    if ((st = loco_clip_text_config_from_json(cfg, path, tc, err)) ||
        (st = loco_clip_vision_config_from_json(cfg, path, vc, err)))
        goto done;
    tc->with_projection = 1; /* CLIPModel always has text_projection */
    /* CLIPModel sizes both projections with the top-level projection_dim; the sub-configs may
     * carry their own class defaults (transformers writes 512 there), which the model ignores */
    const json_t *pd = json_object_get(cfg, "projection_dim");
    if (json_is_integer(pd) && json_integer_value(pd) > 0 && json_integer_value(pd) < (1 << 20))
        tc->projection_dim = vc->projection_dim = (int)json_integer_value(pd);
    loco_clip_preprocess_config_init(pc, vc->image_size);
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    if (exists(path) &&
        (!(pre = load_json(path, &st, err)) || (st = loco_clip_preprocess_config_from_json(pre, path, pc, err))))
        goto done;
    st = loco_weights_open_dir(dir, "model", NULL, w, err);
done:
    json_decref(cfg);
    json_decref(pre);
    return st;
}

static loco_status load_openclip(const char *dir, loco_clip_text_config *tc, loco_clip_vision_config *vc,
                                 loco_clip_preprocess_config *pc, loco_weights **w, loco_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/open_clip_config.json", dir);
    loco_status st = LOCO_OK;
    json_t *cfg = load_json(path, &st, err);
    if (!cfg) return st;
    st = loco_openclip_configs(cfg, path, tc, vc, pc, err);
    json_decref(cfg);
    if (st) return st;
    snprintf(path, sizeof path, "%s/open_clip_model.safetensors", dir);
    if (!exists(path))
        return loco_err_set(err, LOCO_ENOTFOUND,
                            "%s: no open_clip_model.safetensors (pickled .bin/.pt checkpoints are not read; convert them "
                            "to safetensors)",
                            dir);
    return loco_openclip_weights(path, tc->num_hidden_layers, w, err);
}

loco_status loco_clip_scorer_load(loco_backend *be, const char *dir, loco_clip_scorer **out, loco_err *err) {
    *out = NULL;
    if (!be || !dir) return loco_err_set(err, LOCO_EINVAL, "clip scorer: backend and folder are required");
    char path[4096];
    if (snprintf(path, sizeof path, "%s/open_clip_config.json", dir) >= (int)sizeof path - 32)
        return loco_err_set(err, LOCO_EINVAL, "clip scorer: folder path too long");
    const int openclip = exists(path);
    loco_status st = LOCO_OK;
    loco_clip_scorer *s = calloc(1, sizeof *s);
    loco_weights *w = NULL;
    if (!s || !(s->path = strdup(dir))) {
        st = loco_err_set(err, LOCO_ENOMEM, "clip scorer: out of memory");
        goto fail;
    }
    s->be = be;
    loco_clip_text_config tc;
    loco_clip_vision_config vc;
    if ((st = openclip ? load_openclip(dir, &tc, &vc, &s->pre, &w, err) : load_hf(dir, &tc, &vc, &s->pre, &w, err)))
        goto fail;
    if ((st = loco_clip_text_create(be, &tc, w, &s->text, err)) ||
        (st = loco_clip_vision_create(be, &vc, w, 1, &s->vision, err)))
        goto fail;
    s->dim = loco_clip_text_get_config(s->text)->projection_dim;
    if (loco_clip_vision_get_config(s->vision)->projection_dim != s->dim) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: text_projection (%d) and visual_projection (%d) widths differ", dir,
                          s->dim, loco_clip_vision_get_config(s->vision)->projection_dim);
        goto fail;
    }
    /* the tokenizer: the folder's own, else (open_clip folders often have none) the bundled CLIP one */
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if (exists(path)) {
        st = loco_clip_tokenizer_load(dir, &s->tok, err);
    } else if (openclip) {
        char tdir[4096];
        if (!(st = loco_data_path("tokenizers/clip", tdir, sizeof tdir, err))) st = loco_clip_tokenizer_load(tdir, &s->tok, err);
    } else {
        st = loco_err_set(err, LOCO_ENOTFOUND, "%s: no vocab.json / merges.txt for the tokenizer", dir);
    }
    if (st) {
        loco_err_prefix(err, "clip scorer tokenizer");
        goto fail;
    }
    if (s->pre.crop_height != vc.image_size || s->pre.crop_width != vc.image_size ||
        (!s->pre.do_center_crop && (!s->pre.do_resize || s->pre.shortest_edge != vc.image_size))) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: preprocessing gives images other than the vision tower's %dx%d", dir,
                          vc.image_size, vc.image_size);
        goto fail;
    }
    loco_weights_free(w);
    *out = s;
    return LOCO_OK;
fail:
    loco_weights_free(w);
    loco_clip_scorer_free(s);
    return st;
}

/* Download [n, dim] embeddings and L2-normalise each row (in double, as the cosine is). */
static loco_status download_normalised(const loco_tensor *t, int n, int dim, float *out, loco_err *err) {
    loco_status st = loco_tensor_download_f32(t, out, err);
    if (st) return st;
    for (int i = 0; i < n; i++) {
        float *row = out + (size_t)i * dim;
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)row[j] * row[j];
        const double nrm = sqrt(ss);
        if (!(nrm > 0) || !isfinite(nrm))
            return loco_err_set(err, LOCO_EINVAL, "clip scorer: embedding %d has norm %g", i, nrm);
        for (int j = 0; j < dim; j++) row[j] = (float)(row[j] / nrm);
    }
    return LOCO_OK;
}

loco_status loco_clip_scorer_image_embeds(const loco_clip_scorer *s, const loco_image *images, int n, float *out,
                                          loco_err *err) {
    if (n < 0 || (n > 0 && (!images || !out))) return loco_err_set(err, LOCO_EINVAL, "clip scorer: no images given");
    const int S = loco_clip_vision_get_config(s->vision)->image_size;
    const size_t per = (size_t)3 * S * S;
    float *host = malloc((size_t)SCORE_CHUNK * per * sizeof *host);
    if (!host) return loco_err_set(err, LOCO_ENOMEM, "clip scorer: out of memory");
    loco_status st = LOCO_OK;
    for (int i0 = 0; i0 < n && !st; i0 += SCORE_CHUNK) {
        const int m = n - i0 < SCORE_CHUNK ? n - i0 : SCORE_CHUNK;
        for (int i = 0; i < m && !st; i++) {
            int pw, ph;
            loco_clip_preprocess_size(&s->pre, images[i0 + i].width, images[i0 + i].height, &pw, &ph);
            if (pw != S || ph != S)
                st = loco_err_set(err, LOCO_EINVAL, "clip scorer: image %d preprocesses to %dx%d, not %dx%d", i0 + i, pw,
                                  ph, S, S);
            else if ((st = loco_clip_preprocess(&s->pre, &images[i0 + i], host + (size_t)i * per, err)))
                loco_err_prefix(err, "image %d", i0 + i);
        }
        if (st) break;
        loco_tensor px = {0}, emb = {0};
        const int64_t pshape[4] = {m, 3, S, S}, eshape[2] = {m, s->dim};
        if (!(st = loco_tensor_alloc_act(s->be, 4, pshape, &px, err)) &&
            !(st = loco_tensor_upload(&px, host, LOCO_F32, err)) &&
            !(st = loco_tensor_alloc_act(s->be, 2, eshape, &emb, err)) &&
            !(st = loco_clip_vision_forward(s->vision, &px, NULL, &emb, err)))
            st = download_normalised(&emb, m, s->dim, out + (size_t)i0 * s->dim, err);
        loco_tensor_free(&px);
        loco_tensor_free(&emb);
    }
    free(host);
    return st;
}

loco_status loco_clip_scorer_text_embeds(const loco_clip_scorer *s, const char *const *texts, int n, float *out,
                                         loco_err *err) {
    if (n < 0 || (n > 0 && (!texts || !out))) return loco_err_set(err, LOCO_EINVAL, "clip scorer: no texts given");
    if (n == 0) return LOCO_OK;
    const int L = loco_clip_tokenizer_max_length(s->tok);
    if (L <= 0 || L > loco_clip_text_get_config(s->text)->max_position_embeddings)
        return loco_err_set(err, LOCO_EFORMAT, "clip scorer: tokenizer max length %d does not fit the text tower", L);
    int32_t *ids = malloc((size_t)n * L * sizeof *ids);
    if (!ids) return loco_err_set(err, LOCO_ENOMEM, "clip scorer: out of memory");
    loco_status st = LOCO_OK;
    for (int i = 0; i < n && !st; i++) {
        if (!texts[i])
            st = loco_err_set(err, LOCO_EINVAL, "clip scorer: text %d is missing", i);
        else if ((st = loco_clip_tokenize(s->tok, texts[i], ids + (size_t)i * L, NULL, err)))
            loco_err_prefix(err, "clip scorer: tokenizing text %d", i);
    }
    loco_tensor emb = {0};
    if (!st && !(st = loco_tensor_alloc_act(s->be, 2, (int64_t[]){n, s->dim}, &emb, err))) {
        /* padding to max_length does not change the result: attention is causal and the pooled
         * token is the EOS, which sees no padding */
        loco_clip_text_outputs o;
        loco_clip_text_outputs_init(&o);
        o.text_embeds = &emb;
        if (!(st = loco_clip_text_forward(s->text, ids, n, L, &o, NULL, err)))
            st = download_normalised(&emb, n, s->dim, out, err);
    }
    loco_tensor_free(&emb);
    free(ids);
    return st;
}

double loco_clip_cosine(const float *a, const float *b, int dim) {
    double d = 0;
    for (int i = 0; i < dim; i++) d += (double)a[i] * b[i];
    return d;
}

loco_clip_score loco_clip_score_from_cosine(double cosine) {
    loco_clip_score s = {.cosine = cosine, .score = 100.0 * (cosine > 0 ? cosine : 0)};
    return s;
}

loco_status loco_clip_score_pairs(const loco_clip_scorer *s, const loco_image *images, const char *const *texts, int n,
                                  loco_clip_score *out, loco_err *err) {
    if (n <= 0) return loco_err_set(err, LOCO_EINVAL, "clip score: at least one image/text pair is required");
    float *ie = malloc((size_t)n * s->dim * sizeof *ie), *te = malloc((size_t)n * s->dim * sizeof *te);
    loco_status st = LOCO_OK;
    if (!ie || !te)
        st = loco_err_set(err, LOCO_ENOMEM, "clip score: out of memory");
    if (!st) st = loco_clip_scorer_image_embeds(s, images, n, ie, err);
    if (!st) st = loco_clip_scorer_text_embeds(s, texts, n, te, err);
    for (int i = 0; !st && i < n; i++)
        out[i] = loco_clip_score_from_cosine(loco_clip_cosine(ie + (size_t)i * s->dim, te + (size_t)i * s->dim, s->dim));
    free(ie);
    free(te);
    return st;
}
