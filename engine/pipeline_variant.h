/* pipeline_variant.h: an edited model that shares everything unchanged with its base.
 *
 * A variant is a pipeline whose UNet and text encoders are variants of the base's (engine/unet.h,
 * engine/clip_text.h): every tensor is shared until an edit replaces it, so a variant costs only
 * the tensors it changed, and tokenizers, VAE, scheduler config and files are borrowed as they
 * are. It can be generated from at once (loco_pipeline_variant_generate), many variants of one
 * base can be resident together, and the base is never modified. The base must outlive its
 * variants.
 *
 * A variant also carries what an edit cannot express as weights: neuron ablations (methods.md
 * §6), applied to the text K/V of the listed cross-attention layers in the conditional branch of
 * classifier-free guidance at every step.
 *
 * Exports (engine/edit_export.c): a delta safetensors file with only the changed tensors (names
 * "<component>.<diffusers name>", float32, plus the ablations and a JSON description of the edit
 * in the metadata), which loco_pipeline_variant_apply_delta reads back into a fresh variant of
 * the same base; and a full diffusers folder (model_index.json, every component's config and
 * weights as safetensors, tokenizers copied) that diffusers loads as it loads any model. */
#ifndef LOCO_PIPELINE_VARIANT_H
#define LOCO_PIPELINE_VARIANT_H

#include <jansson.h>

#include "intervention.h"
#include "pipeline.h"

typedef struct loco_pipeline_variant loco_pipeline_variant;

/* Components a variant can change. */
typedef enum loco_component {
    LOCO_COMPONENT_UNET = 0,
    LOCO_COMPONENT_TEXT_ENCODER,   /* "text_encoder" */
    LOCO_COMPONENT_TEXT_ENCODER_2, /* "text_encoder_2" (SD-XL) */
    LOCO_COMPONENT_COUNT
} loco_component;

const char *loco_component_name(loco_component c); /* diffusers folder names */
int loco_component_from_name(const char *name, loco_component *out);

loco_status loco_pipeline_variant_create(loco_pipeline *base, loco_pipeline_variant **out, loco_err *err);
void loco_pipeline_variant_free(loco_pipeline_variant *v);

const loco_pipeline *loco_pipeline_variant_base(const loco_pipeline_variant *v);
/* The variant as a pipeline: read its components, or call loco_generate on it when it has no
 * ablations. Owned by v: never loco_pipeline_free it. */
loco_pipeline *loco_pipeline_variant_pipeline(loco_pipeline_variant *v);

/* The current value of a parameter (the variant's, shared or replaced) as host float32; *numel
 * receives its size. `component` names the model, `name` the diffusers parameter. */
loco_status loco_pipeline_variant_read_param(const loco_pipeline_variant *v, loco_component component,
                                             const char *name, float **data, int64_t *numel, int *ndim,
                                             int64_t shape[2], loco_err *err);
/* Replace a parameter with host data of its shape (F32 or F64). The float32 value is recorded
 * (for exports) and uploaded into the variant's own copy; the base is untouched. */
loco_status loco_pipeline_variant_set_param(loco_pipeline_variant *v, loco_component component, const char *name,
                                            const void *data, loco_dtype src_dtype, loco_err *err);

/* The same, taking ownership of `data` (malloc'ed float32 of the parameter's size) on success:
 * no copy of the edited tensor is made besides the upload. On failure the caller keeps it. */
loco_status loco_pipeline_variant_set_param_take(loco_pipeline_variant *v, loco_component component,
                                                 const char *name, float *data, loco_err *err);

/* Replace a UNet parameter with a filled tensor on the UNet's backend (loco_unet_adopt_param),
 * taken over with `rec` (malloc'ed float32 of its value, taken over too) as the record; rec may be
 * NULL when the tensor is float32 host memory (CPU backend): the record then reads the tensor. */
loco_status loco_pipeline_variant_adopt_param(loco_pipeline_variant *v, const char *name, loco_tensor *t, float *rec,
                                              loco_err *err);

/* ---- changed tensors ---- */
typedef struct loco_variant_change {
    loco_component component;
    const char *name;     /* diffusers name inside the component */
    int ndim;
    int64_t shape[4];
    const float *data;    /* the edited value, float32 (what the variant uploaded) */
} loco_variant_change;

