/* tensor_map.cu: TMA tensor maps for the kernels that load by TMA (gemm_wgmma.cu and
 * attention_wgmma_ws.cu under LOCO_CUDA_GEMM_WGMMA_LOAD=tma / LOCO_CUDA_FLASH_LOAD=tma). The
 * driver's cuTensorMapEncodeTiled is reached through the runtime
 * (cudaGetDriverEntryPointByVersion), so nothing links libcuda: a binary linked with -lcuda does
 * not start on the build machines, which have no driver (reference/packages.md). A map is made on
 * the host per launch (about a microsecond) and passed by value as a __grid_constant__ kernel
 * parameter, which CUDA graphs keep with the launch. */
#include <cudaTypedefs.h> /* PFN_cuTensorMapEncodeTiled_v12000 */

#include "cuda_internal.h"

extern "C" void cuda_tensor_map_setup(cuda_impl *c) {
    if (c->tensor_map_encode) return;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    void *fn = NULL;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
        fn = NULL;
        cudaGetLastError(); /* not sticky: the next call must not report it */
    }
    c->tensor_map_encode = fn;
}

extern "C" loco_status cuda_tensor_map_make(const cuda_impl *c, struct CUtensorMap_st *map, const void *base,
                                            loco_dtype dt, int rank, const int64_t *dims, const int64_t *strides,
                                            const unsigned *box, loco_err *err) {
    if (!c->tensor_map_encode)
        return loco_err_set(err, LOCO_EUNSUPPORTED, "TMA tensor maps: the driver has no cuTensorMapEncodeTiled");
    if (rank < 1 || rank > 5 || (dt != LOCO_F16 && dt != LOCO_BF16))
        return loco_err_set(err, LOCO_EINVAL, "TMA tensor map: rank %d of %s", rank, loco_dtype_name(dt));
    cuuint64_t gdim[5], gstride[4];
    cuuint32_t gbox[5], estride[5];
    for (int d = 0; d < rank; d++) {
        gdim[d] = (cuuint64_t)dims[d];
        gbox[d] = box[d];
        estride[d] = 1;
        if (d > 0) gstride[d - 1] = (cuuint64_t)strides[d - 1];
    }
    const CUresult r = ((PFN_cuTensorMapEncodeTiled_v12000)c->tensor_map_encode)(
        map, dt == LOCO_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, (cuuint32_t)rank,
        (void *)base, gdim, gstride, gbox, estride, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return loco_err_set(err, LOCO_EDEVICE,
                            "cuTensorMapEncodeTiled failed (%d) for a rank-%d map of [%lld, %lld, ...] elements in "
                            "boxes of %u x %u",
                            (int)r, rank, (long long)dims[0], (long long)(rank > 1 ? dims[1] : 1), box[0],
                            rank > 1 ? box[1] : 1u);
    return LOCO_OK;
}
