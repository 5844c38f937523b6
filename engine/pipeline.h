/* pipeline.h: text-to-image, as diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline.
 *
 * A pipeline holds one model resident on one backend: tokenizers, text encoder(s), UNet, VAE
 * and the scheduler configuration, loaded from a diffusers folder or a single-file checkpoint
 * (engine/model_files.h). loco_generate then does what the diffusers pipeline's __call__ does
 * with a CPU torch.Generator seeded with `seed`:
 *
 *   1. encode the prompts ([uncond | cond] rows when guidance_scale > 1; SD-XL adds pooled
 *      embeddings and add_time_ids = (h, w, 0, 0, h, w));
 *   2. draw the initial latents [B, C, h/8, w/8] with torch.randn from the generator (or take
 *      the caller's), times the scheduler's init_noise_sigma;
 *   3. for each scheduler call: duplicate the latents for guidance, scale_model_input, one
 *      batched UNet call (text K/V projected once for the whole run), ε = ε_u + g (ε_c − ε_u),
 *      scheduler.step with the same generator (ancestral samplers continue its stream);
 *   4. VAE-decode and quantise as VaeImageProcessor.postprocess does.
 *
 * The same seed therefore gives the same image as a researcher's Python pipeline, within the
 * fp32 tolerances of tests/ (bit-identical noise; arithmetic differences of ~1e-6). */
#ifndef LOCO_PIPELINE_H
#define LOCO_PIPELINE_H

#include <stdint.h>

#include "backend.h"
#include "clip_text.h"
#include "clip_tokenizer.h"
#include "image.h"
#include "model_files.h"
#include "scheduler.h"
#include "unet.h"
#include "vae.h"

typedef struct loco_pipeline loco_pipeline;

typedef struct loco_pipeline_opts {
    const char *model_path;   /* diffusers folder or single-file .safetensors */
    const char *config_dir;   /* single files: a diffusers folder to take configs and tokenizers from */
    const char *variant;      /* weight variant ("fp16"), or NULL */
    loco_model_family family; /* UNKNOWN: detect */
    /* The dtype a VAE with force_upcast (SD-XL's) computes in on a backend with F16 activations:
     * LOCO_F32 (the zero value; what diffusers does) or LOCO_BF16 (fp32's range, half the
     * memory traffic, small differences from diffusers). SD 1.x/2.x pipelines decode in the
     * activation dtype whatever their VAE's config says, as diffusers' pipelines for them do. */
    loco_dtype vae_upcast_dtype;
} loco_pipeline_opts;

void loco_pipeline_opts_init(loco_pipeline_opts *o);

/* Load every component onto `be` (not owned; it must outlive the pipeline). */
loco_status loco_pipeline_load(loco_backend *be, const loco_pipeline_opts *opts, loco_pipeline **out, loco_err *err);
/* A pipeline of a family's real architecture (the embedded configs of engine/builtin_configs.h:
 * SD 1.5, SD 2.1 768-v or SD-XL base at full size) with deterministic random weights
 * (loco_weights_new_random) and the bundled CLIP tokenizers: for benchmarks and memory checks,
 * never for images anyone should look at. opts may be NULL; only vae_upcast_dtype is read.
 * Such a pipeline has no model files (loco_pipeline_files returns NULL). */
loco_status loco_pipeline_load_random(loco_backend *be, loco_model_family family, uint64_t seed,
                                      const loco_pipeline_opts *opts, loco_pipeline **out, loco_err *err);
void loco_pipeline_free(loco_pipeline *p);

loco_model_family loco_pipeline_family(const loco_pipeline *p);
loco_backend *loco_pipeline_backend(const loco_pipeline *p);
const loco_model_files *loco_pipeline_files(const loco_pipeline *p); /* NULL: random weights */
loco_unet *loco_pipeline_unet(const loco_pipeline *p);
loco_vae *loco_pipeline_vae(const loco_pipeline *p);
const loco_clip_text *loco_pipeline_text_encoder(const loco_pipeline *p, int which); /* 1 or 2 */
const loco_clip_tokenizer *loco_pipeline_tokenizer(const loco_pipeline *p, int which);
/* The model's scheduler config (scheduler/scheduler_config.json) and its class. */
const loco_scheduler_config *loco_pipeline_scheduler_config(const loco_pipeline *p);
/* The scheduler class the model asks for: the one model_index.json names for "scheduler" (what
 * diffusers instantiates, with scheduler_config.json's values), else scheduler_config.json's
 * _class_name; "" when neither names one. */
