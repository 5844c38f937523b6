/* test_clip_score.c: the CLIP scorer against transformers (tests/fixtures/refs/clip-tiny/
 * scores.safetensors, made by tools/fixtures/tiny_clip.py): PIL's resampler byte for byte,
 * CLIPImageProcessor's pixel_values, the projected embeddings and the cosines, for random images
 * of awkward sizes and for fixture PNGs read from disk. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip_score.h"
#include "loco_test.h"
#include "model_ref_util.h"
#include "pil_resample.h"

typedef struct fx {
    loco_backend *be;
    loco_safetensors *ref;
    loco_clip_scorer *sc;
} fx;

static int fx_open(fx *f) {
    memset(f, 0, sizeof *f);
    f->be = mr_cpu();
    f->ref = mr_ref_open("clip-tiny", "scores");
    if (!f->be || !f->ref) return -1;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/clip-tiny", loco_fixtures_dir());
    loco_err e = {0};
    if (loco_clip_scorer_load(f->be, dir, &f->sc, &e)) {
        fprintf(stderr, "load: %s\n", e.msg);
        return -1;
    }
    return 0;
}

static void fx_close(fx *f) {
    loco_clip_scorer_free(f->sc);
    loco_safetensors_close(f->ref);
    loco_backend_destroy(f->be);
}

static json_t *meta_json(const loco_safetensors *f, const char *key) {
    const char *v = loco_safetensors_metadata(f, key);
    return v ? json_loads(v, JSON_DECODE_ANY, NULL) : NULL;
}

/* Image i of the reference set: the random uint8 tensors first, then the PNG files. */
static int load_image(const fx *f, int i, loco_image *img) {
    json_t *nr = meta_json(f->ref, "n_random"), *pngs = meta_json(f->ref, "pngs");
    int n_random = nr ? (int)json_integer_value(nr) : 0, rc = -1;
    loco_err e = {0};
    if (i < n_random) {
        char name[64];
        snprintf(name, sizeof name, "image.%d", i);
        const loco_stored_tensor *t = loco_safetensors_find(f->ref, name);
        if (t && t->ndim == 3 && t->shape[2] == 3 && !loco_image_alloc((int)t->shape[1], (int)t->shape[0], 3, img, &e)) {
            memcpy(img->data, t->data, t->nbytes);
            rc = 0;
        }
    } else if (pngs && i - n_random < (int)json_array_size(pngs)) {
        char path[1024];
        snprintf(path, sizeof path, "%s/refs/%s", loco_fixtures_dir(),
                 json_string_value(json_array_get(pngs, (size_t)(i - n_random))));
        loco_png_read_opts o;
        loco_png_read_opts_init(&o);
        rc = loco_png_read(path, &o, img, &e) ? -1 : 0;
        if (rc) fprintf(stderr, "%s\n", e.msg);
    }
    json_decref(nr);
    json_decref(pngs);
    return rc;
}

static int n_images(const fx *f) {
    json_t *nr = meta_json(f->ref, "n_random"), *pngs = meta_json(f->ref, "pngs");
    int n = (nr ? (int)json_integer_value(nr) : 0) + (pngs ? (int)json_array_size(pngs) : 0);
    json_decref(nr);
    json_decref(pngs);
    return n;
}

/* Number of bytes that differ from the stored uint8 image (-1: missing or another size). */
static long diff_bytes(const loco_image *got, const loco_safetensors *ref, const char *name) {
    const loco_stored_tensor *t = loco_safetensors_find(ref, name);
    if (!t || t->ndim != 3 || t->shape[0] != got->height || t->shape[1] != got->width || t->shape[2] != got->channels)
        return -1;
    long d = 0;
    const uint8_t *w = t->data;
    for (size_t k = 0; k < t->nbytes; k++) d += w[k] != got->data[k];
    return d;
}

