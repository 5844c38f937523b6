/* base.c: status names, error values and dtype conversions. */
#include "base.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const status_names[LOCO_ESTATUS_COUNT] = {
    [LOCO_OK] = "ok",
    [LOCO_EINVAL] = "invalid_argument",
    [LOCO_EIO] = "io_error",
    [LOCO_EFORMAT] = "bad_format",
    [LOCO_ENOTFOUND] = "not_found",
    [LOCO_EUNSUPPORTED] = "unsupported",
    [LOCO_ENOMEM] = "out_of_memory",
    [LOCO_EDEVICE] = "device_error",
    [LOCO_EDEVICE_OOM] = "gpu_oom",
    [LOCO_ECANCELLED] = "cancelled",
};

const char *loco_status_name(loco_status s) {
    return (unsigned)s < LOCO_ESTATUS_COUNT ? status_names[s] : "unknown";
}

int loco_status_from_name(const char *name, loco_status *out) {
    for (int i = 0; i < LOCO_ESTATUS_COUNT; i++)
        if (name && strcmp(name, status_names[i]) == 0) {
            *out = (loco_status)i;
            return 0;
        }
    return -1;
}

loco_status loco_err_set(loco_err *err, loco_status code, const char *fmt, ...) {
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

loco_status loco_err_prefix(loco_err *err, const char *fmt, ...) {
    if (!err) return LOCO_OK;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%.400s: %.600s", prefix, old);
    return err->code;
}

void loco_err_clear(loco_err *err) {
    if (err) {
        err->code = LOCO_OK;
        err->msg[0] = 0;
    }
}

/* ---- dtypes ------------------------------------------------------------------------------ */

static const struct {
    const char *name;
    size_t size;
    int is_float;
} dtype_info[LOCO_DTYPE_COUNT] = {
    [LOCO_F32] = {"F32", 4, 1},      [LOCO_F16] = {"F16", 2, 1},         [LOCO_BF16] = {"BF16", 2, 1},
    [LOCO_F64] = {"F64", 8, 1},      [LOCO_I64] = {"I64", 8, 0},         [LOCO_I32] = {"I32", 4, 0},
    [LOCO_I16] = {"I16", 2, 0},      [LOCO_I8] = {"I8", 1, 0},           [LOCO_U8] = {"U8", 1, 0},
    [LOCO_U16] = {"U16", 2, 0},      [LOCO_U32] = {"U32", 4, 0},         [LOCO_U64] = {"U64", 8, 0},
    [LOCO_BOOL] = {"BOOL", 1, 0},    [LOCO_F8_E4M3] = {"F8_E4M3", 1, 1}, [LOCO_F8_E5M2] = {"F8_E5M2", 1, 1},
};

const char *loco_dtype_name(loco_dtype t) { return (unsigned)t < LOCO_DTYPE_COUNT ? dtype_info[t].name : "?"; }

int loco_dtype_from_name(const char *name, loco_dtype *out) {
    for (int i = 0; i < LOCO_DTYPE_COUNT; i++)
        if (name && strcmp(name, dtype_info[i].name) == 0) {
            *out = (loco_dtype)i;
            return 0;
        }
    return -1;
}

size_t loco_dtype_size(loco_dtype t) { return (unsigned)t < LOCO_DTYPE_COUNT ? dtype_info[t].size : 0; }
int loco_dtype_is_float(loco_dtype t) { return (unsigned)t < LOCO_DTYPE_COUNT && dtype_info[t].is_float; }

float loco_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t loco_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        float a;
        memcpy(&a, &absx, 4);
        /* scale so that the half subnormal unit (2^-24) becomes 1, then round to nearest even */
        float scaled = a * 16777216.0f;
        uint32_t m = (uint32_t)nearbyintf(scaled);
        return (uint16_t)(sign | m);
    }
    uint32_t exp = ((absx >> 23) - 127 + 15);
    uint32_t man = absx & 0x7fffff;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

float loco_bf16_to_f32(uint16_t b) {
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t loco_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet nan */
    uint32_t lsb = (x >> 16) & 1;
    x += 0x7fff + lsb;
    return (uint16_t)(x >> 16);
}

loco_status loco_convert_to_f32(float *dst, const void *src, loco_dtype t, size_t n) {
    switch (t) {
    case LOCO_F32:
        memmove(dst, src, n * 4);
        return LOCO_OK;
    case LOCO_F16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = loco_f16_to_f32(s[i]);
        return LOCO_OK;
    }
    case LOCO_BF16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = loco_bf16_to_f32(s[i]);
        return LOCO_OK;
    }
    case LOCO_F64: {
        const double *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
        return LOCO_OK;
    }
    default:
        return LOCO_EUNSUPPORTED;
    }
}

loco_status loco_convert_from_f32(void *dst, loco_dtype t, const float *src, size_t n) {
    switch (t) {
    case LOCO_F32:
        memmove(dst, src, n * 4);
        return LOCO_OK;
    case LOCO_F16: {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = loco_f32_to_f16(src[i]);
        return LOCO_OK;
    }
    case LOCO_BF16: {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = loco_f32_to_bf16(src[i]);
        return LOCO_OK;
    }
    case LOCO_F64: {
        double *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = src[i];
        return LOCO_OK;
    }
    default:
        return LOCO_EUNSUPPORTED;
    }
}
