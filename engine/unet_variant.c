/* unet_variant.c: UNet variants that share their base's tensors (see unet.h).
 *
 * A variant is a deep copy of the base's holder structures (blocks, transformers, transformer
 * blocks, the site and cross-attention tables) in which every loaded tensor is a view of the
 * base's data. The parameter table's pointers are moved from the base's holders to the copy's
 * by their offset inside the allocation that holds them, so the copy needs no knowledge of the
 * holder fields: a field added to unet_impl.h is carried along as long as it lives in one of
 * the allocations mapped below.
 *
 * Ownership follows loco_tensor.owns: views (owns 0) are never freed by the variant; a tensor
 * that set_param replaced is owned by the variant and freed with it (loco_params_free). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "unet_impl.h"

/* One allocation of the base and its twin in the variant. */
typedef struct region {
    const char *base;
    char *copy;
    size_t size;
} region;

typedef struct region_map {
    region *r;
    int n, cap;
} region_map;

static int map_add(region_map *m, const void *base, void *copy, size_t size) {
    if (!size) return 0;
    if (m->n == m->cap) {
        int cap = m->cap ? 2 * m->cap : 64;
        region *r = realloc(m->r, (size_t)cap * sizeof *r);
        if (!r) return -1;
        m->r = r;
        m->cap = cap;
    }
    m->r[m->n++] = (region){base, copy, size};
    return 0;
}

/* The variant's address of a pointer into the base's holders, or NULL. */
static void *map_ptr(const region_map *m, const void *p) {
    const char *c = p;
    for (int i = 0; i < m->n; i++)
        if (c >= m->r[i].base && c < m->r[i].base + m->r[i].size) return m->r[i].copy + (c - m->r[i].base);
    return NULL;
}

static void *dup_array(const void *src, size_t n, size_t elem) {
    if (!src || !n) return NULL;
    void *p = malloc(n * elem);
    if (p) memcpy(p, src, n * elem);
    return p;
}

/* Copy one block's arrays (the struct itself is copied with the UNet or by value). */
static int copy_block(region_map *m, const unet_block *b, unet_block *c) {
    c->resnets = NULL;
    c->resnet_site = NULL;
    c->attns = NULL;
    if (b->n_resnets) {
        c->resnets = dup_array(b->resnets, (size_t)b->n_resnets, sizeof *b->resnets);
        c->resnet_site = dup_array(b->resnet_site, (size_t)b->n_resnets, sizeof *b->resnet_site);
        if (!c->resnets || !c->resnet_site) return -1;
        if (map_add(m, b->resnets, c->resnets, (size_t)b->n_resnets * sizeof *b->resnets)) return -1;
    }
    c->n_attn = 0;
    if (b->n_attn) {
        /* zeroed first so a failure part-way leaves only NULL block arrays to free */
        c->attns = calloc((size_t)b->n_attn, sizeof *c->attns);
        if (!c->attns) return -1;
        c->n_attn = b->n_attn;
        for (int j = 0; j < b->n_attn; j++) {
            unet_transformer t = b->attns[j];
            t.blocks = dup_array(b->attns[j].blocks, (size_t)t.n_blocks, sizeof *t.blocks);
            if (t.n_blocks && !t.blocks) return -1;
            c->attns[j] = t;
            if (map_add(m, b->attns[j].blocks, t.blocks, (size_t)t.n_blocks * sizeof *t.blocks)) return -1;
        }
        if (map_add(m, b->attns, c->attns, (size_t)b->n_attn * sizeof *b->attns)) return -1;
    }
    return 0;
}

/* A variant is freed with loco_unet_free: views are skipped by loco_tensor_free, so it releases
 * exactly the tensors the variant replaced. */
