/* test_cuda_pipeline.c: every pipeline stage on the CUDA backend (F16 activations) against the
 * CPU backend (F32, the reference) on the fixture models (tests/fixtures/models/<model>):
 *   - text encoding (encode_prompt: both halves of guidance, SD-XL's pooled embeddings);
 *   - one UNet call on identical inputs (the CPU's text embeddings uploaded to both), then the
 *     same call three more times on the GPU, which warms up, records and replays a CUDA graph
 *     (results must equal the first call's), and once with a changed text_index (re-recording);
 *   - a VAE decode (SD-XL's VAE must compute in F32 there: force_upcast);
 *   - a whole text-to-image run (bit-identical initial noise; final latents within 1e-2);
 *   - an out-of-GPU-memory request: a clear LOCO_EDEVICE_OOM, no tensor left behind, and the
 *     next request on the same pipeline works.
 * Tolerance: relative L2 error <= 1e-2 against the CPU, never a NaN (NaN fails every check).
 *
 * Without a GPU every test reports skipped ("no CUDA device: ..."); bench/gpu-check.sh runs this
 * binary on a GPU machine and treats a skip as a failure there. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test_util.h"
#include "loco_test.h"
#include "model_ref_util.h"
#include "pipeline_impl.h"

#define TOL 1e-2

typedef struct penv {
    loco_backend *cpu, *gpu;
    loco_pipeline *pc, *pg;
    const char *model;
} penv;

static void penv_close(penv *e) {
    loco_pipeline_free(e->pc);
    loco_pipeline_free(e->pg);
    loco_backend_destroy(e->gpu);
    loco_backend_destroy(e->cpu);
    memset(e, 0, sizeof *e);
}

static loco_pipeline *load_on(loco_backend *be, const char *model, char *why, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/models/%s", loco_fixtures_dir(), model);
    loco_pipeline_opts po;
    loco_pipeline_opts_init(&po);
    po.model_path = path;
    loco_pipeline *p = NULL;
    loco_err err;
    loco_err_clear(&err);
    if (loco_pipeline_load(be, &po, &p, &err))
        snprintf(why, n, "loading %.300s on %s: %.700s", path, loco_device_name(loco_backend_device(be)), err.msg);
    return p;
}

/* 1: both pipelines loaded; 0: no usable GPU (why says so); -1: a failure that must not pass as a
 * skip. The CPU side is only built once the GPU is known to be there. */
static int penv_open(penv *e, const char *model, char *why, size_t n) {
    memset(e, 0, sizeof *e);
    e->model = model;
    const int opened = gpu_backend_open(LOCO_F16, &e->gpu, why, n);
    if (opened != 1) return opened;
    e->cpu = mr_cpu();
    if (!e->cpu) {
        snprintf(why, n, "cpu backend did not start");
        penv_close(e);
        return -1;
    }
    e->pc = load_on(e->cpu, model, why, n);
    if (e->pc) e->pg = load_on(e->gpu, model, why, n);
    if (!e->pc || !e->pg) {
        penv_close(e);
        return -1;
    }
    return 1;
}

#define PIPE_ENV(e, model)                                                                                         \
    penv e;                                                                                                        \
    do {                                                                                                           \
        char why_[1400];                                                                                           \
        int r_ = penv_open(&e, model, why_, sizeof why_);                                                          \
        if (r_ == 0) SKIP("%s", why_);                                                                             \
        CHECK_MSG(r_ == 1, "%s", why_);                                                                            \
    } while (0)

/* Relative L2 error of GPU tensor g against CPU tensor c (NaN when either holds a NaN; 2 when
 * a download fails or the sizes differ). */
static double tensor_rel_err(const loco_tensor *g, const loco_tensor *c) {
    if (loco_tensor_numel(g) != loco_tensor_numel(c)) return 2.0;
    float *a = mr_download(g), *b = mr_download(c);
    double r = a && b ? loco_rel_l2(a, b, (size_t)loco_tensor_numel(c)) : 2.0;
    free(a);
    free(b);
    return r;
}

