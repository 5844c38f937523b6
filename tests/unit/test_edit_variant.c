/* test_edit_variant.c: variants (shared tensors, isolation, memory), the delta file round trip,
 * the diffusers-folder export read back by loco, and the errors of invalid edit requests. */
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "edit_test_util.h"
#include "pipeline_impl.h"

static size_t mem_now(loco_backend *be) {
    size_t cur = 0;
    loco_backend_memory(be, &cur, NULL);
    return cur;
}

/* One UNet call on fixed inputs, downloaded. */
static float *unet_out(loco_unet *u, loco_backend *be) {
    const loco_unet_config *c = loco_unet_get_config(u);
    const int64_t xs[4] = {1, c->in_channels, 8, 8}, es[3] = {1, 77, c->cross_attention_dim[0]};
    const int64_t nx = xs[1] * 64, ne = es[1] * es[2];
    float *hx = malloc((size_t)nx * sizeof *hx), *he = malloc((size_t)ne * sizeof *he);
    for (int64_t i = 0; i < nx; i++) hx[i] = (float)sin(0.37 * (double)i);
    for (int64_t i = 0; i < ne; i++) he[i] = (float)cos(0.11 * (double)i);
    loco_tensor x = {0}, e = {0}, y = {0};
    loco_err err = {0};
    float t = 500.0f, *out = NULL;
    loco_unet_inputs in;
    loco_unet_inputs_init(&in);
    in.sample = &x;
    in.timesteps = &t;
    in.encoder_hidden_states = &e;
    if (!loco_tensor_alloc_act(be, 4, xs, &x, &err) && !loco_tensor_upload(&x, hx, LOCO_F32, &err) &&
        !loco_tensor_alloc_act(be, 3, es, &e, &err) && !loco_tensor_upload(&e, he, LOCO_F32, &err) &&
        !loco_unet_forward(u, &in, &y, &err)) {
        out = malloc((size_t)nx * sizeof *out);
        loco_tensor_download_f32(&y, out, &err);
    } else {
        fprintf(stderr, "unet forward: %s\n", err.msg);
    }
    loco_tensor_free(&x), loco_tensor_free(&e), loco_tensor_free(&y);
    free(hx), free(he);
    return out;
}

TEST(unet_variant_shares_then_isolates) {
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, "sd1-tiny") : NULL;
    CHECK(p);
    loco_unet *base = loco_pipeline_unet(p);
    const size_t n = 4 * 64;
    float *y0 = unet_out(base, be);
    const size_t m0 = mem_now(be);
    loco_unet *v = NULL;
    loco_err e = {0};
    CHECK(loco_unet_variant(base, &v, &e) == LOCO_OK);
    CHECK_MSG(mem_now(be) == m0, "a fresh variant allocated %zu bytes", mem_now(be) - m0);
    float *y1 = unet_out(v, be);
    CHECK(y0 && y1 && memcmp(y0, y1, n * sizeof *y0) == 0); /* same tensors, same numbers */
    const char *name = "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight";
    const loco_tensor *bt = loco_params_find(loco_unet_params(base), name);
    CHECK(bt && !loco_unet_param_is_owned(v, name) && loco_unet_param_is_owned(base, name));
    float *w = malloc((size_t)loco_tensor_numel(bt) * sizeof *w);
    CHECK(loco_tensor_download_f32(bt, w, &e) == LOCO_OK);
    for (int64_t i = 0; i < loco_tensor_numel(bt); i++) w[i] *= -2.0f;
    CHECK(loco_unet_set_param(v, name, w, LOCO_F32, &e) == LOCO_OK);
    CHECK_MSG(mem_now(be) - m0 == loco_tensor_nbytes(bt), "replacing one tensor cost %zu bytes, not %zu",
              mem_now(be) - m0, loco_tensor_nbytes(bt));
    CHECK(loco_unet_param_is_owned(v, name));
    float *y2 = unet_out(v, be), *y3 = unet_out(base, be);
    CHECK(y2 && y3 && memcmp(y2, y0, n * sizeof *y0) != 0);  /* the variant changed */
    CHECK(memcmp(y3, y0, n * sizeof *y0) == 0);               /* the base did not */
    /* the base is frozen now: its tensors are seen by the variant */
    CHECK(loco_unet_set_param(base, name, w, LOCO_F32, &e) == LOCO_EINVAL && strstr(e.msg, "variant"));
    CHECK(loco_unet_set_param(v, "no.such.weight", w, LOCO_F32, &e) == LOCO_ENOTFOUND);
    /* a variant of the variant sees the replaced tensor, owns nothing */
    loco_unet *v2 = NULL;
    CHECK(loco_unet_variant(v, &v2, &e) == LOCO_OK);
    float *y4 = unet_out(v2, be);
    CHECK(y4 && memcmp(y4, y2, n * sizeof *y2) == 0 && !loco_unet_param_is_owned(v2, name));
    loco_unet_free(v2);
    loco_unet_free(v);
    CHECK(mem_now(be) == m0); /* exactly the replaced tensor was released */
    free(w), free(y0), free(y1), free(y2), free(y3), free(y4);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
}

