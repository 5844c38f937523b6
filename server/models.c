/* models.c: the model registry (see models.h). */
#include "models.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model_files.h"
#include "unet.h"

struct locod_models {
    const locod_config *cfg;
    locod_model *v;
    int n, cap;
};

static const char *const state_names[] = {"available", "loading", "loaded", "unloading", "failed"};

const char *locod_model_state_name(locod_model_state s) {
    return (unsigned)s < LOCOD_MODEL_STATE_COUNT ? state_names[s] : "unknown";
}

int locod_model_state_from_name(const char *name, locod_model_state *out) {
    for (int i = 0; name && i < LOCOD_MODEL_STATE_COUNT; i++)
        if (strcmp(name, state_names[i]) == 0) {
            *out = (locod_model_state)i;
            return 0;
        }
    return -1;
}

static locod_model *append(locod_models *m, const char *name) {
    if (m->n == m->cap) {
        int cap = m->cap ? m->cap * 2 : 16;
        locod_model *nv = realloc(m->v, (size_t)cap * sizeof *nv);
        if (!nv) return NULL;
        m->v = nv;
        m->cap = cap;
    }
    locod_model *md = &m->v[m->n++];
    memset(md, 0, sizeof *md);
    snprintf(md->name, sizeof md->name, "%s", name);
    return md;
}

locod_model *locod_models_find(locod_models *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->v[i].name, name) == 0) return &m->v[i];
    return NULL;
}

/* Folders first, then single files; a file whose stem a folder already uses keeps its
 * extension in its name ("sd1-tiny.safetensors"). */
static void scan_root(locod_models *m, const char *root, int want_dirs) {
    DIR *d = opendir(root);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        size_t n = strlen(e->d_name);
        if (n > LOCO_MODEL_NAME_MAX) continue;
        char path[PATH_MAX], probe[PATH_MAX + 32], name[LOCO_MODEL_NAME_MAX + 1];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", root, e->d_name);
        if (stat(path, &st)) continue;
        if (want_dirs) {
            if (!S_ISDIR(st.st_mode)) continue;
            snprintf(probe, sizeof probe, "%s/model_index.json", path);
            if (stat(probe, &st)) continue;
            memcpy(name, e->d_name, n + 1);
        } else {
            if (!S_ISREG(st.st_mode) || n <= 12 || strcmp(e->d_name + n - 12, ".safetensors") != 0) continue;
            memcpy(name, e->d_name, n - 12);
            name[n - 12] = 0;
            locod_model *other = locod_models_find(m, name);
            if (other && other->path && strcmp(other->path, path) != 0) memcpy(name, e->d_name, n + 1);
        }
        if (!loco_name_valid(name) || locod_models_find(m, name)) continue;
        locod_model *md = append(m, name);
        if (!md) break;
        md->path = strdup(path);
        md->source = LOCOD_SRC_ROOT;
    }
    closedir(d);
}

void locod_models_rescan(locod_models *m) {
    for (int pass = 1; pass >= 0; pass--)
        for (int r = 0; r < m->cfg->n_model_roots; r++) scan_root(m, m->cfg->model_roots[r], pass);
}

locod_models *locod_models_create(const locod_config *cfg) {
    locod_models *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cfg = cfg;
    for (int i = 0; i < cfg->n_models; i++) {
        locod_model *md = append(m, cfg->models[i].name);
        if (!md) break;
        md->path = strdup(cfg->models[i].path);
        md->config_dir = cfg->models[i].config_dir ? strdup(cfg->models[i].config_dir) : NULL;
        md->variant = cfg->models[i].variant ? strdup(cfg->models[i].variant) : NULL;
        md->source = LOCOD_SRC_CONFIG;
    }
    locod_models_rescan(m);
    return m;
}

static void model_free(locod_model *md) {
    free(md->path);
    free(md->config_dir);
    free(md->variant);
    free(md->error);
    json_decref(md->info);
    json_decref(md->edit);
}

void locod_models_destroy(locod_models *m) {
    if (!m) return;
    for (int i = 0; i < m->n; i++) model_free(&m->v[i]);
    free(m->v);
    free(m);
}

int locod_models_count(const locod_models *m) { return m->n; }
locod_model *locod_models_at(locod_models *m, int i) { return (i >= 0 && i < m->n) ? &m->v[i] : NULL; }

