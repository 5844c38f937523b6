/* edit_export.c: a variant's delta file (changed tensors + ablations) and full diffusers folder. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pipeline_impl.h"
#include "pipeline_variant.h"

#define DELTA_FORMAT "loco-delta-1"

static const char *const export_names[LOCO_EXPORT_DTYPE_COUNT] = {"keep", "f32", "f16", "bf16"};

const char *loco_export_dtype_name(loco_export_dtype d) {
    return (unsigned)d < LOCO_EXPORT_DTYPE_COUNT ? export_names[d] : "unknown";
}

int loco_export_dtype_from_name(const char *name, loco_export_dtype *out) {
    for (int i = 0; name && i < LOCO_EXPORT_DTYPE_COUNT; i++)
        if (strcmp(name, export_names[i]) == 0) {
            *out = (loco_export_dtype)i;
            return 0;
        }
    return -1;
}

/* ---- delta ----------------------------------------------------------------------------------- */

static char *edits_text(const loco_pipeline_variant *v) {
    return json_dumps(loco_pipeline_variant_edits(v), JSON_COMPACT | JSON_SORT_KEYS);
}

loco_status loco_pipeline_variant_export_delta(const loco_pipeline_variant *v, const char *path, loco_err *err) {
    const int nc = loco_pipeline_variant_num_changes(v), na = loco_pipeline_variant_num_ablations(v);
    const size_t n = (size_t)nc + 2 * (size_t)na;
    loco_stored_tensor *t = calloc(n ? n : 1, sizeof *t);
    char **names = calloc(n ? n : 1, sizeof *names);
    char *edits = edits_text(v);
    loco_status st = LOCO_OK;
    if (!t || !names || !edits) {
        st = loco_err_set(err, LOCO_ENOMEM, "delta: out of memory");
        goto done;
    }
    size_t k = 0;
    for (int i = 0; i < nc; i++, k++) {
        const loco_variant_change *c = loco_pipeline_variant_change(v, i);
        size_t len = strlen(c->name) + 32;
        if (!(names[k] = malloc(len))) goto oom;
        snprintf(names[k], len, "%s.%s", loco_component_name(c->component), c->name);
        int64_t numel = 1;
        for (int d = 0; d < c->ndim; d++) numel *= c->shape[d];
        t[k] = (loco_stored_tensor){.name = names[k], .dtype = LOCO_F32, .ndim = c->ndim, .data = c->data,
                                    .nbytes = (size_t)numel * sizeof(float)};
        memcpy(t[k].shape, c->shape, sizeof c->shape);
    }
    for (int i = 0; i < na; i++) {
        const loco_neuron_ablation *a = loco_pipeline_variant_ablation(v, i);
        const char *kv = a->kind == LOCO_SITE_CROSS_K ? "k" : "v";
        for (int part = 0; part < 2; part++, k++) {
            if (!(names[k] = malloc(64))) goto oom;
            snprintf(names[k], 64, "ablation.%d.%s.%s", a->cross_index, kv, part ? "values" : "channels");
            t[k] = (loco_stored_tensor){.name = names[k], .dtype = part ? LOCO_F32 : LOCO_I32, .ndim = 1,
                                        .data = part ? (const void *)a->values : (const void *)a->channels,
                                        .nbytes = (size_t)a->n * 4};
            t[k].shape[0] = a->n;
        }
    }
    {
        const loco_pipeline *base = loco_pipeline_variant_base(v);
        const char *meta[] = {"format", "pt",
                              "loco_format", DELTA_FORMAT,
                              "base_model", base->path ? base->path : "",
                              "family", loco_model_family_name(base->family),
                              "edits", edits,
                              NULL};
        st = loco_safetensors_write(path, t, n, meta, err);
    }
    goto done;
oom:
    st = loco_err_set(err, LOCO_ENOMEM, "delta: out of memory");
done:
    for (size_t i = 0; names && i < n; i++) free(names[i]);
    free(names);
    free(t);
    free(edits);
    return st;
}