/* Self-attention's to_q, to_k, to_v are row blocks of one stacked weight (one GEMM). Replacing
 * one of them in a variant must take effect: the variant's block goes back to three GEMMs,
 * with the same numbers when the values are the same, other numbers when they are not. */
static int close_all(const float *a, const float *b, size_t n, double tol) {
    for (size_t i = 0; i < n; i++)
        if (fabs((double)a[i] - (double)b[i]) > tol * (1.0 + fabs((double)b[i]))) return 0;
    return 1;
}

TEST(stacked_self_attention_follows_an_edit_of_one_part) {
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, "sd1-tiny") : NULL;
    CHECK(p);
    loco_unet *base = loco_pipeline_unet(p);
    const size_t n = 4 * 64;
    const char *stack = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_qkv.weight";
    const char *to_q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
    const char *to_v = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v.weight";
    const loco_tensor *st = loco_params_find(loco_unet_params(base), stack);
    const loco_tensor *q = loco_params_find(loco_unet_params(base), to_q);
    const loco_tensor *vt = loco_params_find(loco_unet_params(base), to_v);
    CHECK(st && q && vt && loco_unet_param_is_owned(base, stack) && !loco_unet_param_is_owned(base, to_q));
    CHECK(st->shape[0] == 3 * q->shape[0] && q->data == st->data);
    float *y0 = unet_out(base, be);
    loco_unet *v = NULL;
    loco_err e = {0};
    CHECK(y0 && loco_unet_variant(base, &v, &e) == LOCO_OK);
    float *w = malloc((size_t)loco_tensor_numel(q) * sizeof *w);
    CHECK(w && loco_tensor_download_f32(q, w, &e) == LOCO_OK);
    CHECK(loco_unet_set_param(v, to_q, w, LOCO_F32, &e) == LOCO_OK); /* the same values, apart */
    float *y1 = unet_out(v, be);
    CHECK(y1 && close_all(y1, y0, n, 1e-5));
    CHECK(loco_tensor_download_f32(vt, w, &e) == LOCO_OK);
    for (int64_t i = 0; i < loco_tensor_numel(vt); i++) w[i] *= -2.0f;
    CHECK(loco_unet_set_param(v, to_v, w, LOCO_F32, &e) == LOCO_OK);
    float *y2 = unet_out(v, be), *y3 = unet_out(base, be);
    CHECK(y2 && y3 && !close_all(y2, y0, n, 1e-3)); /* the edit took effect */
    CHECK(memcmp(y3, y0, n * sizeof *y0) == 0);      /* the base's stack is untouched */
    loco_unet_free(v);
    free(w), free(y0), free(y1), free(y2), free(y3);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
}

static void locoedit_opts(loco_locoedit_opts *o) {
    loco_locoedit_opts_init(o);
    o->concept = "van gogh";
    o->start = 6;
    o->n_layers = 2;
}

static int generate(loco_pipeline_variant *v, loco_pipeline *base, loco_generate_result *res) {
    loco_generate_params g;
    loco_generate_params_init(&g);
    const char *prompt = "a house in the style of van gogh";
    g.n_prompts = 1;
    g.prompts = &prompt;
    g.steps = 3;
    g.width = g.height = 64;
    g.seed = 5;
    loco_err e = {0};
    loco_status st = v ? loco_pipeline_variant_generate(v, &g, res, &e) : loco_generate(base, &g, res, &e);
    if (st) fprintf(stderr, "generate: %s\n", e.msg);
    return st;
}