/* Bitwise-equal downloads (a replay runs the recorded kernels on the same inputs). */
static int same_bits(const loco_tensor *a, const loco_tensor *b) {
    if (loco_tensor_numel(a) != loco_tensor_numel(b)) return 0;
    float *x = mr_download(a), *y = mr_download(b);
    int same = x && y && memcmp(x, y, (size_t)loco_tensor_numel(a) * sizeof *x) == 0;
    free(x);
    free(y);
    return same;
}

/* The same host values on a backend, in its activation dtype. */
static int upload_f32(loco_backend *be, int nd, const int64_t *shape, const float *h, loco_tensor *t) {
    loco_err e;
    loco_err_clear(&e);
    if (loco_tensor_alloc_act(be, nd, shape, t, &e) || loco_tensor_upload(t, h, LOCO_F32, &e)) {
        fprintf(stderr, "upload: %s\n", e.msg);
        loco_tensor_free(t);
        return -1;
    }
    return 0;
}

static float *random_host(size_t n, uint64_t seed) {
    float *h = malloc(n * sizeof *h);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
    for (size_t i = 0; h && i < n; i++) {
        /* sum of 4 uniforms: roughly normal, like latents */
        float v = 0;
        for (int k = 0; k < 4; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            v += (float)(s >> 40) / 16777216.0f - 0.5f;
        }
        h[i] = v * 1.7f;
    }
    return h;
}

static loco_text_encoders encoders_of(const loco_pipeline *p) {
    loco_text_encoders enc;
    loco_text_encoders_init(&enc);
    enc.family = p->family;
    enc.tokenizer = p->tokenizer;
    enc.text_encoder = p->text_encoder;
    enc.tokenizer_2 = p->tokenizer_2;
    enc.text_encoder_2 = p->text_encoder_2;
    enc.force_zeros_for_empty_prompt = p->force_zeros_for_empty_prompt;
    return enc;
}

static loco_status encode(const loco_pipeline *p, loco_prompt_embeds *pe, loco_err *err) {
    static const char *const prompts[2] = {"a photograph of an astronaut riding a horse", "a red cube on a table"};
    static const char *const negatives[2] = {"blurry", "low quality"};
    loco_text_encoders enc = encoders_of(p);
    loco_encode_prompt_opts o;
    loco_encode_prompt_opts_init(&o);
    o.n_prompts = 2;
    o.prompts = prompts;
    o.negative_prompts = negatives;
    o.do_classifier_free_guidance = 1;
    return loco_encode_prompt(&enc, &o, pe, err);
}

/* ---- text encoder --------------------------------------------------------------------------- */

static void text_parity(const char *model) {
    PIPE_ENV(e, model);
    loco_prompt_embeds pc, pg;
    memset(&pc, 0, sizeof pc);
    memset(&pg, 0, sizeof pg);
    loco_err err;
    loco_err_clear(&err);
    int ok = encode(e.pc, &pc, &err) == LOCO_OK;
    if (ok) ok = encode(e.pg, &pg, &err) == LOCO_OK;
    double r = ok ? tensor_rel_err(&pg.embeds, &pc.embeds) : 2, rp = 0;
    if (ok && e.pc->family == LOCO_FAMILY_SDXL) rp = tensor_rel_err(&pg.pooled, &pc.pooled);
    fprintf(stderr, "%s text: embeds rel err %.3g, pooled %.3g\n", model, r, rp);
    loco_prompt_embeds_free(&pc);
    loco_prompt_embeds_free(&pg);
    penv_close(&e);
    CHECK_MSG(ok, "%s", err.msg);
    CHECK(r <= TOL);
    CHECK(rp <= TOL);
}

