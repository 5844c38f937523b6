/* test_model_files.c: opening diffusers folders and single-file checkpoints, the embedded
 * default configs, and the fixture models: every tensor of each tiny single file, mapped, must
 * equal the diffusers folder's tensor of the same name. The name mapping itself, name by name,
 * is test_ldm_mapping.c's. */
#include <limits.h>

#include "builtin_configs.h"
#include "data_dir.h"
#include "ldm_mapping.h"
#include "loco_test.h"
#include "model_files.h"
#include "st_test_util.h"

/* ---- embedded configs ------------------------------------------------------------------------- */

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    b[*n] = 0;
    fclose(f);
    return b;
}

static int count_json_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    char p[4096];
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        struct stat sb;
        if (stat(p, &sb) != 0) continue;
        if (S_ISDIR(sb.st_mode))
            n += count_json_files(p);
        else if (strlen(de->d_name) > 5 && strcmp(de->d_name + strlen(de->d_name) - 5, ".json") == 0)
            n++;
    }
    closedir(d);
    return n;
}

TEST(builtin_configs_match_config_files) {
    /* The compiled-in copy and config/model-defaults/ must be byte-identical (regenerate with
     * tools/gen_builtin_configs.py), and every file must be compiled in. */
    char root[PATH_MAX];
    loco_err err = {0};
    CHECK_MSG(loco_data_path("model-defaults", root, sizeof root, &err) == LOCO_OK, "%s", err.msg);
    CHECK(loco_builtin_config_count() == 16);
    CHECK(count_json_files(root) == (int)loco_builtin_config_count());
    for (size_t i = 0; i < loco_builtin_config_count(); i++) {
        const loco_builtin_config_entry *e = loco_builtin_config_at(i);
        char p[PATH_MAX + 128];
        snprintf(p, sizeof p, "%s/%s", root, e->path);
        size_t n;
        char *text = slurp(p, &n);
        CHECK_MSG(text, "%s is missing", p);
        int same = n == strlen(e->text) && memcmp(text, e->text, n) == 0;
        free(text);
        CHECK_MSG(same, "%s differs from engine/builtin_configs_data.c: run tools/gen_builtin_configs.py", p);
        json_error_t jerr;
        json_t *j = json_loads(e->text, JSON_REJECT_DUPLICATES, &jerr);
        CHECK_MSG(json_is_object(j), "%s: %s", e->path, jerr.text);
        json_decref(j);
    }
    CHECK(loco_builtin_config_at(16) == NULL);
    CHECK(loco_builtin_config("sd1", "unet/config.json") != NULL);
    CHECK(loco_builtin_config("sd1", "text_encoder_2/config.json") == NULL);
    CHECK(loco_builtin_config("sd", "unet/config.json") == NULL);
}

static const json_t *jget(const json_t *o, const char *k) { return json_object_get(o, k); }

TEST(builtin_configs_values) {
    loco_model_files_opts o;
    loco_model_files_opts_init(&o);
    /* Only the values models.md states; see engine/builtin_configs.c for the [verify] ones. */
    json_t *u1 = json_loads(loco_builtin_config("sd1", "unet/config.json"), 0, NULL);
    json_t *u2 = json_loads(loco_builtin_config("sd2", "unet/config.json"), 0, NULL);
    json_t *ux = json_loads(loco_builtin_config("sdxl", "unet/config.json"), 0, NULL);
    json_t *t2 = json_loads(loco_builtin_config("sd2", "text_encoder/config.json"), 0, NULL);
    json_t *tx2 = json_loads(loco_builtin_config("sdxl", "text_encoder_2/config.json"), 0, NULL);
    json_t *vx = json_loads(loco_builtin_config("sdxl", "vae/config.json"), 0, NULL);
    json_t *s2 = json_loads(loco_builtin_config("sd2", "scheduler/scheduler_config.json"), 0, NULL);
    json_t *ix = json_loads(loco_builtin_config("sdxl", "model_index.json"), 0, NULL);
    CHECK(u1 && u2 && ux && t2 && tx2 && vx && s2 && ix);
    CHECK(json_integer_value(jget(u1, "cross_attention_dim")) == 768);
    CHECK(json_integer_value(jget(u1, "attention_head_dim")) == 8);
    CHECK(json_is_false(jget(u1, "use_linear_projection")));
    CHECK(json_integer_value(jget(u2, "cross_attention_dim")) == 1024);
    CHECK(json_is_true(jget(u2, "upcast_attention")) && json_is_true(jget(u2, "use_linear_projection")));
    CHECK(json_integer_value(json_array_get(jget(ux, "transformer_layers_per_block"), 2)) == 10);
    CHECK(json_integer_value(jget(ux, "projection_class_embeddings_input_dim")) == 2816);
    CHECK(strcmp(json_string_value(jget(ux, "addition_embed_type")), "text_time") == 0);
    CHECK(json_integer_value(jget(t2, "num_hidden_layers")) == 23);
    CHECK(strcmp(json_string_value(jget(t2, "hidden_act")), "gelu") == 0);
    CHECK(json_integer_value(jget(tx2, "hidden_size")) == 1280 &&
          json_integer_value(jget(tx2, "num_hidden_layers")) == 32);
    CHECK(json_real_value(jget(vx, "scaling_factor")) == 0.13025 && json_is_true(jget(vx, "force_upcast")));
    CHECK(strcmp(json_string_value(jget(s2, "prediction_type")), "v_prediction") == 0);
    CHECK(json_is_true(jget(ix, "force_zeros_for_empty_prompt")));
    json_decref(u1);
    json_decref(u2);
    json_decref(ux);
    json_decref(t2);
    json_decref(tx2);
    json_decref(vx);
    json_decref(s2);
    json_decref(ix);
}