int loco_pipeline_variant_num_changes(const loco_pipeline_variant *v);
const loco_variant_change *loco_pipeline_variant_change(const loco_pipeline_variant *v, int i);
/* Backend bytes held by the variant alone (its replaced tensors). */
size_t loco_pipeline_variant_owned_bytes(const loco_pipeline_variant *v);

/* ---- neuron ablations ---- */
typedef struct loco_neuron_ablation {
    int cross_index;      /* cross-attention layer, execution order */
    loco_site_kind kind;  /* LOCO_SITE_CROSS_K or LOCO_SITE_CROSS_V */
    int n;
    const int32_t *channels; /* output channels of to_k / to_v */
    const float *values;     /* what they are set to (all token positions) */
} loco_neuron_ablation;

/* Add (copying) one ablation; a second one on the same site replaces the first. */
loco_status loco_pipeline_variant_add_ablation(loco_pipeline_variant *v, const loco_neuron_ablation *a,
                                               loco_err *err);
int loco_pipeline_variant_num_ablations(const loco_pipeline_variant *v);
const loco_neuron_ablation *loco_pipeline_variant_ablation(const loco_pipeline_variant *v, int i);
/* The ablations as an intervention plan (engine/intervention.h): one `ablate` of the layer's
 * cross_k / cross_v site per ablation and conditional text row 0..n_text_rows-1, every position.
 * The plan points into v (channels, values, site names); free(*plan) when done. */
loco_status loco_pipeline_variant_ablation_plan(const loco_pipeline_variant *v, int n_text_rows,
                                                loco_intervention **plan, int *n, loco_err *err);

/* ---- description ---- */
/* A JSON object describing the edits (method, options, report), stored into exports. The variant
 * takes a reference; each call appends it to the "edits" list. Read back (borrowed) with _edits. */
loco_status loco_pipeline_variant_note_edit(loco_pipeline_variant *v, json_t *edit, loco_err *err);
const json_t *loco_pipeline_variant_edits(const loco_pipeline_variant *v);

/* ---- generation ---- */
/* loco_generate on the variant; its ablations (if any) run through the intervention engine on
 * the conditional branch, every step. */
loco_status loco_pipeline_variant_generate(loco_pipeline_variant *v, const loco_generate_params *g,
                                           loco_generate_result *out, loco_err *err);

/* ---- export (engine/edit_export.c) ---- */
loco_status loco_pipeline_variant_export_delta(const loco_pipeline_variant *v, const char *path, loco_err *err);
/* Apply a delta file written by export_delta (changed tensors and ablations) to v. The file's
 * tensors must name parameters of v's model with matching shapes. */
loco_status loco_pipeline_variant_apply_delta(loco_pipeline_variant *v, const char *path, loco_err *err);

typedef enum loco_export_dtype {
    LOCO_EXPORT_KEEP = 0, /* every tensor in its source dtype (edited ones rounded to it) */
    LOCO_EXPORT_F32,
    LOCO_EXPORT_F16,
    LOCO_EXPORT_BF16,
    LOCO_EXPORT_DTYPE_COUNT
} loco_export_dtype;
const char *loco_export_dtype_name(loco_export_dtype d); /* "keep", "f32", "f16", "bf16" */
int loco_export_dtype_from_name(const char *name, loco_export_dtype *out);

/* Write a diffusers folder at `dir` (created; existing files of the same names are replaced).
 * LOCO_EUNSUPPORTED when the variant has ablations: they act at inference time on the
 * conditional branch only, which no diffusers weight can express (export the delta instead).
 * LOCO_EINVAL, before anything is written, when `dir` is, is inside or contains a folder the
 * export reads from (the model's folder, a single file's config folder, the tokenizer folders),
 * and, before each file, when that file is one of the base model's under another name. */
loco_status loco_pipeline_variant_export_folder(const loco_pipeline_variant *v, const char *dir,
                                                loco_export_dtype dtype, loco_err *err);
/* The folder check of export_folder alone, for callers that want it before the edit runs. */
loco_status loco_pipeline_export_folder_check(const loco_pipeline *base, const char *dir, loco_err *err);

#endif
