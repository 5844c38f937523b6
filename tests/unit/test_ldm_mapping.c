/* test_ldm_mapping.c: the LDM/CompVis/sgm single-file name mapping, name by name (UNet layouts
 * of SD 1.x and SD-XL, VAE, CLIP), and on synthetic single files: OpenCLIP's fused q|k|v split
 * and transposed projection, and the VAE's 1x1 attention convs squeezed to linears. The fixture
 * models' single files are checked against their folders in test_model_files.c. */
#include "builtin_configs.h"
#include "ldm_mapping.h"
#include "loco_test.h"
#include "model_files.h"
#include "st_test_util.h"

/* ---- name-level mapping ------------------------------------------------------------------------ */

static loco_ldm_unet_layout layout_of(const char *family) {
    json_t *cfg = json_loads(loco_builtin_config(family, "unet/config.json"), 0, NULL);
    loco_ldm_unet_layout L;
    loco_err err = {0};
    loco_status st = loco_ldm_unet_layout_from_config(cfg, &L, &err);
    json_decref(cfg);
    if (st != LOCO_OK) memset(&L, 0, sizeof L);
    return L;
}

#define CHECK_UNET(L, key, want)                                                                                       \
    do {                                                                                                               \
        char b_[256];                                                                                                  \
        loco_ldm_result r_ = loco_ldm_unet_name(key, &(L), b_, sizeof b_);                                             \
        CHECK_MSG(r_ == LOCO_LDM_MAPPED && strcmp(b_, want) == 0, "%s -> %s (want %s)", key,                           \
                  r_ == LOCO_LDM_MAPPED ? b_ : "(not mapped)", want);                                                  \
    } while (0)

#define CHECK_UNET_BAD(L, key)                                                                                         \
    do {                                                                                                               \
        char b_[256];                                                                                                  \
        CHECK_MSG(loco_ldm_unet_name(key, &(L), b_, sizeof b_) == LOCO_LDM_BAD, "%s", key);                            \
    } while (0)

