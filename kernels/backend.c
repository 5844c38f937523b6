/* backend.c: the backend-independent half of backend.h: options, construction with the
 * AUTO fallback, device/activation names, and tensor bookkeeping (alloc, views, transfers,
 * memory accounting). Op validation and dispatch live in backend_ops.c and backend_ops_linear.c. */
#include "backend_impl.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* ---- names ------------------------------------------------------------------------------- */

static const char *const device_names[LOCO_DEVICE_COUNT] = {
    [LOCO_DEVICE_CPU] = "cpu",
    [LOCO_DEVICE_CUDA] = "cuda",
    [LOCO_DEVICE_AUTO] = "auto",
};

const char *loco_device_name(loco_device d) {
    return (unsigned)d < LOCO_DEVICE_COUNT ? device_names[d] : "unknown";
}

int loco_device_from_name(const char *name, loco_device *out) {
    if (!name || !out) return -1;
    for (int i = 0; i < LOCO_DEVICE_COUNT; i++)
        if (strcasecmp(name, device_names[i]) == 0) {
            *out = (loco_device)i;
            return 0;
        }
    /* "gpu" is what people type in config files; there is only one kind of GPU backend. */
    if (strcasecmp(name, "gpu") == 0) {
        *out = LOCO_DEVICE_CUDA;
        return 0;
    }
    return -1;
}

static const char *const act_names[LOCO_ACT_COUNT] = {
    [LOCO_ACT_NONE] = "none",
    [LOCO_ACT_SILU] = "silu",
    [LOCO_ACT_GELU] = "gelu",
    [LOCO_ACT_GELU_TANH] = "gelu_tanh",
    [LOCO_ACT_QUICK_GELU] = "quick_gelu",
};

const char *loco_act_name(loco_act a) { return (unsigned)a < LOCO_ACT_COUNT ? act_names[a] : "unknown"; }

int loco_act_from_name(const char *name, loco_act *out) {
    if (!name || !out) return -1;
    for (int i = 0; i < LOCO_ACT_COUNT; i++)
        if (strcasecmp(name, act_names[i]) == 0) {
            *out = (loco_act)i;
            return 0;
        }
    /* The spellings of transformers' ACT2FN / diffusers' get_activation that config.json
     * files carry ("hidden_act", "act_fn", "feed_forward_proj"). gelu_fast is the same
     * tanh formula as gelu_new, only factored differently. */
    static const struct {
        const char *name;
        loco_act act;
    } aliases[] = {
        {"swish", LOCO_ACT_SILU},          {"gelu_new", LOCO_ACT_GELU_TANH},
        {"gelu_pytorch_tanh", LOCO_ACT_GELU_TANH}, {"gelu_fast", LOCO_ACT_GELU_TANH},
        {"linear", LOCO_ACT_NONE},         {"identity", LOCO_ACT_NONE},
    };
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcasecmp(name, aliases[i].name) == 0) {
            *out = aliases[i].act;
            return 0;
        }
    return -1;
}

/* ---- construction ------------------------------------------------------------------------- */

void loco_backend_opts_init(loco_backend_opts *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->device = LOCO_DEVICE_AUTO;
    o->num_threads = 0;
    o->cuda_device = 0;
    o->act_dtype = LOCO_F16;
}

loco_status loco_backend_create(const loco_backend_opts *opts, loco_backend **out, loco_err *err) {
    if (!out) return loco_err_set(err, LOCO_EINVAL, "backend_create: out is NULL");
    *out = NULL;
    loco_backend_opts o;
    if (opts)
        o = *opts;
    else
        loco_backend_opts_init(&o);
    if ((unsigned)o.device >= LOCO_DEVICE_COUNT)
        return loco_err_set(err, LOCO_EINVAL, "backend_create: unknown device %d (expected cpu, cuda or auto)",
                            (int)o.device);
    if (o.num_threads < 0)
        return loco_err_set(err, LOCO_EINVAL, "backend_create: num_threads must be >= 0 (0 = all cores), got %d",
                            o.num_threads);
    if (o.cuda_device < 0)
        return loco_err_set(err, LOCO_EINVAL, "backend_create: cuda_device must be >= 0, got %d", o.cuda_device);
    if (o.act_dtype != LOCO_F16 && o.act_dtype != LOCO_BF16 && o.act_dtype != LOCO_F32)
        return loco_err_set(err, LOCO_EINVAL, "backend_create: act_dtype must be F16, BF16 or F32, got %s",
                            loco_dtype_name(o.act_dtype));

    switch (o.device) {
    case LOCO_DEVICE_CPU:
        return loco_backend_cpu_create(&o, out, err);
    case LOCO_DEVICE_CUDA: {
        loco_status st = loco_backend_cuda_create(&o, out, err);
        if (st != LOCO_OK) {
            *out = NULL;
            loco_err_prefix(err, "backend_create: device cuda was requested but is unavailable");
        }
        return st;
    }
    default: {
        loco_err cuda_err;
        loco_err_clear(&cuda_err);
        if (loco_backend_cuda_create(&o, out, &cuda_err) == LOCO_OK) return LOCO_OK;
        *out = NULL;
        loco_status st = loco_backend_cpu_create(&o, out, err);
        if (st != LOCO_OK) return st;
        /* Keep the reason in the description: whoever reads the daemon's start-up line should
         * learn why a GPU box runs on the CPU without digging for it. */
        loco_backend *be = *out;
        char note[sizeof be->desc];
        snprintf(note, sizeof note, "; cuda not used: %.200s",
                 cuda_err.msg[0] ? cuda_err.msg : loco_status_name(cuda_err.code));
        size_t used = strlen(be->desc), room = sizeof be->desc - 1 - used, len = strlen(note);
        memcpy(be->desc + used, note, len < room ? len : room);
        be->desc[used + (len < room ? len : room)] = 0;
        return LOCO_OK;
    }
    }
}

