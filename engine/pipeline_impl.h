/* pipeline_impl.h: the pipeline's state, shared by pipeline_load.c and pipeline_generate.c. */
#ifndef LOCO_PIPELINE_IMPL_H
#define LOCO_PIPELINE_IMPL_H

#include <stdio.h>

#include "pipeline.h"
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
    loco_scheduler_kind default_scheduler;
    int force_zeros_for_empty_prompt;
    int vae_scale;
};

#endif
