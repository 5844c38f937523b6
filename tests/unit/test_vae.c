/* test_vae.c: AutoencoderKL decode and encode against diffusers on the tiny fixtures (outputs
 * and every top-level block), the pipeline-side unscaling, and errors. */
#include "loco_test.h"

#include "model_ref_util.h"
#include "vae.h"

#define TOL 1e-5

typedef struct fx {
    loco_backend *be;
    loco_vae *v;
    loco_safetensors *ref;
} fx;

static void fx_close(fx *f) {
    loco_vae_free(f->v);
    if (f->ref) loco_safetensors_close(f->ref);
    if (f->be) loco_backend_destroy(f->be);
    memset(f, 0, sizeof *f);
}

static int fx_open(fx *f, const char *model) {
    memset(f, 0, sizeof *f);
    char dir[1024];
    mr_model_dir(dir, sizeof dir, model, "vae");
    if (!(f->be = mr_cpu()) || !(f->ref = mr_ref_open(model, "vae"))) return -1;
    loco_err e = {0};
    if (loco_vae_load_dir(f->be, dir, NULL, &f->v, &e)) {
        fprintf(stderr, "%s\n", e.msg);
        return -1;
    }
    return 0;
}

/* Number of recorded blocks under prefix, less the ones fused or equal to the output. */
static int recorded(const loco_safetensors *ref, const char *prefix, const char *const *skip, int n_skip) {
    int n = 0;
    const size_t lp = strlen(prefix);
    for (size_t i = 0; i < loco_safetensors_count(ref); i++) {
        const char *name = loco_safetensors_at(ref, i)->name;
        if (strncmp(name, prefix, lp)) continue;
        int skipped = 0;
        for (int k = 0; k < n_skip; k++) skipped |= !strcmp(name + lp, skip[k]);
        n += !skipped;
    }
    return n;
}

static void decode_parity(const char *model) {
    fx f;
    CHECK_MSG(fx_open(&f, model) == 0, "cannot open the %s fixture", model);
    loco_tensor z = {0}, img = {0};
    CHECK(mr_ref_upload(f.be, f.ref, "decode.latents", &z) == 0);
    mr_probe p = {.ref = f.ref, .prefix = "decode.block.", .tol = TOL};
    loco_err e = {0};
    CHECK_MSG(loco_vae_decode_raw(f.v, &z, mr_probe_fn, &p, &img, &e) == LOCO_OK, "%s", e.msg);
    double r = mr_rel_err(&img, f.ref, "decode.sample");
    /* GroupNorm and SiLU are fused (conv_act covers conv_norm_out), conv_out == sample */
    static const char *const skip[2] = {"decoder.conv_norm_out", "decoder.conv_out"};
    int want = recorded(f.ref, "decode.block.", skip, 2);
    printf("%s decode: output rel err %.3g; %d blocks, worst %.3g (%s)\n", model, r, p.compared, p.worst,
           p.worst_name);
    CHECK_MSG(r <= TOL, "%s decode: relative error %g", model, r);
    CHECK(!p.bad);
    CHECK_MSG(p.compared == want, "compared %d of %d recorded blocks", p.compared, want);
    CHECK(img.shape[0] == 1 && img.shape[1] == 3 && img.shape[2] == 64 && img.shape[3] == 64);
    loco_tensor_free(&img);

    /* the pipeline form: latents as the denoiser has them (z * scaling_factor) */
    float *zh = mr_download(&z);
    CHECK(zh);
    const float sf = loco_vae_get_config(f.v)->scaling_factor;
    for (int64_t i = 0; i < loco_tensor_numel(&z); i++) zh[i] *= sf;
    CHECK(loco_tensor_upload(&z, zh, LOCO_F32, &e) == LOCO_OK);
    CHECK_MSG(loco_vae_decode(f.v, &z, NULL, NULL, &img, &e) == LOCO_OK, "%s", e.msg);
    double r2 = mr_rel_err(&img, f.ref, "decode.sample");
    printf("%s decode (scaled latents): output rel err %.3g\n", model, r2);
    CHECK_MSG(r2 <= TOL, "%s scaled decode: relative error %g", model, r2);
    free(zh);
    loco_tensor_free(&img);
    loco_tensor_free(&z);
    fx_close(&f);
}