loco_status loco_unet_variant(loco_unet *base, loco_unet **out, loco_err *err) {
    *out = NULL;
    if (!base) return loco_err_set(err, LOCO_EINVAL, "unet variant: no base UNet");
    loco_unet *v = malloc(sizeof *v);
    if (!v) return loco_err_set(err, LOCO_ENOMEM, "unet variant: out of memory");
    *v = *base;
    /* clear every pointer the copy does not own yet, so loco_unet_free is safe at any failure */
    memset(&v->params, 0, sizeof v->params);
    v->sites = NULL;
    v->n_sites = v->cap_sites = 0;
    v->cross = NULL;
    v->n_cross = v->cap_cross = 0;
    v->frozen = 0;
    v->graphs = NULL; /* recorded graphs are the base's; a variant records its own */
    for (int i = 0; i < LOCO_UNET_MAX_BLOCKS; i++) {
        v->down[i].resnets = v->up[i].resnets = NULL;
        v->down[i].resnet_site = v->up[i].resnet_site = NULL;
        v->down[i].attns = v->up[i].attns = NULL;
        v->down[i].n_attn = v->up[i].n_attn = 0;
    }
    v->mid.resnets = NULL;
    v->mid.resnet_site = NULL;
    v->mid.attns = NULL;
    v->mid.n_attn = 0;

    region_map m = {0};
    loco_status st = LOCO_OK;
    if (map_add(&m, base, v, sizeof *base)) goto oom;
    for (int i = 0; i < LOCO_UNET_MAX_BLOCKS; i++) {
        if (copy_block(&m, &base->down[i], &v->down[i])) goto oom;
        if (copy_block(&m, &base->up[i], &v->up[i])) goto oom;
    }
    if (copy_block(&m, &base->mid, &v->mid)) goto oom;

    /* sites: same table, own name strings (loco_unet_free frees them) */
    if (base->n_sites) {
        v->sites = calloc((size_t)base->n_sites, sizeof *v->sites);
        if (!v->sites) goto oom;
        v->cap_sites = base->n_sites;
        for (int i = 0; i < base->n_sites; i++) {
            v->sites[i] = base->sites[i];
            v->sites[i].name = strdup(base->sites[i].name);
            if (!v->sites[i].name) goto oom;
            v->n_sites = i + 1;
        }
    }
    if (base->n_cross) {
        v->cross = calloc((size_t)base->n_cross, sizeof *v->cross);
        if (!v->cross) goto oom;
        v->cap_cross = base->n_cross;
        for (int i = 0; i < base->n_cross; i++) {
            v->cross[i] = map_ptr(&m, base->cross[i]);
            if (!v->cross[i]) {
                st = loco_err_set(err, LOCO_EINVAL, "unet variant: cross-attention layer %d is outside the UNet's holders", i);
                goto fail;
            }
        }
        v->n_cross = base->n_cross;
    }
    /* parameters: the same names, pointing at the copy's holders, as views */
    if (base->params.n) {
        v->params.items = calloc(base->params.n, sizeof *v->params.items);
        if (!v->params.items) goto oom;
        v->params.cap = base->params.n;
        for (size_t i = 0; i < base->params.n; i++) {
            loco_tensor *t = map_ptr(&m, base->params.items[i].t);
            if (!t) {
                st = loco_err_set(err, LOCO_EINVAL, "unet variant: parameter '%s' lives outside the UNet's holders",
                                  base->params.items[i].name);
                goto fail;
            }
            char *name = strdup(base->params.items[i].name);
            if (!name) goto oom;
            t->owns = 0;
            v->params.items[i].name = name;
            v->params.items[i].t = t;
            v->params.n = i + 1;
        }
    }
    base->frozen = 1;
    free(m.r);
    *out = v;
    return LOCO_OK;
oom:
    st = loco_err_set(err, LOCO_ENOMEM, "unet variant: out of memory");
fail:
    /* Safe: tensors are freed only through the parameter table, whose entries are all views
     * by now; holder copies not yet listed are never freed. */
    free(m.r);
    loco_unet_free(v);
    return st;
}

static loco_param *find_param(const loco_unet *u, const char *name) {
    for (size_t i = 0; name && i < u->params.n; i++)
        if (strcmp(u->params.items[i].name, name) == 0) return &u->params.items[i];
    return NULL;
}

int loco_unet_param_is_owned(const loco_unet *u, const char *name) {
    const loco_param *p = find_param(u, name);
    return p && p->t->owns;
}

loco_status loco_unet_set_param(loco_unet *u, const char *name, const void *data, loco_dtype src_dtype,
                                loco_err *err) {
    loco_param *p = find_param(u, name);
    if (!p) return loco_err_set(err, LOCO_ENOTFOUND, "unet: no parameter named '%s'", name ? name : "(null)");
    if (!data) return loco_err_set(err, LOCO_EINVAL, "unet: no data given for '%s'", name);
    loco_tensor *t = p->t;
    if (t->owns) {
        if (u->frozen)
            return loco_err_set(err, LOCO_EINVAL,
                                "unet: '%s' is shared with a variant made from this UNet; edit a variant instead", name);
        loco_status st = loco_tensor_upload(t, data, src_dtype, err);
        return st ? loco_err_prefix(err, "unet: replacing '%s'", name) : LOCO_OK;
    }
    /* shared with the base: this UNet gets its own copy; the base's tensor is untouched */
    loco_tensor nt;
    loco_status st = loco_tensor_alloc(u->be, t->dtype, t->ndim, t->shape, &nt, err);
    if (!st) st = loco_tensor_upload(&nt, data, src_dtype, err);
    if (st) {
        loco_tensor_free(&nt);
        return loco_err_prefix(err, "unet: replacing '%s'", name);
    }
    *t = nt;
    return LOCO_OK;
}

loco_status loco_unet_adopt_param(loco_unet *u, const char *name, loco_tensor *t, loco_err *err) {
    loco_param *p = find_param(u, name);
    if (!p) return loco_err_set(err, LOCO_ENOTFOUND, "unet: no parameter named '%s'", name ? name : "(null)");
    loco_tensor *cur = p->t;
    if (!t || !t->owns || t->be != u->be || t->dtype != cur->dtype || !loco_tensor_same_shape(t, cur))
        return loco_err_set(err, LOCO_EINVAL,
                            "unet: the tensor for '%s' must be owned, on the UNet's backend, with its shape and dtype",
                            name);
    if (cur->owns && u->frozen)
        return loco_err_set(err, LOCO_EINVAL,
                            "unet: '%s' is shared with a variant made from this UNet; edit a variant instead", name);
    loco_tensor_free(cur); /* a view (shared with the base) frees nothing */
    *cur = *t;
    memset(t, 0, sizeof *t);
    return LOCO_OK;
}