void loco_backend_destroy(loco_backend *be) {
    if (!be) return;
    loco_backend_reclaimers_free(be);
    if (be->ops && be->ops->destroy) be->ops->destroy(be);
}

loco_device loco_backend_device(const loco_backend *be) { return be ? be->device : LOCO_DEVICE_CPU; }

const char *loco_backend_describe(const loco_backend *be) { return be ? be->desc : "(no backend)"; }

loco_dtype loco_backend_act_dtype(const loco_backend *be) { return be ? be->act_dtype : LOCO_F32; }

loco_status loco_backend_selftest(loco_backend *be, char *report, size_t n, loco_err *err) {
    if (!be) return loco_err_set(err, LOCO_EINVAL, "backend_selftest: backend is NULL");
    if (!report || n == 0) return loco_err_set(err, LOCO_EINVAL, "backend_selftest: no room for the report");
    report[0] = 0;
    if (!be->ops->selftest) {
        snprintf(report, n, "%s: no self-tests\n", loco_device_name(be->device));
        return LOCO_OK;
    }
    return be->ops->selftest(be, report, n, err);
}

loco_status loco_backend_sync(loco_backend *be, loco_err *err) {
    if (!be) return loco_err_set(err, LOCO_EINVAL, "backend_sync: backend is NULL");
    return be->ops->sync(be, err);
}

void loco_backend_memory(const loco_backend *be, size_t *current, size_t *peak) {
    if (current) *current = be ? __atomic_load_n(&be->mem_current, __ATOMIC_RELAXED) : 0;
    if (peak) *peak = be ? __atomic_load_n(&be->mem_peak, __ATOMIC_RELAXED) : 0;
}

/* ---- tensors ------------------------------------------------------------------------------- */