static int same_image(const loco_generate_result *a, const loco_generate_result *b) {
    return a->n_images == 1 && b->n_images == 1 &&
           memcmp(a->images[0].data, b->images[0].data, (size_t)a->width * a->height * 3) == 0 &&
           memcmp(a->latents, b->latents, 4 * 8 * 8 * sizeof(float)) == 0;
}

TEST(variant_memory_and_base_untouched) {
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, "sd1-tiny") : NULL;
    CHECK(p);
    loco_generate_result before, after, edited;
    CHECK(generate(NULL, p, &before) == 0);
    const size_t m0 = mem_now(be);
    loco_pipeline_variant *v = NULL;
    loco_err e = {0};
    CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
    CHECK(mem_now(be) == m0);
    loco_locoedit_opts o;
    locoedit_opts(&o);
    CHECK_MSG(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_OK, "%s", e.msg);
    loco_quickfix_opts q;
    loco_quickfix_opts_init(&q);
    q.concept = "van gogh";
    CHECK_MSG(loco_edit_quickfix(v, &q, NULL, &e) == LOCO_OK, "%s", e.msg);
    /* 4 UNet matrices [40, 32] and one text out_proj [32, 32], float32: nothing else is held */
    const size_t want = (4 * 40 * 32 + 32 * 32) * sizeof(float);
    CHECK(loco_pipeline_variant_num_changes(v) == 5);
    CHECK_MSG(loco_pipeline_variant_owned_bytes(v) == want, "owned %zu", loco_pipeline_variant_owned_bytes(v));
    CHECK_MSG(mem_now(be) - m0 == want, "backend grew by %zu, expected %zu", mem_now(be) - m0, want);
    CHECK(json_array_size(loco_pipeline_variant_edits(v)) == 2);
    CHECK(generate(v, p, &edited) == 0);
    CHECK(generate(NULL, p, &after) == 0);
    CHECK(same_image(&before, &after)); /* the base generates exactly as before */
    CHECK(!same_image(&before, &edited));
    loco_generate_result_free(&before), loco_generate_result_free(&after), loco_generate_result_free(&edited);
    loco_pipeline_variant_free(v);
    CHECK(mem_now(be) == m0);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
}

static char *tmpdir(void) {
    char t[] = "/tmp/loco-edit-test-XXXXXX";
    char *d = mkdtemp(t);
    return d ? strdup(d) : NULL;
}