int locod_models_loaded_count(const locod_models *m) {
    int n = 0;
    for (int i = 0; i < m->n; i++) n += m->v[i].state == LOCOD_MODEL_LOADED;
    return n;
}

locod_model *locod_models_add_variant(locod_models *m, const locod_variant_row *row, locod_model_state state,
                                      json_t *info) {
    locod_model *md = locod_models_find(m, row->name);
    if (md && md->source != LOCOD_SRC_VARIANT) return NULL;
    if (!md) md = append(m, row->name);
    if (!md) return NULL;
    md->source = LOCOD_SRC_VARIANT;
    snprintf(md->base, sizeof md->base, "%s", row->base);
    snprintf(md->created_by_job, sizeof md->created_by_job, "%s", row->job_id);
    snprintf(md->delta_sha, sizeof md->delta_sha, "%s", row->delta_sha256);
    json_decref(md->edit);
    md->edit = row->edit ? json_deep_copy(row->edit) : NULL;
    md->created_ms = row->created_ms;
    md->state = state;
    json_decref(md->info);
    md->info = info ? json_incref(info) : NULL;
    return md;
}

void locod_models_remove(locod_models *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->v[i].name, name) == 0) {
            model_free(&m->v[i]);
            memmove(&m->v[i], &m->v[i + 1], (size_t)(m->n - i - 1) * sizeof *m->v);
            m->n--;
            return;
        }
}

static const char *const source_names[] = {"config", "model_root", "variant"};

/* Configs and UNet sites straight from the files (no weights are read). */
static json_t *describe_files(const char *path, const char *config_dir, const char *variant) {
    loco_model_files_opts o;
    loco_model_files_opts_init(&o);
    o.config_dir = config_dir;
    o.variant = variant;
    loco_model_files *mf = NULL;
    loco_err err;
    loco_err_clear(&err);
    if (loco_model_files_open(path, &o, &mf, &err)) return json_pack("{s:s}", "files_error", err.msg);
    json_t *out = json_object();
    json_object_set_new(out, "family", json_string(loco_model_family_name(loco_model_files_family(mf))));
    json_object_set_new(out, "single_file", json_boolean(loco_model_files_is_single_file(mf)));
    json_t *configs = json_object();
    const char *comps[] = {"unet", "vae", "text_encoder", "text_encoder_2", "scheduler"};
    const json_t *idx = loco_model_files_index(mf);
    if (idx) json_object_set_new(configs, "model_index", json_deep_copy(idx));
    for (size_t i = 0; i < sizeof comps / sizeof *comps; i++) {
        const json_t *c = loco_model_files_config(mf, comps[i]);
        if (c) json_object_set_new(configs, comps[i], json_deep_copy(c));
    }
    json_object_set_new(out, "configs", configs);
    const json_t *uc = loco_model_files_config(mf, "unet");
    loco_unet_config ucfg;
    loco_site *sites = NULL;
    int n = 0;
    if (uc && loco_unet_config_from_json(uc, "unet/config.json", &ucfg, &err) == LOCO_OK &&
        loco_unet_config_sites(&ucfg, &sites, &n, &err) == LOCO_OK) {
        json_t *arr = json_array();
        for (int i = 0; i < n; i++) {
            json_t *s = json_pack("{s:s, s:s, s:s, s:i}", "component", "unet", "name", sites[i].name, "kind",
                                  loco_site_kind_name(sites[i].kind), "index", sites[i].id);
            json_object_set_new(s, "cross_index", sites[i].cross_index >= 0 ? json_integer(sites[i].cross_index)
                                                                             : json_null());
            json_array_append_new(arr, s);
        }
        json_object_set_new(out, "sites", arr);
        loco_unet_sites_free(sites, n);
    }
    loco_model_files_close(mf);
    return out;
}

/* What a variant is made of, so a client can tell whether it survives restarts and fetch its
 * delta. */
