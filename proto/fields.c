/* fields.c: strict JSON member readers (see fields.h). */
#include "fields.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void loco_proto_error_clear(loco_proto_error *e) {
    if (e) memset(e, 0, sizeof *e);
}

int loco_proto_fail(loco_proto_error *e, int status, const char *code, const char *pointer, const char *fmt, ...) {
    if (!e) return -1;
    e->status = status;
    snprintf(e->code, sizeof e->code, "%s", code);
    snprintf(e->pointer, sizeof e->pointer, "%s", pointer ? pointer : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->detail, sizeof e->detail, fmt, ap);
    va_end(ap);
    return -1;
}

size_t loco_utf8_length(const char *s) {
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) n++;
    return n;
}

static void member_pointer(char *buf, size_t n, const char *pointer, const char *key) {
    /* RFC 6901: '~' -> "~0", '/' -> "~1" */
    size_t o = (size_t)snprintf(buf, n, "%s/", pointer ? pointer : "");
    for (const char *k = key; *k && o + 3 < n; k++) {
        if (*k == '~') { buf[o++] = '~'; buf[o++] = '0'; }
        else if (*k == '/') { buf[o++] = '~'; buf[o++] = '1'; }
        else buf[o++] = *k;
    }
    if (o >= n) o = n - 1;
    buf[o] = 0;
}

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

int loco_pf_object(const json_t *obj, const char *pointer, const char *const *allowed, loco_proto_error *e) {
    if (!json_is_object(obj))
        return loco_proto_fail(e, 422, "invalid_type", pointer, "%s must be a JSON object, not %s",
                               pointer && *pointer ? pointer : "the request body", type_name(obj));
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, key) == 0) { ok = 1; break; }
        if (!ok) {
            char p[160], list[400];
            size_t o = 0;
            list[0] = 0;
            for (const char *const *a = allowed; *a && o + 2 < sizeof list; a++)
                o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", a == allowed ? "" : ", ", *a);
            member_pointer(p, sizeof p, pointer, key);
            return loco_proto_fail(e, 422, "unknown_field", p, "unknown member '%.60s'; allowed here: %s", key, list);
        }
    }
    return 0;
}

static const json_t *member(const json_t *obj, const char *pointer, const char *key, int required, int *present,
                            char *p, size_t pn, int *err, loco_proto_error *e) {
    member_pointer(p, pn, pointer, key);
    *err = 0;
    const json_t *v = json_object_get(obj, key);
    if (present) *present = v != NULL;
    if (!v && required) {
        *err = 1;
        loco_proto_fail(e, 422, "missing_field", p, "'%s' is required", key);
    }
    return v;
}

int loco_pf_string(const json_t *obj, const char *pointer, const char *key, int required, size_t min_chars,
                   size_t max_chars, const char **out, int *present, loco_proto_error *e) {
    char p[160];
    int err;
    const json_t *v = member(obj, pointer, key, required, present, p, sizeof p, &err, e);
    if (err) return -1;
    if (!v) return 0;
    if (!json_is_string(v)) return loco_proto_fail(e, 422, "invalid_type", p, "'%s' must be a string, not %s", key, type_name(v));
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v))
        return loco_proto_fail(e, 422, "invalid_value", p, "'%s' must not contain NUL characters", key);
    size_t n = loco_utf8_length(s);
    if (n < min_chars || n > max_chars)
        return loco_proto_fail(e, 422, "out_of_range", p, "'%s' must have %zu to %zu characters (it has %zu)", key,
                               min_chars, max_chars, n);
    *out = s;
    return 0;
}

int loco_json_integral(const json_t *v, json_int_t *out) {
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 1;
    }
    /* JSON Schema counts 4.0 as an integer, and so do clients that only have doubles (JavaScript);
     * 2^63 itself is out of int64's range, hence the strict upper bound */
    const double d = json_is_real(v) ? json_real_value(v) : 0.5;
    if (d != floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0) return 0;
    *out = (json_int_t)d;
    return 1;
}