static void encode_parity(const char *model) {
    fx f;
    CHECK_MSG(fx_open(&f, model) == 0, "cannot open the %s fixture", model);
    loco_tensor x = {0}, mean = {0}, logvar = {0};
    CHECK(mr_ref_upload(f.be, f.ref, "encode.image", &x) == 0);
    mr_probe p = {.ref = f.ref, .prefix = "encode.block.", .tol = TOL};
    loco_err e = {0};
    CHECK_MSG(loco_vae_encode(f.v, &x, mr_probe_fn, &p, &mean, &logvar, &e) == LOCO_OK, "%s", e.msg);
    double rm = mr_rel_err(&mean, f.ref, "encode.mean");
    double rl = mr_rel_err(&logvar, f.ref, "encode.logvar");
    /* fused: conv_norm_out (conv_act covers it); conv_out and quant_conv are checked through
     * mean and logvar (quant_conv is applied as its two halves) */
    static const char *const skip[3] = {"encoder.conv_norm_out", "encoder.conv_out", "quant_conv"};
    int want = recorded(f.ref, "encode.block.", skip, 3);
    printf("%s encode: mean rel err %.3g, logvar rel err %.3g; %d blocks, worst %.3g (%s)\n", model, rm, rl,
           p.compared, p.worst, p.worst_name);
    CHECK_MSG(rm <= TOL && rl <= TOL, "%s encode: relative errors %g %g", model, rm, rl);
    CHECK(!p.bad);
    CHECK_MSG(p.compared == want, "compared %d of %d recorded blocks", p.compared, want);
    CHECK(mean.shape[1] == 4 && mean.shape[2] == 8 && logvar.shape[3] == 8);
    loco_tensor_free(&x);
    loco_tensor_free(&mean);
    loco_tensor_free(&logvar);
    fx_close(&f);
}

TEST(vae_decode_parity_sd1_tiny) { decode_parity("sd1-tiny"); }
TEST(vae_decode_parity_sd2_tiny) { decode_parity("sd2-tiny"); }
TEST(vae_decode_parity_sdxl_tiny) { decode_parity("sdxl-tiny"); }
TEST(vae_encode_parity_sd1_tiny) { encode_parity("sd1-tiny"); }
TEST(vae_encode_parity_sd2_tiny) { encode_parity("sd2-tiny"); }
TEST(vae_encode_parity_sdxl_tiny) { encode_parity("sdxl-tiny"); }

TEST(vae_config_values) {
    char dir[1024], path[1100];
    mr_model_dir(dir, sizeof dir, "sdxl-tiny", "vae");
    snprintf(path, sizeof path, "%s/config.json", dir);
    loco_vae_config c;
    loco_err e = {0};
    CHECK_MSG(loco_vae_config_load(path, &c, &e) == LOCO_OK, "%s", e.msg);
    CHECK(c.n_blocks == 4 && c.block_out_channels[0] == 16 && c.block_out_channels[3] == 32);
    CHECK(c.layers_per_block == 1 && c.latent_channels == 4 && c.norm_num_groups == 8);
    CHECK_CLOSE(c.scaling_factor, 0.13025, 1e-7);
    CHECK(c.force_upcast == 1 && c.has_shift_factor == 0 && c.use_quant_conv && c.use_post_quant_conv);
}

TEST(vae_error_missing_tensor_and_wrong_shape) {
    char dir[1024], path[1100];
    mr_model_dir(dir, sizeof dir, "sd1-tiny", "vae");
    snprintf(path, sizeof path, "%s/config.json", dir);
    loco_vae_config cfg;
    loco_err e = {0};
    CHECK(loco_vae_config_load(path, &cfg, &e) == LOCO_OK);
    loco_weights *full = NULL, *partial = NULL;
    CHECK(loco_weights_open_dir(dir, "diffusion_pytorch_model", NULL, &full, &e) == LOCO_OK);
    const char *drop = "decoder.mid_block.attentions.0.to_v.weight";
    CHECK(loco_weights_new_empty("sd1-tiny vae without one tensor", &partial, &e) == LOCO_OK);
    for (size_t i = 0; i < loco_weights_count(full); i++) {
        const loco_stored_tensor *t = loco_weights_at(full, i);
        if (strcmp(t->name, drop)) CHECK(loco_weights_add(partial, t->name, t, NULL, &e) == LOCO_OK);
    }
    loco_backend *be = mr_cpu();
    CHECK(be);
    loco_vae *v = NULL;
    CHECK(loco_vae_create(be, &cfg, partial, &v, &e) == LOCO_ENOTFOUND);
    CHECK(v == NULL);
    CHECK_MSG(strstr(e.msg, drop), "message: %s", e.msg);
    /* the config says 3 latent channels, the file has 4 */
    cfg.latent_channels = 3;
    CHECK(loco_vae_create(be, &cfg, full, &v, &e) == LOCO_EFORMAT);
    CHECK_MSG(strstr(e.msg, "encoder.conv_out.weight"), "message: %s", e.msg);
    loco_weights_free(partial);
    loco_weights_free(full);
    loco_backend_destroy(be);
}

