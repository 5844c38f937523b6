/* safetensors.h: read (mmap) and write safetensors files.
 *
 * The reader validates the whole header before anything is used: the 8-byte length against
 * the file size and the 100 MB cap, the JSON, every dtype, shape and data_offsets pair (in
 * bounds of the data buffer, end >= begin, size == numel * dtype size, no two tensors
 * overlapping). A corrupt or truncated file is a LOCO_EFORMAT error naming the file and the
 * problem; never a crash. Tensor data is never copied: `data` points into the mapping. */
#ifndef LOCO_SAFETENSORS_H
#define LOCO_SAFETENSORS_H

#include "base.h"
#include "backend.h" /* LOCO_MAX_DIMS */

/* The largest dimension a header may give (2^32: a 1-D tensor of 16 GiB of f32 still opens). Why
 * a bound at all: a zero elsewhere in the shape makes the tensor empty and valid whatever the
 * other dimensions say, and a loop over one of them would then run for ever. */
#define LOCO_SAFETENSORS_MAX_DIM ((uint64_t)1 << 32)

typedef struct loco_stored_tensor {
    const char *name;
    loco_dtype dtype;
    int ndim;
    int64_t shape[LOCO_MAX_DIMS];
    const void *data; /* little-endian, row-major */
    size_t nbytes;
} loco_stored_tensor;

int64_t loco_stored_numel(const loco_stored_tensor *t);

typedef struct loco_safetensors loco_safetensors;

loco_status loco_safetensors_open(const char *path, loco_safetensors **out, loco_err *err);
void loco_safetensors_close(loco_safetensors *f);
const char *loco_safetensors_path(const loco_safetensors *f);
size_t loco_safetensors_count(const loco_safetensors *f);
const loco_stored_tensor *loco_safetensors_at(const loco_safetensors *f, size_t i); /* sorted by name */
const loco_stored_tensor *loco_safetensors_find(const loco_safetensors *f, const char *name);
/* A "__metadata__" string value, or NULL. */
const char *loco_safetensors_metadata(const loco_safetensors *f, const char *key);

/* Write n tensors (and optional string metadata pairs, NULL-terminated key,value,... list)
 * to `path` as engine/file_out.h writes outputs: a regular file atomically (a temporary name,
 * fsynced, then renamed), an existing device or FIFO in place, a folder refused. */
loco_status loco_safetensors_write(const char *path, const loco_stored_tensor *tensors, size_t n,
                                   const char *const *metadata_kv, loco_err *err);

#endif
