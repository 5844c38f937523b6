/* cmd_inspect.c: `loco inspect MODEL` prints, as JSON, what loco makes of a model on disk:
 * its family, components and their classes, each component's config (resolved: single files
 * show the embedded or --config-dir configs), the UNet's resolved architecture and its
 * intervention sites in EXECUTION order (down, mid, up) with diffusers module paths, and the
 * text encoders' sites under "text_encoder_sites", one list per encoder, named exactly as
 * intervention plans spell them (the second encoder's with the "text_encoder_2." prefix). No
 * weights are loaded except the tensor headers. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "clip_text.h"
#include "intervention.h"
#include "model_files.h"
#include "unet.h"

static const char *const components[] = {"unet",      "vae",         "text_encoder", "text_encoder_2",
                                         "tokenizer", "tokenizer_2", "scheduler"};

static void help(void) {
    printf("usage: loco inspect MODEL [--config-dir DIR] [--variant NAME] [--family sd1|sd2|sdxl] [--all-sites]\n"
           "  Prints the model's components, configs, cross-attention sites (execution order) and\n"
           "  text-encoder sites (per encoder, as intervention plans name them) as JSON.\n"
           "  --all-sites also lists every UNet ResNet, self-attention, feed-forward and K/V projection site.\n");
}

static json_t *unet_summary(const loco_unet_config *c) {
    json_t *o = json_object();
    json_t *down = json_array(), *up = json_array(), *ch = json_array();
    for (int i = 0; i < c->n_blocks; i++) {
        json_array_append_new(down, json_string(loco_unet_block_type_name(c->down[i])));
        json_array_append_new(up, json_string(loco_unet_block_type_name(c->up[i])));
        json_array_append_new(ch, json_integer(c->block_out_channels[i]));
    }
    json_object_set_new(o, "down_block_types", down);
    json_object_set_new(o, "mid_block_type", json_string(loco_unet_block_type_name(c->mid)));
    json_object_set_new(o, "up_block_types", up);
    json_object_set_new(o, "block_out_channels", ch);
    json_object_set_new(o, "cross_attention_dim", json_integer(c->cross_attention_dim[0]));
    json_object_set_new(o, "use_linear_projection", json_boolean(c->use_linear_projection));
    json_object_set_new(o, "addition_embed_type", json_string(loco_unet_addition_embed_name(c->addition_embed_type)));
    json_object_set_new(o, "in_channels", json_integer(c->in_channels));
    json_object_set_new(o, "sample_size", json_integer(c->sample_size));
    return o;
}

static loco_status add_sites(json_t *root, const loco_model_files *m, int all_sites, loco_err *err) {
    const json_t *cj = loco_model_files_config(m, "unet");
    if (!cj) return LOCO_OK;
    loco_unet_config cfg;
    loco_status st = loco_unet_config_from_json(cj, "unet/config.json", &cfg, err);
    if (st) return st;
    loco_site *sites = NULL;
    int n = 0;
    if ((st = loco_unet_config_sites(&cfg, &sites, &n, err))) return st;
    json_object_set_new(root, "unet_resolved", unet_summary(&cfg));
    json_t *cross = json_array(), *every = json_array();
    for (int i = 0; i < n; i++) {
        const loco_site *s = &sites[i];
        if (s->kind == LOCO_SITE_CROSS_ATTN) {
            json_t *e = json_object();
            json_object_set_new(e, "index", json_integer(s->cross_index));
            json_object_set_new(e, "name", json_string(s->name));
            json_array_append_new(cross, e);
        }
        if (all_sites) {
            json_t *e = json_object();
            json_object_set_new(e, "id", json_integer(s->id));
            json_object_set_new(e, "kind", json_string(loco_site_kind_name(s->kind)));
            json_object_set_new(e, "name", json_string(s->name));
            if (s->cross_index >= 0) json_object_set_new(e, "cross_index", json_integer(s->cross_index));
            json_array_append_new(every, e);
        }
    }
    json_object_set_new(root, "cross_attention_order", json_string("execution (down, mid, up)"));
    json_object_set_new(root, "cross_attention_sites", cross);
    if (all_sites)
        json_object_set_new(root, "sites", every);
    else
        json_decref(every);
    loco_unet_sites_free(sites, n);
    return LOCO_OK;
}

/* The text encoders whose sites interventions accept, and how plans prefix their names. */
static const struct {
    const char *component, *prefix;
} text_encoders[] = {{"text_encoder", ""}, {"text_encoder_2", LOCO_IV_TEXT2_PREFIX}};

static json_t *text_site_json(const loco_site *s, const char *prefix) {
    json_t *e = json_object();
    char name[256];
    snprintf(name, sizeof name, "%s%s", prefix, s->name);
    json_object_set_new(e, "id", json_integer(s->id));
    json_object_set_new(e, "kind", json_string(loco_site_kind_name(s->kind)));
    json_object_set_new(e, "name", json_string(name));
    if (s->layer >= 0) json_object_set_new(e, "layer", json_integer(s->layer));
    return e;
}

