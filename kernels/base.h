/* base.h: the lowest layer of loco. Status codes, error values and dtypes shared by
 * kernels/, engine/, proto/ and server/. Nothing here allocates or prints. */
#ifndef LOCO_BASE_H
#define LOCO_BASE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ---------------------------------------------------------------------- */

typedef enum loco_status {
    LOCO_OK = 0,
    LOCO_EINVAL,       /* a caller passed something invalid (bad option, shape, index) */
    LOCO_EIO,          /* a file could not be opened, read or written */
    LOCO_EFORMAT,      /* a file or message is malformed (corrupt header, bad JSON) */
    LOCO_ENOTFOUND,    /* a named thing (file, tensor, model, site) does not exist */
    LOCO_EUNSUPPORTED, /* valid but not implemented (dtype, architecture, option) */
    LOCO_ENOMEM,       /* host allocation failed */
    LOCO_EDEVICE,      /* the accelerator failed (no device, driver error, kernel fault) */
    LOCO_EDEVICE_OOM,  /* the accelerator ran out of memory */
    LOCO_ECANCELLED,   /* the caller asked to stop */
    LOCO_ESTATUS_COUNT
} loco_status;

const char *loco_status_name(loco_status s);              /* "ok", "invalid_argument", ... */
int loco_status_from_name(const char *name, loco_status *out); /* 0 on success, -1 unknown */

/* An error value: a code and one line a person can act on ("unet/config.json: key
 * 'block_out_channels' must be a list of positive integers"). Functions that can fail take
 * a `loco_err *` as their last argument (NULL is allowed: the message is dropped) and return
 * the same code they store. */
typedef struct loco_err {
    loco_status code;
    char msg[1024];
} loco_err;

/* Fill `err` (when not NULL) and return `code`. printf-style message. */
loco_status loco_err_set(loco_err *err, loco_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefix an existing message with context: "loading unet: <old message>". Returns err->code. */
loco_status loco_err_prefix(loco_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void loco_err_clear(loco_err *err);

/* ---- dtypes ------------------------------------------------------------------------------ */

typedef enum loco_dtype {
    LOCO_F32 = 0,
    LOCO_F16,
    LOCO_BF16,
    LOCO_F64,
    LOCO_I64,
    LOCO_I32,
    LOCO_I16,
    LOCO_I8,
    LOCO_U8,
    LOCO_U16,
    LOCO_U32,
    LOCO_U64,
    LOCO_BOOL,
    LOCO_F8_E4M3,
    LOCO_F8_E5M2,
    LOCO_DTYPE_COUNT
} loco_dtype;

/* Names as safetensors writes them: "F32", "F16", "BF16", ... */
const char *loco_dtype_name(loco_dtype t);
int loco_dtype_from_name(const char *name, loco_dtype *out); /* 0 on success, -1 unknown */
size_t loco_dtype_size(loco_dtype t);
int loco_dtype_is_float(loco_dtype t);

/* Scalar conversions (round-to-nearest-even, as torch does). */
float loco_f16_to_f32(uint16_t h);
uint16_t loco_f32_to_f16(float f);
float loco_bf16_to_f32(uint16_t b);
uint16_t loco_f32_to_bf16(float f);

/* Convert n elements of a float dtype (F32/F16/BF16/F64) to f32. Returns LOCO_EUNSUPPORTED
 * for other dtypes. */
loco_status loco_convert_to_f32(float *dst, const void *src, loco_dtype src_dtype, size_t n);
/* Convert n f32 values to F32/F16/BF16/F64. */
loco_status loco_convert_from_f32(void *dst, loco_dtype dst_dtype, const float *src, size_t n);

#ifdef __cplusplus
}
#endif
#endif
