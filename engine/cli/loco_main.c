/* loco_main.c: entry point of the `loco` CLI; dispatches to the subcommands. */
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "cli.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"generate", loco_cmd_generate, "text to image with a Stable Diffusion model (CPU or GPU)"},
    {"noise", loco_cmd_noise, "print torch-compatible initial noise for a seed and shape as JSON"},
    {"inspect", loco_cmd_inspect, "print a model's components, configs and intervention sites"},
    {"trace", loco_cmd_trace, "causal tracing: which UNet components / text-encoder states restore an attribute"},
    {"localize", loco_cmd_localize, "LocoGen: the window of cross-attention layers that controls an attribute"},
    {"edit", loco_cmd_edit, "closed-form edits (locoedit, quickfix, neurons): JSON result, delta, images"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: loco <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`loco <command> --help` describes each command's options.\n");
}

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "loco: unknown command '%s' (try: loco --help)\n", argv[1]);
    return 2;
}