static void rm_rf(const char *path) {
    struct stat sb;
    if (lstat(path, &sb)) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[4096];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rm_rf(sub);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

TEST(delta_round_trip) {
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, "sd1-tiny") : NULL;
    char *dir = tmpdir();
    CHECK(p && dir);
    loco_pipeline_variant *v = NULL, *w = NULL;
    loco_err e = {0};
    CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
    loco_locoedit_opts o;
    locoedit_opts(&o);
    loco_quickfix_opts q;
    loco_quickfix_opts_init(&q);
    q.concept = "van gogh";
    const char *art[] = {"a house in the style of van gogh", "a river in the style of van gogh"};
    const char *normal[] = {"a house", "a river"};
    loco_neuron_opts nn;
    loco_neuron_opts_init(&nn);
    nn.prompts = art;
    nn.n_prompts = 2;
    nn.normal_prompts = normal;
    nn.n_normal = 2;
    nn.layers = (const int[]){3};
    nn.n_layers = 1;
    nn.n_neurons = 7;
    CHECK(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_OK && loco_edit_quickfix(v, &q, NULL, &e) == LOCO_OK);
    CHECK_MSG(loco_edit_neurons(v, &nn, NULL, &e) == LOCO_OK, "%s", e.msg);
    char path[4200];
    snprintf(path, sizeof path, "%s/edit.safetensors", dir);
    CHECK_MSG(loco_pipeline_variant_export_delta(v, path, &e) == LOCO_OK, "%s", e.msg);
    /* only the changed tensors (+ the ablation lists) are in the file */
    loco_safetensors *f = NULL;
    CHECK(loco_safetensors_open(path, &f, &e) == LOCO_OK);
    CHECK(loco_safetensors_count(f) == 5 + 2 * 2);
    CHECK(loco_safetensors_find(f, "unet.up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight"));
    CHECK(loco_safetensors_find(f, "text_encoder.text_model.encoder.layers.0.self_attn.out_proj.weight"));
    CHECK(loco_safetensors_find(f, "ablation.3.v.channels"));
    json_t *meta = json_loads(loco_safetensors_metadata(f, "edits"), 0, NULL);
    CHECK(json_array_size(meta) == 3);
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(meta, 0), "method")), "locoedit") == 0);
    json_decref(meta);
    loco_safetensors_close(f);
    /* into a fresh variant of the same base */
    CHECK(loco_pipeline_variant_create(p, &w, &e) == LOCO_OK);
    CHECK_MSG(loco_pipeline_variant_apply_delta(w, path, &e) == LOCO_OK, "%s", e.msg);
    CHECK(loco_pipeline_variant_num_changes(w) == 5 && loco_pipeline_variant_num_ablations(w) == 2);
    for (int i = 0; i < 5; i++) {
        const loco_variant_change *a = loco_pipeline_variant_change(v, i);
        const loco_variant_change *b = et_change(w, a->component, a->name);
        CHECK(b && memcmp(a->data, b->data, (size_t)et_numel(a) * sizeof(float)) == 0);
    }
    for (int i = 0; i < 2; i++) {
        const loco_neuron_ablation *a = loco_pipeline_variant_ablation(v, i), *b = loco_pipeline_variant_ablation(w, i);
        CHECK(a->n == b->n && a->cross_index == b->cross_index && a->kind == b->kind);
        CHECK(!memcmp(a->channels, b->channels, (size_t)a->n * 4) && !memcmp(a->values, b->values, (size_t)a->n * 4));
    }
    loco_generate_result r1, r2;
    CHECK(generate(v, p, &r1) == 0 && generate(w, p, &r2) == 0);
    CHECK(same_image(&r1, &r2));
    loco_generate_result_free(&r1), loco_generate_result_free(&r2);
    /* a delta of another family is refused; so is a file that is not a delta */
    loco_pipeline *xl = et_load(be, "sdxl-tiny");
    loco_pipeline_variant *x = NULL;
    CHECK(xl && loco_pipeline_variant_create(xl, &x, &e) == LOCO_OK);
    CHECK(loco_pipeline_variant_apply_delta(x, path, &e) == LOCO_EINVAL && strstr(e.msg, "sd1"));
    char ref[1024];
    snprintf(ref, sizeof ref, "%s/refs/sd1-tiny/edit_locoedit.safetensors", loco_fixtures_dir());
    CHECK(loco_pipeline_variant_apply_delta(x, ref, &e) == LOCO_EFORMAT && strstr(e.msg, "not a loco delta"));
    loco_pipeline_variant_free(x);
    loco_pipeline_free(xl);
    loco_pipeline_variant_free(v);
    loco_pipeline_variant_free(w);
    rm_rf(dir);
    free(dir);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
}

