/* test_image.c: output quantisation as diffusers does it, PNG round trips and errors. */
#include "loco_test.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "safetensors.h"

/* Small PNGs written by PIL (Image.save(format="PNG"), Pillow 13), with
 * np.array(im.convert("RGB")) as the expected pixels: checks that what we read is what a
 * diffusers user's PIL sees. */
/* gray: L 3x2 */
static const unsigned char gray_png[] = {137,80,78,71,13,10,26,10,0,0,0,13,73,72,68,82,0,0,0,3,0,0,0,2,8,0,0,0,0,184,31,57,198,0,0,0,16,73,68,65,84,120,156,99,96,16,252,207,208,192,124,2,0,7,183,2,92,20,226,79,216,0,0,0,0,73,69,78,68,174,66,96,130};
static const unsigned char gray_rgb[] = {0,0,0,17,17,17,255,255,255,128,128,128,3,3,3,200,200,200};
/* pal: P 3x2 */
static const unsigned char pal_png[] = {137,80,78,71,13,10,26,10,0,0,0,13,73,72,68,82,0,0,0,3,0,0,0,2,2,3,0,0,0,224,26,142,137,0,0,0,9,80,76,84,69,10,20,30,200,100,50,0,255,7,31,54,174,179,0,0,0,12,73,68,65,84,120,156,99,144,96,152,0,0,0,220,0,169,108,231,192,35,0,0,0,0,73,69,78,68,174,66,96,130};
static const unsigned char pal_rgb[] = {10,20,30,200,100,50,0,255,7,0,255,7,200,100,50,10,20,30};
/* rgba: RGBA 2x2 */
static const unsigned char rgba_png[] = {137,80,78,71,13,10,26,10,0,0,0,13,73,72,68,82,0,0,0,2,0,0,0,2,8,6,0,0,0,114,182,13,36,0,0,0,26,73,68,65,84,120,156,99,100,100,98,102,80,55,176,108,96,248,255,239,239,127,118,14,78,70,0,38,74,5,42,151,107,250,0,0,0,0,0,73,69,78,68,174,66,96,130};
static const unsigned char rgba_rgb[] = {1,2,3,40,50,60,255,254,253,7,8,9};
static const unsigned char rgba_rgba[] = {1,2,3,0,40,50,60,128,255,254,253,255,7,8,9,1};

/* Inputs and the uint8 that VaeImageProcessor.postprocess gives for them (numpy 2.4, torch
 * 2.x): the first four land exactly on k + 0.5 after * 255 in fp32 and must round to even. */
static const struct { float x; unsigned char u8; } known[] = {
    {-0x1.0101p-7f, 126},     /* 126.5 -> 126 */
    {0.0f, 128},              /* 127.5 -> 128 */
    {0x1.f9f9f8p-1f, 254},    /* 253.5 -> 254 */
    {0x1.fdfdfcp-1f, 254},    /* 254.5 -> 254 */
    {-1.0f, 0},  {1.0f, 255}, {-1.5f, 0}, {2.0f, 255}, {INFINITY, 255}, {-INFINITY, 0},
    {0x1.0624dep-10f, 128},   /* 0.001 */
    {-0x1.ff7ceep-1f, 0},     /* -0.999 */
    {0x1.fff2e4p-1f, 255},    /* 0.9999 */
};

TEST(quantize_matches_diffusers_table) {
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        CHECK_MSG(loco_image_quantize(known[i].x) == known[i].u8, "x=%a got %d want %d", known[i].x,
                  loco_image_quantize(known[i].x), known[i].u8);
}

TEST(quantize_sweep_matches_rint) {
    /* an independent formulation (rintf in the default round-to-nearest-even mode) over a
     * dense sweep of [-1.1, 1.1], which hits many ties */
    int ties = 0;
    for (int i = -2200000; i <= 2200000; i++) {
        float x = (float)i / 2000000.0f;
        float v = x * 0.5f + 0.5f;
        v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
        float y = v * 255.0f;
        if (y - floorf(y) == 0.5f) ties++;
        unsigned char want = (unsigned char)rintf(y);
        CHECK_MSG(loco_image_quantize(x) == want, "x=%a got %d want %d", x, loco_image_quantize(x), want);
    }
    CHECK_MSG(ties > 0, "the sweep must contain exact ties");
}