TEST(cuda_text_encoder_sd1_tiny) { text_parity("sd1-tiny"); }
TEST(cuda_text_encoder_sd2_tiny) { text_parity("sd2-tiny"); }
TEST(cuda_text_encoder_sdxl_tiny) { text_parity("sdxl-tiny"); }

/* ---- one UNet call, and its graph ------------------------------------------------------------- */

/* The inputs of one guided UNet call, built identically on one backend from host data. */
typedef struct unet_call {
    loco_tensor sample, text, pooled;
    loco_unet_text_kv kv;
    float timesteps[4];
    float time_ids[4 * 6];
    int text_index[4];
    loco_unet_inputs in;
} unet_call;

static void unet_call_free(unet_call *c) {
    loco_tensor_free(&c->sample);
    loco_tensor_free(&c->text);
    loco_tensor_free(&c->pooled);
    loco_unet_text_kv_free(&c->kv);
}

/* 4 UNet rows (guidance over 2 prompts) attending to text rows [0, 1, 2, 3]. */
static int unet_call_make(const loco_pipeline *p, const float *sample, const int64_t *sshape, const float *text,
                          const int64_t *tshape, const float *pooled, const int64_t *pshape, unet_call *c) {
    memset(c, 0, sizeof *c);
    loco_backend *be = p->be;
    if (upload_f32(be, 4, sshape, sample, &c->sample) || upload_f32(be, 3, tshape, text, &c->text)) return -1;
    if (pooled && upload_f32(be, 2, pshape, pooled, &c->pooled)) return -1;
    loco_err err;
    loco_err_clear(&err);
    if (loco_unet_compute_text_kv(p->unet, &c->text, NULL, &c->kv, &err)) {
        fprintf(stderr, "text kv: %s\n", err.msg);
        return -1;
    }
    const float side = (float)(sshape[2] * p->vae_scale);
    for (int r = 0; r < 4; r++) {
        c->timesteps[r] = 981.0f;
        c->text_index[r] = r;
        const float ids[6] = {side, side, 0, 0, side, side};
        memcpy(c->time_ids + 6 * r, ids, sizeof ids);
    }
    loco_unet_inputs_init(&c->in);
    c->in.sample = &c->sample;
    c->in.timesteps = c->timesteps;
    c->in.encoder_hidden_states = &c->text;
    c->in.text_index = c->text_index;
    c->in.text_kv = &c->kv;
    if (pooled) {
        c->in.text_embeds = &c->pooled;
        c->in.time_ids = c->time_ids;
    }
    return 0;
}

/* A hook that only counts: with any hook the transformer blocks keep their residual adds as
 * separate passes (the fused GEMM form runs only without hooks), so this reaches that path. */
static loco_status count_hook(void *ctx, const loco_site *site, loco_tensor *out, loco_err *err) {
    (void)site, (void)out, (void)err;
    ++*(long *)ctx;
    return LOCO_OK;
}