/* "ablation.<layer>.<k|v>.<channels|values>" -> its parts. */
static int parse_ablation_name(const char *name, int *layer, loco_site_kind *kind, int *is_values) {
    char kv[4], part[16];
    int consumed = 0;
    if (sscanf(name, "ablation.%d.%1[kv].%15[a-z]%n", layer, kv, part, &consumed) != 3 || name[consumed]) return -1;
    *kind = kv[0] == 'k' ? LOCO_SITE_CROSS_K : LOCO_SITE_CROSS_V;
    if (strcmp(part, "values") == 0) *is_values = 1;
    else if (strcmp(part, "channels") == 0) *is_values = 0;
    else return -1;
    return 0;
}

static loco_status apply_ablation(loco_pipeline_variant *v, const loco_safetensors *f, const loco_stored_tensor *ch,
                                  int layer, loco_site_kind kind, loco_err *err) {
    char vname[64];
    snprintf(vname, sizeof vname, "ablation.%d.%s.values", layer, kind == LOCO_SITE_CROSS_K ? "k" : "v");
    const loco_stored_tensor *vt = loco_safetensors_find(f, vname);
    if (!vt || ch->dtype != LOCO_I32 || ch->ndim != 1 || vt->ndim != 1 || vt->shape[0] != ch->shape[0])
        return loco_err_set(err, LOCO_EFORMAT, "%s: '%s' needs an I32 channel list and a '%s' of the same length",
                            loco_safetensors_path(f), ch->name, vname);
    const int n = (int)ch->shape[0];
    float *vals = malloc((size_t)(n ? n : 1) * sizeof *vals);
    int32_t *chan = malloc((size_t)(n ? n : 1) * sizeof *chan); /* aligned copy: files need not align data */
    if (!vals || !chan) {
        free(vals);
        free(chan);
        return loco_err_set(err, LOCO_ENOMEM, "delta: out of memory");
    }
    memcpy(chan, ch->data, (size_t)n * sizeof *chan);
    loco_status st = loco_convert_to_f32(vals, vt->data, vt->dtype, (size_t)n);
    if (st) {
        free(vals);
        free(chan);
        return loco_err_set(err, LOCO_EFORMAT, "%s: '%s' is not a float tensor", loco_safetensors_path(f), vname);
    }
    loco_neuron_ablation a = {.cross_index = layer, .kind = kind, .n = n, .channels = chan, .values = vals};
    st = loco_pipeline_variant_add_ablation(v, &a, err);
    free(vals);
    free(chan);
    return st;
}

loco_status loco_pipeline_variant_apply_delta(loco_pipeline_variant *v, const char *path, loco_err *err) {
    loco_safetensors *f = NULL;
    loco_status st = loco_safetensors_open(path, &f, err);
    if (st) return st;
    const char *fmt = loco_safetensors_metadata(f, "loco_format");
    if (!fmt || strcmp(fmt, DELTA_FORMAT) != 0) {
        st = loco_err_set(err, LOCO_EFORMAT, "%s: not a loco delta file (metadata loco_format is not '%s')", path,
                          DELTA_FORMAT);
        goto done;
    }
    const char *family = loco_safetensors_metadata(f, "family");
    const loco_pipeline *base = loco_pipeline_variant_base(v);
    if (family && strcmp(family, loco_model_family_name(base->family)) != 0) {
        st = loco_err_set(err, LOCO_EINVAL, "%s: the delta was made for a %s model, this one is %s", path, family,
                          loco_model_family_name(base->family));
        goto done;
    }
    for (size_t i = 0; i < loco_safetensors_count(f); i++) {
        const loco_stored_tensor *t = loco_safetensors_at(f, i);
        int layer, is_values;
        loco_site_kind kind;
        if (strncmp(t->name, "ablation.", 9) == 0) {
            if (parse_ablation_name(t->name, &layer, &kind, &is_values)) {
                st = loco_err_set(err, LOCO_EFORMAT, "%s: malformed ablation tensor name '%s'", path, t->name);
                goto done;
            }
            if (!is_values && (st = apply_ablation(v, f, t, layer, kind, err))) goto done;
            continue;
        }
        const char *dot = strchr(t->name, '.');
        char comp[32];
        loco_component c;
        if (!dot || (size_t)(dot - t->name) >= sizeof comp) goto bad_name;
        memcpy(comp, t->name, (size_t)(dot - t->name));
        comp[dot - t->name] = 0;
        if (loco_component_from_name(comp, &c)) goto bad_name;
        {
            float *cur = NULL;
            int64_t numel = 0;
            int ndim = 0;
            int64_t shape[2];
            if ((st = loco_pipeline_variant_read_param(v, c, dot + 1, &cur, &numel, &ndim, shape, err))) {
                loco_err_prefix(err, "%s", path);
                goto done;
            }
            free(cur);
            if (loco_stored_numel(t) != numel || t->ndim != ndim) {
                st = loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s' has %lld elements, the model's has %lld", path,
                                  t->name, (long long)loco_stored_numel(t), (long long)numel);
                goto done;
            }
            float *data = malloc((size_t)(numel ? numel : 1) * sizeof *data);
            if (!data) {
                st = loco_err_set(err, LOCO_ENOMEM, "delta: out of memory");
                goto done;
            }
            if (loco_convert_to_f32(data, t->data, t->dtype, (size_t)numel)) {
                free(data);
                st = loco_err_set(err, LOCO_EFORMAT, "%s: tensor '%s' is not a float tensor", path, t->name);
                goto done;
            }
            st = loco_pipeline_variant_set_param(v, c, dot + 1, data, LOCO_F32, err);
            free(data);
            if (st) goto done;
        }
        continue;
    bad_name:
        st = loco_err_set(err, LOCO_EFORMAT,
                          "%s: tensor '%s' does not start with a component (unet., text_encoder., text_encoder_2.)",
                          path, t->name);
        goto done;
    }
    const char *edits = loco_safetensors_metadata(f, "edits");
    if (edits) {
        json_t *arr = json_loads(edits, 0, NULL);
        size_t i;
        json_t *e;
        if (json_is_array(arr))
            json_array_foreach(arr, i, e) {
                json_t *copy = json_deep_copy(e);
                if (json_is_object(copy)) json_object_set_new(copy, "applied_from", json_string(path));
                st = loco_pipeline_variant_note_edit(v, copy, err);
                json_decref(copy);
                if (st) break;
            }
        json_decref(arr);
    }
