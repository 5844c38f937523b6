/* builtin_configs.c: lookup into the embedded default configs (the table itself is generated
 * into builtin_configs_data.c from config/model-defaults/).
 *
 * Where the values come from (reference/models.md §1-5 and the hub folders named in diffusers'
 * DIFFUSERS_DEFAULT_PIPELINE_PATHS: stable-diffusion-v1-5/stable-diffusion-v1-5,
 * stabilityai/stable-diffusion-2-1, stabilityai/stable-diffusion-xl-base-1.0):
 *
 * - Architecture values checked against source by models.md ([src]/[calc]): block_out_channels,
 *   layers_per_block, block types, attention_head_dim (heads), cross_attention_dim,
 *   use_linear_projection, upcast_attention (SD 2.1), transformer_layers_per_block and
 *   addition_embed_type/addition_time_embed_dim/projection_class_embeddings_input_dim (SD-XL),
 *   VAE channels and scaling factors (0.18215 / 0.13025), SD-XL VAE force_upcast, text encoder
 *   widths/depths/heads/activations (SD 2.x keeps 23 layers), scheduler classes, beta schedule,
 *   prediction types (SD 2.1 v_prediction), steps_offset 1, set_alpha_to_one false,
 *   skip_prk_steps, "leading" spacing, force_zeros_for_empty_prompt (SD-XL).
 * - [verify] in models.md terms (the hub config.json files were not read there; these values
 *   are as the hub files are commonly reproduced, and the SD-XL unet config was compared with
 *   public copies of it): sample_size (64 / 96 / 128; VAE 512 / 768 / 1024), the
 *   _diffusers_version / transformers_version / torch_dtype bookkeeping strings, text encoder
 *   projection_dim (768 SD 1.5, 512 SD 2.1, 768 + 1280 SD-XL), bos/eos/pad ids (0/2/1: legacy
 *   values; eos_token_id 2 selects the argmax pooling), initializer values,
 *   addition_embed_type_num_heads, sample_max_value, use_karras_sigmas false.
 * - Deliberate differences from the hub folders: safety_checker and feature_extractor are
 *   [null, null] with requires_safety_checker false (a single file carries neither), and
 *   diffusers defaults that old hub files omit are written out (VAE scaling_factor 0.18215,
 *   scheduler prediction_type epsilon and timestep_spacing "leading", SD 1.5 unet
 *   upcast_attention/use_linear_projection false) so that readers need no hidden defaults.
 * - SD 2.x single files do not say whether they are 768-v or 512-base (epsilon); like diffusers
 *   without a config, the 768-v configs are used. Pass a config folder to override. */
#include "builtin_configs.h"

#include <string.h>

const char *loco_builtin_config(const char *family, const char *relpath) {
    if (!family || !relpath) return NULL;
    size_t fl = strlen(family);
    for (size_t i = 0; i < loco_builtin_config_table_len; i++) {
        const char *p = loco_builtin_config_table[i].path;
        if (strncmp(p, family, fl) == 0 && p[fl] == '/' && strcmp(p + fl + 1, relpath) == 0)
            return loco_builtin_config_table[i].text;
    }
    return NULL;
}

size_t loco_builtin_config_count(void) { return loco_builtin_config_table_len; }

const loco_builtin_config_entry *loco_builtin_config_at(size_t i) {
    return i < loco_builtin_config_table_len ? &loco_builtin_config_table[i] : NULL;
}