TEST(ldm_unet_names_sd1_layout) {
    loco_ldm_unet_layout L = layout_of("sd1");
    CHECK(L.layers_per_block == 2 && L.n_blocks == 4 && L.down_attn == 0x7 && L.up_attn == 0xe);
    CHECK_UNET(L, "time_embed.0.weight", "time_embedding.linear_1.weight");
    CHECK_UNET(L, "time_embed.2.bias", "time_embedding.linear_2.bias");
    CHECK_UNET(L, "input_blocks.0.0.weight", "conv_in.weight");
    CHECK_UNET(L, "out.0.weight", "conv_norm_out.weight");
    CHECK_UNET(L, "out.2.bias", "conv_out.bias");
    CHECK_UNET(L, "input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight");
    CHECK_UNET(L, "input_blocks.1.0.in_layers.2.weight", "down_blocks.0.resnets.0.conv1.weight");
    CHECK_UNET(L, "input_blocks.2.0.emb_layers.1.bias", "down_blocks.0.resnets.1.time_emb_proj.bias");
    CHECK_UNET(L, "input_blocks.2.0.out_layers.0.bias", "down_blocks.0.resnets.1.norm2.bias");
    CHECK_UNET(L, "input_blocks.2.0.out_layers.3.weight", "down_blocks.0.resnets.1.conv2.weight");
    CHECK_UNET(L, "input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight");
    CHECK_UNET(L, "input_blocks.1.1.proj_in.weight", "down_blocks.0.attentions.0.proj_in.weight");
    CHECK_UNET(L, "input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight",
               "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight");
    CHECK_UNET(L, "input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight");
    CHECK_UNET(L, "input_blocks.9.0.op.bias", "down_blocks.2.downsamplers.0.conv.bias");
    CHECK_UNET(L, "input_blocks.10.0.in_layers.0.weight", "down_blocks.3.resnets.0.norm1.weight");
    CHECK_UNET(L, "input_blocks.11.0.in_layers.0.weight", "down_blocks.3.resnets.1.norm1.weight");
    CHECK_UNET(L, "middle_block.0.in_layers.0.weight", "mid_block.resnets.0.norm1.weight");
    CHECK_UNET(L, "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
               "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight");
    CHECK_UNET(L, "middle_block.2.emb_layers.1.weight", "mid_block.resnets.1.time_emb_proj.weight");
    CHECK_UNET(L, "output_blocks.0.0.in_layers.0.weight", "up_blocks.0.resnets.0.norm1.weight");
    CHECK_UNET(L, "output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"); /* no attention */
    CHECK_UNET(L, "output_blocks.3.1.norm.weight", "up_blocks.1.attentions.0.norm.weight");
    CHECK_UNET(L, "output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias");
    CHECK_UNET(L, "output_blocks.11.1.proj_out.weight", "up_blocks.3.attentions.2.proj_out.weight");
    CHECK_UNET(L, "output_blocks.11.0.skip_connection.weight", "up_blocks.3.resnets.2.conv_shortcut.weight");
    /* not UNet weights: ignored */
    char b[256];
    CHECK(loco_ldm_unet_name("betas", &L, b, sizeof b) == LOCO_LDM_SKIP);
    /* inconsistent with the config */
    CHECK_UNET_BAD(L, "input_blocks.12.0.in_layers.0.weight"); /* beyond 4 blocks */
    CHECK_UNET_BAD(L, "input_blocks.3.0.in_layers.0.weight");  /* the downsampler slot */
    CHECK_UNET_BAD(L, "input_blocks.10.1.norm.weight");        /* down_blocks.3 has no attention */
    CHECK_UNET_BAD(L, "input_blocks.12.0.op.weight");          /* the last level has no downsampler */
    CHECK_UNET_BAD(L, "output_blocks.11.2.conv.weight");       /* the last level has no upsampler */
    CHECK_UNET_BAD(L, "output_blocks.5.1.conv.weight");        /* with attention the upsampler is .2 */
    CHECK_UNET_BAD(L, "output_blocks.0.1.norm.weight");        /* up_blocks.0 has no attention */
    CHECK_UNET_BAD(L, "input_blocks.1.0.in_layers.1.weight");  /* unknown resnet parameter */
    CHECK_UNET_BAD(L, "input_blocks.x.0.weight");
    CHECK_UNET_BAD(L, "middle_block.3.weight");
}

TEST(ldm_unet_names_sdxl_layout) {
    loco_ldm_unet_layout L = layout_of("sdxl");
    CHECK(L.n_blocks == 3 && L.down_attn == 0x6 && L.up_attn == 0x3 && L.label_emb_is_addition);
    CHECK_UNET(L, "label_emb.0.0.weight", "add_embedding.linear_1.weight");
    CHECK_UNET(L, "label_emb.0.2.bias", "add_embedding.linear_2.bias");
    CHECK_UNET(L, "input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight");
    CHECK_UNET(L, "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight",
               "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.weight");
    CHECK_UNET(L, "output_blocks.2.2.conv.weight", "up_blocks.0.upsamplers.0.conv.weight");
    CHECK_UNET(L, "output_blocks.2.1.transformer_blocks.9.norm3.weight",
               "up_blocks.0.attentions.2.transformer_blocks.9.norm3.weight");
    CHECK_UNET(L, "output_blocks.8.0.out_layers.3.weight", "up_blocks.2.resnets.2.conv2.weight");
    CHECK_UNET_BAD(L, "input_blocks.1.1.norm.weight"); /* down_blocks.0 is a DownBlock2D */
    CHECK_UNET_BAD(L, "input_blocks.9.0.op.weight");
    /* without addition_embed_type the same keys are class_embedding */
    loco_ldm_unet_layout L1 = layout_of("sd1");
    CHECK_UNET(L1, "label_emb.0.0.weight", "class_embedding.linear_1.weight");
}