static void unet_parity(const char *model) {
    PIPE_ENV(e, model);
    loco_err err;
    loco_err_clear(&err);
    loco_prompt_embeds pe;
    memset(&pe, 0, sizeof pe);
    unet_call cc, cg;
    memset(&cc, 0, sizeof cc);
    memset(&cg, 0, sizeof cg);
    loco_tensor oc = {0}, og[5] = {{0}}, ooff = {0};
    float *text = NULL, *pooled = NULL, *sample = NULL;
    int ok = encode(e.pc, &pe, &err) == LOCO_OK; /* the CPU's text feeds both: this tests the UNet */
    const int sx = e.pc->family == LOCO_FAMILY_SDXL;
    const loco_unet_config *uc = loco_unet_get_config(e.pc->unet);
    const int64_t side = uc->sample_size > 0 ? uc->sample_size : 8;
    const int64_t sshape[4] = {4, uc->in_channels, side, side};
    if (ok) {
        text = mr_download(&pe.embeds);
        pooled = sx ? mr_download(&pe.pooled) : NULL;
        sample = random_host((size_t)(sshape[0] * sshape[1] * side * side), 11);
        ok = text && sample && (!sx || pooled);
    }
    ok = ok && unet_call_make(e.pc, sample, sshape, text, pe.embeds.shape, pooled, pe.pooled.shape, &cc) == 0 &&
         unet_call_make(e.pg, sample, sshape, text, pe.embeds.shape, pooled, pe.pooled.shape, &cg) == 0;
    if (ok) ok = loco_unet_forward(e.pc->unet, &cc.in, &oc, &err) == LOCO_OK;
    /* GPU: call 0 warms the graph's pool up, call 1 records and replays, calls 2-3 replay */
    for (int i = 0; ok && i < 4; i++) ok = loco_unet_forward(e.pg->unet, &cg.in, &og[i], &err) == LOCO_OK;
    double r = ok ? tensor_rel_err(&og[0], &oc) : 2;
    int replays_same = ok && same_bits(&og[1], &og[0]) && same_bits(&og[2], &og[0]) && same_bits(&og[3], &og[0]);
    loco_unet_graph_stats gs;
    loco_unet_graph_stats_get(e.pg->unet, &gs);
    /* a changed text_index re-records (same shapes): compare with the CPU on the same rows */
    double r_swap = 0;
    if (ok) {
        const int swapped[4] = {1, 0, 3, 2};
        memcpy(cc.text_index, swapped, sizeof swapped);
        memcpy(cg.text_index, swapped, sizeof swapped);
        loco_tensor_free(&oc);
        ok = loco_unet_forward(e.pc->unet, &cc.in, &oc, &err) == LOCO_OK &&
             loco_unet_forward(e.pg->unet, &cg.in, &og[4], &err) == LOCO_OK;
        r_swap = ok ? tensor_rel_err(&og[4], &oc) : 2;
    }
    loco_unet_graph_stats gs2;
    loco_unet_graph_stats_get(e.pg->unet, &gs2);
    /* and the plain path gives what the graph gave */
    int off_same = 0;
    if (ok) {
        loco_unet_set_graphs(e.pg->unet, 0);
        ok = loco_unet_forward(e.pg->unet, &cg.in, &ooff, &err) == LOCO_OK;
        off_same = ok && same_bits(&ooff, &og[4]);
    }
    /* with a (counting) hook: the unfused residual adds, against the same CPU result */
    double r_hooked = 0;
    long hook_calls = 0;
    if (ok) {
        loco_tensor oh = {0};
        cg.in.hooks.after = count_hook;
        cg.in.hooks.ctx = &hook_calls;
        ok = loco_unet_forward(e.pg->unet, &cg.in, &oh, &err) == LOCO_OK;
        r_hooked = ok ? tensor_rel_err(&oh, &oc) : 2;
        cg.in.hooks.after = NULL;
        loco_tensor_free(&oh);
    }
    const int has_graphs = loco_backend_has_graphs(e.gpu);
    fprintf(stderr,
            "%s unet: rel err %.3g (swapped rows %.3g, hooked %.3g); graphs %s: %ld captures, %ld replays, "
            "%ld plain calls, pool %.1f MiB%s%s\n",
            model, r, r_swap, r_hooked, has_graphs ? "on" : "off", gs2.captures, gs2.replays, gs2.eager_calls,
            (double)gs.pool_bytes / 1048576.0, gs2.last_error[0] ? "; last failure: " : "", gs2.last_error);
    for (int i = 0; i < 5; i++) loco_tensor_free(&og[i]);
    loco_tensor_free(&oc);
    loco_tensor_free(&ooff);
    unet_call_free(&cc);
    unet_call_free(&cg);
    loco_prompt_embeds_free(&pe);
    free(text);
    free(pooled);
    free(sample);
    penv_close(&e);
    CHECK_MSG(ok, "%s", err.msg);
    CHECK(r <= TOL);
    CHECK(r_swap <= TOL);
    CHECK(r_hooked <= TOL);
    CHECK(hook_calls > 0);
    CHECK(replays_same);
    CHECK(off_same);
    if (has_graphs) {
        /* recording must really happen on a GPU: a silent fallback would hide the speed-up */
        CHECK_MSG(gs.captures == 1 && gs.replays == 3 && gs.eager_calls == 1, "%ld/%ld/%ld: %s", gs.captures,
                  gs.replays, gs.eager_calls, gs.last_error);
        CHECK_MSG(gs2.captures == 2 && gs2.replays == 4, "%ld/%ld: %s", gs2.captures, gs2.replays, gs2.last_error);
    }
}