done:
    loco_safetensors_close(f);
    return st;
}

/* ---- diffusers folder ------------------------------------------------------------------------- */

static loco_status mkdirs(const char *path, loco_err *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return loco_err_set(err, LOCO_EINVAL, "export: path too long");
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return loco_err_set(err, LOCO_EIO, "export: cannot create %s: %s", buf, strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0755) && errno != EEXIST) return loco_err_set(err, LOCO_EIO, "export: cannot create %s: %s", buf, strerror(errno));
    return LOCO_OK;
}

static loco_status write_json(const json_t *j, const char *dir, const char *sub, const char *file, loco_err *err) {
    char d[4096], p[4200];
    snprintf(d, sizeof d, "%s%s%s", dir, sub ? "/" : "", sub ? sub : "");
    loco_status st = mkdirs(d, err);
    if (st) return st;
    snprintf(p, sizeof p, "%s/%s", d, file);
    if (json_dump_file(j, p, JSON_INDENT(2) | JSON_PRESERVE_ORDER))
        return loco_err_set(err, LOCO_EIO, "export: cannot write %s", p);
    return LOCO_OK;
}

static loco_status copy_file(const char *src, const char *dst, loco_err *err) {
    FILE *in = fopen(src, "rb");
    if (!in) return loco_err_set(err, LOCO_EIO, "export: cannot read %s: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return loco_err_set(err, LOCO_EIO, "export: cannot write %s: %s", dst, strerror(errno));
    }
    char buf[65536];
    size_t r;
    int bad = 0;
    while ((r = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, r, out) != r) bad = 1;
    bad |= ferror(in);
    fclose(in);
    if (fclose(out) || bad) return loco_err_set(err, LOCO_EIO, "export: copying %s to %s failed", src, dst);
    return LOCO_OK;
}