TEST(pil_resize_matches_pillow_bytes) {
    fx f;
    if (fx_open(&f)) {
        fx_close(&f);
        CHECK_MSG(0, "fixtures missing (make fixtures)");
    }
    const struct {
        const char *prefix;
        loco_pil_filter filt;
    } kinds[] = {{"resized_bicubic", LOCO_PIL_BICUBIC}, {"resized_bilinear", LOCO_PIL_BILINEAR},
                 {"resized_lanczos", LOCO_PIL_LANCZOS}};
    int compared = 0, bad = 0;
    for (int i = 0; i < n_images(&f); i++) {
        loco_image img = {0};
        CHECK(load_image(&f, i, &img) == 0);
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
            char name[64];
            snprintf(name, sizeof name, "%s.%d", kinds[k].prefix, i);
            const loco_stored_tensor *t = loco_safetensors_find(f.ref, name);
            if (!t) continue;
            loco_image out = {0};
            loco_err e = {0};
            if (loco_pil_resize(&img, (int)t->shape[1], (int)t->shape[0], kinds[k].filt, &out, &e)) {
                fprintf(stderr, "%s: %s\n", name, e.msg);
                bad++;
                continue;
            }
            long d = diff_bytes(&out, f.ref, name);
            if (d != 0) {
                fprintf(stderr, "%s: %ld bytes differ from Pillow (%dx%d -> %dx%d)\n", name, d, img.width, img.height,
                        out.width, out.height);
                bad++;
            }
            compared++;
            loco_image_free(&out);
        }
        loco_image_free(&img);
    }
    fprintf(stderr, "%d resizes compared with Pillow, %d differ\n", compared, bad);
    fx_close(&f);
    CHECK(compared >= 10);
    CHECK(bad == 0);
}

TEST(pixel_values_match_clip_image_processor) {
    fx f;
    if (fx_open(&f)) {
        fx_close(&f);
        CHECK_MSG(0, "fixtures missing (make fixtures)");
    }
    const loco_clip_preprocess_config *pc = loco_clip_scorer_preprocess_config(f.sc);
    double worst = 0;
    int n = n_images(&f);
    for (int i = 0; i < n; i++) {
        loco_image img = {0};
        CHECK(load_image(&f, i, &img) == 0);
        int w, h;
        loco_clip_preprocess_size(pc, img.width, img.height, &w, &h);
        float *px = malloc((size_t)3 * w * h * sizeof *px);
        loco_err e = {0};
        CHECK_MSG(loco_clip_preprocess(pc, &img, px, &e) == LOCO_OK, "%s", e.msg);
        char name[64];
        snprintf(name, sizeof name, "pixel_values.%d", i);
        int64_t nref = 0;
        float *want = mr_ref_f32(f.ref, name, &nref);
        CHECK(want && nref == 3 * w * h);
        double r = loco_rel_l2(px, want, (size_t)nref);
        if (!(r <= worst)) worst = r;
        free(px);
        free(want);
        loco_image_free(&img);
    }
    fprintf(stderr, "pixel_values of %d images: worst rel err %.3g\n", n, worst);
    fx_close(&f);
    CHECK(worst <= 1e-7);
}

