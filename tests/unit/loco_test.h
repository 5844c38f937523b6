/* loco_test.h: a small unit-test harness for C. Each test file is one binary:
 *     TEST(name) { CHECK(x == 1); CHECK_CLOSE(a, b, 1e-6); }
 * `bin` runs all tests, `bin --list` prints their names, `bin NAME` runs one.
 * tests/test_c_units.py turns every listed test into one pytest item, so `make test` ends in
 * pytest's summary line. SKIP("why") marks a test skipped (GPU tests without a GPU). */
#ifndef LOCO_TEST_H
#define LOCO_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*loco_test_fn)(void);
typedef struct loco_test_case { const char *name; loco_test_fn fn; } loco_test_case;

#define LOCO_TEST_MAX 512
static loco_test_case loco_tests_[LOCO_TEST_MAX];
static int loco_ntests_;
static int loco_test_failed_;
static int loco_test_skipped_;

static void loco_test_register_(const char *name, loco_test_fn fn) {
    if (loco_ntests_ < LOCO_TEST_MAX) { loco_tests_[loco_ntests_].name = name; loco_tests_[loco_ntests_].fn = fn; loco_ntests_++; }
}

#define TEST(name)                                                                 \
    static void test_##name(void);                                                 \
    __attribute__((constructor)) static void register_##name(void) {               \
        loco_test_register_(#name, test_##name);                                   \
    }                                                                              \
    static void test_##name(void)

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            loco_test_failed_ = 1;                                                 \
            return;                                                                \
        }                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                       \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                          \
            fputc('\n', stderr);                                                   \
            loco_test_failed_ = 1;                                                 \
            return;                                                                \
        }                                                                          \
    } while (0)

/* |a-b| <= tol * max(1, |b|), and never NaN. */
#define CHECK_CLOSE(a, b, tol)                                                     \
    do {                                                                           \
        double a_ = (double)(a), b_ = (double)(b);                                 \
        double s_ = fabs(b_) > 1.0 ? fabs(b_) : 1.0;                               \
        if (!(fabs(a_ - b_) <= (tol) * s_)) {                                      \
            fprintf(stderr, "%s:%d: CHECK_CLOSE failed: %s=%.9g %s=%.9g tol=%g\n",  \
                    __FILE__, __LINE__, #a, a_, #b, b_, (double)(tol));            \
            loco_test_failed_ = 1;                                                 \
            return;                                                                \
        }                                                                          \
    } while (0)

#define SKIP(...)                                                                  \
    do {                                                                           \
        fprintf(stderr, "SKIP: ");                                                 \
        fprintf(stderr, __VA_ARGS__);                                              \
        fputc('\n', stderr);                                                       \
        loco_test_skipped_ = 1;                                                    \
        return;                                                                    \
    } while (0)

/* Relative L2 error ||a-b|| / ||b|| (NaN-propagating: a NaN anywhere gives NaN). */
static inline double loco_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    if (den == 0) return sqrt(num);
    return sqrt(num / den);
}

/* Fixture directory: $LOCO_FIXTURES or tests/fixtures relative to the repo root. */
static inline const char *loco_fixtures_dir(void) {
    const char *d = getenv("LOCO_FIXTURES");
    return d && *d ? d : "tests/fixtures";
}

static int loco_test_run_one_(const loco_test_case *t) {
    loco_test_failed_ = 0;
    loco_test_skipped_ = 0;
    t->fn();
    if (loco_test_skipped_) { printf("skip %s\n", t->name); return 2; }
    printf("%s %s\n", loco_test_failed_ ? "FAIL" : "ok", t->name);
    return loco_test_failed_ ? 1 : 0;
}

/* kernels/backend.h: re-executes with faster BLAS kernels where OpenBLAS misdetects the CPU. */
void loco_backend_prepare_process(int argc, char **argv);

int main(int argc, char **argv) {
    loco_backend_prepare_process(argc, argv);
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (int i = 0; i < loco_ntests_; i++) printf("%s\n", loco_tests_[i].name);
        return 0;
    }
    int passed = 0, failed = 0, skipped = 0, matched = 0;
    for (int i = 0; i < loco_ntests_; i++) {
        if (argc > 1 && strcmp(argv[1], loco_tests_[i].name) != 0) continue;
        matched++;
        int r = loco_test_run_one_(&loco_tests_[i]);
        fflush(stdout);
        if (r == 0) passed++; else if (r == 1) failed++; else skipped++;
    }
    if (argc > 1 && matched == 0) { fprintf(stderr, "no test named %s\n", argv[1]); return 2; }
    if (argc > 1 && skipped == 1) return 77; /* one skipped test: tell the runner */
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}

#endif