static int is_regular(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Every regular file of a folder (no README); vocab.json/merges.txt from ../clip when the folder
 * shares them (the bundled clip-pad-bang configuration). */
static loco_status copy_folder(const char *src, const char *dst, int tokenizer, loco_err *err) {
    loco_status st = mkdirs(dst, err);
    if (st) return st;
    DIR *d = opendir(src);
    if (!d) return loco_err_set(err, LOCO_EIO, "export: cannot list %s: %s", src, strerror(errno));
    struct dirent *e;
    char a[4200], b[4200];
    while (!st && (e = readdir(d))) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "README.md") == 0) continue;
        snprintf(a, sizeof a, "%s/%s", src, e->d_name);
        if (!is_regular(a)) continue;
        snprintf(b, sizeof b, "%s/%s", dst, e->d_name);
        st = copy_file(a, b, err);
    }
    closedir(d);
    static const char *const shared[] = {"vocab.json", "merges.txt"};
    for (int i = 0; !st && tokenizer && i < 2; i++) {
        snprintf(a, sizeof a, "%s/%s", src, shared[i]);
        if (is_regular(a)) continue;
        snprintf(a, sizeof a, "%s/../clip/%s", src, shared[i]);
        snprintf(b, sizeof b, "%s/%s", dst, shared[i]);
        if (!is_regular(a)) return loco_err_set(err, LOCO_ENOTFOUND, "export: tokenizer folder %s has no %s", src, shared[i]);
        st = copy_file(a, b, err);
    }
    return st;
}

static loco_dtype export_dtype(loco_export_dtype e, loco_dtype src) {
    switch (e) {
    case LOCO_EXPORT_F32: return LOCO_F32;
    case LOCO_EXPORT_F16: return LOCO_F16;
    case LOCO_EXPORT_BF16: return LOCO_BF16;
    default: return src;
    }
}

static const loco_variant_change *find_change(const loco_pipeline_variant *v, loco_component c, const char *name) {
    for (int i = 0; i < loco_pipeline_variant_num_changes(v); i++) {
        const loco_variant_change *ch = loco_pipeline_variant_change(v, i);
        if (ch->component == c && strcmp(ch->name, name) == 0) return ch;
    }
    return NULL;
}

/* One model component's weights ("unet", "vae", "text_encoder", ...), the variant's changes
 * swapped in (comp < 0: a component variants never change). */