/* Export a folder, load it as a model, and compare with the variant. */
static void folder_round_trip(const char *model, loco_export_dtype dtype, int exact) {
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, model) : NULL;
    char *dir = tmpdir();
    CHECK(p && dir);
    loco_pipeline_variant *v = NULL;
    loco_err e = {0};
    CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
    loco_locoedit_opts o;
    locoedit_opts(&o);
    o.start = 5;
    loco_quickfix_opts q;
    loco_quickfix_opts_init(&q);
    q.concept = "van gogh";
    CHECK(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_OK && loco_edit_quickfix(v, &q, NULL, &e) == LOCO_OK);
    char out[4200];
    snprintf(out, sizeof out, "%s/model", dir);
    CHECK_MSG(loco_pipeline_variant_export_folder(v, out, dtype, &e) == LOCO_OK, "%s", e.msg);
    loco_pipeline_opts po;
    loco_pipeline_opts_init(&po);
    po.model_path = out;
    loco_pipeline *q2 = NULL;
    CHECK_MSG(loco_pipeline_load(be, &po, &q2, &e) == LOCO_OK, "%s", e.msg);
    CHECK(loco_pipeline_family(q2) == loco_pipeline_family(p));
    double worst = 0;
    for (int i = 0; i < loco_pipeline_variant_num_changes(v); i++) {
        const loco_variant_change *c = loco_pipeline_variant_change(v, i);
        const loco_tensor *t = c->component == LOCO_COMPONENT_UNET
                                   ? loco_params_find(loco_unet_params(loco_pipeline_unet(q2)), c->name)
                                   : loco_clip_text_param(loco_pipeline_text_encoder(q2, c->component == LOCO_COMPONENT_TEXT_ENCODER ? 1 : 2), c->name);
        CHECK(t && loco_tensor_numel(t) == et_numel(c));
        float *got = malloc((size_t)et_numel(c) * sizeof *got);
        CHECK(loco_tensor_download_f32(t, got, &e) == LOCO_OK);
        double num = 0, den = 0;
        for (int64_t k = 0; k < et_numel(c); k++) {
            num += ((double)got[k] - c->data[k]) * ((double)got[k] - c->data[k]);
            den += (double)c->data[k] * c->data[k];
        }
        free(got);
        if (sqrt(num / den) > worst) worst = sqrt(num / den);
    }
    fprintf(stderr, "  %s exported as %s: edited tensors read back within %.2e\n", model, loco_export_dtype_name(dtype), worst);
    CHECK(exact ? worst == 0 : worst < 4e-3);
    if (exact) {
        loco_generate_result r1, r2;
        CHECK(generate(v, p, &r1) == 0 && generate(NULL, q2, &r2) == 0);
        CHECK(same_image(&r1, &r2)); /* the exported model is the variant */
        loco_generate_result_free(&r1), loco_generate_result_free(&r2);
    }
    loco_pipeline_free(q2);
    loco_pipeline_variant_free(v);
    rm_rf(dir);
    free(dir);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
}

TEST(folder_export_sd1) { folder_round_trip("sd1-tiny", LOCO_EXPORT_KEEP, 1); }
TEST(folder_export_sd2_fp16_keep) { folder_round_trip("sd2-tiny", LOCO_EXPORT_KEEP, 0); }
TEST(folder_export_sd2_f32) { folder_round_trip("sd2-tiny", LOCO_EXPORT_F32, 1); }
TEST(folder_export_sdxl_f32) { folder_round_trip("sdxl-tiny", LOCO_EXPORT_F32, 1); }

/* Copy a folder tree of regular files (a fixture model into a temporary folder). */
static int copy_tree(const char *src, const char *dst) {
    if (mkdir(dst, 0755)) return -1;
    DIR *d = opendir(src);
    if (!d) return -1;
    struct dirent *e;
    int bad = 0;
    while (!bad && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char a[4096], b[4096];
        snprintf(a, sizeof a, "%s/%s", src, e->d_name);
        snprintf(b, sizeof b, "%s/%s", dst, e->d_name);
        struct stat sb;
        if (stat(a, &sb)) bad = 1;
        else if (S_ISDIR(sb.st_mode)) bad = copy_tree(a, b);
        else {
            FILE *in = fopen(a, "rb"), *out = fopen(b, "wb");
            char buf[65536];
            size_t n;
            while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0) bad |= fwrite(buf, 1, n, out) != n;
            bad |= !in || !out;
            if (in) fclose(in);
            if (out && fclose(out)) bad = 1;
        }
    }
    closedir(d);
    return bad ? -1 : 0;
}

