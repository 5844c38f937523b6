/* routes_models.c: GET /v1/models, GET /v1/models/{name}, POST .../load, POST .../unload,
 * GET .../variants. Models are named, never given as paths: a name must be one the config
 * lists or an entry of a configured model root. Loading and unloading need an admin key. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

static const char *const allow_get[] = {"Allow", "GET, HEAD", NULL};
static const char *const allow_post[] = {"Allow", "POST", NULL};

static enum MHD_Result list(locod_req *r) {
    locod_server *srv = r->srv;
    pthread_mutex_lock(&srv->mu);
    locod_models_rescan(srv->models);
    json_t *arr = json_array();
    for (int i = 0; i < locod_models_count(srv->models); i++)
        json_array_append_new(arr, locod_model_to_json(locod_models_at(srv->models, i), 0));
    pthread_mutex_unlock(&srv->mu);
    return locod_reply_json(r, 200, json_pack("{s:o}", "models", arr), NULL);
}

static enum MHD_Result not_found(locod_req *r, const char *name) {
    return locod_problem(r, 404, "unknown_model", NULL, NULL,
                         "no model named '%.100s' on this server; GET /v1/models lists the names it can load "
                         "(models are named in the config or found in its model_roots, never given as paths)",
                         name);
}

/* Under mu: a variant is re-created on top of its resident base, so loading one loads its base
 * too (the worker supervisor sends the variant's load once the base is resident). */
static void load_base_first(locod_server *srv, locod_model *v) {
    locod_model *b = locod_models_find(srv->models, v->base);
    if (!b || b->state == LOCOD_MODEL_LOADED || b->state == LOCOD_MODEL_LOADING) return;
    if (b->state == LOCOD_MODEL_UNLOADING && b->op_pending == 2) {
        b->op_pending = 0; /* its unload was not sent yet: keep it resident */
        b->state = LOCOD_MODEL_LOADED;
        return;
    }
    b->state = LOCOD_MODEL_LOADING;
    b->op_pending = 1;
    free(b->error);
    b->error = NULL;
}

static enum MHD_Result load(locod_req *r, const char *name) {
    locod_server *srv = r->srv;
    pthread_mutex_lock(&srv->mu);
    locod_model *md = locod_models_find(srv->models, name);
    if (!md) {
        locod_models_rescan(srv->models);
        md = locod_models_find(srv->models, name);
    }
    if (!md) {
        pthread_mutex_unlock(&srv->mu);
        return not_found(r, name);
    }
    if (md->source == LOCOD_SRC_VARIANT) load_base_first(srv, md);
    /* a restart loads it again (a variant follows its base, so the base is what is noted) */
    locod_note_resident(srv, md->source == LOCOD_SRC_VARIANT ? md->base : md->name, 1);
    int status = 202;
    if (md->state == LOCOD_MODEL_LOADED && md->op_pending != 2) {
        status = 200;
    } else if (md->state == LOCOD_MODEL_UNLOADING && md->op_pending == 2) {
        md->op_pending = 0; /* the unload had not been sent yet: keep it resident */
        md->state = LOCOD_MODEL_LOADED;
        status = 200;
    } else if (md->state != LOCOD_MODEL_LOADING) {
        md->state = LOCOD_MODEL_LOADING;
        md->op_pending = 1;
        free(md->error);
        md->error = NULL;
    }
    json_t *j = locod_model_to_json(md, 0);
    locod_server_changed(srv);
    pthread_mutex_unlock(&srv->mu);
    locod_server_kick(srv);
    char loc[160];
    snprintf(loc, sizeof loc, "/v1/models/%s", name);
    const char *const h[] = {"Location", loc, NULL};
    return locod_reply_json(r, status, j, h);
}

/* The worker holds the variant, or is about to (its load was sent). */
static int variant_resident(const locod_model *md) {
    return md->state == LOCOD_MODEL_LOADED || md->state == LOCOD_MODEL_UNLOADING ||
           (md->state == LOCOD_MODEL_LOADING && md->op_pending != 1);
}

