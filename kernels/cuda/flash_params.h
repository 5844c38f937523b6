/* flash_params.h: the arguments of the flash-attention kernels (attention.cu, mma.sync; and
 * attention_wgmma.cu, Hopper's wgmma), one struct passed by value so that the per-sample K/V
 * table rides in the kernel's parameter space (free to read, captured by CUDA graphs). */
#ifndef LOCO_CUDA_FLASH_PARAMS_H
#define LOCO_CUDA_FLASH_PARAMS_H

#include <stdint.h>

#define FA_KV_MAX 256 /* samples per launch (kernel argument table) */

typedef struct fa_params {
    const void *q, *k, *v;
    void *o;
    int lq, lk;
    int64_t rs;          /* row stride of q/k/v in elements: heads * D, 3 heads * D when packed */
    int64_t q_bs, kv_bs; /* sample strides: Lq * rs, Lk * rs */
    int64_t o_rs, o_bs;  /* the output's: heads * D, Lq * heads * D */
    float scale_log2;    /* scale * log2(e): the softmax runs in base 2 */
    int causal;
    int b0;              /* first query sample of this launch */
    int kv[FA_KV_MAX];   /* K/V sample of each query sample of this launch */
} fa_params;

#endif