/* Does `path` hold the same bytes as the fixture's file of that name? */
static int same_as_fixture(const char *model_dir, const char *rel) {
    char a[4096], b[8400];
    snprintf(a, sizeof a, "%s/models/sd1-tiny/%s", loco_fixtures_dir(), rel);
    snprintf(b, sizeof b, "%s/%s", model_dir, rel);
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) same = 0;
        if (ca == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

/* Exporting into the model's own folder used to empty its tokenizer files (a plain copy opened
 * the source for writing) and replace its weights and configs with the variant's. Now the
 * folder, a folder inside it, one containing it, a symlinked subfolder into it and a hard-linked
 * file of it are all refused, and the model's files stay byte for byte what they were. */
TEST(folder_export_never_into_the_model) {
    loco_backend *be = mr_cpu();
    char *dir = tmpdir();
    CHECK(be && dir);
    char model[4200], src[4200], path[4300], link_dir[4300];
    snprintf(model, sizeof model, "%s/model", dir);
    snprintf(src, sizeof src, "%s/models/sd1-tiny", loco_fixtures_dir());
    CHECK(copy_tree(src, model) == 0);
    loco_pipeline_opts po;
    loco_pipeline_opts_init(&po);
    po.model_path = model;
    loco_pipeline *p = NULL;
    loco_pipeline_variant *v = NULL;
    loco_err e = {0};
    CHECK_MSG(loco_pipeline_load(be, &po, &p, &e) == LOCO_OK, "%s", e.msg);
    CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
    loco_locoedit_opts o;
    locoedit_opts(&o);
    CHECK(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_OK);
    static const char *const how[] = {"is", "is inside", "contains"};
    const char *targets[3] = {model, NULL, dir};
    snprintf(path, sizeof path, "%s/exported", model);
    targets[1] = path;
    for (int i = 0; i < 3; i++) {
        CHECK(loco_pipeline_variant_export_folder(v, targets[i], LOCO_EXPORT_KEEP, &e) == LOCO_EINVAL);
        CHECK_MSG(strstr(e.msg, targets[i]) && strstr(e.msg, model) && strstr(e.msg, how[i]), "%s", e.msg);
    }
    struct stat sb;
    CHECK(stat(path, &sb) != 0); /* refused before anything was created */
    /* another folder whose tokenizer subfolder is a symlink into the model */
    snprintf(link_dir, sizeof link_dir, "%s/linked", dir);
    snprintf(path, sizeof path, "%s/tokenizer", model);
    char sub[4400];
    snprintf(sub, sizeof sub, "%s/tokenizer", link_dir);
    CHECK(mkdir(link_dir, 0755) == 0 && symlink(path, sub) == 0);
    CHECK(loco_pipeline_variant_export_folder(v, link_dir, LOCO_EXPORT_KEEP, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, sub), "%s", e.msg);
    /* another folder holding a hard link of one of the model's files */
    snprintf(link_dir, sizeof link_dir, "%s/hard", dir);
    snprintf(sub, sizeof sub, "%s/tokenizer", link_dir);
    char hard[4500];
    snprintf(hard, sizeof hard, "%s/vocab.json", sub);
    snprintf(path, sizeof path, "%s/tokenizer/vocab.json", model);
    CHECK(mkdir(link_dir, 0755) == 0 && mkdir(sub, 0755) == 0 && link(path, hard) == 0);
    CHECK(loco_pipeline_variant_export_folder(v, link_dir, LOCO_EXPORT_KEEP, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, hard) && strstr(e.msg, "same file"), "%s", e.msg);
    static const char *const files[] = {"model_index.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                                        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                                        "text_encoder/model.safetensors", "scheduler/scheduler_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) CHECK_MSG(same_as_fixture(model, files[i]), "%s", files[i]);
    loco_pipeline_variant_free(v);
    loco_pipeline_free(p);
    rm_rf(dir);
    free(dir);
    loco_backend_destroy(be);
}

/* ---- invalid requests --------------------------------------------------------------------------- */

TEST(invalid_requests) {
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, "sd1-tiny") : NULL;
    CHECK(p);
    loco_pipeline_variant *v = NULL;
    loco_err e = {0};
    CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
    loco_locoedit_opts o;
    locoedit_opts(&o);
    o.start = 10; /* 11 layers: 10 and 11 */
    CHECK(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "past the last layer"), "%s", e.msg);
    locoedit_opts(&o); /* family default start 8, m 2 fits 11 layers; start 45 would not */
    o.start = -1;
    o.n_layers = 0;
    CHECK(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_OK);
    loco_pipeline_variant_free(v);
    CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
    locoedit_opts(&o);
    o.templates = LOCO_TEMPLATES_NONE;
    o.prompts = (const char *const[]){"a photo of a cat"};
    o.n_prompts = 1;
    CHECK(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "does not occur in the prompt 'a photo of a cat'"), "%s", e.msg);
    o.n_prompts = 0;
    CHECK(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "no original prompts"));
    /* singular: two identical rows and λ = 0 */
    o.prompts = (const char *const[]){"van gogh", "van gogh"};
    o.n_prompts = 2;
    o.lambda_k = o.lambda_v = 0;
    CHECK(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "singular") && strstr(e.msg, "attn2.to_k"), "%s", e.msg);
    CHECK(loco_pipeline_variant_num_changes(v) == 0); /* nothing written */
    locoedit_opts(&o);
    o.concept = "";
    CHECK(loco_edit_locoedit(v, &o, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "concept"));

    loco_quickfix_opts q;
    loco_quickfix_opts_init(&q);
    q.concept = "van gogh";
    q.encoder = 2;
    CHECK(loco_edit_quickfix(v, &q, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "one text encoder"));
    q.encoder = 0;
    q.layer = 3;
    CHECK(loco_edit_quickfix(v, &q, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "layer 3 does not exist"));

    const char *art[] = {"a house in the style of van gogh", "a river in the style of van gogh"};
    const char *normal[] = {"a house", "a river"};
    loco_neuron_opts nn;
    loco_neuron_opts_init(&nn);
    nn.prompts = art;
    nn.n_prompts = 2;
    nn.normal_prompts = normal;
    nn.n_normal = 0;
    CHECK(loco_edit_neurons(v, &nn, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "normal prompt set is empty"));
    nn.n_normal = 2;
    nn.n_prompts = 0;
    CHECK(loco_edit_neurons(v, &nn, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "concept prompt set is empty"));
    nn.n_prompts = 2;
    nn.layers = (const int[]){99};
    nn.n_layers = 1;
    CHECK(loco_edit_neurons(v, &nn, NULL, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "layer 99 does not exist"), "%s", e.msg);
    nn.layers = (const int[]){2};
    nn.n_neurons = 1000;
    CHECK(loco_edit_neurons(v, &nn, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "output channels"));
    nn.n_neurons = 4;
    nn.position = 77;
    CHECK(loco_edit_neurons(v, &nn, NULL, &e) == LOCO_EINVAL && strstr(e.msg, "position 77"));
    nn.position = LOCO_NEURON_POS_EOS;
    CHECK(loco_edit_neurons(v, &nn, NULL, &e) == LOCO_OK);
    /* an ablation (e.g. from a delta file) naming a channel the projection lacks */
    loco_neuron_ablation bad = {.cross_index = 2, .kind = LOCO_SITE_CROSS_K, .n = 1, .channels = (const int32_t[]){999},
                                .values = (const float[]){0.5f}};
    CHECK(loco_pipeline_variant_add_ablation(v, &bad, &e) == LOCO_EINVAL && strstr(e.msg, "channel 999"));
    bad.kind = LOCO_SITE_CROSS_ATTN;
    CHECK(loco_pipeline_variant_add_ablation(v, &bad, &e) == LOCO_EINVAL && strstr(e.msg, "cross_k or cross_v"));
    /* neuron ablations have no diffusers weight form */
    CHECK(loco_pipeline_variant_export_folder(v, "/tmp/never-written", LOCO_EXPORT_KEEP, &e) == LOCO_EUNSUPPORTED);
    loco_pipeline_variant_free(v);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
}