static loco_status write_weights(const loco_pipeline_variant *v, const char *cname, int comp, const char *dir,
                                 loco_export_dtype dtype, loco_err *err) {
    const loco_pipeline *base = loco_pipeline_variant_base(v);
    loco_weights *w = NULL;
    loco_status st = loco_model_files_weights(base->files, cname, &w, err);
    if (st) return st;
    const size_t n = loco_weights_count(w);
    loco_stored_tensor *t = calloc(n ? n : 1, sizeof *t);
    void **owned = calloc(n ? n : 1, sizeof *owned);
    char d[4096], path[4200];
    if (!t || !owned) {
        st = loco_err_set(err, LOCO_ENOMEM, "export: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const loco_stored_tensor *s = loco_weights_at(w, i);
        const loco_variant_change *ch = comp >= 0 ? find_change(v, (loco_component)comp, s->name) : NULL;
        t[i] = *s;
        if (!ch && (!loco_dtype_is_float(s->dtype) || export_dtype(dtype, s->dtype) == s->dtype)) continue;
        const loco_dtype to = loco_dtype_is_float(s->dtype) ? export_dtype(dtype, s->dtype) : s->dtype;
        const int64_t numel = loco_stored_numel(s);
        float *f32 = malloc((size_t)(numel ? numel : 1) * sizeof *f32);
        void *out = malloc((size_t)(numel ? numel : 1) * loco_dtype_size(to));
        if (!f32 || !out) {
            free(f32);
            free(out);
            st = loco_err_set(err, LOCO_ENOMEM, "export: out of memory for '%s'", s->name);
            goto done;
        }
        if (ch) memcpy(f32, ch->data, (size_t)numel * sizeof *f32);
        else if ((st = loco_convert_to_f32(f32, s->data, s->dtype, (size_t)numel))) {
            free(f32);
            free(out);
            st = loco_err_set(err, LOCO_EUNSUPPORTED, "export: cannot convert '%s' (%s)", s->name, loco_dtype_name(s->dtype));
            goto done;
        }
        st = loco_convert_from_f32(out, to, f32, (size_t)numel);
        free(f32);
        if (st) {
            free(out);
            st = loco_err_set(err, LOCO_EUNSUPPORTED, "export: cannot write '%s' as %s", s->name, loco_dtype_name(to));
            goto done;
        }
        owned[i] = out;
        t[i].data = out;
        t[i].dtype = to;
        t[i].nbytes = (size_t)numel * loco_dtype_size(to);
    }
    snprintf(d, sizeof d, "%s/%s", dir, cname);
    if ((st = mkdirs(d, err))) goto done;
    /* diffusers models and transformers models name their weight files differently */
    snprintf(path, sizeof path, "%s/%s.safetensors", d, strncmp(cname, "text_encoder", 12) == 0 ? "model" : "diffusion_pytorch_model");
    st = loco_safetensors_write(path, t, n, (const char *const[]){"format", "pt", NULL}, err);
done:
    for (size_t i = 0; owned && i < n; i++) free(owned[i]);
    free(owned);
    free(t);
    loco_weights_free(w);
    return st;
}

loco_status loco_pipeline_variant_export_folder(const loco_pipeline_variant *v, const char *dir,
                                                loco_export_dtype dtype, loco_err *err) {
    if (!dir || !*dir) return loco_err_set(err, LOCO_EINVAL, "export: no folder given");
    if ((unsigned)dtype >= LOCO_EXPORT_DTYPE_COUNT) return loco_err_set(err, LOCO_EINVAL, "export: unknown dtype");
    if (loco_pipeline_variant_num_ablations(v) > 0)
        return loco_err_set(err, LOCO_EUNSUPPORTED,
                            "export: this variant has neuron ablations, which act on the conditional branch at "
                            "inference and have no diffusers weight form; export the delta file instead");
    const loco_pipeline *base = loco_pipeline_variant_base(v);
    const loco_model_files *mf = base->files;
    loco_status st = mkdirs(dir, err);
    if (st) return st;
    json_t *index = json_deep_copy(loco_model_files_index(mf));
    if (!json_is_object(index)) {
        json_decref(index);
        return loco_err_set(err, LOCO_EFORMAT, "export: the model has no model_index.json");
    }
    const char *key;
    json_t *val;
    void *tmp;
    json_object_foreach_safe(index, tmp, key, val) {
        if (key[0] == '_' || !json_is_array(val) || json_is_null(json_array_get(val, 1))) continue;
        loco_component comp;
        char sub[4200];
        if (loco_component_from_name(key, &comp) == 0 || strcmp(key, "vae") == 0) {
            const json_t *cfg = loco_model_files_config(mf, key);
            if (!cfg) {
                st = loco_err_set(err, LOCO_ENOTFOUND, "export: no config for %s", key);
                break;
            }
            if ((st = write_json(cfg, dir, key, "config.json", err))) break;
            if ((st = write_weights(v, key, strcmp(key, "vae") == 0 ? -1 : (int)comp, dir, dtype, err))) break;
        } else if (strcmp(key, "scheduler") == 0) {
            const json_t *cfg = loco_model_files_config(mf, "scheduler");
            if (!cfg || (st = write_json(cfg, dir, "scheduler", "scheduler_config.json", err))) {
                if (!cfg) st = loco_err_set(err, LOCO_ENOTFOUND, "export: no scheduler config");
                break;
            }
        } else if (strcmp(key, "tokenizer") == 0 || strcmp(key, "tokenizer_2") == 0) {
            const char *src = loco_model_files_tokenizer_dir(mf, key);
            if (!src) {
                st = loco_err_set(err, LOCO_ENOTFOUND, "export: no %s folder", key);
                break;
            }
            snprintf(sub, sizeof sub, "%s/%s", dir, key);
            if ((st = copy_folder(src, sub, 1, err))) break;
        } else {
            /* components loco does not run (safety checker, feature extractor): copied from a
             * diffusers folder as they are, else left out of the index */
            char src[4200];
            snprintf(src, sizeof src, "%s/%s", loco_model_files_path(mf), key);
            struct stat sb;
            if (!loco_model_files_is_single_file(mf) && stat(src, &sb) == 0 && S_ISDIR(sb.st_mode)) {
                snprintf(sub, sizeof sub, "%s/%s", dir, key);
                if ((st = copy_folder(src, sub, 0, err))) break;
            } else {
                json_object_set_new(index, key, json_pack("[nn]"));
            }
        }
    }
    if (!st) st = write_json(index, dir, NULL, "model_index.json", err);
    json_decref(index);
    return st;
}