const char *loco_pipeline_scheduler_class(const loco_pipeline *p);
/* Does loco implement that class? When not, the model still loads (a run may name its own
 * scheduler) and runs that rely on the default fail naming the class. */
int loco_pipeline_has_default_scheduler(const loco_pipeline *p);
/* The kind of that class; meaningful only when loco_pipeline_has_default_scheduler. */
loco_scheduler_kind loco_pipeline_default_scheduler(const loco_pipeline *p);
/* The scheduler a run uses: `requested` when has_scheduler, else the model's default; and checks
 * that Karras sigmas (use_karras_sigmas > 0) are something that scheduler has. LOCO_EUNSUPPORTED
 * naming the model's class when it has no usable default, LOCO_EINVAL for Karras with another
 * scheduler. */
loco_status loco_pipeline_scheduler_kind(const loco_pipeline *p, int has_scheduler, loco_scheduler_kind requested,
                                         int use_karras_sigmas, loco_scheduler_kind *out, loco_err *err);
/* Pixels per latent cell: 2^(VAE levels - 1), 8 for every SD VAE. */
int loco_pipeline_vae_scale(const loco_pipeline *p);
/* Default image size: unet sample_size * vae_scale (512 for SD 1.5, 1024 for SD-XL). */
int loco_pipeline_default_size(const loco_pipeline *p);

/* Called after each denoising step with (step, total); a non-zero return cancels the run,
 * which then fails with LOCO_ECANCELLED. */
typedef int (*loco_progress_fn)(void *ctx, int step, int total);

typedef struct loco_generate_params {
    int n_prompts;
    const char *const *prompts;          /* n_prompts strings */
    const char *const *negative_prompts; /* NULL, or n_prompts strings */
    const char *const *prompts_2;        /* SD-XL second encoder; NULL = prompts */
    const char *const *negative_prompts_2;
    int num_images_per_prompt; /* 1 */
    uint64_t seed;             /* torch.Generator("cpu").manual_seed(seed) */
    int steps;                 /* 0: 50 */
    float guidance_scale;      /* NAN: 7.5 (SD 1.x/2.x), 5.0 (SD-XL); <= 1 disables guidance */
    int has_scheduler;         /* 0: the model's own scheduler */
    loco_scheduler_kind scheduler;
    int use_karras_sigmas;     /* -1: the config's; 0/1: override (Euler, DPM-Solver) */
    int width, height;         /* 0: loco_pipeline_default_size */
    int clip_skip;             /* 0: none */
    /* Optional initial latents [B, C, height/8, width/8], host f32, B = n_prompts *
     * num_images_per_prompt; like diffusers' `latents=`: still multiplied by init_noise_sigma. */
    const float *latents;
    int skip_decode;           /* 1: stop after the last step (no images) */
    loco_progress_fn progress;
    void *progress_ctx;
} loco_generate_params;

void loco_generate_params_init(loco_generate_params *g);

typedef struct loco_generate_result {
    int n_images;
    int width, height;
    loco_image *images;          /* n_images RGB images (none with skip_decode) */
    int64_t latent_shape[4];     /* [B, C, h, w] */
    float *initial_latents;      /* B*C*h*w: after init_noise_sigma, as the first UNet input sees them */
    float *latents;              /* final latents, before the VAE */
} loco_generate_result;

void loco_generate_result_free(loco_generate_result *r);
/* initial_latents and latents [B, C, h, w] f32 as one safetensors file (atomic write). */
loco_status loco_generate_result_write_latents(const loco_generate_result *r, const char *path, loco_err *err);

/* Check params against the model and the limits (sizes multiple of 8·2^(levels-1), at least one
 * prompt, steps within the scheduler's range, ...) without running anything. */
loco_status loco_generate_validate(const loco_pipeline *p, const loco_generate_params *g, loco_err *err);

loco_status loco_generate(loco_pipeline *p, const loco_generate_params *g, loco_generate_result *out, loco_err *err);

#endif
