/* cmd_noise.c: `loco noise --seed S --shape 2,8` prints the initial noise that
 * torch.randn(shape, generator=torch.Generator("cpu").manual_seed(S)) gives, as JSON, so a
 * researcher can check seeds against their Python pipeline. Floats are printed with 9
 * significant digits, which round-trip float32 exactly. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "cli.h"
#include "torch_rng.h"

#define NOISE_MAX_NUMEL (1LL << 28) /* 1 GiB of floats: beyond that the JSON is useless */

static void help(void) {
    printf("usage: loco noise --seed S --shape D1,D2,...\n"
           "  Prints {\"seed\":S,\"shape\":[...],\"dtype\":\"float32\",\"data\":[...]} with the values of\n"
           "  torch.randn(shape, generator=torch.Generator(\"cpu\").manual_seed(S)), bit for bit.\n");
}

int loco_cmd_noise(int argc, char **argv) {
    static const struct option opts[] = {
        {"seed", required_argument, 0, 's'}, {"shape", required_argument, 0, 'x'}, {"help", no_argument, 0, 'h'}, {0}};
    uint64_t seed = 0;
    int have_seed = 0, ndim = 0;
    int64_t dims[LOCO_MAX_DIMS];
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (loco_cli_parse_u64(optarg, &seed)) return loco_cli_usage_error("noise", "--seed must be a non-negative integer < 2^64, got '%s'", optarg);
            have_seed = 1;
            break;
        case 'x':
            ndim = loco_cli_parse_shape(optarg, dims, LOCO_MAX_DIMS);
            if (ndim <= 0) return loco_cli_usage_error("noise", "--shape must be 1 to %d positive integers separated by commas, got '%s'", LOCO_MAX_DIMS, optarg);
            break;
        case 'h':
            help();
            return 0;
        default: return loco_cli_getopt_error("noise", c, argv);
        }
    }
    if (optind < argc) return loco_cli_usage_error("noise", "unexpected argument '%s'", argv[optind]);
    if (!have_seed || ndim == 0) return loco_cli_usage_error("noise", "--seed and --shape are required");
    long long numel = 1;
    for (int i = 0; i < ndim; i++) {
        numel *= dims[i];
        if (numel > NOISE_MAX_NUMEL) return loco_cli_usage_error("noise", "--shape has more than %lld elements", (long long)NOISE_MAX_NUMEL);
    }
    float *v = malloc((size_t)numel * sizeof *v);
    if (!v) {
        loco_err e;
        loco_err_set(&e, LOCO_ENOMEM, "cannot allocate %lld floats", numel);
        return loco_cli_fail("noise", &e);
    }
    loco_torch_rng g;
    loco_torch_rng_seed(&g, seed);
    loco_torch_randn_f32(&g, v, (size_t)numel);
    printf("{\"seed\":%llu,\"shape\":[", (unsigned long long)seed);
    for (int i = 0; i < ndim; i++) printf(i ? ",%lld" : "%lld", (long long)dims[i]);
    printf("],\"dtype\":\"float32\",\"data\":[");
    for (long long i = 0; i < numel; i++) printf(i ? ",%.9g" : "%.9g", v[i]);
    printf("]}\n");
    free(v);
    return loco_cli_finish_stdout("noise");
}