TEST(ldm_vae_and_clip_names) {
    static const char *const vae[][2] = {
        {"encoder.conv_in.weight", "encoder.conv_in.weight"},
        {"encoder.norm_out.bias", "encoder.conv_norm_out.bias"},
        {"decoder.norm_out.weight", "decoder.conv_norm_out.weight"},
        {"quant_conv.weight", "quant_conv.weight"},
        {"post_quant_conv.bias", "post_quant_conv.bias"},
        {"encoder.down.0.block.1.conv2.weight", "encoder.down_blocks.0.resnets.1.conv2.weight"},
        {"encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"},
        {"encoder.down.2.downsample.conv.bias", "encoder.down_blocks.2.downsamplers.0.conv.bias"},
        {"encoder.mid.block_1.norm1.weight", "encoder.mid_block.resnets.0.norm1.weight"},
        {"decoder.mid.block_2.conv2.bias", "decoder.mid_block.resnets.1.conv2.bias"},
        {"decoder.mid.attn_1.norm.weight", "decoder.mid_block.attentions.0.group_norm.weight"},
        {"decoder.mid.attn_1.q.weight", "decoder.mid_block.attentions.0.to_q.weight"},
        {"encoder.mid.attn_1.k.bias", "encoder.mid_block.attentions.0.to_k.bias"},
        {"decoder.mid.attn_1.v.weight", "decoder.mid_block.attentions.0.to_v.weight"},
        {"decoder.mid.attn_1.proj_out.bias", "decoder.mid_block.attentions.0.to_out.0.bias"},
        /* the decoder's levels are numbered the other way round */
        {"decoder.up.3.block.0.conv1.weight", "decoder.up_blocks.0.resnets.0.conv1.weight"},
        {"decoder.up.3.upsample.conv.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight"},
        {"decoder.up.1.block.2.nin_shortcut.bias", "decoder.up_blocks.2.resnets.2.conv_shortcut.bias"},
        {"decoder.up.0.block.0.norm2.weight", "decoder.up_blocks.3.resnets.0.norm2.weight"},
    };
    char b[256];
    for (size_t i = 0; i < sizeof vae / sizeof vae[0]; i++) {
        loco_ldm_result r = loco_ldm_vae_name(vae[i][0], 4, b, sizeof b);
        CHECK_MSG(r == LOCO_LDM_MAPPED && strcmp(b, vae[i][1]) == 0, "%s -> %s", vae[i][0], b);
    }
    CHECK(loco_ldm_vae_name("decoder.up.4.block.0.conv1.weight", 4, b, sizeof b) == LOCO_LDM_BAD);
    CHECK(loco_ldm_vae_name("decoder.mid.attn_1.zz.weight", 4, b, sizeof b) == LOCO_LDM_BAD);
    CHECK(loco_ldm_vae_name("something.else", 4, b, sizeof b) == LOCO_LDM_SKIP);

    CHECK(loco_ldm_clip_name("text_model.encoder.layers.0.mlp.fc1.weight", b, sizeof b) == LOCO_LDM_MAPPED);
    CHECK(strcmp(b, "text_model.encoder.layers.0.mlp.fc1.weight") == 0);
    /* old transformers dumps without text_model. get it */
    CHECK(loco_ldm_clip_name("final_layer_norm.bias", b, sizeof b) == LOCO_LDM_MAPPED);
    CHECK(strcmp(b, "text_model.final_layer_norm.bias") == 0);
    CHECK(loco_ldm_clip_name("text_model.embeddings.position_ids", b, sizeof b) == LOCO_LDM_SKIP);
    CHECK(loco_ldm_clip_name("embeddings.position_ids", b, sizeof b) == LOCO_LDM_SKIP);
    CHECK(loco_ldm_clip_name("logit_scale", b, sizeof b) == LOCO_LDM_SKIP);

    static const char *const oc[][2] = {
        {"token_embedding.weight", "text_model.embeddings.token_embedding.weight"},
        {"positional_embedding", "text_model.embeddings.position_embedding.weight"},
        {"ln_final.weight", "text_model.final_layer_norm.weight"},
        {"transformer.resblocks.3.ln_1.bias", "text_model.encoder.layers.3.layer_norm1.bias"},
        {"transformer.resblocks.3.ln_2.weight", "text_model.encoder.layers.3.layer_norm2.weight"},
        {"transformer.resblocks.0.mlp.c_fc.weight", "text_model.encoder.layers.0.mlp.fc1.weight"},
        {"transformer.resblocks.0.mlp.c_proj.bias", "text_model.encoder.layers.0.mlp.fc2.bias"},
        {"transformer.resblocks.22.attn.out_proj.weight", "text_model.encoder.layers.22.self_attn.out_proj.weight"},
    };
    for (size_t i = 0; i < sizeof oc / sizeof oc[0]; i++) {
        loco_ldm_result r = loco_ldm_open_clip_name(oc[i][0], 23, b, sizeof b);
        CHECK_MSG(r == LOCO_LDM_MAPPED && strcmp(b, oc[i][1]) == 0, "%s -> %s", oc[i][0], b);
    }
    /* SD 2.x: the 24th block is dropped */
    CHECK(loco_ldm_open_clip_name("transformer.resblocks.23.ln_1.bias", 23, b, sizeof b) == LOCO_LDM_SKIP);
    CHECK(loco_ldm_open_clip_name("logit_scale", 23, b, sizeof b) == LOCO_LDM_SKIP);
    /* too small a buffer is an error, never a truncated name */
    CHECK(loco_ldm_open_clip_name("transformer.resblocks.0.mlp.c_fc.weight", 23, b, 10) == LOCO_LDM_BAD);
}