TEST(cuda_unet_call_sd1_tiny) { unet_parity("sd1-tiny"); }
TEST(cuda_unet_call_sd2_tiny) { unet_parity("sd2-tiny"); }
TEST(cuda_unet_call_sdxl_tiny) { unet_parity("sdxl-tiny"); }

/* ---- VAE decode -------------------------------------------------------------------------------- */

static void vae_parity(const char *model) {
    PIPE_ENV(e, model);
    loco_err err;
    loco_err_clear(&err);
    const loco_unet_config *uc = loco_unet_get_config(e.pc->unet);
    const int64_t side = uc->sample_size > 0 ? uc->sample_size : 8;
    const int64_t shape[4] = {2, uc->in_channels, side, side};
    float *lat = random_host((size_t)(shape[0] * shape[1] * side * side), 5);
    loco_tensor lc = {0}, lg = {0}, ic = {0}, ig = {0};
    int ok = lat && upload_f32(e.cpu, 4, shape, lat, &lc) == 0 && upload_f32(e.gpu, 4, shape, lat, &lg) == 0;
    if (ok) ok = loco_vae_decode(e.pc->vae, &lc, NULL, NULL, &ic, &err) == LOCO_OK;
    if (ok) ok = loco_vae_decode(e.pg->vae, &lg, NULL, NULL, &ig, &err) == LOCO_OK;
    double r = ok ? tensor_rel_err(&ig, &ic) : 2;
    /* as in diffusers: only the SD-XL pipeline upcasts a force_upcast VAE */
    const loco_dtype want =
        e.pg->family == LOCO_FAMILY_SDXL && loco_vae_get_config(e.pg->vae)->force_upcast ? LOCO_F32 : LOCO_F16;
    const loco_dtype got = loco_vae_dtype(e.pg->vae);
    fprintf(stderr, "%s vae decode: rel err %.3g, GPU VAE computes in %s\n", model, r, loco_dtype_name(got));
    loco_tensor_free(&lc);
    loco_tensor_free(&lg);
    loco_tensor_free(&ic);
    loco_tensor_free(&ig);
    free(lat);
    penv_close(&e);
    CHECK_MSG(ok, "%s", err.msg);
    CHECK(r <= TOL);
    CHECK(got == want);
}

TEST(cuda_vae_decode_sd1_tiny) { vae_parity("sd1-tiny"); }
TEST(cuda_vae_decode_sd2_tiny) { vae_parity("sd2-tiny"); }
TEST(cuda_vae_decode_sdxl_tiny) { vae_parity("sdxl-tiny"); }

/* ---- the whole pipeline ------------------------------------------------------------------------ */

static loco_generate_params gen_params(const char *const *prompts, int steps) {
    loco_generate_params g;
    loco_generate_params_init(&g);
    g.n_prompts = 2;
    g.prompts = prompts;
    g.seed = 1234;
    g.steps = steps;
    return g;
}