TEST(embeddings_and_cosines_match_transformers) {
    fx f;
    if (fx_open(&f)) {
        fx_close(&f);
        CHECK_MSG(0, "fixtures missing (make fixtures)");
    }
    const int n = n_images(&f), dim = loco_clip_scorer_embed_dim(f.sc);
    json_t *caps = meta_json(f.ref, "captions");
    const int nc = caps ? (int)json_array_size(caps) : 0;
    CHECK(n > 0 && nc > 0 && dim == 24);
    loco_image *imgs = calloc((size_t)n, sizeof *imgs);
    const char **texts = calloc((size_t)nc, sizeof *texts);
    for (int i = 0; i < n; i++) CHECK(load_image(&f, i, &imgs[i]) == 0);
    for (int j = 0; j < nc; j++) texts[j] = json_string_value(json_array_get(caps, (size_t)j));
    float *ie = malloc((size_t)n * dim * sizeof *ie), *te = malloc((size_t)nc * dim * sizeof *te);
    loco_err e = {0};
    CHECK_MSG(loco_clip_scorer_image_embeds(f.sc, imgs, n, ie, &e) == LOCO_OK, "%s", e.msg);
    CHECK_MSG(loco_clip_scorer_text_embeds(f.sc, texts, nc, te, &e) == LOCO_OK, "%s", e.msg);
    int64_t k = 0;
    float *wi = mr_ref_f32(f.ref, "image_embeds", &k), *wt = mr_ref_f32(f.ref, "text_embeds", NULL),
          *wc = mr_ref_f32(f.ref, "cosine", NULL);
    CHECK(wi && wt && wc && k == (int64_t)n * dim);
    const double ei = loco_rel_l2(ie, wi, (size_t)n * dim), et = loco_rel_l2(te, wt, (size_t)nc * dim);
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < nc; j++) {
            double c = loco_clip_cosine(ie + (size_t)i * dim, te + (size_t)j * dim, dim);
            double d = fabs(c - wc[i * nc + j]);
            if (!(d <= worst)) worst = d;
        }
    /* the pair API gives the same numbers and the clipped score */
    loco_clip_score s[2];
    const char *pair_texts[2] = {texts[0], texts[nc - 1]};
    CHECK_MSG(loco_clip_score_pairs(f.sc, imgs, pair_texts, 2, s, &e) == LOCO_OK, "%s", e.msg);
    CHECK_CLOSE(s[0].cosine, wc[0], 1e-5);
    CHECK_CLOSE(s[1].cosine, wc[1 * nc + nc - 1], 1e-5);
    CHECK(s[0].score == (s[0].cosine > 0 ? 100 * s[0].cosine : 0));
    fprintf(stderr, "image embeds rel err %.3g, text embeds %.3g, worst |cos diff| %.3g over %dx%d pairs\n", ei, et,
            worst, n, nc);
    for (int i = 0; i < n; i++) loco_image_free(&imgs[i]);
    free(imgs);
    free(texts);
    free(ie);
    free(te);
    free(wi);
    free(wt);
    free(wc);
    json_decref(caps);
    fx_close(&f);
    CHECK(ei <= 1e-5 && et <= 1e-5);
    CHECK(worst <= 1e-5);
}

TEST(clear_errors) {
    loco_backend *be = mr_cpu();
    CHECK(be);
    loco_clip_scorer *sc = NULL;
    loco_err e = {0};
    CHECK(loco_clip_scorer_load(be, "/nonexistent/clip", &sc, &e) == LOCO_ENOTFOUND);
    CHECK(strstr(e.msg, "/nonexistent/clip/config.json") != NULL);
    char dir[1024];
    /* an SD text encoder folder is a CLIPTextModel, not a CLIPModel */
    snprintf(dir, sizeof dir, "%s/models/sd1-tiny/text_encoder", loco_fixtures_dir());
    CHECK(loco_clip_scorer_load(be, dir, &sc, &e) == LOCO_EFORMAT);
    CHECK(strstr(e.msg, "CLIPModel") != NULL);
    loco_backend_destroy(be);

    loco_clip_preprocess_config pc;
    loco_clip_preprocess_config_init(&pc, 224);
    json_t *j = json_loads("{\"size\": {\"height\": 224, \"width\": 200}}", 0, NULL);
    CHECK(loco_clip_preprocess_config_from_json(j, "p.json", &pc, &e) == LOCO_EUNSUPPORTED);
    json_decref(j);
    j = json_loads("{\"image_std\": [1, 0, 1]}", 0, NULL);
    CHECK(loco_clip_preprocess_config_from_json(j, "p.json", &pc, &e) == LOCO_EFORMAT);
    json_decref(j);
    j = json_loads("{\"size\": 336, \"crop_size\": 336, \"resample\": 2}", 0, NULL);
    CHECK(loco_clip_preprocess_config_from_json(j, "p.json", &pc, &e) == LOCO_OK);
    CHECK(pc.shortest_edge == 336 && pc.crop_width == 336 && pc.resample == LOCO_PIL_BILINEAR);
    json_decref(j);

    loco_image img = {0};
    CHECK(loco_image_alloc(4, 4, 3, &img, &e) == LOCO_OK);
    loco_image out = {0};
    CHECK(loco_pil_resize(&img, 2, 2, LOCO_PIL_NEAREST, &out, &e) == LOCO_EUNSUPPORTED);
    CHECK(loco_pil_resize(&img, 0, 2, LOCO_PIL_BICUBIC, &out, &e) == LOCO_EINVAL);
    loco_image_free(&img);
    loco_pil_filter pf;
    CHECK(loco_pil_filter_from_name("bicubic", &pf) == 0 && pf == LOCO_PIL_BICUBIC);
    CHECK(strcmp(loco_pil_filter_name(LOCO_PIL_LANCZOS), "lanczos") == 0);
    CHECK(loco_pil_filter_from_name("cubic", &pf) == -1);
}