/* ---- synthetic single files: OpenCLIP split/transposition, VAE squeeze ------------------------ */

TEST(open_clip_mapping_views_and_copies) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/oc.safetensors", dir);
    enum { D = 4, P = 3 };
    float in_w[3 * D * D], in_b[3 * D], proj[D * P], tok[10 * D], pos[7 * D], ln[D];
    for (int i = 0; i < 3 * D * D; i++) in_w[i] = (float)i;
    for (int i = 0; i < 3 * D; i++) in_b[i] = 1000.0f + (float)i;
    for (int i = 0; i < D * P; i++) proj[i] = 2000.0f + (float)i;
    for (int i = 0; i < 10 * D; i++) tok[i] = (float)i;
    for (int i = 0; i < 7 * D; i++) pos[i] = (float)-i;
    for (int i = 0; i < D; i++) ln[i] = 1;
#define T(n, nd, s0, s1, buf)                                                                                          \
    {.name = n, .dtype = LOCO_F32, .ndim = nd, .shape = {s0, s1}, .data = buf, .nbytes = sizeof buf}
    loco_stored_tensor ts[] = {
        T("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", 2, 3 * D, D, in_w),
        T("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias", 1, 3 * D, 0, in_b),
        T("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight", 2, 3 * D, D, in_w),
        T("cond_stage_model.model.transformer.resblocks.1.ln_1.weight", 1, D, 0, ln),
        T("cond_stage_model.model.text_projection", 2, D, P, proj),
        T("cond_stage_model.model.token_embedding.weight", 2, 10, D, tok),
        T("cond_stage_model.model.positional_embedding", 2, 7, D, pos),
        T("cond_stage_model.model.ln_final.weight", 1, D, 0, ln),
        T("cond_stage_model.model.logit_scale", 1, D, 0, ln),
        T("model.diffusion_model.out.0.weight", 1, D, 0, ln),
    };
