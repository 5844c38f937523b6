/* json_util.h: reading JSON written by Python.
 *
 * Python's json module writes float('inf') and float('nan') as the bare tokens Infinity,
 * -Infinity and NaN, which are not JSON (jansson rejects them). diffusers saves such values in
 * real configs (DPMSolverMultistepScheduler's "lambda_min_clipped": -Infinity), so every config
 * reader goes through here: outside strings those tokens become the strings "inf", "-inf" and
 * "nan", which the typed config parsers accept where a float may be infinite. */
#ifndef LOCO_JSON_UTIL_H
#define LOCO_JSON_UTIL_H

#include <jansson.h>
#include <stddef.h>

#define LOCO_JSON_MAX_FILE (64 * 1024 * 1024)

/* A malloc'ed, NUL-terminated copy of text[0, len) with the tokens quoted; NULL when out of memory. */
char *loco_json_quote_python_floats(const char *text, size_t len);

/* json_load_file with the tokens quoted first. NULL on error (jerr->text says why). */
json_t *loco_json_load_python_file(const char *path, size_t flags, json_error_t *jerr);

#endif
