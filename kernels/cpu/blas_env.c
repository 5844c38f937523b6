/* blas_env.c: picking OpenBLAS's kernels before the library is used.
 *
 * OpenBLAS 0.3.21 (Debian 12) does not know recent Xeons (Sapphire/Emerald Rapids) and falls
 * back to its generic "Prescott" kernels, about 7x slower than its AVX-512 ones. The kernel set
 * is chosen when the library loads, from OPENBLAS_CORETYPE, so a process that finds itself on
 * the generic kernels re-executes itself once with the right core type. An OPENBLAS_CORETYPE
 * already in the environment is always left as it is (some machines set it on purpose). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cblas.h>

#include "backend.h"

const char *loco_blas_better_coretype(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    const char *core = openblas_get_corename();
    if (core && (strcasecmp(core, "prescott") == 0 || strcasecmp(core, "core2") == 0 ||
                 strcasecmp(core, "nehalem") == 0)) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl"))
            return "SkylakeX";
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    }
#endif
    return NULL;
}

void loco_backend_prepare_process(int argc, char **argv) {
    (void)argc;
    if (getenv("OPENBLAS_CORETYPE") || getenv("LOCO_NO_BLAS_REEXEC")) return;
    const char *better = loco_blas_better_coretype();
    if (!better) return;
    /* LOCO_NO_BLAS_REEXEC guards against a loop should the variable not take effect. */
    if (setenv("OPENBLAS_CORETYPE", better, 1) || setenv("LOCO_NO_BLAS_REEXEC", "1", 1)) return;
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the generic kernels (correct, only slower) */
    unsetenv("OPENBLAS_CORETYPE");
}
