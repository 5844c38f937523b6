/* json_util.c: JSON as Python writes it. */
#include "json_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Python's json module writes float('inf') as the bare tokens Infinity / -Infinity (NaN as NaN),
 * which JSON and jansson reject; DPMSolverMultistepScheduler configs saved by diffusers carry
 * "lambda_min_clipped": -Infinity. Outside strings they become the strings "inf", "-inf", "nan". */
char *loco_json_quote_python_floats(const char *text, size_t len) {
    char *out = malloc(len * 2 + 1), *o = out;
    if (!out) return NULL;
    int in_str = 0;
    for (size_t i = 0; i < len;) {
        char ch = text[i];
        if (in_str) {
            *o++ = ch;
            i++;
            if (ch == '\\' && i < len) *o++ = text[i++];
            else if (ch == '"') in_str = 0;
            continue;
        }
        if (ch == '"') in_str = 1;
        const char *word = NULL, *as = NULL;
        if (len - i >= 9 && strncmp(text + i, "-Infinity", 9) == 0) word = "-Infinity", as = "\"-inf\"";
        else if (len - i >= 8 && strncmp(text + i, "Infinity", 8) == 0) word = "Infinity", as = "\"inf\"";
        else if (len - i >= 3 && strncmp(text + i, "NaN", 3) == 0) word = "NaN", as = "\"nan\"";
        if (word) {
            size_t n = strlen(as);
            memcpy(o, as, n);
            o += n;
            i += strlen(word);
            continue;
        }
        *o++ = ch;
        i++;
    }
    *o = 0;
    return out;
}

json_t *loco_json_load_python_file(const char *path, size_t flags, json_error_t *jerr) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (jerr) snprintf(jerr->text, sizeof jerr->text, "cannot open the file");
        return NULL;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 65536 > cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            if (ncap > LOCO_JSON_MAX_FILE + 65536) { /* configs are kilobytes; refuse giants */
                free(text);
                fclose(f);
                if (jerr) snprintf(jerr->text, sizeof jerr->text, "file larger than %d bytes", LOCO_JSON_MAX_FILE);
                return NULL;
            }
            char *t = realloc(text, ncap);
            if (!t) {
                free(text);
                fclose(f);
                if (jerr) snprintf(jerr->text, sizeof jerr->text, "out of memory");
                return NULL;
            }
            text = t;
            cap = ncap;
        }
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    fclose(f);
    char *fixed = loco_json_quote_python_floats(text, len);
    free(text);
    if (!fixed) {
        if (jerr) snprintf(jerr->text, sizeof jerr->text, "out of memory");
        return NULL;
    }
    json_t *j = json_loads(fixed, flags, jerr);
    free(fixed);
    return j;
}
