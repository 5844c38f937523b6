/* emu_tma.cc: Hopper's tensor memory accelerator for the CPU kernel emulator: the host's
 * cuTensorMapEncodeTiled (reached, as on a GPU machine, through
 * cudaGetDriverEntryPointByVersion) and the device's tiled bulk copy
 * cp.async.bulk.tensor.Nd...mbarrier::complete_tx::bytes.
 *
 * As the CUDA driver documents them (cuda.h, cuTensorMapEncodeTiled): a tensor map describes a
 * global tensor of rank 1-5 (dims innermost first, strides of dims 1.. in bytes, multiples of
 * 16) and a box of up to 256 elements per dim; a copy takes the box at signed coordinates,
 * elements outside the tensor read as zeros, and always completes the whole box's bytes on its
 * mbarrier; the innermost coordinate must be a multiple of 16 bytes (the box's address aligned).
 * The box lands in shared memory densely, innermost dim fastest; with
 * CU_TENSOR_MAP_SWIZZLE_128B each 16-byte chunk of a 128-byte row moves to chunk (chunk XOR
 * address bits 7-9), the pattern wgmma's 128-byte-swizzle descriptors read (emu_wgmma.cc).
 *
 * What the emulator has: interleave none, element strides 1, swizzle none or 128B with a
 * 128-byte inner box, zeros outside (a map asking for the rest is refused with a trap that
 * says so, not run differently). The copy is queued at issue with its destination set to NaN
 * bytes and lands when nothing else in the block can move (emu_threads.cc), so a consumer that
 * reads before its mbarrier says so, or a refill issued over a stage still being read, reads
 * NaN here. */
#include "emu_internal.h"

#include <cuda.h>
#include <string.h>