int64_t loco_tensor_numel(const loco_tensor *t) {
    if (!t) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t loco_tensor_nbytes(const loco_tensor *t) {
    return t ? (size_t)loco_tensor_numel(t) * loco_dtype_size(t->dtype) : 0;
}

const char *loco_tensor_shape_str(const loco_tensor *t, char *buf, size_t n) {
    if (!buf || n == 0) return "";
    if (!t) {
        snprintf(buf, n, "(null)");
        return buf;
    }
    size_t used = 0;
    int w = snprintf(buf, n, "[");
    used = w > 0 ? (size_t)w : 0;
    for (int i = 0; i < t->ndim && i < LOCO_MAX_DIMS && used < n; i++) {
        w = snprintf(buf + used, n - used, i ? ", %lld" : "%lld", (long long)t->shape[i]);
        if (w > 0) used += (size_t)w;
    }
    if (used < n) snprintf(buf + used, n - used, "] %s", loco_dtype_name(t->dtype));
    return buf;
}

int loco_tensor_same_shape(const loco_tensor *a, const loco_tensor *b) {
    if (!a || !b || a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

/* Live tensor bytes and their peak. Atomic, because tensors may be freed on another thread
 * than the one that runs the ops (the CPU allocator itself is thread-safe). */
static void account(loco_backend *be, size_t bytes, int add) {
    if (!add) {
        __atomic_fetch_sub(&be->mem_current, bytes, __ATOMIC_RELAXED);
        return;
    }
    size_t now = __atomic_add_fetch(&be->mem_current, bytes, __ATOMIC_RELAXED);
    size_t peak = __atomic_load_n(&be->mem_peak, __ATOMIC_RELAXED);
    while (now > peak &&
           !__atomic_compare_exchange_n(&be->mem_peak, &peak, now, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

/* Validates a shape and its element count; the limit keeps byte counts far from overflow. */
static loco_status check_shape(const char *op, int ndim, const int64_t *shape, int64_t *numel, loco_err *err) {
    if (ndim < 0 || ndim > LOCO_MAX_DIMS)
        return loco_err_set(err, LOCO_EINVAL, "%s: ndim must be 0..%d, got %d", op, LOCO_MAX_DIMS, ndim);
    if (ndim > 0 && !shape) return loco_err_set(err, LOCO_EINVAL, "%s: shape is NULL", op);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return loco_err_set(err, LOCO_EINVAL, "%s: dimension %d is negative (%lld)", op, i,
                                (long long)shape[i]);
        if (shape[i] > 0 && n > ((int64_t)1 << 52) / shape[i])
            return loco_err_set(err, LOCO_EINVAL, "%s: shape has too many elements", op);
        n *= shape[i];
    }
    *numel = n;
    return LOCO_OK;
}

loco_status loco_tensor_alloc(loco_backend *be, loco_dtype dtype, int ndim, const int64_t *shape, loco_tensor *out,
                              loco_err *err) {
    if (!out) return loco_err_set(err, LOCO_EINVAL, "tensor_alloc: out is NULL");
    memset(out, 0, sizeof *out);
    if (!be) return loco_err_set(err, LOCO_EINVAL, "tensor_alloc: backend is NULL");
    if ((unsigned)dtype >= LOCO_DTYPE_COUNT)
        return loco_err_set(err, LOCO_EINVAL, "tensor_alloc: unknown dtype %d", (int)dtype);
    int64_t numel;
    loco_status st = check_shape("tensor_alloc", ndim, shape, &numel, err);
    if (st != LOCO_OK) return st;
    size_t bytes = (size_t)numel * loco_dtype_size(dtype);
    void *data = NULL;
    if (bytes > 0) {
        st = be->ops->alloc(be, bytes, &data, err);
        if (st != LOCO_OK) {
            loco_err_prefix(err, "tensor_alloc of %zu bytes", bytes);
            return st; /* not prefix's result: it is LOCO_OK when err is NULL */
        }
        account(be, bytes, 1);
    }
    out->dtype = dtype;
    out->ndim = ndim;
    for (int i = 0; i < ndim; i++) out->shape[i] = shape[i];
    out->data = data;
    out->be = be;
    out->owns = 1;
    return LOCO_OK;
}

loco_status loco_tensor_alloc_act(loco_backend *be, int ndim, const int64_t *shape, loco_tensor *out,
                                  loco_err *err) {
    if (!be) {
        if (out) memset(out, 0, sizeof *out);
        return loco_err_set(err, LOCO_EINVAL, "tensor_alloc: backend is NULL");
    }
    return loco_tensor_alloc(be, be->act_dtype, ndim, shape, out, err);
}

void loco_tensor_free(loco_tensor *t) {
    if (!t) return;
    if (t->owns && t->data && t->be) {
        size_t bytes = loco_tensor_nbytes(t);
        t->be->ops->release(t->be, t->data, bytes);
        account(t->be, bytes, 0);
    }
    memset(t, 0, sizeof *t);
}

loco_status loco_tensor_view(const loco_tensor *src, int64_t offset, int ndim, const int64_t *shape,
                             loco_tensor *out, loco_err *err) {
    if (!src || !out) return loco_err_set(err, LOCO_EINVAL, "tensor_view: %s is NULL", src ? "out" : "src");
    int64_t numel;
    loco_status st = check_shape("tensor_view", ndim, shape, &numel, err);
    if (st != LOCO_OK) return st;
    int64_t src_numel = loco_tensor_numel(src);
    if (offset < 0 || offset > src_numel || numel > src_numel - offset) {
        char a[128];
        return loco_err_set(err, LOCO_EINVAL,
                            "tensor_view: %lld elements at offset %lld do not fit in src %s (%lld elements)",
                            (long long)numel, (long long)offset, loco_tensor_shape_str(src, a, sizeof a),
                            (long long)src_numel);
    }
    loco_tensor v;
    memset(&v, 0, sizeof v);
    v.dtype = src->dtype;
    v.ndim = ndim;
    for (int i = 0; i < ndim; i++) v.shape[i] = shape[i];
    v.data = src->data ? (char *)src->data + (size_t)offset * loco_dtype_size(src->dtype) : NULL;
    v.be = src->be;
    v.owns = 0;
    *out = v; /* assigned last so that out may be src itself */
    return LOCO_OK;
}

loco_status loco_tensor_slice0(const loco_tensor *src, int64_t start, int64_t count, loco_tensor *out,
                               loco_err *err) {
    if (!src || !out) return loco_err_set(err, LOCO_EINVAL, "tensor_slice0: %s is NULL", src ? "out" : "src");
    if (src->ndim < 1) return loco_err_set(err, LOCO_EINVAL, "tensor_slice0: src is a scalar (ndim 0)");
    if (start < 0 || count < 0 || start > src->shape[0] || count > src->shape[0] - start) {
        char a[128];
        return loco_err_set(err, LOCO_EINVAL, "tensor_slice0: rows [%lld, %lld) are outside src %s",
                            (long long)start, (long long)(start + count), loco_tensor_shape_str(src, a, sizeof a));
    }
    int64_t shape[LOCO_MAX_DIMS];
    int64_t row = 1;
    for (int i = 0; i < src->ndim; i++) shape[i] = src->shape[i];
    for (int i = 1; i < src->ndim; i++) row *= src->shape[i];
    shape[0] = count;
    return loco_tensor_view(src, start * row, src->ndim, shape, out, err);
}

/* A tensor argument of a transfer: present, owned by a backend and holding data. */
static loco_status check_transfer_tensor(const char *op, const loco_tensor *t, loco_err *err) {
    if (!t) return loco_err_set(err, LOCO_EINVAL, "%s: tensor is NULL", op);
    if (!t->be) return loco_err_set(err, LOCO_EINVAL, "%s: tensor has no backend (never allocated?)", op);
    if (!t->data && loco_tensor_numel(t) > 0)
        return loco_err_set(err, LOCO_EINVAL, "%s: tensor has no data (freed or never allocated)", op);
    return LOCO_OK;
}

static int is_storage_float(loco_dtype t) {
    return t == LOCO_F32 || t == LOCO_F16 || t == LOCO_BF16 || t == LOCO_F64;
}

loco_status loco_tensor_upload(loco_tensor *dst, const void *src, loco_dtype src_dtype, loco_err *err) {
    loco_status st = check_transfer_tensor("tensor_upload", dst, err);
    if (st != LOCO_OK) return st;
    size_t n = (size_t)loco_tensor_numel(dst);
    if (n == 0) return LOCO_OK;
    if (!src) return loco_err_set(err, LOCO_EINVAL, "tensor_upload: src is NULL");
    /* Float-to-float converts; any dtype may be copied verbatim into a tensor of the same
     * dtype (integer tables, masks). */
    if (src_dtype != dst->dtype && !(is_storage_float(src_dtype) && is_storage_float(dst->dtype))) {
        char a[128];
        return loco_err_set(err, LOCO_EINVAL,
                            "tensor_upload: cannot convert %s data into tensor %s (only F32/F16/BF16/F64 convert)",
                            loco_dtype_name(src_dtype), loco_tensor_shape_str(dst, a, sizeof a));
    }
    return dst->be->ops->upload(dst->be, dst->data, dst->dtype, src, src_dtype, n, err);
}

loco_status loco_tensor_download_f32(const loco_tensor *src, float *dst, loco_err *err) {
    loco_status st = check_transfer_tensor("tensor_download_f32", src, err);
    if (st != LOCO_OK) return st;
    size_t n = (size_t)loco_tensor_numel(src);
    if (n == 0) return LOCO_OK;
    if (!dst) return loco_err_set(err, LOCO_EINVAL, "tensor_download_f32: dst is NULL");
    if (!is_storage_float(src->dtype)) {
        char a[128];
        return loco_err_set(err, LOCO_EINVAL, "tensor_download_f32: tensor %s is not a float tensor",
                            loco_tensor_shape_str(src, a, sizeof a));
    }
    return src->be->ops->download_f32(src->be, dst, src->data, src->dtype, n, err);
}

loco_status loco_tensor_download_u8_images(const loco_tensor *x, uint8_t *dst, int64_t *nan_at, loco_err *err) {
    int64_t nan_local;
    if (!nan_at) nan_at = &nan_local;
    *nan_at = -1;
    loco_status st = check_transfer_tensor("tensor_download_u8_images", x, err);
    if (st != LOCO_OK) return st;
    char a[128];
    if (x->ndim != 4 || !is_storage_float(x->dtype))
        return loco_err_set(err, LOCO_EINVAL, "tensor_download_u8_images: expected a float tensor [N, C, H, W], got %s %s",
                            loco_dtype_name(x->dtype), loco_tensor_shape_str(x, a, sizeof a));
    if (loco_tensor_numel(x) == 0) return LOCO_OK;
    if (!dst) return loco_err_set(err, LOCO_EINVAL, "tensor_download_u8_images: dst is NULL");
    if (!x->be->ops->download_u8_images)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "tensor_download_u8_images: not implemented by this backend");
    return x->be->ops->download_u8_images(x->be, dst, x->data, x->dtype, x->shape[0], x->shape[1],
                                          x->shape[2] * x->shape[3], nan_at, err);
}