TEST(postprocess_layout_and_clamp) {
    /* [2, 3, 2, 2]: pick image 1 and check NCHW -> interleaved order */
    float x[2 * 3 * 2 * 2];
    for (int i = 0; i < 24; i++) x[i] = -1.0f + (float)i / 12.0f; /* spans [-1, 0.917] */
    x[12 + 4 * 2 + 3] = 5.0f;  /* image 1, channel 2, pixel 3: clamps to 255 */
    x[12 + 0] = -7.0f;         /* image 1, channel 0, pixel 0: clamps to 0 */
    loco_image img;
    loco_err e;
    CHECK(loco_image_postprocess(x, 2, 3, 2, 2, 1, &img, &e) == LOCO_OK);
    CHECK(img.width == 2 && img.height == 2 && img.channels == 3);
    for (int p = 0; p < 4; p++)
        for (int c = 0; c < 3; c++)
            CHECK(img.data[p * 3 + c] == loco_image_quantize(x[12 + c * 4 + p]));
    CHECK(img.data[0] == 0);
    CHECK(img.data[3 * 3 + 2] == 255);
    loco_image_free(&img);
    CHECK(img.data == NULL);
}

TEST(postprocess_nan_is_an_error) {
    float x[3 * 2 * 2] = {0};
    x[4 + 3] = NAN; /* channel 1, y 1, x 1 */
    loco_image img;
    loco_err e;
    CHECK(loco_image_postprocess(x, 1, 3, 2, 2, 0, &img, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "NaN") && strstr(e.msg, "channel 1"), "%s", e.msg);
    CHECK(img.data == NULL);
    CHECK(loco_image_postprocess(x, 1, 2, 2, 2, 0, &img, &e) == LOCO_EINVAL); /* 2 channels */
    CHECK(loco_image_postprocess(x, 1, 3, 2, 2, 1, &img, &e) == LOCO_EINVAL); /* index out of range */
}

TEST(preprocess_inverts_quantize) {
    loco_image img;
    CHECK(loco_image_alloc(16, 16, 3, &img, NULL) == LOCO_OK);
    for (int i = 0; i < 16 * 16 * 3; i++) img.data[i] = (unsigned char)i;
    float *f = malloc(sizeof(float) * 16 * 16 * 3);
    CHECK(loco_image_preprocess(&img, f, NULL) == LOCO_OK);
    /* pixel 1 channel 2 sits at plane 2, index 1 */
    CHECK_CLOSE(f[2 * 256 + 1], 2.0 * (1 * 3 + 2) / 255.0 - 1.0, 1e-6);
    /* every u8 survives preprocess -> postprocess */
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < 256; p++) CHECK(loco_image_quantize(f[c * 256 + p]) == img.data[p * 3 + c]);
    free(f);
    loco_image_free(&img);
}

static void tmpdir(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/loco_test_image_XXXXXX");
    if (!mkdtemp(buf)) buf[0] = 0;
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    closedir(d);
    return n;
}

TEST(png_round_trip_file_and_buffer) {
    for (int channels = 1; channels <= 4; channels++) {
        if (channels == 2) continue;
        loco_image img, back;
        CHECK(loco_image_alloc(37, 23, channels, &img, NULL) == LOCO_OK);
        for (int i = 0; i < 37 * 23 * channels; i++) img.data[i] = (unsigned char)(i * 7 + 3);
        void *buf;
        size_t len;
        loco_err e;
        CHECK(loco_png_encode(&img, &buf, &len, &e) == LOCO_OK);
        CHECK(len > 8 && memcmp(buf, "\x89PNG\r\n\x1a\n", 8) == 0);
        loco_png_read_opts o;
        loco_png_read_opts_init(&o);
        o.channels = channels == 4 ? 4 : 3;
        CHECK(loco_png_decode(buf, len, &o, &back, &e) == LOCO_OK);
        CHECK(back.width == 37 && back.height == 23 && back.channels == o.channels);
        for (int p = 0; p < 37 * 23; p++)
            for (int c = 0; c < o.channels; c++) {
                int src_c = channels == 1 ? 0 : c;
                CHECK(back.data[p * o.channels + c] == img.data[p * channels + src_c]);
            }
        loco_image_free(&back);

        char dir[64], path[128];
        tmpdir(dir, sizeof dir);
        CHECK(dir[0]);
        snprintf(path, sizeof path, "%s/out.png", dir);
        CHECK(loco_png_write(path, &img, &e) == LOCO_OK);
        CHECK(count_entries(dir) == 1); /* no temporary left behind */
        CHECK(loco_png_read(path, &o, &back, &e) == LOCO_OK);
        CHECK(back.width == 37 && back.height == 23);
        /* the file holds exactly the encoded buffer */
        FILE *f = fopen(path, "rb");
        CHECK(f);
        unsigned char *fb = malloc(len + 1);
        size_t got = fread(fb, 1, len + 1, f);
        fclose(f);
        CHECK(got == len && memcmp(fb, buf, len) == 0);
        free(fb);
        free(buf);
        loco_image_free(&back);
        loco_image_free(&img);
        unlink(path);
        rmdir(dir);
    }
}