namespace emu {

#define EMU_TMA_MAGIC 0x7A3Au

/* The emulator's contents of the 128 opaque bytes of a CUtensorMap. */
struct tma_map {
    uint32_t magic;
    uint8_t rank, esize, swizzle128, pad;
    const unsigned char *base;
    uint64_t dim[5], stride[5]; /* stride[0] = esize */
    uint32_t box[5];
};
static_assert(sizeof(tma_map) <= sizeof(CUtensorMap), "the emulator's tensor map does not fit CUtensorMap");

struct tma_copy {
    unsigned char *dst;
    tma_map map;
    int coords[5];
    uint64_t *bar;
    unsigned bytes;
};

static thread_local std::vector<tma_copy> g_copies; /* the running block's, oldest first */

void tma_reset(void) { g_copies.clear(); }
int tma_in_flight(void) { return !g_copies.empty(); }

static unsigned box_bytes(const tma_map &m) {
    unsigned n = m.esize;
    for (int d = 0; d < m.rank; d++) n *= m.box[d];
    return n;
}

static void land(const tma_copy &c);

/* The checks of a copy's map, destination and coordinates; returns the map. */
static tma_map tma_checked(const void *smem, const void *tensor_map, const int *coords, int rank) {
    tma_map m;
    memcpy(&m, tensor_map, sizeof m);
    if (m.magic != EMU_TMA_MAGIC) trap("a TMA copy with a tensor map cuTensorMapEncodeTiled did not make");
    if (m.rank != rank) trap("a TMA copy whose rank differs from its tensor map's");
    const uintptr_t a = (uintptr_t)smem;
    if (a % 128 != 0) trap("a TMA copy to shared memory not 128-byte aligned");
    if (m.swizzle128 && a % 1024 != 0)
        trap("a 128-byte-swizzled TMA copy to shared memory not 1024-byte aligned (the pattern wgmma assumes)");
    /* The PTX ISA: "the address of the bounding box must also be aligned to 16 bytes"; on Hopper
     * a box whose innermost coordinate is off 16 bytes is an illegal instruction (Triton's TMA
     * notes and issue 7385; tilelang issue 2527), negative or not. The other dims' strides are
     * multiples of 16 bytes, so only that coordinate can break it. */
    if (((int64_t)coords[0] * m.esize) % 16 != 0)
        trap("a TMA copy whose innermost coordinate is not a multiple of 16 bytes (an illegal instruction on a GPU)");
    return m;
}

/* Queues the box at coords for smem, completing on *bar (or lands it at once: LOCO_EMU_SCHEDULE=reverse). */
static void tma_enqueue(void *smem, const tma_map &m, const int *coords, int rank, uint64_t *bar) {
    tma_copy c;
    c.dst = (unsigned char *)smem;
    c.map = m;
    memset(c.coords, 0, sizeof c.coords);
    memcpy(c.coords, coords, sizeof(int) * (size_t)rank);
    c.bar = bar;
    c.bytes = box_bytes(m);
    memset(c.dst, 0xff, c.bytes); /* until it lands */
    if (schedule_eager())
        land(c);
    else
        g_copies.push_back(c);
}

/* A copy's destination and mbarrier name the issuing block's own shared memory (the multicast
 * form's too: they land at the same offsets elsewhere); in a cluster that is its dynamic shared
 * memory (static __shared__ is one copy for all its blocks here). */
static void tma_own_block(const void *smem, const uint64_t *bar) {
    if (cluster_size() == 1) return;
    const int me = (int)cluster_ctarank();
    if (cta_of(smem) != me || cta_of(bar) != me)
        trap("a TMA copy in a cluster whose destination or mbarrier is not its block's own dynamic shared memory");
}

void tma_load(void *smem, const void *tensor_map, const int *coords, int rank, uint64_t *bar) {
    const tma_map m = tma_checked(smem, tensor_map, coords, rank);
    tma_own_block(smem, bar);
    tma_enqueue(smem, m, coords, rank, bar);
}

/* One copy per block of the mask, each landing on its own (a GPU may deliver them at different
 * times too). */
void tma_load_multicast(void *smem, const void *tensor_map, const int *coords, int rank, uint64_t *bar,
                        uint16_t mask) {
    const tma_map m = tma_checked(smem, tensor_map, coords, rank);
    tma_own_block(smem, bar);
    const unsigned size = cluster_size();
    if (mask == 0) trap("a multicast TMA copy to no block (mask 0)");
    if (size < 16 && (mask >> size) != 0) trap("a multicast TMA copy to a block rank past the cluster's");
    for (unsigned cta = 0; cta < size; cta++)
        if (mask >> cta & 1u) tma_enqueue(cta_map(smem, cta), m, coords, rank, (uint64_t *)cta_map(bar, cta));
}

/* Element i (box-linear, innermost fastest) of the copy, from the tensor or zeros. */
static void land(const tma_copy &c) {
    const tma_map &m = c.map;
    const unsigned elems = box_bytes(m) / m.esize;
    for (unsigned i = 0; i < elems; i++) {
        unsigned rest = i;
        int inside = 1;
        int64_t src = 0;
        for (int d = 0; d < m.rank; d++) {
            const int64_t at = (int64_t)c.coords[d] + rest % m.box[d];
            rest /= m.box[d];
            if (at < 0 || at >= (int64_t)m.dim[d]) inside = 0;
            src += at * (int64_t)m.stride[d];
        }
        uintptr_t to = (uintptr_t)c.dst + (uintptr_t)i * m.esize;
        if (m.swizzle128) to = swizzle128(to);
        if (inside)
            memcpy((void *)to, m.base + src, m.esize);
        else
            memset((void *)to, 0, m.esize);
    }
    mbar_complete_tx(c.bar, c.bytes);
}

int tma_land_oldest(void) {
    if (g_copies.empty()) return 0;
    const tma_copy c = g_copies.front();
    g_copies.erase(g_copies.begin());
    land(c);
    return 1;
}

static unsigned elem_size(CUtensorMapDataType t) {
    switch (t) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: return 1;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: return 2;
    case CU_TENSOR_MAP_DATA_TYPE_UINT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32: return 4;
    case CU_TENSOR_MAP_DATA_TYPE_UINT64:
    case CU_TENSOR_MAP_DATA_TYPE_INT64:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

/* cuTensorMapEncodeTiled's checks (cuda.h), then the emulator's encoding. */
static CUresult CUDAAPI encode_tiled(CUtensorMap *map, CUtensorMapDataType type, cuuint32_t rank, void *global,
                                     const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box,
                                     const cuuint32_t *elem_strides, CUtensorMapInterleave interleave,
                                     CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2, CUtensorMapFloatOOBfill oob) {
    (void)l2;
    const unsigned es = elem_size(type);
    if (!map || (uintptr_t)map % 64 != 0 || rank == 0 || rank > 5 || (uintptr_t)global % 16 != 0 || es == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) trap("cuTensorMapEncodeTiled: the emulator has interleave none only");
    if (oob != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) trap("cuTensorMapEncodeTiled: the emulator fills with zeros only");
    if (swizzle != CU_TENSOR_MAP_SWIZZLE_NONE && swizzle != CU_TENSOR_MAP_SWIZZLE_128B)
        trap("cuTensorMapEncodeTiled: the emulator has swizzle none and 128B only");
    tma_map m;
    memset(&m, 0, sizeof m);
    m.magic = EMU_TMA_MAGIC, m.rank = (uint8_t)rank, m.esize = (uint8_t)es;
    m.swizzle128 = swizzle == CU_TENSOR_MAP_SWIZZLE_128B;
    m.base = (const unsigned char *)global;
    for (cuuint32_t d = 0; d < rank; d++) {
        if (dims[d] == 0 || dims[d] > (1ull << 32) || box[d] == 0 || box[d] > 256) return CUDA_ERROR_INVALID_VALUE;
        if (elem_strides[d] == 0 || elem_strides[d] > 8) return CUDA_ERROR_INVALID_VALUE;
        if (d > 0 && elem_strides[d] != 1) trap("cuTensorMapEncodeTiled: the emulator has element strides of 1 only");
        m.dim[d] = dims[d], m.box[d] = box[d];
        m.stride[d] = d == 0 ? es : strides[d - 1];
        if (d > 0 && (strides[d - 1] % 16 != 0 || strides[d - 1] >= (1ull << 40))) return CUDA_ERROR_INVALID_VALUE;
    }
    if (box[0] * es % 16 != 0) return CUDA_ERROR_INVALID_VALUE;
    if (m.swizzle128 && box[0] * es > 128) return CUDA_ERROR_INVALID_VALUE;
    if (m.swizzle128 && box[0] * es != 128) trap("cuTensorMapEncodeTiled: the emulator swizzles 128-byte inner boxes only");
    memset(map, 0, sizeof *map);
    memcpy(map, &m, sizeof m);
    return CUDA_SUCCESS;
}

} /* namespace emu */

/* The driver entry points the backend asks the runtime for: cuTensorMapEncodeTiled alone. */
extern "C" cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn, unsigned int version,
                                                        unsigned long long flags,
                                                        enum cudaDriverEntryPointQueryResult *status) {
    (void)flags;
    *fn = nullptr;
    const int found = strcmp(symbol, "cuTensorMapEncodeTiled") == 0 && version >= 12000;
    if (found) *fn = (void *)&emu::encode_tiled;
    if (status) *status = found ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}