int loco_pf_int(const json_t *obj, const char *pointer, const char *key, int required, int64_t lo, int64_t hi,
                int64_t *out, int *present, loco_proto_error *e) {
    char p[160];
    int err;
    const json_t *v = member(obj, pointer, key, required, present, p, sizeof p, &err, e);
    if (err) return -1;
    if (!v) return 0;
    json_int_t x;
    if (!loco_json_integral(v, &x)) {
        /* 1e19 is an integer too, just too large for any field */
        if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)))
            return loco_proto_fail(e, 422, "out_of_range", p, "'%s' must be between %lld and %lld (got %g)", key,
                                   (long long)lo, (long long)hi, json_real_value(v));
        return loco_proto_fail(e, 422, "invalid_type", p, "'%s' must be an integer, not %s", key, type_name(v));
    }
    if (x < lo || x > hi)
        return loco_proto_fail(e, 422, "out_of_range", p, "'%s' must be between %lld and %lld (got %lld)", key,
                               (long long)lo, (long long)hi, (long long)x);
    *out = x;
    return 0;
}

int loco_pf_number(const json_t *obj, const char *pointer, const char *key, int required, double lo, double hi,
                   double *out, int *present, loco_proto_error *e) {
    char p[160];
    int err;
    const json_t *v = member(obj, pointer, key, required, present, p, sizeof p, &err, e);
    if (err) return -1;
    if (!v) return 0;
    if (!json_is_number(v))
        return loco_proto_fail(e, 422, "invalid_type", p, "'%s' must be a number, not %s", key, type_name(v));
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return loco_proto_fail(e, 422, "out_of_range", p, "'%s' must be between %g and %g (got %g)", key, lo, hi, x);
    *out = x;
    return 0;
}

int loco_pf_bool(const json_t *obj, const char *pointer, const char *key, int required, int *out, int *present,
                 loco_proto_error *e) {
    char p[160];
    int err;
    const json_t *v = member(obj, pointer, key, required, present, p, sizeof p, &err, e);
    if (err) return -1;
    if (!v) return 0;
    if (!json_is_boolean(v))
        return loco_proto_fail(e, 422, "invalid_type", p, "'%s' must be true or false, not %s", key, type_name(v));
    *out = json_is_true(v);
    return 0;
}

int loco_pf_enum(const json_t *obj, const char *pointer, const char *key, int required, const char *const *choices,
                 const char **out, int *present, loco_proto_error *e) {
    char p[160];
    int err;
    const json_t *v = member(obj, pointer, key, required, present, p, sizeof p, &err, e);
    if (err) return -1;
    if (!v) return 0;
    char list[300];
    size_t o = 0;
    list[0] = 0;
    for (const char *const *c = choices; *c && o + 2 < sizeof list; c++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s'%s'", c == choices ? "" : ", ", *c);
    if (!json_is_string(v))
        return loco_proto_fail(e, 422, "invalid_type", p, "'%s' must be one of %s, not %s", key, list, type_name(v));
    for (const char *const *c = choices; *c; c++)
        if (strcmp(*c, json_string_value(v)) == 0) {
            *out = *c;
            return 0;
        }
    return loco_proto_fail(e, 422, "invalid_value", p, "'%s' must be one of %s (got '%.40s')", key, list,
                           json_string_value(v));
}

int loco_pf_array(const json_t *obj, const char *pointer, const char *key, int required, size_t min_items,
                  size_t max_items, const json_t **out, int *present, loco_proto_error *e) {
    char p[160];
    int err;
    const json_t *v = member(obj, pointer, key, required, present, p, sizeof p, &err, e);
    if (err) return -1;
    if (!v) return 0;
    if (!json_is_array(v))
        return loco_proto_fail(e, 422, "invalid_type", p, "'%s' must be an array, not %s", key, type_name(v));
    size_t n = json_array_size(v);
    if (n < min_items || n > max_items)
        return loco_proto_fail(e, 422, "out_of_range", p, "'%s' must have %zu to %zu items (it has %zu)", key,
                               min_items, max_items, n);
    *out = v;
    return 0;
}