static void pipeline_parity(const char *model) {
    PIPE_ENV(e, model);
    static const char *const prompts[2] = {"a watercolor painting of a lighthouse", "a bowl of ramen"};
    loco_generate_params g = gen_params(prompts, 10);
    loco_generate_result rc, rg;
    memset(&rc, 0, sizeof rc);
    memset(&rg, 0, sizeof rg);
    loco_err err;
    loco_err_clear(&err);
    int ok = loco_generate(e.pc, &g, &rc, &err) == LOCO_OK && loco_generate(e.pg, &g, &rg, &err) == LOCO_OK;
    size_t n = ok ? (size_t)(rc.latent_shape[0] * rc.latent_shape[1] * rc.latent_shape[2] * rc.latent_shape[3]) : 0;
    int noise_same = ok && memcmp(rc.initial_latents, rg.initial_latents, n * sizeof(float)) == 0;
    double r = ok ? loco_rel_l2(rg.latents, rc.latents, n) : 2;
    int max_px = ok ? 0 : 256;
    for (int k = 0; ok && k < rc.n_images && k < rg.n_images; k++) {
        size_t px = (size_t)rc.images[k].width * (size_t)rc.images[k].height * 3;
        for (size_t i = 0; i < px; i++) {
            int d = abs((int)rc.images[k].data[i] - (int)rg.images[k].data[i]);
            if (d > max_px) max_px = d;
        }
    }
    int same_count = ok && rc.n_images == rg.n_images && rc.n_images == 2;
    fprintf(stderr, "%s pipeline: noise %s, final latents rel err %.3g, max pixel diff %d/255\n", model,
            noise_same ? "bit-exact" : "DIFFERENT", r, max_px);
    loco_generate_result_free(&rc);
    loco_generate_result_free(&rg);
    penv_close(&e);
    CHECK_MSG(ok, "%s", err.msg);
    CHECK(same_count);
    CHECK(noise_same);
    CHECK(r <= TOL);
}

TEST(cuda_pipeline_sd1_tiny) { pipeline_parity("sd1-tiny"); }
TEST(cuda_pipeline_sd2_tiny) { pipeline_parity("sd2-tiny"); }
TEST(cuda_pipeline_sdxl_tiny) { pipeline_parity("sdxl-tiny"); }

/* ---- out of GPU memory -------------------------------------------------------------------------- */

/* Fills the GPU with 1 GiB tensors until it is full, then frees `room` of them, so that what a
 * request may take is known whatever the card (the allocator gives cached blocks back to the
 * driver before it reports OOM, so the freed ones are really available). Returns the count held. */
static int ballast_fill(loco_backend *be, loco_tensor *t, int max, int room) {
    int n = 0;
    const int64_t shape[1] = {(int64_t)1 << 29}; /* F16: 1 GiB */
    loco_err err;
    while (n < max && loco_tensor_alloc(be, LOCO_F16, 1, shape, &t[n], &err) == LOCO_OK) n++;
    for (int i = 0; i < room && n > 0; i++) loco_tensor_free(&t[--n]);
    return n;
}

/* A request that needs more than the 1-2 GiB left: 32 images of 1024^2 px (the tiny VAE's
 * full-size activations are 1 GiB each, and a resnet holds three). It must end with LOCO_EDEVICE_OOM and a message
 * naming the sizes, leave no tensor allocated, and the pipeline must serve the next request with
 * the same result as before. */