static enum MHD_Result unload(locod_req *r, const char *name) {
    locod_server *srv = r->srv;
    pthread_mutex_lock(&srv->mu);
    locod_model *md = locod_models_find(srv->models, name);
    if (!md) {
        pthread_mutex_unlock(&srv->mu);
        return not_found(r, name);
    }
    int status = 202;
    if (md->source != LOCOD_SRC_VARIANT) locod_note_resident(srv, md->name, 0);
    if (md->source == LOCOD_SRC_VARIANT && !variant_resident(md)) {
        /* unloading a variant deletes it; one the worker does not hold goes at once */
        json_t *j = locod_model_to_json(md, 0);
        json_object_set_new(j, "state", json_string("unloading"));
        locod_forget_variant(srv, name);
        pthread_mutex_unlock(&srv->mu);
        return locod_reply_json(r, 200, j, NULL);
    }
    if (md->state == LOCOD_MODEL_AVAILABLE || md->state == LOCOD_MODEL_FAILED) {
        /* a failed model an admin unloads is set aside on purpose: /readyz stops counting it */
        md->state = LOCOD_MODEL_AVAILABLE;
        status = 200;
    } else if (md->state == LOCOD_MODEL_LOADING && md->op_pending == 1) {
        md->op_pending = 0; /* the load had not been sent yet */
        md->state = LOCOD_MODEL_AVAILABLE;
        status = 200;
    } else if (md->state != LOCOD_MODEL_UNLOADING) {
        md->state = LOCOD_MODEL_UNLOADING;
        md->op_pending = 2;
    }
    json_t *j = locod_model_to_json(md, 0);
    locod_server_changed(srv);
    pthread_mutex_unlock(&srv->mu);
    locod_server_kick(srv);
    return locod_reply_json(r, status, j, NULL);
}

enum MHD_Result locod_routes_models(locod_req *r, int n, char **seg) {
    int get = strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0;
    int post = strcmp(r->method, "POST") == 0;
    if (n == 0) {
        if (!get) return locod_problem(r, 405, "method_not_allowed", NULL, allow_get, "use GET to list models");
        return list(r);
    }
    const char *name = seg[0];
    if (!loco_name_valid(name) || n > 2) return not_found(r, name);
    if (n == 1) {
        if (!get) return locod_problem(r, 405, "method_not_allowed", NULL, allow_get, "use GET to show a model");
        locod_server *srv = r->srv;
        pthread_mutex_lock(&srv->mu);
        locod_model *md = locod_models_find(srv->models, name);
        if (!md) {
            locod_models_rescan(srv->models);
            md = locod_models_find(srv->models, name);
        }
        /* copy under the lock, read the model's files after it: a slow disk must not stall
         * every other request */
        locod_model_view v;
        int taken = md ? locod_model_view_take(md, &v) : -1;
        pthread_mutex_unlock(&srv->mu);
        if (!md) return not_found(r, name);
        json_t *j = taken == 0 ? locod_model_view_json(&v) : NULL;
        if (!j) return locod_problem(r, 500, "internal_error", NULL, NULL, "out of memory describing model '%s'", name);
        return locod_reply_json(r, 200, j, NULL);
    }
    if (strcmp(seg[1], "variants") == 0) {
        if (!get) return locod_problem(r, 405, "method_not_allowed", NULL, allow_get, "use GET to list variants");
        locod_server *srv = r->srv;
        pthread_mutex_lock(&srv->mu);
        if (!locod_models_find(srv->models, name)) {
            pthread_mutex_unlock(&srv->mu);
            return not_found(r, name);
        }
        json_t *arr = json_array();
        for (int i = 0; i < locod_models_count(srv->models); i++) {
            locod_model *md = locod_models_at(srv->models, i);
            if (md->source == LOCOD_SRC_VARIANT && strcmp(md->base, name) == 0)
                json_array_append_new(arr, locod_model_to_json(md, 0));
        }
        pthread_mutex_unlock(&srv->mu);
        return locod_reply_json(r, 200, json_pack("{s:o}", "variants", arr), NULL);
    }
    if (strcmp(seg[1], "load") == 0 || strcmp(seg[1], "unload") == 0) {
        if (!post) return locod_problem(r, 405, "method_not_allowed", NULL, allow_post, "use POST to %s a model", seg[1]);
        if (!r->admin)
            return locod_problem(r, 403, "admin_required", NULL, NULL,
                                 "loading and unloading models needs an admin key (\"admin\": true in the config); "
                                 "key '%s' is not one",
                                 r->key_id);
        return strcmp(seg[1], "load") == 0 ? load(r, name) : unload(r, name);
    }
    return locod_problem(r, 404, "not_found", NULL, NULL, "no such resource: %s", r->url);
}
