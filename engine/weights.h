/* weights.h: the tensors of one model component, looked up by their diffusers names.
 *
 * A weight set hides where tensors come from: one safetensors file, a sharded set with an
 * index file, or a slice of a single-file (LDM/CompVis/sgm) checkpoint whose keys were mapped
 * to diffusers names (engine/ldm_mapping.c). Only tensors whose bytes the mapping had to
 * change (OpenCLIP's transposed text_projection) are owned by the set; all others, including
 * the q/k/v row slices of OpenCLIP's in_proj and the VAE's squeezed 1×1 convs (a shape change
 * only), point into the file mappings. Model builders call loco_weights_require
 * with the shape they expect, so a wrong file gives an error naming the tensor, the expected
 * and the actual shape, and the file. */
#ifndef LOCO_WEIGHTS_H
#define LOCO_WEIGHTS_H

#include "safetensors.h"

typedef struct loco_weights loco_weights;

/* Open a component folder's weights: `<dir>/<stem>[.<variant>].safetensors`, or the sharded
 * `<stem>.safetensors.index[.<variant>].json` (and `<stem>[.<variant>].safetensors.index.json`).
 * stem is "diffusion_pytorch_model" (diffusers) or "model" (transformers); variant may be NULL.
 * With a NULL variant and no plain file, a single existing variant (e.g. fp16) is used. */
loco_status loco_weights_open_dir(const char *dir, const char *stem, const char *variant, loco_weights **out,
                                  loco_err *err);
/* Open explicit files (no renaming). */
loco_status loco_weights_open_files(const char *const *paths, int n, loco_weights **out, loco_err *err);
void loco_weights_free(loco_weights *w);

/* A description of where the tensors came from, for error messages ("unet/diffusion_pytorch_model.safetensors"). */
const char *loco_weights_source(const loco_weights *w);
size_t loco_weights_count(const loco_weights *w);
/* In insertion order (each file's tensors sorted by name). Returned pointers stay valid until
 * the set is freed, also while more tensors are added. */
const loco_stored_tensor *loco_weights_at(const loco_weights *w, size_t i);
const loco_stored_tensor *loco_weights_get(const loco_weights *w, const char *name); /* NULL if absent */

/* Look up `name` and check its shape (ndim < 0 skips the check). Errors: LOCO_ENOTFOUND
 * ("unet/diffusion_pytorch_model.safetensors: tensor 'conv_in.weight' is missing") or
 * LOCO_EFORMAT for a shape mismatch. */
loco_status loco_weights_require(const loco_weights *w, const char *name, int ndim, const int64_t *shape,
                                 const loco_stored_tensor **out, loco_err *err);

/* Build a weight set from a mapping (used by the single-file loader): adds `name` pointing at
 * `src` (not copied) or, when owned_data is not NULL, at owned_data (taken over, freed with the set). */
loco_status loco_weights_new_empty(const char *source, loco_weights **out, loco_err *err);
loco_status loco_weights_add(loco_weights *w, const char *name, const loco_stored_tensor *src, void *owned_data,
                             loco_err *err);
/* Keep a file mapping alive as long as the set (the set takes ownership). */
void loco_weights_adopt_file(loco_weights *w, loco_safetensors *f);

/* Rename tensors in place (name normalisation, e.g. adding transformers' "text_model." prefix):
 * fn writes the new name of `name` into buf (size n) and returns 1, returns 0 to keep the name,
 * or -1 when buf is too small. Two tensors ending up with one name is LOCO_EFORMAT. Pointers
 * from get/at stay valid; their names change. */
typedef int (*loco_weights_rename_fn)(const char *name, char *buf, size_t n, void *ctx);
loco_status loco_weights_rename(loco_weights *w, loco_weights_rename_fn fn, void *ctx, loco_err *err);

/* A synthetic set for benchmarks and memory checks of real-size architectures: every tensor a
 * model builder requires is created on first request with deterministic random values
 * (engine/random_weights.h); nothing is read from disk. Optional lookups (loco_weights_get of an
 * absent name) still return NULL. */
loco_status loco_weights_new_random(const char *source, uint64_t seed, loco_weights **out, loco_err *err);

#endif