TEST(names_round_trip) {
    for (int i = 0; i < LOCO_EDIT_METHOD_COUNT; i++) {
        loco_edit_method m;
        CHECK(loco_edit_method_from_name(loco_edit_method_name((loco_edit_method)i), &m) == 0 && m == (loco_edit_method)i);
    }
    loco_edit_method m;
    CHECK(loco_edit_method_from_name("diff_quickfix", &m) == 0 && m == LOCO_EDIT_QUICKFIX);
    CHECK(loco_edit_method_from_name("neuron", &m) == 0 && m == LOCO_EDIT_NEURONS);
    CHECK(loco_edit_method_from_name("rome", &m) == -1);
    for (int i = 0; i < LOCO_TEMPLATES_COUNT; i++) {
        loco_edit_templates t;
        CHECK(loco_edit_templates_from_name(loco_edit_templates_name((loco_edit_templates)i), &t) == 0 && t == (loco_edit_templates)i);
    }
    for (int i = 0; i < LOCO_EXPORT_DTYPE_COUNT; i++) {
        loco_export_dtype d;
        CHECK(loco_export_dtype_from_name(loco_export_dtype_name((loco_export_dtype)i), &d) == 0 && d == (loco_export_dtype)i);
    }
    for (int i = 0; i < LOCO_COMPONENT_COUNT; i++) {
        loco_component c;
        CHECK(loco_component_from_name(loco_component_name((loco_component)i), &c) == 0 && c == (loco_component)i);
    }
    loco_value_bias b;
    CHECK(loco_value_bias_from_name("subtract", &b) == 0 && b == LOCO_VALUE_BIAS_SUBTRACT);
    int s, m2;
    loco_edit_default_window(LOCO_FAMILY_SD1, &s, &m2);
    CHECK(s == 8 && m2 == 2);
    loco_edit_default_window(LOCO_FAMILY_SDXL, &s, &m2);
    CHECK(s == 45 && m2 == 3);
}