TEST(vae_error_config) {
    loco_vae_config c;
    loco_err e = {0};
    json_t *j = json_loads("{\"down_block_types\":[\"DownEncoderBlock2D\",\"AttnDownEncoderBlock2D\"],"
                           "\"block_out_channels\":[32,64]}",
                           0, NULL);
    CHECK(j);
    CHECK(loco_vae_config_from_json(j, "vae/config.json", &c, &e) == LOCO_EUNSUPPORTED);
    CHECK_MSG(strstr(e.msg, "AttnDownEncoderBlock2D") && strstr(e.msg, "vae/config.json"), "message: %s", e.msg);
    json_decref(j);
    j = json_loads("{\"latent_channel\":4}", 0, NULL);
    CHECK(loco_vae_config_from_json(j, "c", &c, &e) == LOCO_EUNSUPPORTED);
    CHECK(strstr(e.msg, "latent_channel"));
    json_decref(j);
    j = json_loads("{\"block_out_channels\":[32,64],\"up_block_types\":[\"UpDecoderBlock2D\"]}", 0, NULL);
    CHECK(loco_vae_config_from_json(j, "c", &c, &e) == LOCO_EFORMAT);
    CHECK(strstr(e.msg, "up_block_types"));
    json_decref(j);
    j = json_loads("{\"latents_mean\":[0.1,0.2,0.3,0.4]}", 0, NULL);
    CHECK(loco_vae_config_from_json(j, "c", &c, &e) == LOCO_EUNSUPPORTED);
    json_decref(j);
    CHECK(loco_vae_config_load("/nonexistent/vae/config.json", &c, &e) == LOCO_EIO);
}

/* Sizes far beyond any real VAE are refused by the parser with the real numbers (before:
 * latent_channels 2^30 overflowed 2 x latent_channels and the load failed with "[-2147483648,
 * 32, 3, 3] was expected"). */
TEST(vae_error_config_sizes_beyond_limits) {
    static const struct {
        const char *json, *key;
    } cases[] = {
        {"{\"latent_channels\":1073741824}", "latent_channels"},
        {"{\"block_out_channels\":[128,1073741824]}", "block_out_channels"},
        {"{\"layers_per_block\":1000000}", "layers_per_block"},
        {"{\"in_channels\":1073741824}", "in_channels"},
        {"{\"sample_size\":[1073741824,1073741824]}", "sample_size"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        loco_vae_config c;
        loco_err e = {0};
        json_t *j = json_loads(cases[i].json, 0, NULL);
        CHECK(j);
        loco_status st = loco_vae_config_from_json(j, "vae/config.json", &c, &e);
        json_decref(j);
        CHECK_MSG(st == LOCO_EFORMAT, "%s: status %d (%s)", cases[i].json, (int)st, e.msg);
        CHECK_MSG(strstr(e.msg, "vae/config.json") && strstr(e.msg, cases[i].key) && strstr(e.msg, "limit") &&
                      !strstr(e.msg, "-2147483648"),
                  "%s: %s", cases[i].json, e.msg);
    }
}

TEST(vae_error_bad_input) {
    fx f;
    CHECK(fx_open(&f, "sd1-tiny") == 0);
    loco_tensor x = {0}, out = {0}, m = {0}, lv = {0};
    loco_err e = {0};
    CHECK(loco_tensor_alloc_act(f.be, 4, (int64_t[]){1, 3, 8, 8}, &x, &e) == LOCO_OK);
    CHECK(loco_fill(f.be, &x, 0.1f, &e) == LOCO_OK);
    CHECK(loco_vae_decode(f.v, &x, NULL, NULL, &out, &e) == LOCO_EINVAL); /* 3 channels, not 4 */
    CHECK(strstr(e.msg, "latents"));
    CHECK(out.data == NULL);
    loco_tensor_free(&x);
    CHECK(loco_tensor_alloc_act(f.be, 4, (int64_t[]){1, 4, 16, 16}, &x, &e) == LOCO_OK);
    CHECK(loco_fill(f.be, &x, 0.1f, &e) == LOCO_OK);
    CHECK(loco_vae_encode(f.v, &x, NULL, NULL, &m, &lv, &e) == LOCO_EINVAL); /* 4 channels, not 3 */
    CHECK(strstr(e.msg, "image"));
    loco_tensor_free(&x);
    fx_close(&f);
}
