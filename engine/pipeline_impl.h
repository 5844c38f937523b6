/* pipeline_impl.h: the pipeline's state, shared by pipeline_load.c and pipeline_generate.c. */
#ifndef LOCO_PIPELINE_IMPL_H
#define LOCO_PIPELINE_IMPL_H

#include <stdio.h>

#include "pipeline.h"
#include "denoise.h"
#include "text_conditioning.h"

struct loco_pipeline {
    loco_backend *be;
    char *path;
    loco_model_files *files;
    loco_model_family family;
    loco_clip_tokenizer *tokenizer, *tokenizer_2;
    loco_clip_text *text_encoder, *text_encoder_2;
    loco_unet *unet;
    loco_vae *vae;
    loco_scheduler_config sched_cfg;
    /* the scheduler class the model asks for (loco_pipeline_set_default_scheduler) and, when loco
     * implements it, its kind */
    char scheduler_class[64];
    int has_default_scheduler;
    loco_scheduler_kind default_scheduler;
    int force_zeros_for_empty_prompt;
    int vae_scale;
};

/* Take the model's default scheduler from model_index.json's "scheduler" class (index_class;
 * NULL or "" when it names none: then sched_cfg's _class_name), as diffusers does. Needs
 * p->sched_cfg loaded. Shared by pipeline_load.c and pipeline_random.c. */
void loco_pipeline_set_default_scheduler(loco_pipeline *p, const char *index_class);
/* What diffusers' SD 1.x/2.x pipeline does to an old scheduler config when it loads (steps_offset
 * 1, clip_sample off); nothing for SD-XL. Call after loco_pipeline_set_default_scheduler. */
void loco_pipeline_sd_scheduler_rewrites(loco_pipeline *p);
/* The model's scheduler config (cfg, a copy) as one run takes it: its Karras choice (-1: the
 * config's), and for a named dpmpp_2m the plain DPM++ 2M. kind as loco_pipeline_scheduler_kind
 * gave it. */
void loco_pipeline_run_scheduler_config(int has_scheduler, loco_scheduler_kind kind, int use_karras_sigmas,
                                        loco_scheduler_config *cfg);

/* Shared by loco_generate and the variants' generate (pipeline_generate.c). */
void loco_pipeline_text_encoders(const loco_pipeline *p, loco_text_encoders *enc); /* the resident text side */
float loco_pipeline_guidance(const loco_pipeline *p, const loco_generate_params *g); /* the default filled in */
/* The `upcast` dtype to build p's VAE with (loco_vae_compute_dtype): diffusers' SD-XL pipeline
 * decodes a force_upcast VAE in fp32; its SD 1.x/2.x pipelines never upcast, whatever the VAE's
 * config says, so those decode in the activation dtype, as they do there. */
loco_dtype loco_pipeline_vae_upcast(const loco_pipeline *p, loco_dtype requested);
loco_status loco_pipeline_encode_prompts(loco_pipeline *p, const loco_generate_params *g, int cfg, loco_prompt_embeds *pe,
                                         loco_err *err);
/* Everything of a denoise run that comes from the generate params (size, steps, guidance,
 * scheduler, seed, latents, progress); the caller sets the text rows. */
void loco_pipeline_denoise_params(const loco_pipeline *p, const loco_generate_params *g, loco_denoise_params *d);

#endif
