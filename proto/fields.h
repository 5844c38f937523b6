/* fields.h: strict readers for JSON request objects (proto/fields.c). Each reader checks one
 * member's type and range and, on failure, fills a loco_proto_error with the member's JSON
 * pointer and a sentence saying what is allowed. They never coerce ("4" is not 4, 4.0 is not
 * an integer). Readers return 0 on success, -1 on error. */
#ifndef LOCO_PROTO_FIELDS_H
#define LOCO_PROTO_FIELDS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct loco_proto_error {
    int status;          /* suggested HTTP status: 400 (malformed) or 422 (invalid values) */
    char code[48];       /* machine code: "invalid_field", "unknown_field", "missing_field", ... */
    char pointer[160];   /* RFC 6901 pointer into the request body: "/params/steps" */
    char detail[640];    /* one sentence a person can act on */
} loco_proto_error;

void loco_proto_error_clear(loco_proto_error *e);
int loco_proto_fail(loco_proto_error *e, int status, const char *code, const char *pointer, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Number of Unicode code points of a valid UTF-8 string. */
size_t loco_utf8_length(const char *s);

/* `obj` must be an object whose members are all in `allowed` (NULL-terminated). */
int loco_pf_object(const json_t *obj, const char *pointer, const char *const *allowed, loco_proto_error *e);

/* Member readers. `pointer` is the pointer of `obj`; "required" members missing are errors,
 * optional ones leave *out untouched and return 0 with *present = 0 (present may be NULL). */
int loco_pf_string(const json_t *obj, const char *pointer, const char *key, int required, size_t min_chars,
                   size_t max_chars, const char **out, int *present, loco_proto_error *e);
/* 1 when v is a JSON integer or a number with an integral value in int64's range (4.0), with
 * the value in *out; 0 otherwise. */
int loco_json_integral(const json_t *v, json_int_t *out);
int loco_pf_int(const json_t *obj, const char *pointer, const char *key, int required, int64_t lo, int64_t hi,
                int64_t *out, int *present, loco_proto_error *e);
int loco_pf_number(const json_t *obj, const char *pointer, const char *key, int required, double lo, double hi,
                   double *out, int *present, loco_proto_error *e);
int loco_pf_bool(const json_t *obj, const char *pointer, const char *key, int required, int *out, int *present,
                 loco_proto_error *e);
/* One of `choices` (NULL-terminated). */
int loco_pf_enum(const json_t *obj, const char *pointer, const char *key, int required, const char *const *choices,
                 const char **out, int *present, loco_proto_error *e);
/* An array of min..max items; returns the array (borrowed) in *out. */
int loco_pf_array(const json_t *obj, const char *pointer, const char *key, int required, size_t min_items,
                  size_t max_items, const json_t **out, int *present, loco_proto_error *e);

#endif