#undef T
    loco_err err = {0};
    CHECK(loco_safetensors_write(path, ts, sizeof ts / sizeof ts[0], NULL, &err) == LOCO_OK);
    loco_safetensors *f;
    CHECK(loco_safetensors_open(path, &f, &err) == LOCO_OK);
    loco_weights *w;
    CHECK(loco_weights_new_empty("oc", &w, &err) == LOCO_OK);
    CHECK_MSG(loco_ldm_map_open_clip(f, LOCO_LDM_OPENCLIP_SD2_PREFIX, 1, 1, w, &err) == LOCO_OK, "%s", err.msg);
    /* 3 weights + 3 biases + projection + token + position + ln_final; block 1 dropped */
    CHECK(loco_weights_count(w) == 10);
    CHECK(loco_weights_get(w, "text_model.encoder.layers.1.layer_norm1.weight") == NULL);
    const loco_stored_tensor *src =
        loco_safetensors_find(f, "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight");
    static const char *const qkv[3] = {"q", "k", "v"};
    for (int k = 0; k < 3; k++) {
        char n[128];
        snprintf(n, sizeof n, "text_model.encoder.layers.0.self_attn.%s_proj.weight", qkv[k]);
        const loco_stored_tensor *t = loco_weights_get(w, n);
        CHECK(t && t->ndim == 2 && t->shape[0] == D && t->shape[1] == D && t->nbytes == D * D * 4);
        /* a view of rows k*D.. of in_proj, inside the file mapping */
        CHECK(t->data == (const uint8_t *)src->data + (size_t)k * D * D * 4);
        CHECK(((const float *)t->data)[0] == (float)(k * D * D));
        snprintf(n, sizeof n, "text_model.encoder.layers.0.self_attn.%s_proj.bias", qkv[k]);
        t = loco_weights_get(w, n);
        CHECK(t && t->ndim == 1 && t->shape[0] == D &&
              ((const float *)t->data)[D - 1] == 1000.0f + (float)(k * D + D - 1));
    }
    const loco_stored_tensor *tp = loco_weights_get(w, "text_projection.weight");
    CHECK(tp && tp->ndim == 2 && tp->shape[0] == P && tp->shape[1] == D);
    for (int i = 0; i < D; i++)
        for (int j = 0; j < P; j++) CHECK(((const float *)tp->data)[j * D + i] == proj[i * P + j]);
    const loco_stored_tensor *pe = loco_weights_get(w, "text_model.embeddings.position_embedding.weight");
    CHECK(pe && pe->shape[0] == 7 && ((const float *)pe->data)[5] == -5.0f);
    loco_weights_free(w);
    /* SD 2.x style: no projection */
    CHECK(loco_weights_new_empty("oc", &w, &err) == LOCO_OK);
    CHECK(loco_ldm_map_open_clip(f, LOCO_LDM_OPENCLIP_SD2_PREFIX, 1, 0, w, &err) == LOCO_OK);
    CHECK(loco_weights_get(w, "text_projection.weight") == NULL && loco_weights_count(w) == 9);
    loco_weights_free(w);
    /* a prefix with nothing under it */
    CHECK(loco_weights_new_empty("oc", &w, &err) == LOCO_OK);
    CHECK(loco_ldm_map_open_clip(f, LOCO_LDM_OPENCLIP_SDXL_PREFIX, 1, 1, w, &err) == LOCO_ENOTFOUND);
    CHECK(strstr(err.msg, path) != NULL);
    loco_weights_free(w);
    loco_safetensors_close(f);
    st_rm_tree(dir);
}

/* An empty text_projection ([2^32, 0]: valid as a safetensors entry) is an error naming it, not
 * a transpose that walks 2^32 empty rows (a crafted file once hung the loader for ever). */