/* One encoder's site list (execution order), or *out NULL when the model has no such encoder. */
static loco_status text_sites_of(const loco_model_files *m, const char *component, const char *prefix, json_t **out,
                                 loco_err *err) {
    *out = NULL;
    const json_t *cj = loco_model_files_config(m, component);
    if (!cj) return LOCO_OK;
    char src[64];
    snprintf(src, sizeof src, "%s/config.json", component);
    loco_clip_text_config cfg;
    loco_site *sites = NULL;
    int n = 0;
    loco_status st = loco_clip_text_config_from_json(cj, src, &cfg, err);
    if (st) return st;
    if ((st = loco_clip_text_config_sites(&cfg, &sites, &n, err))) return loco_err_prefix(err, "%s", src);
    json_t *list = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(list, text_site_json(&sites[i], prefix));
    loco_clip_text_sites_free(sites, n);
    *out = list;
    return LOCO_OK;
}

/* "text_encoder_sites": {"text_encoder": [...], "text_encoder_2": [...]}, kept apart from the
 * UNet's lists because text sites act per text row and take token positions. */
static loco_status add_text_sites(json_t *root, const loco_model_files *m, loco_err *err) {
    json_t *group = json_object();
    for (size_t i = 0; i < sizeof text_encoders / sizeof text_encoders[0]; i++) {
        json_t *list = NULL;
        loco_status st = text_sites_of(m, text_encoders[i].component, text_encoders[i].prefix, &list, err);
        if (st) {
            json_decref(group);
            return st;
        }
        if (list) json_object_set_new(group, text_encoders[i].component, list);
    }
    if (json_object_size(group) > 0)
        json_object_set_new(root, "text_encoder_sites", group);
    else
        json_decref(group);
    return LOCO_OK;
}

int loco_cmd_inspect(int argc, char **argv) {
    static const struct option opts[] = {{"config-dir", required_argument, 0, 'C'}, {"variant", required_argument, 0, 'V'},
                                         {"family", required_argument, 0, 'F'},     {"all-sites", no_argument, 0, 'a'},
                                         {"help", no_argument, 0, 'h'},             {0}};
    loco_model_files_opts mo;
    loco_model_files_opts_init(&mo);
    int all_sites = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'C': mo.config_dir = optarg; break;
        case 'V': mo.variant = optarg; break;
        case 'F':
            if (loco_model_family_from_name(optarg, &mo.family) || mo.family == LOCO_FAMILY_UNKNOWN)
                return loco_cli_usage_error("inspect", "--family must be sd1, sd2 or sdxl, got '%s'", optarg);
            break;
        case 'a': all_sites = 1; break;
        case 'h': help(); return 0;
        default: return loco_cli_getopt_error("inspect", c, argv);
        }
    }
    if (optind != argc - 1) return loco_cli_usage_error("inspect", "give exactly one MODEL path");
    const char *path = argv[optind];

    loco_err err;
    loco_err_clear(&err);
    loco_model_files *m = NULL;
    if (loco_model_files_open(path, &mo, &m, &err)) return loco_cli_fail("inspect", &err);
    json_t *root = json_object();
    json_object_set_new(root, "path", json_string(path));
    json_object_set_new(root, "family", json_string(loco_model_family_name(loco_model_files_family(m))));
    json_object_set_new(root, "single_file", json_boolean(loco_model_files_is_single_file(m)));
    json_t *comps = json_object();
    for (size_t i = 0; i < sizeof components / sizeof components[0]; i++) {
        if (!loco_model_files_has(m, components[i])) continue;
        json_t *e = json_object();
        const char *cls = loco_model_files_class(m, components[i]);
        json_object_set_new(e, "class", cls ? json_string(cls) : json_null());
        const json_t *cfg = loco_model_files_config(m, components[i]);
        if (cfg) json_object_set(e, "config", (json_t *)cfg);
        const char *tok = strncmp(components[i], "tokenizer", 9) == 0 ? loco_model_files_tokenizer_dir(m, components[i]) : NULL;
        if (tok) json_object_set_new(e, "folder", json_string(tok));
        json_object_set_new(comps, components[i], e);
    }
    json_object_set_new(root, "components", comps);
    int rc = 0;
    if (add_sites(root, m, all_sites, &err) || add_text_sites(root, m, &err)) {
        rc = loco_cli_fail("inspect", &err);
    } else {
        char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (s) {
            puts(s);
            free(s);
            rc = loco_cli_finish_stdout("inspect");
        } else {
            loco_err_set(&err, LOCO_ENOMEM, "out of memory serialising the result");
            rc = loco_cli_fail("inspect", &err);
        }
    }
    json_decref(root);
    loco_model_files_close(m);
    return rc;
}