TEST(cuda_out_of_memory_is_a_clean_error) {
    PIPE_ENV(e, "sd1-tiny");
    if (gpu_is_emulated(e.gpu)) {
        penv_close(&e);
        SKIP("the request that runs out of memory takes hours on the CPU kernel emulator");
    }
    static const char *const prompts[2] = {"a cat", "a dog"};
    loco_generate_params g = gen_params(prompts, 2);
    loco_generate_result before, huge, after;
    memset(&before, 0, sizeof before);
    memset(&huge, 0, sizeof huge);
    memset(&after, 0, sizeof after);
    enum { MAX_BALLAST = 512 };
    loco_tensor *ballast = calloc(MAX_BALLAST, sizeof *ballast);
    loco_err err;
    loco_err_clear(&err);
    int ok = ballast && loco_generate(e.pg, &g, &before, &err) == LOCO_OK;
    size_t live0 = 0, live1 = 0;
    loco_status st = LOCO_OK;
    char msg[sizeof err.msg];
    msg[0] = 0;
    int held = 0;
    /* recorded UNet graphs keep fixed input/output tensors per shape (a cache, not a leak):
     * drop them around each count */
    loco_unet *u = loco_pipeline_unet(e.pg);
    if (ok) {
        loco_unet_set_graphs(u, 0);
        loco_unet_set_graphs(u, 1);
        held = ballast_fill(e.gpu, ballast, MAX_BALLAST, 1);
        loco_backend_memory(e.gpu, &live0, NULL);
        loco_generate_params big = g;
        big.num_images_per_prompt = 16;
        big.width = big.height = 1024;
        big.steps = 1;
        st = loco_generate(e.pg, &big, &huge, &err);
        snprintf(msg, sizeof msg, "%s", err.msg);
        loco_unet_set_graphs(u, 0);
        loco_unet_set_graphs(u, 1);
        loco_backend_memory(e.gpu, &live1, NULL);
        for (int i = 0; i < held; i++) loco_tensor_free(&ballast[i]);
        ok = loco_generate(e.pg, &g, &after, &err) == LOCO_OK;
    }
    size_t n = ok ? (size_t)(before.latent_shape[0] * before.latent_shape[1] * before.latent_shape[2] *
                             before.latent_shape[3])
                  : 0;
    double r = ok ? loco_rel_l2(after.latents, before.latents, n) : 2;
    fprintf(stderr,
            "huge request with %d GiB of ballast: %s: %s; live tensor bytes %zu before, %zu after; rerun rel diff "
            "%.3g\n",
            held, loco_status_name(st), msg, live0, live1, r);
    loco_generate_result_free(&before);
    loco_generate_result_free(&huge);
    loco_generate_result_free(&after);
    free(ballast);
    penv_close(&e);
    CHECK_MSG(ok, "%s", err.msg);
    CHECK(held > 0);
    CHECK(st == LOCO_EDEVICE_OOM);
    CHECK(strstr(msg, "out of GPU memory") != NULL);
    CHECK(live1 == live0);
    CHECK(r <= 1e-6); /* the same request gives the same result after the failure */
}

/* Memory running short while recorded graphs hold pools (backend.h, "memory pressure"): a
 * request that cannot fit even with the pools given back (bigger than the card; a 64 MiB block
 * when less is free) leaves them alone; ballast in small blocks, which the pools' memory can
 * serve, gets it: the allocator asks the UNet's reclaimer before it reports out of memory. The
 * request then records again and gives the same bits. */