TEST(open_clip_empty_projection_is_an_error) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/oc.safetensors", dir);
    static const char header[] = "{\"cond_stage_model.model.text_projection\": {\"dtype\": \"F32\", "
                                 "\"shape\": [4294967296, 0], \"data_offsets\": [0, 0]}}";
    const uint64_t n = sizeof header - 1;
    FILE *fp = fopen(path, "wb");
    CHECK(fp && fwrite(&n, 8, 1, fp) == 1 && fwrite(header, 1, n, fp) == n);
    fclose(fp);
    loco_err err = {0};
    loco_safetensors *f;
    CHECK_MSG(loco_safetensors_open(path, &f, &err) == LOCO_OK, "%s", err.msg);
    loco_weights *w;
    CHECK(loco_weights_new_empty("oc", &w, &err) == LOCO_OK);
    CHECK(loco_ldm_map_open_clip(f, LOCO_LDM_OPENCLIP_SD2_PREFIX, 1, 1, w, &err) == LOCO_EFORMAT);
    CHECK_MSG(strstr(err.msg, "text_projection") && strstr(err.msg, "non-empty"), "%s", err.msg);
    loco_weights_free(w);
    loco_safetensors_close(f);
    st_rm_tree(dir);
}

TEST(vae_mapping_squeezes_attention_convs) {
    char dir[256];
    CHECK(st_tmpdir(dir, sizeof dir));
    char path[512];
    snprintf(path, sizeof path, "%s/vae.safetensors", dir);
    float q[4 * 4], nrm[4], b[4];
    for (int i = 0; i < 16; i++) q[i] = (float)i;
    for (int i = 0; i < 4; i++) nrm[i] = b[i] = (float)i;
    loco_stored_tensor ts[] = {
        {.name = "first_stage_model.decoder.mid.attn_1.q.weight",
         .dtype = LOCO_F32,
         .ndim = 4,
         .shape = {4, 4, 1, 1},
         .data = q,
         .nbytes = sizeof q},
        {.name = "first_stage_model.decoder.mid.attn_1.proj_out.weight",
         .dtype = LOCO_F32,
         .ndim = 4,
         .shape = {4, 4, 1, 1},
         .data = q,
         .nbytes = sizeof q},
        {.name = "first_stage_model.decoder.mid.attn_1.q.bias",
         .dtype = LOCO_F32,
         .ndim = 1,
         .shape = {4},
         .data = b,
         .nbytes = sizeof b},
        {.name = "first_stage_model.decoder.mid.attn_1.norm.weight",
         .dtype = LOCO_F32,
         .ndim = 1,
         .shape = {4},
         .data = nrm,
         .nbytes = sizeof nrm},
        {.name = "first_stage_model.decoder.conv_in.weight",
         .dtype = LOCO_F32,
         .ndim = 4,
         .shape = {1, 4, 2, 2},
         .data = q,
         .nbytes = sizeof q},
    };
    loco_err err = {0};
    CHECK(loco_safetensors_write(path, ts, 5, NULL, &err) == LOCO_OK);
    loco_safetensors *f;
    CHECK(loco_safetensors_open(path, &f, &err) == LOCO_OK);
    CHECK(strcmp(loco_ldm_vae_prefix(f), "first_stage_model.") == 0);
    json_t *cfg = json_loads(loco_builtin_config("sd1", "vae/config.json"), 0, NULL);
    loco_weights *w;
    CHECK(loco_weights_new_empty("vae", &w, &err) == LOCO_OK);
    CHECK_MSG(loco_ldm_map_vae(f, cfg, w, &err) == LOCO_OK, "%s", err.msg);
    const loco_stored_tensor *t = loco_weights_get(w, "decoder.mid_block.attentions.0.to_q.weight");
    CHECK(t && t->ndim == 2 && t->shape[0] == 4 && t->shape[1] == 4 && t->nbytes == sizeof q);
    t = loco_weights_get(w, "decoder.mid_block.attentions.0.to_out.0.weight");
    CHECK(t && t->ndim == 2);
    t = loco_weights_get(w, "decoder.conv_in.weight");
    CHECK(t && t->ndim == 4); /* real convs keep their shape */
    CHECK(loco_weights_get(w, "decoder.mid_block.attentions.0.group_norm.weight") != NULL);
    CHECK(loco_weights_get(w, "decoder.mid_block.attentions.0.to_q.bias") != NULL);
    loco_weights_free(w);
    json_decref(cfg);
    loco_safetensors_close(f);
    st_rm_tree(dir);
}