static json_t *variant_json(const locod_model *md) {
    json_t *v = json_object();
    int durable = md->delta_sha[0] != 0;
    json_object_set_new(v, "durable", json_boolean(durable));
    json_object_set_new(v, "delta_sha256", durable ? json_string(md->delta_sha) : json_null());
    char buf[128];
    snprintf(buf, sizeof buf, "/v1/artifacts/%s", md->delta_sha);
    json_object_set_new(v, "delta_url", durable ? json_string(buf) : json_null());
    json_object_set_new(v, "job", json_string(md->created_by_job));
    json_object_set_new(v, "created_at", md->created_ms ? json_string(loco_format_time_ms(md->created_ms, buf, sizeof buf))
                                                        : json_null());
    json_object_set_new(v, "edit", md->edit ? json_deep_copy(md->edit) : json_object());
    return v;
}

static json_t *summary_json(const locod_model *md) {
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(md->name));
    json_object_set_new(o, "state", json_string(locod_model_state_name(md->state)));
    json_object_set_new(o, "source", json_string(source_names[md->source]));
    json_object_set_new(o, "base", md->source == LOCOD_SRC_VARIANT ? json_string(md->base) : json_null());
    json_object_set_new(o, "error", md->error ? json_string(md->error) : json_null());
    const json_t *info = md->info;
    json_t *fam = info ? json_object_get(info, "family") : NULL;
    json_object_set_new(o, "family", fam ? json_incref(fam) : json_null());
    json_t *mem = info ? json_object_get(info, "memory") : NULL;
    json_object_set_new(o, "memory", mem ? json_incref(mem) : json_null());
    char url[160];
    snprintf(url, sizeof url, "/v1/models/%s", md->name);
    json_object_set_new(o, "url", json_string(url));
    if (md->source == LOCOD_SRC_VARIANT) json_object_set_new(o, "variant", variant_json(md));
    return o;
}

static void view_clear(locod_model_view *v) {
    json_decref(v->summary);
    json_decref(v->info);
    free(v->path);
    free(v->config_dir);
    free(v->variant);
    memset(v, 0, sizeof *v);
}

int locod_model_view_take(const locod_model *md, locod_model_view *v) {
    memset(v, 0, sizeof *v);
    v->summary = summary_json(md);
    /* a deep copy: md->info may be replaced by the loop thread once the lock is released */
    v->info = md->info ? json_deep_copy(md->info) : NULL;
    v->is_variant = md->source == LOCOD_SRC_VARIANT;
    snprintf(v->created_by_job, sizeof v->created_by_job, "%s", md->created_by_job);
    int ok = v->summary && (!md->info || v->info);
    if (md->path && !v->is_variant) {
        ok = ok && (v->path = strdup(md->path));
        ok = ok && (!md->config_dir || (v->config_dir = strdup(md->config_dir)));
        ok = ok && (!md->variant || (v->variant = strdup(md->variant)));
    }
    if (!ok) view_clear(v);
    return ok ? 0 : -1;
}

/* The members' order matches what clients have always seen (summary first). */
json_t *locod_model_view_json(locod_model_view *v) {
    json_t *o = v->summary;
    v->summary = NULL;
    if (!o) {
        view_clear(v);
        return NULL;
    }
    const json_t *info = v->info;
    json_t *files = v->path ? describe_files(v->path, v->config_dir, v->variant) : NULL;
    if (files && json_object_get(files, "files_error"))
        json_object_set(o, "files_error", json_object_get(files, "files_error"));
    if (!(info && json_object_get(info, "family")) && files && json_object_get(files, "family"))
        json_object_set(o, "family", json_object_get(files, "family"));
    json_object_set_new(o, "configs", files && json_object_get(files, "configs")
                                          ? json_incref(json_object_get(files, "configs"))
                                          : json_object());
    json_t *sites = info ? json_object_get(info, "sites") : NULL;
    if (!sites && files) sites = json_object_get(files, "sites");
    json_object_set_new(o, "sites", sites ? json_incref(sites) : json_array());
    json_object_set_new(o, "runtime", info ? json_deep_copy(info) : json_null());
    if (json_is_object(json_object_get(o, "runtime"))) json_object_del(json_object_get(o, "runtime"), "sites");
    if (v->is_variant) json_object_set_new(o, "created_by_job", json_string(v->created_by_job));
    json_decref(files);
    view_clear(v);
    return o;
}

json_t *locod_model_to_json(const locod_model *md, int full) {
    if (!full) return summary_json(md);
    locod_model_view v;
    return locod_model_view_take(md, &v) ? NULL : locod_model_view_json(&v);
}