TEST(png_reads_what_pil_writes) {
    struct { const unsigned char *png; size_t len; const unsigned char *rgb; int w, h; } cases[] = {
        {gray_png, sizeof gray_png, gray_rgb, 3, 2},
        {pal_png, sizeof pal_png, pal_rgb, 3, 2},
        {rgba_png, sizeof rgba_png, rgba_rgb, 2, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        loco_image img;
        loco_err e;
        CHECK_MSG(loco_png_decode(cases[i].png, cases[i].len, NULL, &img, &e) == LOCO_OK, "%s", e.msg);
        CHECK(img.width == cases[i].w && img.height == cases[i].h && img.channels == 3);
        CHECK_MSG(memcmp(img.data, cases[i].rgb, (size_t)(cases[i].w * cases[i].h * 3)) == 0, "case %zu", i);
        loco_image_free(&img);
    }
    loco_png_read_opts o;
    loco_png_read_opts_init(&o);
    o.channels = 4;
    loco_image img;
    CHECK(loco_png_decode(rgba_png, sizeof rgba_png, &o, &img, NULL) == LOCO_OK);
    CHECK(memcmp(img.data, rgba_rgba, sizeof rgba_rgba) == 0);
    loco_image_free(&img);
}

TEST(png_errors) {
    loco_image img;
    CHECK(loco_image_alloc(4, 4, 3, &img, NULL) == LOCO_OK);
    memset(img.data, 9, 48);
    loco_err e;
    /* a folder that does not exist */
    CHECK(loco_png_write("/nonexistent_loco_dir/sub/out.png", &img, &e) == LOCO_EIO);
    CHECK_MSG(strstr(e.msg, "/nonexistent_loco_dir/sub/out.png") != NULL, "%s", e.msg);
    /* the target is a folder: refused, saying so, and no temporary file is left */
    char dir[64], path[128];
    tmpdir(dir, sizeof dir);
    CHECK(dir[0]);
    snprintf(path, sizeof path, "%s/taken", dir);
    CHECK(mkdir(path, 0755) == 0);
    CHECK(loco_png_write(path, &img, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "taken") != NULL && strstr(e.msg, "is a folder") != NULL, "%s", e.msg);
    CHECK(count_entries(dir) == 1);
    rmdir(path);
    rmdir(dir);
    loco_image_free(&img);
    /* reading: missing file, garbage, truncated, over the pixel limit */
    CHECK(loco_png_read("/nonexistent_loco_dir/x.png", NULL, &img, &e) == LOCO_EIO);
    CHECK(img.data == NULL);
    loco_image out;
    const char junk[] = "definitely not a png file";
    CHECK(loco_png_decode(junk, sizeof junk, NULL, &out, &e) == LOCO_EFORMAT);
    CHECK(out.data == NULL);
    CHECK(loco_png_decode(pal_png, sizeof pal_png - 20, NULL, &out, &e) == LOCO_EFORMAT);
    CHECK(out.data == NULL);
    loco_png_read_opts o;
    loco_png_read_opts_init(&o);
    o.max_pixels = 5;
    CHECK(loco_png_decode(pal_png, sizeof pal_png, &o, &out, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "3x2") != NULL, "%s", e.msg);
    /* bad images are refused before encoding */
    loco_image bad = {.width = 4, .height = 4, .channels = 2, .data = (uint8_t *)junk};
    void *buf;
    size_t len;
    CHECK(loco_png_encode(&bad, &buf, &len, &e) == LOCO_EINVAL);
}

TEST(reads_the_pipeline_png_diffusers_wrote) {
    /* refs/<model>/pipeline_ddim.png is PIL's save of the pipeline output; image_uint8 [1, H, W, 3]
     * in the .safetensors next to it holds the same pixels */
    char png[512], st[512];
    snprintf(png, sizeof png, "%s/refs/sd1-tiny/pipeline_ddim.png", loco_fixtures_dir());
    snprintf(st, sizeof st, "%s/refs/sd1-tiny/pipeline_ddim.safetensors", loco_fixtures_dir());
    FILE *f = fopen(png, "rb");
    if (!f) SKIP("%s not generated yet", png);
    fclose(f);
    loco_safetensors *ref = NULL;
    loco_err e;
    CHECK_MSG(loco_safetensors_open(st, &ref, &e) == LOCO_OK, "%s", e.msg);
    const loco_stored_tensor *u8 = loco_safetensors_find(ref, "image_uint8");
    CHECK(u8 && u8->dtype == LOCO_U8 && u8->ndim == 4 && u8->shape[3] == 3);
    loco_image img;
    CHECK_MSG(loco_png_read(png, NULL, &img, &e) == LOCO_OK, "%s", e.msg);
    CHECK(img.width == u8->shape[2] && img.height == u8->shape[1] && img.channels == 3);
    CHECK(memcmp(img.data, u8->data, (size_t)(img.width * img.height * 3)) == 0);
    /* and what we write from those pixels reads back identically */
    void *buf;
    size_t len;
    loco_image back;
    CHECK(loco_png_encode(&img, &buf, &len, &e) == LOCO_OK);
    CHECK(loco_png_decode(buf, len, NULL, &back, &e) == LOCO_OK);
    CHECK(memcmp(back.data, img.data, (size_t)(img.width * img.height * 3)) == 0);
    free(buf);
    loco_image_free(&back);
    loco_image_free(&img);
    loco_safetensors_close(ref);
}

TEST(image_from_backend_tensor) {
    loco_backend_opts o;
    loco_backend_opts_init(&o);
    o.device = LOCO_DEVICE_CPU;
    loco_backend *be = NULL;
    loco_err e;
    CHECK_MSG(loco_backend_create(&o, &be, &e) == LOCO_OK, "%s", e.msg);
    const int64_t shape[4] = {2, 3, 4, 5};
    float x[2 * 3 * 4 * 5];
    for (int i = 0; i < 120; i++) x[i] = sinf((float)i * 0.37f) * 1.2f;
    loco_tensor t;
    CHECK(loco_tensor_alloc(be, LOCO_F32, 4, shape, &t, &e) == LOCO_OK);
    CHECK(loco_tensor_upload(&t, x, LOCO_F32, &e) == LOCO_OK);
    loco_image a, b;
    CHECK_MSG(loco_image_from_tensor(&t, 1, &a, &e) == LOCO_OK, "%s", e.msg);
    CHECK(loco_image_postprocess(x, 2, 3, 4, 5, 1, &b, &e) == LOCO_OK);
    CHECK(a.width == 5 && a.height == 4 && a.channels == 3);
    CHECK(memcmp(a.data, b.data, 60) == 0);
    loco_image_free(&a);
    loco_image_free(&b);
    CHECK(loco_image_from_tensor(&t, 2, &a, &e) == LOCO_EINVAL);
    /* a NaN is an error that says where it is; the whole batch in one download says the same */
    x[60 + 20 + 7] = NAN; /* image 1, channel 1, y 1, x 2 */
    CHECK(loco_tensor_upload(&t, x, LOCO_F32, &e) == LOCO_OK);
    CHECK(loco_image_from_tensor(&t, 1, &a, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "image 1 has NaN at channel 1, y 1, x 2"), "%s", e.msg);
    CHECK(a.data == NULL);
    uint8_t all[120];
    int64_t nan_at = 0;
    CHECK(loco_tensor_download_u8_images(&t, all, &nan_at, &e) == LOCO_OK && nan_at == 87);
    CHECK(loco_image_postprocess(x, 2, 3, 4, 5, 0, &b, &e) == LOCO_OK);
    CHECK(memcmp(all, b.data, 60) == 0 && all[60 + 7 * 3 + 1] == 0);
    loco_image_free(&b);
    const int64_t flat[2] = {6, 20};
    loco_tensor v;
    CHECK(loco_tensor_view(&t, 0, 2, flat, &v, NULL) == LOCO_OK);
    CHECK(loco_image_from_tensor(&v, 0, &a, &e) == LOCO_EINVAL);
    CHECK_MSG(strstr(e.msg, "[N, C, H, W]"), "%s", e.msg);
    loco_tensor_free(&t);
    loco_backend_destroy(be);
}
