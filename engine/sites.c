/* sites.c: names of site kinds (the strings intervention plans and the API use). */
#include "sites.h"

#include <string.h>

static const char *const kind_names[LOCO_SITE_KIND_COUNT] = {
    [LOCO_SITE_RESNET] = "resnet",
    [LOCO_SITE_SELF_ATTN] = "self_attn",
    [LOCO_SITE_CROSS_ATTN] = "cross_attn",
    [LOCO_SITE_FF] = "ff",
    [LOCO_SITE_CROSS_K] = "cross_k",
    [LOCO_SITE_CROSS_V] = "cross_v",
    [LOCO_SITE_TEXT_EMBED] = "text_embed",
    [LOCO_SITE_TEXT_SELF_ATTN] = "text_self_attn",
    [LOCO_SITE_TEXT_MLP] = "text_mlp",
    [LOCO_SITE_TEXT_OUT_PROJ_IN] = "text_out_proj_in",
};

const char *loco_site_kind_name(loco_site_kind k) {
    return (unsigned)k < LOCO_SITE_KIND_COUNT ? kind_names[k] : "unknown";
}

int loco_site_kind_from_name(const char *name, loco_site_kind *out) {
    for (int i = 0; name && i < LOCO_SITE_KIND_COUNT; i++)
        if (strcmp(name, kind_names[i]) == 0) {
            *out = (loco_site_kind)i;
            return 0;
        }
    return -1;
}