/* The same model in open_clip's layout (open_clip_config.json + open_clip_model.safetensors with fused in_proj and
 * [width, embed] projections) and open_clip's eval transform (rounded crop offsets, ToTensor's float32 division). */
TEST(open_clip_folder_and_transform) {
    fx f;
    if (fx_open(&f)) {
        fx_close(&f);
        CHECK_MSG(0, "fixtures missing (make fixtures)");
    }
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/clip-tiny-openclip", loco_fixtures_dir());
    loco_clip_scorer *oc = NULL;
    loco_err e = {0};
    if (loco_clip_scorer_load(f.be, dir, &oc, &e) != LOCO_OK) {
        fx_close(&f);
        CHECK_MSG(0, "%s", e.msg);
    }
    const loco_clip_preprocess_config *pc = loco_clip_scorer_preprocess_config(oc);
    CHECK(pc->crop_round && pc->rescale_by_division && pc->resample == LOCO_PIL_BICUBIC);
    const int n = n_images(&f), dim = loco_clip_scorer_embed_dim(oc);
    loco_image *imgs = calloc((size_t)n, sizeof *imgs);
    double worst_px = 0;
    for (int i = 0; i < n; i++) {
        CHECK(load_image(&f, i, &imgs[i]) == 0);
        float *px = malloc((size_t)3 * 32 * 32 * sizeof *px);
        CHECK_MSG(loco_clip_preprocess(pc, &imgs[i], px, &e) == LOCO_OK, "%s", e.msg);
        char name[64];
        snprintf(name, sizeof name, "openclip_pixel_values.%d", i);
        int64_t k = 0;
        float *want = mr_ref_f32(f.ref, name, &k);
        CHECK(want && k == 3 * 32 * 32);
        worst_px = fmax(worst_px, loco_rel_l2(px, want, (size_t)k));
        free(px);
        free(want);
    }
    json_t *caps = meta_json(f.ref, "captions");
    const int nc = (int)json_array_size(caps);
    const char **texts = calloc((size_t)nc, sizeof *texts);
    for (int j = 0; j < nc; j++) texts[j] = json_string_value(json_array_get(caps, (size_t)j));
    float *ie = malloc((size_t)n * dim * sizeof *ie), *te = malloc((size_t)nc * dim * sizeof *te);
    CHECK_MSG(loco_clip_scorer_image_embeds(oc, imgs, n, ie, &e) == LOCO_OK, "%s", e.msg);
    CHECK_MSG(loco_clip_scorer_text_embeds(oc, texts, nc, te, &e) == LOCO_OK, "%s", e.msg);
    float *wi = mr_ref_f32(f.ref, "openclip_image_embeds", NULL), *wc = mr_ref_f32(f.ref, "openclip_cosine", NULL),
          *wt = mr_ref_f32(f.ref, "text_embeds", NULL);
    CHECK(wi && wc && wt);
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < nc; j++)
            worst = fmax(worst, fabs(loco_clip_cosine(ie + (size_t)i * dim, te + (size_t)j * dim, dim) - wc[i * nc + j]));
    const double ei = loco_rel_l2(ie, wi, (size_t)n * dim), et = loco_rel_l2(te, wt, (size_t)nc * dim);
    fprintf(stderr, "open_clip folder: pixel_values worst %.3g, image embeds %.3g, text embeds %.3g, |cos diff| %.3g\n",
            worst_px, ei, et, worst);
    for (int i = 0; i < n; i++) loco_image_free(&imgs[i]);
    free(imgs);
    free(texts);
    free(ie);
    free(te);
    free(wi);
    free(wc);
    free(wt);
    json_decref(caps);
    loco_clip_scorer_free(oc);
    fx_close(&f);
    CHECK(worst_px <= 1e-7);
    CHECK(ei <= 1e-5 && et <= 1e-5 && worst <= 1e-5);
}