/* ---- folders: detection, configs, normalisation, errors --------------------------------------- */

static const char *fixture(const char *rel, char *buf, size_t n) {
    snprintf(buf, n, "%s/models/%s", loco_fixtures_dir(), rel);
    return buf;
}

static int all_names_prefixed(const loco_weights *w) {
    for (size_t i = 0; i < loco_weights_count(w); i++) {
        const char *n = loco_weights_at(w, i)->name;
        if (strncmp(n, "text_model.", 11) != 0 && strcmp(n, "text_projection.weight") != 0) return 0;
    }
    return 1;
}

TEST(fixture_folders_open) {
    static const struct {
        const char *dir;
        loco_model_family fam;
        int has_te2;
        const char *sched;
    } cases[] = {
        {"sd1-tiny", LOCO_FAMILY_SD1, 0, "PNDMScheduler"},
        {"sd2-tiny", LOCO_FAMILY_SD2, 0, "DDIMScheduler"},
        {"sdxl-tiny", LOCO_FAMILY_SDXL, 1, "EulerDiscreteScheduler"},
    };
    for (size_t c = 0; c < 3; c++) {
        char path[PATH_MAX];
        fixture(cases[c].dir, path, sizeof path);
        loco_model_files *m = NULL;
        loco_err err = {0};
        CHECK_MSG(loco_model_files_open(path, NULL, &m, &err) == LOCO_OK, "%s", err.msg);
        CHECK(!loco_model_files_is_single_file(m));
        CHECK_MSG(loco_model_files_family(m) == cases[c].fam, "%s: %s", path,
                  loco_model_family_name(loco_model_files_family(m)));
        CHECK(loco_model_files_has(m, "unet") && loco_model_files_has(m, "vae"));
        CHECK(loco_model_files_has(m, "text_encoder_2") == cases[c].has_te2);
        CHECK(!loco_model_files_has(m, "safety_checker")); /* [null, null] */
        CHECK(strcmp(loco_model_files_class(m, "scheduler"), cases[c].sched) == 0);
        CHECK(loco_model_files_flag(m, "force_zeros_for_empty_prompt", 0) == cases[c].has_te2);
        CHECK(loco_model_files_flag(m, "no_such_flag", 7) == 7);
        const json_t *sc = loco_model_files_config(m, "scheduler");
        CHECK(sc && strcmp(json_string_value(json_object_get(sc, "_class_name")), cases[c].sched) == 0);
        CHECK(json_is_integer(json_object_get(loco_model_files_config(m, "unet"), "layers_per_block")));
        CHECK(loco_model_files_config(m, "tokenizer") == NULL);
        CHECK(loco_model_files_config(m, "nope") == NULL);
        const char *tok = loco_model_files_tokenizer_dir(m, "tokenizer");
        CHECK(tok && strstr(tok, cases[c].dir) && strstr(tok, "/tokenizer"));
        CHECK((loco_model_files_tokenizer_dir(m, "tokenizer_2") != NULL) == cases[c].has_te2);
        CHECK(loco_model_files_checkpoint_tensor(m, "betas") == NULL);
        static const char *const comps[] = {"unet", "vae", "text_encoder", "text_encoder_2"};
        for (int k = 0; k < 3 + cases[c].has_te2; k++) {
            loco_weights *w = NULL;
            CHECK_MSG(loco_model_files_weights(m, comps[k], &w, &err) == LOCO_OK, "%s", err.msg);
            CHECK(loco_weights_count(w) > 10);
            /* sd2-tiny's text encoder was saved flattened: names come back with text_model. */
            if (k >= 2) CHECK_MSG(all_names_prefixed(w), "%s %s", cases[c].dir, comps[k]);
            loco_weights_free(w);
        }
        loco_weights *w = NULL;
        CHECK(loco_model_files_weights(m, "tokenizer", &w, &err) == LOCO_EUNSUPPORTED);
        CHECK(loco_model_files_weights(m, "safety_checker", &w, &err) == LOCO_ENOTFOUND);
        loco_model_files_close(m);
    }
}