/* Ablation generation with a batch, negative prompts and guidance: each sample equals the same
 * prompt generated alone from the same initial latents (the text rows are re-laid for the
 * intervention engine; a wrong row would ablate or condition the wrong sample). */
TEST(neuron_generation_batch_rows) {
    loco_backend *be = mr_cpu();
    loco_pipeline *p = be ? et_load(be, "sd1-tiny") : NULL;
    CHECK(p);
    loco_pipeline_variant *v = NULL;
    loco_err e = {0};
    CHECK(loco_pipeline_variant_create(p, &v, &e) == LOCO_OK);
    const char *art[] = {"a house in the style of van gogh", "a river in the style of van gogh"};
    const char *normal[] = {"a house", "a river"};
    loco_neuron_opts nn;
    loco_neuron_opts_init(&nn);
    nn.prompts = art;
    nn.n_prompts = 2;
    nn.normal_prompts = normal;
    nn.n_normal = 2;
    nn.layers = (const int[]){4, 7};
    nn.n_layers = 2;
    nn.n_neurons = 10;
    CHECK_MSG(loco_edit_neurons(v, &nn, NULL, &e) == LOCO_OK, "%s", e.msg);
    const char *neg[] = {"blurry", "ugly"};
    float lat[2 * 4 * 8 * 8];
    for (int i = 0; i < 2 * 256; i++) lat[i] = (float)sin(0.7 * i);
    loco_generate_params g;
    loco_generate_params_init(&g);
    g.n_prompts = 2;
    g.prompts = art;
    g.negative_prompts = neg;
    g.steps = 3;
    g.width = g.height = 64;
    g.latents = lat;
    g.skip_decode = 1;
    loco_generate_result both, one, plain;
    CHECK_MSG(loco_pipeline_variant_generate(v, &g, &both, &e) == LOCO_OK, "%s", e.msg);
    for (int k = 0; k < 2; k++) {
        loco_generate_params g1 = g;
        g1.n_prompts = 1;
        g1.prompts = art + k;
        g1.negative_prompts = neg + k;
        g1.latents = lat + 256 * k;
        CHECK(loco_pipeline_variant_generate(v, &g1, &one, &e) == LOCO_OK);
        double num = 0, den = 0;
        for (int i = 0; i < 256; i++) {
            double d = (double)one.latents[i] - both.latents[256 * k + i];
            num += d * d;
            den += (double)one.latents[i] * one.latents[i];
        }
        loco_generate_result_free(&one);
        CHECK_MSG(sqrt(num / den) < 1e-5, "sample %d: %.3g", k, sqrt(num / den));
    }
    /* and the ablation does act: the base differs */
    CHECK(loco_generate(p, &g, &plain, &e) == LOCO_OK);
    CHECK(memcmp(plain.latents, both.latents, sizeof lat) != 0);
    loco_generate_result_free(&plain);
    loco_generate_result_free(&both);
    loco_pipeline_variant_free(v);
    loco_pipeline_free(p);
    loco_backend_destroy(be);
}
