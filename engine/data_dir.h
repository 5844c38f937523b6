/* data_dir.h: where loco's bundled data lives (config/: tokenizer vocabularies, model defaults).
 *
 * Resolved in this order, the first existing directory winning:
 *   1. $LOCO_DATA_DIR;
 *   2. <directory of the running executable>/../config (an installed or built `loco`/`locod`);
 *   3. <directory of the running executable>/../../config (binaries one level deeper, such as
 *      build/tests/ and build/bench/);
 *   4. LOCO_SOURCE_DIR "/config" when that macro is defined at compile time;
 *   5. ./config (running from the source tree). */
#ifndef LOCO_DATA_DIR_H
#define LOCO_DATA_DIR_H

#include <stddef.h>
#include "base.h"

/* Write the data directory into buf. LOCO_ENOTFOUND, listing what was tried, when none exists;
 * a set but missing $LOCO_DATA_DIR is an error of its own (it is never silently skipped). */
loco_status loco_data_dir(char *buf, size_t n, loco_err *err);

/* <data dir>/<rel> into buf; LOCO_ENOTFOUND when that path does not exist. */
loco_status loco_data_path(const char *rel, char *buf, size_t n, loco_err *err);

#endif