TEST(family_override_and_bad_paths) {
    char path[PATH_MAX];
    fixture("sd1-tiny", path, sizeof path);
    loco_model_files_opts o;
    loco_model_files_opts_init(&o);
    o.family = LOCO_FAMILY_SD2;
    loco_model_files *m = NULL;
    loco_err err = {0};
    CHECK(loco_model_files_open(path, &o, &m, &err) == LOCO_OK);
    CHECK(loco_model_files_family(m) == LOCO_FAMILY_SD2);
    loco_model_files_close(m);
    /* but not one that contradicts what detection is sure of: SD-XL's second text encoder */
    o.family = LOCO_FAMILY_SDXL;
    CHECK(loco_model_files_open(path, &o, &m, &err) == LOCO_EINVAL && m == NULL);
    CHECK_MSG(strstr(err.msg, "sdxl") && strstr(err.msg, "leave the family out"), "%s", err.msg);
    fixture("sdxl-tiny", path, sizeof path);
    o.family = LOCO_FAMILY_SD1;
    CHECK(loco_model_files_open(path, &o, &m, &err) == LOCO_EINVAL && m == NULL);
    CHECK_MSG(strstr(err.msg, "the model is sdxl"), "%s", err.msg);
    CHECK(loco_model_files_open("/nonexistent/model", NULL, &m, &err) == LOCO_ENOTFOUND && m == NULL);
    CHECK(strstr(err.msg, "/nonexistent/model"));

    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char p[1024];
    snprintf(p, sizeof p, "%s/model.ckpt", dir);
    CHECK(st_write_text(p, "pickle") == 0);
    CHECK(loco_model_files_open(p, NULL, &m, &err) == LOCO_EUNSUPPORTED);
    CHECK(strstr(err.msg, ".safetensors"));
    /* a folder without model_index.json */
    CHECK(loco_model_files_open(dir, NULL, &m, &err) == LOCO_ENOTFOUND);
    CHECK(strstr(err.msg, "model_index.json"));
    /* a broken model_index and a broken component config name their files */
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    CHECK(st_write_text(p, "{\"unet\": [\"diffusers\"]}") == 0);
    CHECK(loco_model_files_open(dir, NULL, &m, &err) == LOCO_EFORMAT);
    CHECK(strstr(err.msg, "model_index.json") && strstr(err.msg, "'unet'"));
    CHECK(st_write_text(p, "{\"../x\": [\"diffusers\", \"UNet2DConditionModel\"]}") == 0);
    CHECK(loco_model_files_open(dir, NULL, &m, &err) == LOCO_EFORMAT);
    {   /* a metadata key ('_...') with a component's shape is not a component: no config read
         * through it, here one outside the model folder (dir/outside), broken so that reading it fails */
        char q[1024];
        snprintf(q, sizeof q, "%s/model", dir), mkdir(q, 0755);
        snprintf(q, sizeof q, "%s/model/_x", dir), mkdir(q, 0755);
        snprintf(q, sizeof q, "%s/outside", dir), mkdir(q, 0755);
        snprintf(q, sizeof q, "%s/outside/config.json", dir);
        CHECK(st_write_text(q, "{broken") == 0);
        snprintf(q, sizeof q, "%s/model/model_index.json", dir);
        CHECK(st_write_text(q, "{\"_x/../../outside\": [\"diffusers\", \"Foo\"]}") == 0);
        snprintf(q, sizeof q, "%s/model", dir);
        CHECK_MSG(loco_model_files_open(q, NULL, &m, &err) == LOCO_OK, "%s", err.msg);
        loco_model_files_close(m);
    }
    CHECK(st_write_text(p, "{\"_class_name\": \"StableDiffusionPipeline\", \"unet\": [\"diffusers\", "
                           "\"UNet2DConditionModel\"]}") == 0);
    snprintf(p, sizeof p, "%s/unet", dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    CHECK(st_write_text(p, "{\"layers_per_block\": 2,}") == 0);
    CHECK(loco_model_files_open(dir, NULL, &m, &err) == LOCO_EFORMAT);
    CHECK(strstr(err.msg, "unet/config.json"));
    /* an SD-looking pipeline missing components */
    CHECK(st_write_text(p, "{\"layers_per_block\": 2}") == 0);
    loco_model_files_opts_init(&o);
    o.family = LOCO_FAMILY_SD1;
    CHECK(loco_model_files_open(dir, &o, &m, &err) == LOCO_EFORMAT);
    CHECK(strstr(err.msg, "'vae'"));
    st_rm_tree(dir);
}

TEST(old_vae_attention_names_are_renamed) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char p[1024];
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    CHECK(st_write_text(p, "{\"_class_name\": \"X\", \"vae\": [\"diffusers\", \"AutoencoderKL\"]}") == 0);
    snprintf(p, sizeof p, "%s/vae", dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/vae/config.json", dir);
    CHECK(st_write_text(p, "{\"_class_name\": \"AutoencoderKL\"}") == 0);
    snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    const char *names[] = {"decoder.mid_block.attentions.0.query.weight",
                           "decoder.mid_block.attentions.0.key.bias",
                           "encoder.mid_block.attentions.0.value.weight",
                           "encoder.mid_block.attentions.0.proj_attn.bias",
                           "decoder.conv_in.weight",
                           "decoder.mid_block.attentions.0.group_norm.weight"};
    const int64_t sizes[] = {4, 2, 4, 2, 3, 2};
    loco_err err = {0};
    CHECK(st_write_f32(p, names, sizes, 6, 0, &err) == LOCO_OK);
    loco_model_files *m = NULL;
    CHECK_MSG(loco_model_files_open(dir, NULL, &m, &err) == LOCO_OK, "%s", err.msg);
    CHECK(loco_model_files_family(m) == LOCO_FAMILY_UNKNOWN);
    loco_weights *w = NULL;
    CHECK_MSG(loco_model_files_weights(m, "vae", &w, &err) == LOCO_OK, "%s", err.msg);
    CHECK(loco_weights_get(w, "decoder.mid_block.attentions.0.to_q.weight"));
    CHECK(loco_weights_get(w, "decoder.mid_block.attentions.0.to_k.bias"));
    CHECK(loco_weights_get(w, "encoder.mid_block.attentions.0.to_v.weight"));
    CHECK(loco_weights_get(w, "encoder.mid_block.attentions.0.to_out.0.bias"));
    CHECK(loco_weights_get(w, "decoder.conv_in.weight"));
    CHECK(loco_weights_get(w, "decoder.mid_block.attentions.0.group_norm.weight"));
    CHECK(loco_weights_get(w, "decoder.mid_block.attentions.0.query.weight") == NULL);
    loco_weights_free(w);
    loco_model_files_close(m);
    st_rm_tree(dir);
}

/* ---- single files ------------------------------------------------------------------------------ */

TEST(single_file_detection_and_builtin_defaults) {
    static const struct {
        const char *file;
        loco_model_family fam;
        const char *tok1, *tok2;
        int xdim;
    } cases[] = {
        {"sd1-tiny.safetensors", LOCO_FAMILY_SD1, "/tokenizers/clip", NULL, 768},
        {"sd2-tiny.safetensors", LOCO_FAMILY_SD2, "/tokenizers/clip-pad-bang", NULL, 1024},
        {"sdxl-tiny.safetensors", LOCO_FAMILY_SDXL, "/tokenizers/clip", "/tokenizers/clip-pad-bang", 2048},
    };
    for (size_t c = 0; c < 3; c++) {
        char path[PATH_MAX];
        fixture(cases[c].file, path, sizeof path);
        loco_model_files *m = NULL;
        loco_err err = {0};
        CHECK_MSG(loco_model_files_open(path, NULL, &m, &err) == LOCO_OK, "%s", err.msg);
        CHECK(loco_model_files_is_single_file(m));
        CHECK_MSG(loco_model_files_family(m) == cases[c].fam, "%s: %s", cases[c].file,
                  loco_model_family_name(loco_model_files_family(m)));
        /* the embedded full-size configs */
        CHECK(json_integer_value(json_object_get(loco_model_files_config(m, "unet"), "cross_attention_dim")) ==
              cases[c].xdim);
        const char *t1 = loco_model_files_tokenizer_dir(m, "tokenizer"),
                   *t2 = loco_model_files_tokenizer_dir(m, "tokenizer_2");
        CHECK(t1 && strlen(t1) >= strlen(cases[c].tok1) &&
              strcmp(t1 + strlen(t1) - strlen(cases[c].tok1), cases[c].tok1) == 0);
        if (cases[c].tok2)
            CHECK(t2 && strcmp(t2 + strlen(t2) - strlen(cases[c].tok2), cases[c].tok2) == 0);
        else
            CHECK(t2 == NULL);
        char vocab[PATH_MAX + 32];
        snprintf(vocab, sizeof vocab, "%s/tokenizer_config.json", t1);
        CHECK(access(vocab, R_OK) == 0);
        /* LDM buffers are reachable; SD-XL files carry none */
        const loco_stored_tensor *ac = loco_model_files_checkpoint_tensor(m, "alphas_cumprod");
        CHECK((ac != NULL) == (cases[c].fam != LOCO_FAMILY_SDXL));
        if (ac) CHECK(ac->ndim == 1 && ac->shape[0] == 1000);
        loco_model_files_close(m);
    }
}

TEST(single_file_detection_rules) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char p[1024];
    snprintf(p, sizeof p, "%s/x.safetensors", dir);
    float buf[9 * 4] = {0};
    struct {
        const char *key2;
        int64_t conv_in_c, k_dim;
        loco_status st;
        loco_model_family fam;
    } cases[] = {
        {"model.diffusion_model.output_blocks.11.0.skip_connection.weight", 4, 0, LOCO_OK, LOCO_FAMILY_SD1},
        {"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", 4, 1024, LOCO_OK,
         LOCO_FAMILY_SD2},
        {"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias", 4, 0, LOCO_OK, LOCO_FAMILY_SDXL},
        {"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias", 4, 0, LOCO_EUNSUPPORTED, 0},
        {"model.diffusion_model.input_blocks.10.0.skip_connection.bias", 4, 0, LOCO_EUNSUPPORTED, 0},
        {"model.diffusion_model.output_blocks.11.0.skip_connection.weight", 9, 0, LOCO_EUNSUPPORTED, 0},
        {"something.else", 4, 0, LOCO_EUNSUPPORTED, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        loco_stored_tensor ts[2] = {
            {.name = "model.diffusion_model.input_blocks.0.0.weight",
             .dtype = LOCO_F32,
             .ndim = 4,
             .shape = {1, cases[c].conv_in_c, 1, 1},
             .data = buf,
             .nbytes = (size_t)cases[c].conv_in_c * 4},
            {.name = cases[c].key2,
             .dtype = LOCO_F32,
             .ndim = cases[c].k_dim ? 2 : 1,
             .shape = {1, cases[c].k_dim},
             .data = buf,
             .nbytes = 4},
        };
        if (cases[c].k_dim) ts[1].nbytes = (size_t)cases[c].k_dim * 4;
        float *big = cases[c].k_dim ? calloc((size_t)cases[c].k_dim, 4) : NULL;
        if (big) ts[1].data = big;
        loco_err err = {0};
        CHECK(loco_safetensors_write(p, ts, 2, NULL, &err) == LOCO_OK);
        free(big);
        loco_safetensors *f;
        CHECK(loco_safetensors_open(p, &f, &err) == LOCO_OK);
        loco_model_family fam;
        loco_status st = loco_model_files_detect_single(f, &fam, &err);
        CHECK_MSG(st == cases[c].st, "%s: %s %s", cases[c].key2, loco_status_name(st), err.msg);
        if (st == LOCO_OK)
            CHECK(fam == cases[c].fam);
        else
            CHECK(strstr(err.msg, p));
        loco_safetensors_close(f);
    }
    st_rm_tree(dir);
}

/* Every mapped tensor of the single file equals the folder's tensor of the same name (both
 * converted to f32; the fixture values are bf16-representable, so equality is exact), and the
 * two name sets are the same. */
static void compare_sets(const loco_weights *single, const loco_weights *folder, const char *what) {
    CHECK_MSG(loco_weights_count(folder) > 0, "%s: empty folder weights", what);
    CHECK_MSG(loco_weights_count(single) == loco_weights_count(folder), "%s: %zu mapped tensors vs %zu in the folder",
              what, loco_weights_count(single), loco_weights_count(folder));
    for (size_t i = 0; i < loco_weights_count(single); i++) {
        const loco_stored_tensor *s = loco_weights_at(single, i);
        const loco_stored_tensor *f = loco_weights_get(folder, s->name);
        CHECK_MSG(f, "%s: '%s' is not in the folder", what, s->name);
        CHECK_MSG(s->ndim == f->ndim, "%s: '%s' rank %d vs %d", what, s->name, s->ndim, f->ndim);
        for (int d = 0; d < s->ndim; d++)
            CHECK_MSG(s->shape[d] == f->shape[d], "%s: '%s' dim %d: %lld vs %lld", what, s->name, d,
                      (long long)s->shape[d], (long long)f->shape[d]);
        size_t n = (size_t)loco_stored_numel(s);
        float *a = malloc((n ? n : 1) * 4), *b = malloc((n ? n : 1) * 4);
        CHECK(loco_convert_to_f32(a, s->data, s->dtype, n) == LOCO_OK);
        CHECK(loco_convert_to_f32(b, f->data, f->dtype, n) == LOCO_OK);
        size_t bad = n;
        for (size_t j = 0; j < n && bad == n; j++)
            if (!(a[j] == b[j])) bad = j;
        free(a);
        free(b);
        CHECK_MSG(bad == n, "%s: '%s' differs at element %zu", what, s->name, bad);
    }
    for (size_t i = 0; i < loco_weights_count(folder); i++)
        CHECK_MSG(loco_weights_get(single, loco_weights_at(folder, i)->name),
                  "%s: '%s' not mapped from the single file", what, loco_weights_at(folder, i)->name);
}

TEST(single_file_mapping_equals_folder) {
    static const char *const models[3] = {"sd1-tiny", "sd2-tiny", "sdxl-tiny"};
    static const char *const comps[4] = {"unet", "vae", "text_encoder", "text_encoder_2"};
    for (int k = 0; k < 3; k++) {
        char dir[PATH_MAX], file[PATH_MAX], name[64];
        fixture(models[k], dir, sizeof dir);
        snprintf(name, sizeof name, "%s.safetensors", models[k]);
        fixture(name, file, sizeof file);
        loco_model_files_opts o;
        loco_model_files_opts_init(&o);
        o.config_dir = dir; /* like from_single_file(config=<folder>) */
        loco_model_files *single = NULL, *folder = NULL;
        loco_err err = {0};
        CHECK_MSG(loco_model_files_open(file, &o, &single, &err) == LOCO_OK, "%s", err.msg);
        CHECK_MSG(loco_model_files_open(dir, NULL, &folder, &err) == LOCO_OK, "%s", err.msg);
        CHECK(loco_model_files_family(single) == loco_model_files_family(folder));
        /* configs and tokenizers come from the folder */
        CHECK(json_equal((json_t *)loco_model_files_config(single, "unet"),
                         (json_t *)loco_model_files_config(folder, "unet")));
        CHECK(strcmp(loco_model_files_tokenizer_dir(single, "tokenizer"),
                     loco_model_files_tokenizer_dir(folder, "tokenizer")) == 0);
        for (int c = 0; c < 4; c++) {
            if (!loco_model_files_has(folder, comps[c])) continue;
            loco_weights *ws = NULL, *wf = NULL;
            CHECK_MSG(loco_model_files_weights(single, comps[c], &ws, &err) == LOCO_OK, "%s %s: %s", models[k],
                      comps[c], err.msg);
            CHECK_MSG(loco_model_files_weights(folder, comps[c], &wf, &err) == LOCO_OK, "%s %s: %s", models[k],
                      comps[c], err.msg);
            char what[128];
            snprintf(what, sizeof what, "%s %s", models[k], comps[c]);
            compare_sets(ws, wf, what);
            loco_weights_free(ws);
            loco_weights_free(wf);
            if (loco_test_failed_) break;
        }
        loco_model_files_close(single);
        loco_model_files_close(folder);
        if (loco_test_failed_) return;
    }
}

TEST(single_file_weights_outlive_model_files) {
    char dir[PATH_MAX], file[PATH_MAX];
    fixture("sdxl-tiny", dir, sizeof dir);
    fixture("sdxl-tiny.safetensors", file, sizeof file);
    loco_model_files_opts o;
    loco_model_files_opts_init(&o);
    o.config_dir = dir;
    loco_model_files *m = NULL;
    loco_err err = {0};
    CHECK(loco_model_files_open(file, &o, &m, &err) == LOCO_OK);
    loco_weights *w = NULL;
    CHECK(loco_model_files_weights(m, "text_encoder_2", &w, &err) == LOCO_OK);
    loco_model_files_close(m);
    const loco_stored_tensor *t = loco_weights_get(w, "text_model.encoder.layers.0.self_attn.k_proj.weight");
    CHECK(t && t->ndim == 2);
    size_t n = (size_t)loco_stored_numel(t);
    float *v = malloc(n * 4);
    CHECK(loco_convert_to_f32(v, t->data, t->dtype, n) == LOCO_OK); /* the mapping is still there */
    free(v);
    CHECK(strstr(loco_weights_source(w), "sdxl-tiny.safetensors") && strstr(loco_weights_source(w), "text_encoder_2"));
    /* errors name the file and the component */
    CHECK(loco_weights_require(w, "nope", -1, NULL, NULL, &err) == LOCO_ENOTFOUND);
    CHECK(strstr(err.msg, "sdxl-tiny.safetensors [text_encoder_2]"));
    loco_weights_free(w);
}

/* xorshift64*: deterministic mutations, so a failure reproduces. */
static uint64_t rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

TEST(fuzz_model_index_never_crashes) {
    /* A copy of sd1-tiny's configs with model_index.json mutated: open must fail cleanly or
     * succeed, never crash (run under `make asan` too). */
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char src[PATH_MAX];
    fixture("sd1-tiny", src, sizeof src);
    static const char *const comps[] = {"unet/config.json", "vae/config.json", "text_encoder/config.json",
                                        "scheduler/scheduler_config.json"};
    char p[PATH_MAX + 64], q[PATH_MAX + 64];
    for (size_t i = 0; i < 4; i++) {
        char sub[64];
        snprintf(sub, sizeof sub, "%.*s", (int)(strchr(comps[i], '/') - comps[i]), comps[i]);
        snprintf(p, sizeof p, "%s/%s", dir, sub);
        mkdir(p, 0755);
        snprintf(q, sizeof q, "%s/%s", src, comps[i]);
        size_t n;
        char *text = slurp(q, &n);
        CHECK(text);
        snprintf(p, sizeof p, "%s/%s", dir, comps[i]);
        CHECK(st_write_text(p, text) == 0);
        free(text);
    }
    snprintf(p, sizeof p, "%s/tokenizer", dir);
    mkdir(p, 0755);
    snprintf(q, sizeof q, "%s/model_index.json", src);
    size_t n;
    char *orig = slurp(q, &n);
    CHECK(orig && n > 10);
    char *buf = malloc(n + 1);
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    uint64_t seed = 12345;
    int ok = 0, failed = 0;
    for (int iter = 0; iter < 400; iter++) {
        memcpy(buf, orig, n + 1);
        int flips = 1 + (int)(rnd(&seed) % 3);
        for (int k = 0; k < flips; k++) buf[rnd(&seed) % n] = "{}[]\",:nul 0x/._"[rnd(&seed) % 16];
        if (rnd(&seed) % 5 == 0) buf[rnd(&seed) % n] = 0;
        CHECK(st_write_text(p, buf) == 0);
        loco_model_files *m = NULL;
        loco_err err = {0};
        loco_status st = loco_model_files_open(dir, NULL, &m, &err);
        if (st == LOCO_OK) {
            ok++;
            loco_weights *w = NULL;
            if (loco_model_files_weights(m, "unet", &w, &err) == LOCO_OK) loco_weights_free(w);
            loco_model_files_close(m);
        } else {
            failed++;
            CHECK(m == NULL && err.msg[0]);
        }
    }
    CHECK(ok > 0 && failed > 0);
    free(buf);
    free(orig);
    st_rm_tree(dir);
}