TEST(cuda_idle_graph_pools_are_given_back_when_memory_runs_short) {
    PIPE_ENV(e, "sd1-tiny");
    if (!loco_backend_has_graphs(e.gpu)) {
        penv_close(&e);
        SKIP("graphs are off (LOCO_CUDA_GRAPHS=0)");
    }
    static const char *const prompts[2] = {"a cat", "a dog"};
    loco_generate_params g = gen_params(prompts, 3); /* warm-up, recording, replay */
    loco_generate_result before, after;
    memset(&before, 0, sizeof before);
    memset(&after, 0, sizeof after);
    loco_err err;
    loco_err_clear(&err);
    loco_unet *u = loco_pipeline_unet(e.pg);
    loco_unet_graph_stats st0, sth, st1, st2, st3;
    memset(&st0, 0, sizeof st0);
    memset(&sth, 0, sizeof sth);
    memset(&st1, 0, sizeof st1);
    memset(&st2, 0, sizeof st2);
    memset(&st3, 0, sizeof st3);
    enum { MAX_BALLAST = 1 << 16 };
    loco_tensor *ballast = calloc(MAX_BALLAST, sizeof *ballast);
    int ok = ballast && loco_generate(e.pg, &g, &before, &err) == LOCO_OK;
    int held_big = 0, held_small = 0, giant_oom = 0;
    loco_status last = LOCO_OK;
    size_t free0 = 0, free1 = 0, free2 = 0, total = 0, could = 0;
    if (ok) {
        loco_unet_graph_stats_get(u, &st0);
        loco_backend_device_memory(e.gpu, &free0, &total, NULL);
        could = loco_backend_reclaimable(e.gpu);
        loco_tensor giant;
        const int64_t gshape[1] = {(int64_t)(total / 2 + 1)}; /* F16: more bytes than the card has */
        giant_oom = loco_tensor_alloc(e.gpu, LOCO_F16, 1, gshape, &giant, &err) == LOCO_EDEVICE_OOM;
        loco_unet_graph_stats_get(u, &sth);
        const int64_t big[1] = {(int64_t)32 << 20}, small[1] = {(int64_t)32 << 10}; /* F16: 64 MiB, 64 KiB */
        int n = 0;
        while (n < MAX_BALLAST && loco_tensor_alloc(e.gpu, LOCO_F16, 1, big, &ballast[n], &err) == LOCO_OK) n++;
        held_big = n;
        loco_unet_graph_stats_get(u, &st1);
        loco_backend_device_memory(e.gpu, &free1, &total, NULL);
        while (n < MAX_BALLAST && (last = loco_tensor_alloc(e.gpu, LOCO_F16, 1, small, &ballast[n], &err)) == 0) n++;
        held_small = n - held_big;
        loco_unet_graph_stats_get(u, &st2);
        loco_backend_device_memory(e.gpu, &free2, &total, NULL);
        for (int i = 0; i < n; i++) loco_tensor_free(&ballast[i]);
        loco_err_clear(&err);
        ok = loco_generate(e.pg, &g, &after, &err) == LOCO_OK;
        loco_unet_graph_stats_get(u, &st3);
    }
    const size_t n = ok ? (size_t)(before.latent_shape[0] * before.latent_shape[1] * before.latent_shape[2] *
                                   before.latent_shape[3])
                        : 0;
    const int same = ok && memcmp(before.latents, after.latents, n * sizeof(float)) == 0;
    const size_t held = (size_t)held_big * ((size_t)64 << 20) + (size_t)held_small * ((size_t)64 << 10);
    fprintf(stderr,
            "graph pools %zu bytes in %d shape(s), %zu could go; a request bigger than the card: %s, %ld reclaimed; "
            "64 MiB x %d until %zu MiB free, %ld reclaimed; 64 KiB x %d until %s, %zu KiB free, pools %zu bytes, "
            "%ld reclaimed; after: %d shape(s), %ld captures (%ld before)\n",
            st0.pool_bytes, st0.shapes, could, giant_oom ? "out of memory" : "?", sth.reclaimed, held_big, free1 >> 20,
            st1.reclaimed, held_small, loco_status_name(last), free2 >> 10, st2.pool_bytes, st2.reclaimed, st3.shapes,
            st3.captures, st0.captures);
    loco_generate_result_free(&before);
    loco_generate_result_free(&after);
    free(ballast);
    penv_close(&e);
    CHECK_MSG(ok, "%s", err.msg);
    CHECK(st0.shapes == 1 && st0.pool_bytes > 0 && st0.reclaimed == 0 && could > st0.pool_bytes);
    CHECK(giant_oom && sth.reclaimed == 0 && sth.shapes == 1); /* hopeless: the graphs stay */
    if (free1 + could < ((size_t)64 << 20)) CHECK(st1.reclaimed == 0 && st1.shapes == 1); /* likewise */
    CHECK(held_small > 0 && last == LOCO_EDEVICE_OOM);
    CHECK(st2.reclaimed == 1 && st2.shapes == 0 && st2.pool_bytes == 0); /* the card was full: the pool went */
    CHECK(held + free2 >= free0 + st0.pool_bytes); /* ... to the ballast */
    CHECK(st3.shapes == 1 && st3.captures > st0.captures);
    CHECK(same);
}
