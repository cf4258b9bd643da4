// hone's CUDA kernels for the transformer body: quantized matrix products (plain, with bias and
// residual, and the gated MLP), RoPE fused with the KV-cache write, and attention over the
// slot-grid cache.
//
// Every kernel is batch-invariant by construction: each output element is reduced by one warp
// (or one block) in an order fixed by the reduction length alone, never by how many rows or
// query positions the call holds. A row's logits are then the same bits alone or in a batch, and
// verifying k drafted tokens in one call gives the bits of k single steps.

#include <stdint.h>
#include <cuda_fp16.h>
#include <math.h>

#define WARP 32

// Programmatic dependent launch (sm_90 and later; see `launch` in cuda.rs). A kernel may start
// while the kernel ahead of it in the stream still runs, so every kernel calls `inputs_ready`
// in every thread before it reads anything an earlier kernel wrote or writes anything: it
// waits until the grids it depends on have finished and their writes are visible, then lets
// the next kernel start its own blocks. Before it, a kernel may only touch what no kernel
// writes (weights: `prefetch_l2`). On older GPUs, or launched the ordinary way, it does nothing.
__device__ __forceinline__ void inputs_ready() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Starts moving `bytes` at `p` into L2, a line per lane of the calling warp at a time.
__device__ __forceinline__ void prefetch_l2(const uint8_t *p, size_t bytes) {
    for (size_t off = (size_t)(threadIdx.x % WARP) * 128; off < bytes; off += WARP * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p + off));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float f16(const uint8_t *p) {
    return __half2float(*reinterpret_cast<const __half *>(p));
}

// Four bytes at a 4-byte aligned address, and at a 2-byte aligned one (blocks of 18, 22, 34
// and 210 bytes leave their quants only 2-byte aligned).
__device__ __forceinline__ uint32_t ld4(const uint8_t *p) {
    return *reinterpret_cast<const uint32_t *>(p);
}
__device__ __forceinline__ uint32_t ld2x2(const uint8_t *p) {
    const uint16_t *h = reinterpret_cast<const uint16_t *>(p);
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}
// Eight bytes at an 8-byte aligned address.
__device__ __forceinline__ uint2 ld8(const void *p) { return *reinterpret_cast<const uint2 *>(p); }

// ---------------------------------------------------------------------------------------------
// Activations. The products read their input rows as 8-bit integers with one f32 scale per 32
// values (llama.cpp's Q8_1 without the sum): `xq` `[n, k]` int8 and `xd` `[n, k / 32]`, one
// buffer, scales after the values. A warp quantizes 32 consecutive values: each value depends
// on its own 32 alone, so a row quantizes the same way in any call.

// Lane `lane` holds `v`, element `lane` of a run of 32 starting at `at` of the row-major values.
__device__ __forceinline__ void quantize32(float v, int8_t *xq, float *xd, size_t at) {
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
    xq[at + threadIdx.x % WARP] = (int8_t)roundf(v * id);
    if (threadIdx.x % WARP == 0) xd[at / 32] = d;
}

// `x` `[n, k]` f32 to the 8-bit form. One warp per 32 values.
extern "C" __global__ void quantize_q8(const float *x, int8_t *xq, float *xd, int total) {
    inputs_ready();
    const size_t at = ((size_t)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP) * WARP;
    if (at >= (size_t)total) return;
    quantize32(x[at + threadIdx.x % WARP], xq, xd, at);
}

// ---------------------------------------------------------------------------------------------
// Block formats (ggml's layouts). A row is cut into units: the weights that share one scale
// (and one offset), 32 of them (16 in Q6_K, whose scales cover 16), inside one run of 32
// inputs. A block holds UNITS units of SPAN pieces of 16 weights. `word(blk, p, i)` is word `i`
// (of 4) of piece `p` of block `blk`: four signed 8-bit weights, elements 4i..4i + 3 of the
// piece, which starts at element 16p; `scale(blk, t, d, m)` gives unit `t`'s scale `d` and
// offset `m` (weight = d * q + m; `m` only in types with `MIN`). Types with units of 32 also
// give `pair(blk, t, q)`: words 2q and 2q + 1 of unit t (elements 8q..8q + 7), what one lane of
// a tensor-core product reads.

// `pair` from two `word`s, for blocks whose quants are not 8-byte aligned.
#define PAIR_OF_WORDS                                                                          \
    __device__ static int2 pair(const uint8_t *blk, int t, int q) {                            \
        const int p = 2 * t + q / 2, i = 2 * (q % 2);                                          \
        return make_int2(word(blk, p, i), word(blk, p, i + 1));                                \
    }

#define LO_NIBBLES(q) ((int)((q) & 0x0F0F0F0Fu))
#define HI_NIBBLES(q) ((int)(((q) >> 4) & 0x0F0F0F0Fu))

// Bits 0..3 of `h` to bit 4 of bytes 0..3: the fifth bit of four 5-bit quants.
__device__ __forceinline__ int fifth_bits(uint32_t h) {
    return (int)(((h & 1u) << 4) | ((h & 2u) << 11) | ((h & 4u) << 18) | ((h & 8u) << 25));
}

// Q4_0, Q4_1, Q5_0, Q5_1: 32 elements; byte j of the 16 quant bytes holds element j (low
// nibble) and j + 16 (high nibble), so piece 0 is the low nibbles and piece 1 the high ones.
struct Q4_0 {  // f16 d, 16 bytes of nibbles
    static const int QK = 32, BYTES = 18, UNITS = 1, SPAN = 2;
    static const bool MIN = false;
    __device__ static int word(const uint8_t *blk, int p, int i) {
        const uint32_t q = ld2x2(blk + 2 + 4 * i);
        return __vsubss4(p ? HI_NIBBLES(q) : LO_NIBBLES(q), 0x08080808);
    }
    __device__ static void scale(const uint8_t *blk, int, float &d, float &) { d = f16(blk); }
    PAIR_OF_WORDS
};

struct Q4_1 {  // f16 d, f16 m, 16 bytes of nibbles
    static const int QK = 32, BYTES = 20, UNITS = 1, SPAN = 2;
    static const bool MIN = true;
    __device__ static int word(const uint8_t *blk, int p, int i) {
        const uint32_t q = ld4(blk + 4 + 4 * i);
        return p ? HI_NIBBLES(q) : LO_NIBBLES(q);
    }
    __device__ static void scale(const uint8_t *blk, int, float &d, float &m) {
        d = f16(blk);
        m = f16(blk + 2);
    }
    PAIR_OF_WORDS
};

struct Q5_0 {  // f16 d, 32 high bits (bit e for element e), 16 bytes of nibbles
    static const int QK = 32, BYTES = 22, UNITS = 1, SPAN = 2;
    static const bool MIN = false;
    __device__ static int word(const uint8_t *blk, int p, int i) {
        const uint32_t qh = ld2x2(blk + 2) >> (16 * p), q = ld2x2(blk + 6 + 4 * i);
        const int h = fifth_bits(qh >> (4 * i));
        return __vsubss4((p ? HI_NIBBLES(q) : LO_NIBBLES(q)) | h, 0x10101010);
    }
    __device__ static void scale(const uint8_t *blk, int, float &d, float &) { d = f16(blk); }
    PAIR_OF_WORDS
};

struct Q5_1 {  // f16 d, f16 m, 32 high bits, 16 bytes of nibbles
    static const int QK = 32, BYTES = 24, UNITS = 1, SPAN = 2;
    static const bool MIN = true;
    __device__ static int word(const uint8_t *blk, int p, int i) {
        const uint32_t qh = ld4(blk + 4) >> (16 * p), q = ld4(blk + 8 + 4 * i);
        return (p ? HI_NIBBLES(q) : LO_NIBBLES(q)) | fifth_bits(qh >> (4 * i));
    }
    __device__ static void scale(const uint8_t *blk, int, float &d, float &m) {
        d = f16(blk);
        m = f16(blk + 2);
    }
    PAIR_OF_WORDS
};

struct Q8_0 {  // 32 elements: f16 d, 32 signed bytes
    static const int QK = 32, BYTES = 34, UNITS = 1, SPAN = 2;
    static const bool MIN = false;
    __device__ static int word(const uint8_t *blk, int p, int i) {
        return (int)ld2x2(blk + 2 + 16 * p + 4 * i);
    }
    __device__ static void scale(const uint8_t *blk, int, float &d, float &) { d = f16(blk); }
    PAIR_OF_WORDS
};

// The scale and offset of sub-block `j` (of 8) of a Q4_K or Q5_K super-block: 6-bit factors
// of the block's d and dmin. The block's first 16 bytes (d, dmin, 12 bytes of factors q) come
// in one load: factor bytes one at a time cost a memory transaction each. Sub-blocks 0..3 take
// the low six bits of q[j] and q[j + 4]; 4..7 the nibbles of q[j + 4] with the top two bits of
// q[j - 4] and q[j].
__device__ __forceinline__ void k4_scale(const uint8_t *blk, int j, float &d, float &m) {
    const uint4 h = *reinterpret_cast<const uint4 *>(blk);
    const int at = 8 * (j % 4);
    const int q0 = (h.y >> at) & 0xFF, q1 = (h.z >> at) & 0xFF, q2 = (h.w >> at) & 0xFF;
    const int sc = j < 4 ? q0 & 63 : (q2 & 0xF) | ((q0 >> 6) << 4);
    const int mn = j < 4 ? q1 & 63 : (q2 >> 4) | ((q1 >> 6) << 4);
    d = __half2float(__ushort_as_half((unsigned short)(h.x & 0xFFFF))) * sc;
    m = -__half2float(__ushort_as_half((unsigned short)(h.x >> 16))) * mn;
}

// Q4_K and Q5_K: 256 elements in 8 sub-blocks of 32, each with a 6-bit scale and minimum.
// Sub-block j (unit j) takes the low (j even) or high (j odd) nibbles of the 32 quant bytes of
// group j / 2; piece p is half p % 2 of sub-block p / 2, so its bytes are 16 * (p % 2).. of the
// group.
struct Q4_K {  // f16 d, f16 dmin, 12 bytes of scales, 128 bytes of nibbles
    static const int QK = 256, BYTES = 144, UNITS = 8, SPAN = 2;
    static const bool MIN = true;
    __device__ static int word(const uint8_t *blk, int p, int i) {
        const int j = p / 2;
        const uint32_t v = ld4(blk + 16 + 32 * (j / 2) + 16 * (p % 2) + 4 * i);
        return j % 2 ? HI_NIBBLES(v) : LO_NIBBLES(v);
    }
    __device__ static int2 pair(const uint8_t *blk, int t, int q) {
        const uint2 v = ld8(blk + 16 + 32 * (t / 2) + 8 * q);
        return t % 2 ? make_int2(HI_NIBBLES(v.x), HI_NIBBLES(v.y))
                     : make_int2(LO_NIBBLES(v.x), LO_NIBBLES(v.y));
    }
    __device__ static void scale(const uint8_t *blk, int t, float &d, float &m) {
        k4_scale(blk, t, d, m);
    }
};

struct Q5_K {  // f16 d, f16 dmin, 12 bytes of scales, 32 of high bits, 128 of nibbles
    static const int QK = 256, BYTES = 176, UNITS = 8, SPAN = 2;
    static const bool MIN = true;
    // The fifth bit of element l of sub-block j is bit j of high-bit byte l.
    __device__ static int word(const uint8_t *blk, int p, int i) {
        const int j = p / 2;
        const uint32_t v = ld4(blk + 48 + 32 * (j / 2) + 16 * (p % 2) + 4 * i);
        const uint32_t h = ld4(blk + 16 + 16 * (p % 2) + 4 * i);
        return (j % 2 ? HI_NIBBLES(v) : LO_NIBBLES(v)) | (int)(((h >> j) & 0x01010101u) << 4);
    }
    __device__ static int2 pair(const uint8_t *blk, int t, int q) {
        const uint2 v = ld8(blk + 48 + 32 * (t / 2) + 8 * q), h = ld8(blk + 16 + 8 * q);
        const int x = (t % 2 ? HI_NIBBLES(v.x) : LO_NIBBLES(v.x)) | (int)(((h.x >> t) & 0x01010101u) << 4);
        const int y = (t % 2 ? HI_NIBBLES(v.y) : LO_NIBBLES(v.y)) | (int)(((h.y >> t) & 0x01010101u) << 4);
        return make_int2(x, y);
    }
    __device__ static void scale(const uint8_t *blk, int t, float &d, float &m) {
        k4_scale(blk, t, d, m);
    }
};

// Q6_K: 256 elements in two halves of 128; element e of half H has its low four bits in
// nibble e / 64 of byte e % 64 of the half's 64 low bytes, its high two bits at bit
// 2 * (e / 32) of byte e % 32 of the half's 32 high bytes, and its scale in int8 e / 16.
// Piece (and unit) p is elements 16 * (p % 8).. of half p / 8: one scale.
struct Q6_K {  // 128 bytes of low nibbles, 64 of high pairs, 16 int8 scales, f16 d
    static const int QK = 256, BYTES = 210, UNITS = 16, SPAN = 1;
    static const bool MIN = false;
    __device__ static int word(const uint8_t *blk, int p, int i) {
        const int half = p / 8, e = 16 * (p % 8);
        const uint32_t l = ld2x2(blk + 64 * half + e % 64 + 4 * i);
        const uint32_t h = ld2x2(blk + 128 + 32 * half + e % 32 + 4 * i);
        const int lo = e < 64 ? LO_NIBBLES(l) : HI_NIBBLES(l);
        return __vsubss4(lo | (int)(((h >> (2 * (e / 32))) & 0x03030303u) << 4), 0x20202020);
    }
    __device__ static void scale(const uint8_t *blk, int t, float &d, float &) {
        d = f16(blk + 208) * reinterpret_cast<const int8_t *>(blk + 192)[t];
    }
};

// ---------------------------------------------------------------------------------------------
// Matrix products. `w` is `[cols, k]` (one quantized row per output column), the input is
// `[n, k]` in the 8-bit form above, `y` is `[n, cols]`. Each element's sum is cut into the units
// of its weights' type, each summed exactly as an integer (dp4a, or tensor cores for many rows)
// and scaled once, in a fixed order, and added into 32 partial sums (unit u into sum u % 32, in unit order)
// that a fixed tree adds up. Every kernel below follows that order whatever its tile, so a
// row's result never depends on the call it is in, and prefill (tensor cores) gives the bits
// of decode (one warp per column).

#define ONES 0x01010101

// An integer of magnitude below 2^22 as a float, exactly, in two full-rate instructions (the
// conversion instruction runs at a quarter of the rate and bound the products).
__device__ __forceinline__ float small_int(int v) {
    return __int_as_float(v + 0x4B400000) - 12582912.f;
}

// What one unit adds to an element's sum: its integer dot product `dot` scaled by the unit's
// `d` (with `m` times the sum of the unit's inputs where the type has an offset) and by the
// inputs' scale `dx`. Every product kernel goes through here, in this order.
template <typename T>
__device__ __forceinline__ float add_unit(float acc, float d, float m, int dot, float sum,
                                          float dx) {
    float f = d * small_int(dot);
    if (T::MIN) f = fmaf(m, sum, f);
    return fmaf(f, dx, acc);
}

// Lane `l` sums units l, l + 32, ... in order; the warp then adds its lanes in `warp_sum`'s
// tree. This is the order of every element of every product kernel. One warp, one output
// column (at w), R input rows.
template <typename T, int R>
__device__ void dot_tile(const uint8_t *w, const int8_t *xq, const float *xd, int rows, int k,
                         float (&acc)[R]) {
    constexpr int WORDS = 4 * T::SPAN;
    const int lane = threadIdx.x % WARP, units = k / T::QK * T::UNITS, runs = k / 32;
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.f;
    // Several units in flight per lane: decode is bound by memory latency (a long reduction,
    // as in the gated MLP's output, is a long chain of loads per lane). Measured on an H200:
    // at 2 rows as many as at 1 make a 2-position verification 10% cheaper; at 4 rows, 4/SPAN
    // made batch-4 decoding 10% slower than 1; with more rows the registers go to the rows.
#pragma unroll(R <= 2 ? 8 / T::SPAN : 1)
    for (int u = lane; u < units; u += WARP) {
        const int blk = u / T::UNITS, t = u % T::UNITS, e = blk * T::QK + 16 * T::SPAN * t;
        const uint8_t *b = w + (size_t)blk * T::BYTES;
        int wq[WORDS];
#pragma unroll
        for (int i = 0; i < WORDS; i++) wq[i] = T::word(b, T::SPAN * t + i / 4, i % 4);
        float d, m = 0.f;
        T::scale(b, t, d, m);
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r < rows) {
                const int4 *x4 = reinterpret_cast<const int4 *>(xq + (size_t)r * k + e);
                int x[WORDS];
#pragma unroll
                for (int h = 0; h < T::SPAN; h++) {
                    const int4 v = x4[h];
                    x[4 * h] = v.x, x[4 * h + 1] = v.y, x[4 * h + 2] = v.z, x[4 * h + 3] = v.w;
                }
                const float dx = xd[(size_t)r * runs + e / 32];
                int dot = 0, ones = 0;
#pragma unroll
                for (int i = 0; i < WORDS; i++) {
                    dot = __dp4a(wq[i], x[i], dot);
                    if (T::MIN) ones = __dp4a(x[i], ONES, ones);
                }
                acc[r] = add_unit<T>(acc[r], d, m, dot, small_int(ones), dx);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
}

// Tensor cores (large batches and prefill). A block of MMA_WARPS warps computes a tile of
// MMA_ROWS input rows by MMA_COLS output columns. mma.sync m16n8k16 multiplies 16 rows by one
// piece of 8 columns as exact integers (a unit of two pieces takes two, the second adding to
// the first's integers), so the tile keeps `dot_tile`'s order: warp w takes units
// w, w + 8, w + 16, ..., and sums unit u into slot (u / 8) % 4, which holds what lane u % 32 of
// `dot_tile` holds. `warp_sum`'s first two levels add lanes l, l + 16, l + 8, l + 24: all in
// warp l's slots. The block does the last three levels over the warps through shared memory.

#define MMA_WARPS 8
#define MMA_ROWS 16
#define MMA_COLS 16
#define MMA_TILES (MMA_COLS / 8)
#define MMA_OUT (MMA_ROWS * MMA_COLS / (MMA_WARPS * WARP))
static_assert(MMA_TILES <= 4, "a column's scales come from one of a lane group's 4 lanes");

// c += a b for a 16 x 16 int8 tile a (row-major; this lane's words a0, a1) and a 16 x 8 tile
// b (column-major; this lane's word b). Lane l holds c at rows l / 4 (c[0], c[1]) and l / 4 + 8
// (c[2], c[3]), columns 2 (l % 4) and 2 (l % 4) + 1.
__device__ __forceinline__ void mma_s8(int (&c)[4], int a0, int a1, int b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(b));
}

// The integer sums of a unit (SPAN pieces) for this lane's four elements.
template <typename T>
__device__ __forceinline__ void mma_unit(int (&c)[4], const int (&a)[T::SPAN][2],
                                         const int (&b)[T::SPAN]) {
    c[0] = c[1] = c[2] = c[3] = 0;
#pragma unroll
    for (int h = 0; h < T::SPAN; h++) mma_s8(c, a[h][0], a[h][1], b[h]);
}

// What one unit of one warp needs from memory, loaded for several units before any is
// multiplied, so that their loads are in flight together.
template <typename T>
struct MmaLoad {
    int a[T::SPAN][2], b[MMA_TILES][T::SPAN];
    float dx0, dx1, d, m;
};

// The unit loop of a tile. With Z > 1 the block takes only the slots z, z + Z, ... (grid z)
// into acc[0], acc[1], ..., so that Z blocks share a tile's reduction (a product with few
// columns and a long k would leave most SMs idle); their sums meet in `mma_merge`, which adds
// them in the order `mma_tile` does.
template <typename T, int Z>
__device__ void mma_slots(const uint8_t *w, size_t row_bytes, int ncols, const int8_t *xq,
                          const float *xd, int rows, int k, int z,
                          float (&acc)[4 / Z][MMA_TILES][4]) {
    constexpr int SLOTS = 4 / Z;
    // Units a warp's loop advances by: a multiple of every type's units per block, so a
    // slot's unit keeps its place in the block from one pass to the next.
    constexpr int STEP = 4 * MMA_WARPS;
    static_assert(STEP % T::UNITS == 0, "a slot's unit keeps its place in its block");
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int g = lane / 4, q = lane % 4;
    const int units = k / T::QK * T::UNITS, runs = k / 32;
#pragma unroll
    for (int s = 0; s < SLOTS; s++)
#pragma unroll
        for (int j = 0; j < MMA_TILES; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[s][j][i] = 0.f;
    // Columns past the tile's last read the last one's (valid memory; every output element
    // depends on its own column alone, and those past the end are not kept), so every
    // address of weights is fixed before the loop. Rows past the last load nothing: the
    // loads of inputs are what the kernel's memory pipeline is busiest with.
    // Lane q's inputs of a unit: elements 4q.. of a piece of 16, 8q.. of a unit of 32 (whose
    // two multiplies take elements 8q.. and 8q + 4..: the same integer sum, in whole loads).
    const bool r0 = g < rows, r1 = g + 8 < rows;
    const int8_t *x0 = xq + (size_t)g * k + 4 * T::SPAN * q, *x1 = x0 + (size_t)8 * k;
    const float *d0 = xd + (size_t)g * runs, *d1 = d0 + (size_t)8 * runs;
    // Lane q's words of column 8j + g; and the scales of column 8 (q % MMA_TILES) + g: lane
    // 4c + j holds those of column 8j + c, which lanes whose outputs lie in that column take
    // when they add.
    const uint8_t *wc[MMA_TILES];
#pragma unroll
    for (int j = 0; j < MMA_TILES; j++) wc[j] = w + (size_t)min(8 * j + g, ncols - 1) * row_bytes;
    const uint8_t *ws = w + (size_t)min(8 * (q % MMA_TILES) + g, ncols - 1) * row_bytes;
    // Slot s takes unit u0 + 8 (z + Z s) of each pass: unit t of its block, always the same.
    int t[SLOTS], blk0[SLOTS];
#pragma unroll
    for (int s = 0; s < SLOTS; s++) {
        const int v = warp + (z + Z * s) * MMA_WARPS;
        t[s] = v % T::UNITS;
        blk0[s] = v / T::UNITS;
    }
    for (int u0 = warp, pass = 0; u0 < units; u0 += STEP, pass++) {
        // Past the last unit a slot loads from unit u0's block and adds nothing.
        MmaLoad<T> ld[SLOTS];
#pragma unroll
        for (int s = 0; s < SLOTS; s++) {
            const bool live = u0 + (z + Z * s) * MMA_WARPS < units;
            const int blk = (live ? blk0[s] : warp / T::UNITS) + pass * (STEP / T::UNITS);
            const int e = blk * T::QK + 16 * T::SPAN * t[s];
            if constexpr (T::SPAN == 2) {
                const uint2 v0 = r0 ? ld8(x0 + e) : make_uint2(0, 0);
                const uint2 v1 = r1 ? ld8(x1 + e) : make_uint2(0, 0);
                ld[s].a[0][0] = v0.x, ld[s].a[1][0] = v0.y;
                ld[s].a[0][1] = v1.x, ld[s].a[1][1] = v1.y;
            } else {
                ld[s].a[0][0] = r0 ? (int)ld4((const uint8_t *)(x0 + e)) : 0;
                ld[s].a[0][1] = r1 ? (int)ld4((const uint8_t *)(x1 + e)) : 0;
            }
            ld[s].dx0 = r0 ? d0[e / 32] : 0.f;
            ld[s].dx1 = r1 ? d1[e / 32] : 0.f;
            const size_t at = (size_t)blk * T::BYTES;
#pragma unroll
            for (int j = 0; j < MMA_TILES; j++) {
                if constexpr (T::SPAN == 2) {
                    const int2 b = T::pair(wc[j] + at, t[s], q);
                    ld[s].b[j][0] = b.x, ld[s].b[j][1] = b.y;
                } else {
                    ld[s].b[j][0] = T::word(wc[j] + at, t[s], q);
                }
            }
            ld[s].m = 0.f;
            T::scale(ws + at, t[s], ld[s].d, ld[s].m);
        }
#pragma unroll
        for (int s = 0; s < SLOTS; s++) {
            if (u0 + (z + Z * s) * MMA_WARPS >= units) break;
            float sum0 = 0.f, sum1 = 0.f;
            if (T::MIN) {
                int c[4], ones[T::SPAN];
#pragma unroll
                for (int h = 0; h < T::SPAN; h++) ones[h] = ONES;
                mma_unit<T>(c, ld[s].a, ones);
                sum0 = small_int(c[0]);
                sum1 = small_int(c[2]);
            }
#pragma unroll
            for (int j = 0; j < MMA_TILES; j++) {
                int c[4];
                mma_unit<T>(c, ld[s].a, ld[s].b[j]);
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int from = 4 * (2 * q + h) + j;
                    const float d = __shfl_sync(0xffffffffu, ld[s].d, from);
                    const float m = T::MIN ? __shfl_sync(0xffffffffu, ld[s].m, from) : 0.f;
                    acc[s][j][h] = add_unit<T>(acc[s][j][h], d, m, c[h], sum0, ld[s].dx0);
                    acc[s][j][2 + h] =
                        add_unit<T>(acc[s][j][2 + h], d, m, c[2 + h], sum1, ld[s].dx1);
                }
            }
        }
    }
}

// Where lane (g, q) of a warp keeps element i of tile j of a slot: row and column in the tile.
__device__ __forceinline__ int mma_at(int lane, int j, int i) {
    const int row = lane / 4 + 8 * (i / 2), col = 8 * j + 2 * (lane % 4) + i % 2;
    return row * MMA_COLS + col;
}

// The last three levels of `warp_sum`, over the warps' sums `p` of one element.
__device__ __forceinline__ float mma_warps_sum(const float (&p)[MMA_WARPS]) {
    const float s0 = p[0] + p[4], s1 = p[1] + p[5], s2 = p[2] + p[6], s3 = p[3] + p[7];
    return (s0 + s2) + (s1 + s3);
}

// Elements i * blockDim.x + threadIdx.x (row-major in the tile) of y = x wᵀ for the tile of
// `rows` input rows and `ncols` columns at w, xq, xd. Every thread of the block must call it.
template <typename T>
__device__ void mma_tile(const uint8_t *w, size_t row_bytes, int ncols, const int8_t *xq,
                         const float *xd, int rows, int k, float (&out)[MMA_OUT]) {
    __shared__ float part[MMA_WARPS][MMA_ROWS * MMA_COLS];
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    float acc[4][MMA_TILES][4];
    mma_slots<T, 1>(w, row_bytes, ncols, xq, xd, rows, k, 0, acc);
#pragma unroll
    for (int j = 0; j < MMA_TILES; j++)
#pragma unroll
        for (int i = 0; i < 4; i++)
            part[warp][mma_at(lane, j, i)] =
                (acc[0][j][i] + acc[2][j][i]) + (acc[1][j][i] + acc[3][j][i]);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < MMA_OUT; i++) {
        const int at = i * MMA_WARPS * WARP + threadIdx.x;
        float p[MMA_WARPS];
#pragma unroll
        for (int v = 0; v < MMA_WARPS; v++) p[v] = part[v][at];
        out[i] = mma_warps_sum(p);
    }
    __syncthreads();
}

// The warp's output column, or -1 past the last.
__device__ __forceinline__ int warp_column(int cols) {
    const int col = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    return col < cols ? col : -1;
}

// Starts fetching the weight rows of `count` output columns from `col` (clipped to `cols`)
// into L2: what a product kernel can do before its inputs are ready.
template <typename T>
__device__ __forceinline__ void prefetch_columns(const uint8_t *w, int k, int col, int count,
                                                 int cols) {
    const size_t row_bytes = (size_t)(k / T::QK) * T::BYTES;
    for (int c = col; c < min(col + count, cols); c++) prefetch_l2(w + c * row_bytes, row_bytes);
}

// Element `at` (column `col`) of y = x wᵀ + bias + res, from its sum `v`. `bias` and `res`
// are read only when their flags are set.
__device__ __forceinline__ float finish(float v, const float *bias, const float *res,
                                        int has_bias, int has_res, size_t at, int col) {
    if (has_bias) v += bias[col];
    if (has_res) v += res[at];
    return v;
}

// Output column `col` of y = x wᵀ (+ bias) (+ res) for one warp, R rows at a time (grid y).
template <typename T, int R>
__device__ void matvec_at(const uint8_t *w, const int8_t *xq, const float *xd, float *y,
                          const float *bias, const float *res, int has_bias, int has_res, int n,
                          int k, int cols, int col) {
    const size_t row_bytes = (size_t)(k / T::QK) * T::BYTES;
    for (int n0 = blockIdx.y * R; n0 < n; n0 += gridDim.y * R) {
        const int rows = min(R, n - n0);
        float acc[R];
        dot_tile<T, R>(w + col * row_bytes, xq + (size_t)n0 * k, xd + (size_t)n0 * (k / 32),
                       rows, k, acc);
        if (threadIdx.x % WARP == 0)
            for (int r = 0; r < rows; r++) {
                const size_t at = (size_t)(n0 + r) * cols + col;
                y[at] = finish(acc[r], bias, res, has_bias, has_res, at, col);
            }
    }
}

template <typename T, int R>
__device__ void matvec(const uint8_t *w, const int8_t *xq, const float *xd, float *y,
                       const float *bias, const float *res, int has_bias, int has_res, int n,
                       int k, int cols) {
    const int col = warp_column(cols);
    if (col >= 0) prefetch_columns<T>(w, k, col, 1, cols);
    inputs_ready();
    if (col >= 0) matvec_at<T, R>(w, xq, xd, y, bias, res, has_bias, has_res, n, k, cols, col);
}

// Which of three matrices side by side holds column `col` (made relative to it).
struct Third {
    const uint8_t *w;
    float *y;
    const float *b;
    int cols;
};

__device__ __forceinline__ Third third(const uint8_t *w0, const uint8_t *w1, const uint8_t *w2,
                                       float *y0, float *y1, float *y2, const float *b0,
                                       const float *b1, const float *b2, int c0, int c1, int c2,
                                       int &col) {
    if (col < c0) return {w0, y0, b0, c0};
    if (col < c0 + c1) {
        col -= c0;
        return {w1, y1, b1, c1};
    }
    col -= c0 + c1;
    return {w2, y2, b2, c2};
}

// Three products of the same input in one launch (q, k and v): the matrices' columns side by
// side, each warp in one of them, each into its own y.
template <typename T, int R>
__device__ void matvec3(const uint8_t *w0, const uint8_t *w1, const uint8_t *w2,
                        const int8_t *xq, const float *xd, float *y0, float *y1, float *y2,
                        const float *b0, const float *b1, const float *b2, int has_bias, int n,
                        int k, int c0, int c1, int c2) {
    int col = warp_column(c0 + c1 + c2);
    const bool some = col >= 0;
    const Third m = third(w0, w1, w2, y0, y1, y2, b0, b1, b2, c0, c1, c2, col);
    if (some) prefetch_columns<T>(m.w, k, col, 1, m.cols);
    inputs_ready();
    if (!some) return;
    matvec_at<T, R>(m.w, xq, xd, m.y, m.b, m.b, has_bias, 0, n, k, m.cols, col);
}

__device__ __forceinline__ float silu(float g) { return g / (1.f + expf(-g)); }

// candle's `gelu` (the tanh approximation), as Gemma's MLP uses.
__device__ __forceinline__ float gelu(float g) {
    return 0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
}

// The gated MLP's first half: y = act(x gateᵀ) * (x upᵀ); act 0 is SiLU, 1 is GELU.
__device__ __forceinline__ float gated(int act, float g, float u) {
    return (act ? gelu(g) : silu(g)) * u;
}

template <typename T, int R>
__device__ void glu(const uint8_t *gate, const uint8_t *up, const int8_t *xq, const float *xd,
                    float *y, int act, int n, int k, int cols) {
    const int col = warp_column(cols);
    if (col >= 0) {
        prefetch_columns<T>(gate, k, col, 1, cols);
        prefetch_columns<T>(up, k, col, 1, cols);
    }
    inputs_ready();
    if (col < 0) return;
    const size_t row_bytes = (size_t)(k / T::QK) * T::BYTES;
    for (int n0 = blockIdx.y * R; n0 < n; n0 += gridDim.y * R) {
        const int rows = min(R, n - n0);
        const int8_t *xr = xq + (size_t)n0 * k;
        const float *dr = xd + (size_t)n0 * (k / 32);
        float g[R], u[R];
        dot_tile<T, R>(gate + col * row_bytes, xr, dr, rows, k, g);
        dot_tile<T, R>(up + col * row_bytes, xr, dr, rows, k, u);
        if (threadIdx.x % WARP == 0)
            for (int r = 0; r < rows; r++)
                y[(size_t)(n0 + r) * cols + col] = gated(act, g[r], u[r]);
    }
}

// The tensor-core forms of `matvec_at`, `matvec3` and `glu`: block x owns MMA_COLS output
// columns (every column count a multiple of MMA_COLS in `matvec3`), grid y groups of
// MMA_ROWS input rows.

template <typename T>
__device__ void matvec_mma_at(const uint8_t *w, const int8_t *xq, const float *xd, float *y,
                              const float *bias, const float *res, int has_bias, int has_res,
                              int n, int k, int cols, int col) {
    const size_t row_bytes = (size_t)(k / T::QK) * T::BYTES;
    const int ncols = min(MMA_COLS, cols - col);
    for (int n0 = blockIdx.y * MMA_ROWS; n0 < n; n0 += gridDim.y * MMA_ROWS) {
        const int rows = min(MMA_ROWS, n - n0);
        float v[MMA_OUT];
        mma_tile<T>(w + col * row_bytes, row_bytes, ncols, xq + (size_t)n0 * k,
                    xd + (size_t)n0 * (k / 32), rows, k, v);
#pragma unroll
        for (int i = 0; i < MMA_OUT; i++) {
            const int e = i * MMA_WARPS * WARP + threadIdx.x, r = e / MMA_COLS, c = e % MMA_COLS;
            if (r < rows && c < ncols) {
                const size_t at = (size_t)(n0 + r) * cols + col + c;
                y[at] = finish(v[i], bias, res, has_bias, has_res, at, col + c);
            }
        }
    }
}

// Warp w of a tensor-core block fetches columns 2w and 2w + 1 of the block's tile.
#define MMA_PREFETCH(T, w, k, col, cols) \
    prefetch_columns<T>(w, k, (col) + 2 * (threadIdx.x / WARP), MMA_COLS / MMA_WARPS, cols)

template <typename T>
__device__ void matvec_mma(const uint8_t *w, const int8_t *xq, const float *xd, float *y,
                           const float *bias, const float *res, int has_bias, int has_res, int n,
                           int k, int cols) {
    const int col = blockIdx.x * MMA_COLS;
    MMA_PREFETCH(T, w, k, col, cols);
    inputs_ready();
    matvec_mma_at<T>(w, xq, xd, y, bias, res, has_bias, has_res, n, k, cols, col);
}

// A tile's share of y = x wᵀ when Z blocks (grid z) split its units: each warp's sum of its
// slots (z and z + 2 for Z = 2: `warp_sum`'s first level; slot z for Z = 4) into `part`,
// `[row groups, column tiles, Z, MMA_WARPS, MMA_ROWS * MMA_COLS]`.
template <typename T, int Z>
__device__ void matvec_mma_split(const uint8_t *w, const int8_t *xq, const float *xd,
                                 float *part, int n, int k, int cols) {
    const int col = blockIdx.x * MMA_COLS, z = blockIdx.z;
    MMA_PREFETCH(T, w, k, col, cols);
    inputs_ready();
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const size_t row_bytes = (size_t)(k / T::QK) * T::BYTES;
    const int ncols = min(MMA_COLS, cols - col);
    for (int n0 = blockIdx.y * MMA_ROWS; n0 < n; n0 += gridDim.y * MMA_ROWS) {
        float acc[4 / Z][MMA_TILES][4];
        mma_slots<T, Z>(w + col * row_bytes, row_bytes, ncols, xq + (size_t)n0 * k,
                        xd + (size_t)n0 * (k / 32), min(MMA_ROWS, n - n0), k, z, acc);
        float *dst = part + ((((size_t)n0 / MMA_ROWS) * gridDim.x + blockIdx.x) * Z + z) *
                                (MMA_WARPS * MMA_ROWS * MMA_COLS) +
                     warp * (MMA_ROWS * MMA_COLS);
#pragma unroll
        for (int j = 0; j < MMA_TILES; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float v = acc[0][j][i];
                if constexpr (Z == 2) v += acc[1][j][i];
                dst[mma_at(lane, j, i)] = v;
            }
    }
}

// Adds the Z shares of every tile in `mma_tile`'s order and finishes y as `matvec_mma_at`
// does. Grid (column tiles, row groups) as the split product's, one thread per element.
template <int Z>
__device__ void mma_merge(const float *part, float *y, const float *bias, const float *res,
                          int has_bias, int has_res, int n, int cols) {
    inputs_ready();
    const int col = blockIdx.x * MMA_COLS, e = threadIdx.x;
    const int r = e / MMA_COLS, c = e % MMA_COLS;
    constexpr int SHARE = MMA_WARPS * MMA_ROWS * MMA_COLS;
    for (int n0 = blockIdx.y * MMA_ROWS; n0 < n; n0 += gridDim.y * MMA_ROWS) {
        const float *src =
            part + (((size_t)n0 / MMA_ROWS) * gridDim.x + blockIdx.x) * Z * SHARE + e;
        float p[MMA_WARPS];
#pragma unroll
        for (int v = 0; v < MMA_WARPS; v++) {
            const float *sv = src + v * (MMA_ROWS * MMA_COLS);
            p[v] = Z == 2 ? sv[0] + sv[SHARE]
                          : (sv[0] + sv[2 * SHARE]) + (sv[SHARE] + sv[3 * SHARE]);
        }
        const float v = mma_warps_sum(p);
        if (n0 + r < n && col + c < cols) {
            const size_t at = (size_t)(n0 + r) * cols + col + c;
            y[at] = finish(v, bias, res, has_bias, has_res, at, col + c);
        }
    }
}

extern "C" __global__ void mma_merge2(const float *part, float *y, const float *bias,
                                      const float *res, int has_bias, int has_res, int n,
                                      int cols) {
    mma_merge<2>(part, y, bias, res, has_bias, has_res, n, cols);
}
extern "C" __global__ void mma_merge4(const float *part, float *y, const float *bias,
                                      const float *res, int has_bias, int has_res, int n,
                                      int cols) {
    mma_merge<4>(part, y, bias, res, has_bias, has_res, n, cols);
}

template <typename T>
__device__ void matvec3_mma(const uint8_t *w0, const uint8_t *w1, const uint8_t *w2,
                            const int8_t *xq, const float *xd, float *y0, float *y1, float *y2,
                            const float *b0, const float *b1, const float *b2, int has_bias,
                            int n, int k, int c0, int c1, int c2) {
    int col = blockIdx.x * MMA_COLS;
    const Third m = third(w0, w1, w2, y0, y1, y2, b0, b1, b2, c0, c1, c2, col);
    MMA_PREFETCH(T, m.w, k, col, m.cols);
    inputs_ready();
    matvec_mma_at<T>(m.w, xq, xd, m.y, m.b, m.b, has_bias, 0, n, k, m.cols, col);
}

template <typename T>
__device__ void glu_mma(const uint8_t *gate, const uint8_t *up, const int8_t *xq,
                        const float *xd, float *y, int act, int n, int k, int cols) {
    const int col = blockIdx.x * MMA_COLS;
    MMA_PREFETCH(T, gate, k, col, cols);
    MMA_PREFETCH(T, up, k, col, cols);
    inputs_ready();
    const size_t row_bytes = (size_t)(k / T::QK) * T::BYTES;
    const int ncols = min(MMA_COLS, cols - col);
    for (int n0 = blockIdx.y * MMA_ROWS; n0 < n; n0 += gridDim.y * MMA_ROWS) {
        const int rows = min(MMA_ROWS, n - n0);
        const int8_t *xr = xq + (size_t)n0 * k;
        const float *dr = xd + (size_t)n0 * (k / 32);
        float g[MMA_OUT], u[MMA_OUT];
        mma_tile<T>(gate + col * row_bytes, row_bytes, ncols, xr, dr, rows, k, g);
        mma_tile<T>(up + col * row_bytes, row_bytes, ncols, xr, dr, rows, k, u);
#pragma unroll
        for (int i = 0; i < MMA_OUT; i++) {
            const int e = i * MMA_WARPS * WARP + threadIdx.x, r = e / MMA_COLS, c = e % MMA_COLS;
            if (r < rows && c < ncols) y[(size_t)(n0 + r) * cols + col + c] = gated(act, g[i], u[i]);
        }
    }
}

// Shapes: `_1` one row and one column per warp (a decode step of one row: the most warps);
// `_2` and `_4` up to 2 and 4 rows per warp (small batches, and a row's drafted tokens under
// verification: a warp's work grows with its rows; 5 rows are two warps of rows); `_mma` tensor
// cores from 6 rows on.
#define MATVEC_ARGS                                                                            \
    const uint8_t *w, const int8_t *xq, const float *xd, float *y, const float *bias,          \
        const float *res, int has_bias, int has_res, int n, int k, int cols
#define MATVEC3_ARGS                                                                           \
    const uint8_t *w0, const uint8_t *w1, const uint8_t *w2, const int8_t *xq, const float *xd, \
        float *y0, float *y1, float *y2, const float *b0, const float *b1, const float *b2,    \
        int has_bias, int n, int k, int c0, int c1, int c2
#define GLU_ARGS                                                                               \
    const uint8_t *gate, const uint8_t *up, const int8_t *xq, const float *xd, float *y,       \
        int act, int n, int k, int cols

#define QUANT_KERNELS_R(T, SUFFIX, R)                                                          \
    extern "C" __global__ void matvec_##T##SUFFIX(MATVEC_ARGS) {                               \
        matvec<T, R>(w, xq, xd, y, bias, res, has_bias, has_res, n, k, cols);               \
    }                                                                                          \
    extern "C" __global__ void matvec3_##T##SUFFIX(MATVEC3_ARGS) {                             \
        matvec3<T, R>(w0, w1, w2, xq, xd, y0, y1, y2, b0, b1, b2, has_bias, n, k, c0, c1,   \
                         c2);                                                                  \
    }                                                                                          \
    extern "C" __global__ void glu_##T##SUFFIX(GLU_ARGS) {                                     \
        glu<T, R>(gate, up, xq, xd, y, act, n, k, cols);                                    \
    }
#define QUANT_KERNELS(T)                                                                       \
    QUANT_KERNELS_R(T, _1, 1)                                                                  \
    QUANT_KERNELS_R(T, _2, 2)                                                                  \
    QUANT_KERNELS_R(T, _4, 4)                                                                  \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS *WARP, 2) matvec_##T##_mma(MATVEC_ARGS) { \
        matvec_mma<T>(w, xq, xd, y, bias, res, has_bias, has_res, n, k, cols);                 \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS *WARP, 2)                           \
        matvec_##T##_mma2(const uint8_t *w, const int8_t *xq, const float *xd, float *part,    \
                          int n, int k, int cols) {                                            \
        matvec_mma_split<T, 2>(w, xq, xd, part, n, k, cols);                                   \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS *WARP, 2)                           \
        matvec_##T##_mma4(const uint8_t *w, const int8_t *xq, const float *xd, float *part,    \
                          int n, int k, int cols) {                                            \
        matvec_mma_split<T, 4>(w, xq, xd, part, n, k, cols);                                   \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS *WARP, 2) matvec3_##T##_mma(MATVEC3_ARGS) { \
        matvec3_mma<T>(w0, w1, w2, xq, xd, y0, y1, y2, b0, b1, b2, has_bias, n, k, c0, c1, c2); \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS *WARP, 2) glu_##T##_mma(GLU_ARGS) {    \
        glu_mma<T>(gate, up, xq, xd, y, act, n, k, cols);                                      \
    }

QUANT_KERNELS(Q4_0)
QUANT_KERNELS(Q4_1)
QUANT_KERNELS(Q5_0)
QUANT_KERNELS(Q5_1)
QUANT_KERNELS(Q8_0)
QUANT_KERNELS(Q4_K)
QUANT_KERNELS(Q5_K)
QUANT_KERNELS(Q6_K)

// ---------------------------------------------------------------------------------------------
// RMS norm of each row of `x` `[n, d]`: y = x / sqrt(mean(x²) + eps) * w. One block of
// NORM_THREADS per row; thread i sums elements i, i + NORM_THREADS, ... and the block adds its
// threads in a fixed tree, so a row's result depends on d alone. With `quantize` (d a multiple
// of 32) the row is also written in the products' 8-bit form, saving the products a pass.

#define NORM_THREADS 256
#define NORM_KEPT 8

extern "C" __global__ void rms_norm(const float *x, const float *w, float *y, int8_t *xq,
                                    float *xd, int d, int quantize, float eps) {
    // Rows of up to NORM_KEPT * NORM_THREADS values are read once, every load issued before
    // the first is used (a decode step's norm is one block: latency-bound); the weights are
    // read before the inputs are ready. Longer rows read the rest twice.
    float kept[NORM_KEPT], wk[NORM_KEPT];
#pragma unroll
    for (int j = 0; j < NORM_KEPT; j++) {
        const int i = threadIdx.x + j * NORM_THREADS;
        wk[j] = i < d ? w[i] : 0.f;
    }
    inputs_ready();
    const float *xr = x + (size_t)blockIdx.x * d;
    float *yr = y + (size_t)blockIdx.x * d;
#pragma unroll
    for (int j = 0; j < NORM_KEPT; j++) {
        const int i = threadIdx.x + j * NORM_THREADS;
        kept[j] = i < d ? xr[i] : 0.f;
    }
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < NORM_KEPT; j++)
        if (threadIdx.x + j * NORM_THREADS < d) s = fmaf(kept[j], kept[j], s);
    for (int i = threadIdx.x + NORM_KEPT * NORM_THREADS; i < d; i += NORM_THREADS)
        s = fmaf(xr[i], xr[i], s);
    s = warp_sum(s);
    __shared__ float part[NORM_THREADS / WARP];
    if (threadIdx.x % WARP == 0) part[threadIdx.x / WARP] = s;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < NORM_THREADS / WARP; i++) total += part[i];
    const float inv = rsqrtf(total / d + eps);
    const size_t row = (size_t)blockIdx.x * d;
#pragma unroll
    for (int j = 0; j < NORM_KEPT; j++) {
        const int i = threadIdx.x + j * NORM_THREADS;
        if (i < d) {
            const float v = kept[j] * inv * wk[j];
            yr[i] = v;
            if (quantize) quantize32(v, xq, xd, row + i - threadIdx.x % WARP);
        }
    }
    for (int i = threadIdx.x + NORM_KEPT * NORM_THREADS; i < d; i += NORM_THREADS) {
        const float v = xr[i] * inv * w[i];
        yr[i] = v;
        if (quantize) quantize32(v, xq, xd, row + i - threadIdx.x % WARP);
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE and the KV-cache write in one pass. Grid (tokens, heads + kv_heads), d / 2 threads.
// q `[n, heads * d]`, k and v `[n, kv_heads * d]` (packed tokens); cos and sin
// `[context, d / 2]`; token t sits at position pos[t] and goes to cache row row[t], slot
// slot[t]; the cache is `[batch, kv_heads, cap, d]`. Rotated queries go to q_out.
extern "C" __global__ void rope_store(const float *q, const float *k, const float *v,
                                      const float *cos_t, const float *sin_t,
                                      const uint32_t *pos, const uint32_t *row,
                                      const uint32_t *slot, float *q_out, float *kc, float *vc,
                                      int heads, int kv_heads, int d, int cap, int interleaved) {
    inputs_ready();
    const int t = blockIdx.x, head = blockIdx.y, i = threadIdx.x, half = d / 2;
    if (i >= half) return;
    const float c = cos_t[(size_t)pos[t] * half + i], s = sin_t[(size_t)pos[t] * half + i];
    const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    if (head < heads) {
        const float *src = q + ((size_t)t * heads + head) * d;
        float *dst = q_out + ((size_t)t * heads + head) * d;
        dst[a] = src[a] * c - src[b] * s;
        dst[b] = src[a] * s + src[b] * c;
    } else {
        const int kh = head - heads;
        const float *ks = k + ((size_t)t * kv_heads + kh) * d;
        const float *vs = v + ((size_t)t * kv_heads + kh) * d;
        const size_t at = (((size_t)row[t] * kv_heads + kh) * cap + slot[t]) * d;
        kc[at + a] = ks[a] * c - ks[b] * s;
        kc[at + b] = ks[a] * s + ks[b] * c;
        vc[at + a] = vs[a];
        vc[at + b] = vs[b];
    }
}

// ---------------------------------------------------------------------------------------------
// Attention for every packed query of a call, in two kernels. Query t reads
// `meta[3t .. 3t + 3]` = (cache row, offset into `keys`, key count): the cache slots it sees,
// in position order.
//
// `attend_D` (one per head size D): grid (tokens, heads, ATT_SPLITS). Its keys are cut into
// ATT_SPLITS runs of equal length (a multiple of ATT_TILE; the last runs may be short or
// empty), one block per run, so that a decode step, one query per head, spreads over many SMs
// instead of waiting on one block's chain of dependent loads. In a block, warp w takes key
// tiles w, w + ATT_WARPS, ... of ATT_TILE keys (four keys at a time, 8 lanes each, for the
// scores; then the tile's keys in order for the values), keeping an online softmax; the warps'
// results are merged in warp order into the run's (max, sum, unnormalized output) in `part`.
// `attend_merge`: grid (tokens, heads), d threads: merges the runs in order and normalizes.
// Every split depends only on the key count, so a query's output does not depend on the rest of
// the call. With `quantize` the output is also written in the products' 8-bit form (d a
// multiple of 32).

#define ATT_SPLITS 8
#define ATT_WARPS 4
#define ATT_TILE 8

// Where run `split` of query t, head `head` keeps (max, sum, output[d]).
__device__ __forceinline__ size_t att_part(int t, int head, int heads, int split, int d) {
    return (((size_t)t * heads + head) * ATT_SPLITS + split) * (d + 2);
}

// One instantiation per head size D (a multiple of 32 up to 256, cuda.rs's MAX_HEAD_DIM), so
// that a tile's value loads, D / 32 per lane and key, are all issued before the first is used:
// with D known only at run time the compiler interleaved each load with its use, one trip to
// memory per key and element, and that chain was most of the kernel's time.
template <int D>
__device__ void attend_d(const float *q, const float *kc, const float *vc, const uint32_t *keys,
                         const uint32_t *meta, float *part, int heads, int kv_heads, int cap,
                         float scale) {
    constexpr int PER_LANE = D / WARP, RUN = D / 8;
    inputs_ready();
    const int t = blockIdx.x, head = blockIdx.y, split = blockIdx.z;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    // The query does not depend on the key plan: its load overlaps the plan's.
    __shared__ __align__(16) float qs[D];
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        qs[i] = q[((size_t)t * heads + head) * D + i];
    const int kh = head / (heads / kv_heads);
    const uint32_t crow = meta[3 * t], off = meta[3 * t + 1], count = meta[3 * t + 2];
    const uint32_t run = (count + ATT_SPLITS * ATT_TILE - 1) / (ATT_SPLITS * ATT_TILE) * ATT_TILE;
    const uint32_t lo = min(split * run, count), hi = min(lo + run, count);
    const float *kbase = kc + ((size_t)crow * kv_heads + kh) * cap * D;
    const float *vbase = vc + ((size_t)crow * kv_heads + kh) * cap * D;

    __shared__ float part_m[ATT_WARPS], part_l[ATT_WARPS];
    __shared__ float part_acc[ATT_WARPS][D];
    __syncthreads();

    float m = -INFINITY, l = 0.f, acc[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) acc[i] = 0.f;
    for (uint32_t base = lo + warp * ATT_TILE; base < hi; base += ATT_WARPS * ATT_TILE) {
        // Lane j < ATT_TILE holds key base + j of the tile. A tile's work is a short chain of
        // dependent loads (slots, keys, values), each issued all at once: a decode step has
        // few blocks per head and is bound by that chain, not by bandwidth.
        const uint32_t j = base + lane;
        const bool valid = lane < ATT_TILE && j < hi;
        const uint32_t my_slot = valid ? keys[off + j] : 0;
        // Scores: the warp's four groups of 8 lanes take one key each per step, each lane a
        // run of D / 8 of its values (a load instruction reads four whole rows), summed in
        // order and then over the group in a fixed tree. Past the count a group reads slot 0
        // and its score is dropped.
        float s = -INFINITY;
        const int group = lane / 8, part = lane % 8;
        const float4 *q4 = reinterpret_cast<const float4 *>(qs + part * RUN);
        const float4 *krow[ATT_TILE / 4];
#pragma unroll
        for (int it = 0; it < ATT_TILE / 4; it++)
            krow[it] = reinterpret_cast<const float4 *>(
                kbase + (size_t)__shfl_sync(0xffffffffu, my_slot, 4 * it + group) * D +
                part * RUN);
        float dots[ATT_TILE / 4];
#pragma unroll
        for (int it = 0; it < ATT_TILE / 4; it++) dots[it] = 0.f;
#pragma unroll
        for (int i = 0; i < RUN / 4; i++) {
            const float4 qv = q4[i];
#pragma unroll
            for (int it = 0; it < ATT_TILE / 4; it++) {
                const float4 kv = krow[it][i];
                dots[it] = fmaf(qv.x, kv.x, dots[it]);
                dots[it] = fmaf(qv.y, kv.y, dots[it]);
                dots[it] = fmaf(qv.z, kv.z, dots[it]);
                dots[it] = fmaf(qv.w, kv.w, dots[it]);
            }
        }
#pragma unroll
        for (int it = 0; it < ATT_TILE / 4; it++) {
            float dot = dots[it];
            dot += __shfl_xor_sync(0xffffffffu, dot, 4);
            dot += __shfl_xor_sync(0xffffffffu, dot, 2);
            dot += __shfl_xor_sync(0xffffffffu, dot, 1);
            const float mine = __shfl_sync(0xffffffffu, dot, (lane % 4) * 8);
            if (lane / 4 == it && valid) s = mine * scale;
        }
        // Values: every key's row is loaded first (past the count a key reads slot 0), then
        // added key by key in tile order; a key past the count adds nothing.
        float vals[ATT_TILE][PER_LANE];
#pragma unroll
        for (int kk = 0; kk < ATT_TILE; kk++) {
            const float *vr = vbase + (size_t)__shfl_sync(0xffffffffu, my_slot, kk) * D;
#pragma unroll
            for (int i = 0; i < PER_LANE; i++) vals[kk][i] = vr[lane + WARP * i];
        }
        const float m_new = fmaxf(m, warp_max(s));
        const float p = valid ? expf(s - m_new) : 0.f;
        const float corr = expf(m - m_new);
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) acc[i] *= corr;
        // A whole tile adds without a condition, so that no load is moved to its use.
        const uint32_t in_tile = min((uint32_t)ATT_TILE, hi - base);
        if (in_tile == ATT_TILE) {
#pragma unroll
            for (int kk = 0; kk < ATT_TILE; kk++) {
                const float pk = __shfl_sync(0xffffffffu, p, kk);
#pragma unroll
                for (int i = 0; i < PER_LANE; i++) acc[i] = fmaf(pk, vals[kk][i], acc[i]);
            }
        } else {
#pragma unroll
            for (int kk = 0; kk < ATT_TILE; kk++) {
                const float pk = __shfl_sync(0xffffffffu, p, kk);
                if ((uint32_t)kk < in_tile)
#pragma unroll
                    for (int i = 0; i < PER_LANE; i++) acc[i] = fmaf(pk, vals[kk][i], acc[i]);
            }
        }
        m = m_new;
    }
    if (lane == 0) {
        part_m[warp] = m;
        part_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) part_acc[warp][lane + WARP * i] = acc[i];
    __syncthreads();

    float big = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++) big = fmaxf(big, part_m[w]);
    float total = 0.f;
    for (int w = 0; w < ATT_WARPS; w++)
        if (part_l[w] > 0.f) total += part_l[w] * expf(part_m[w] - big);
    float *dst = part + att_part(t, head, heads, split, D);
    if (threadIdx.x == 0) {
        dst[0] = big;
        dst[1] = total;
    }
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float o = 0.f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (part_l[w] > 0.f) o += part_acc[w][i] * expf(part_m[w] - big);
        dst[2 + i] = o;
    }
}

#define ATTEND(D)                                                                              \
    extern "C" __global__ void attend_##D(const float *q, const float *kc, const float *vc,    \
                                          const uint32_t *keys, const uint32_t *meta,          \
                                          float *part, int heads, int kv_heads, int cap,       \
                                          float scale) {                                       \
        attend_d<D>(q, kc, vc, keys, meta, part, heads, kv_heads, cap, scale);                \
    }
ATTEND(32)
ATTEND(64)
ATTEND(96)
ATTEND(128)
ATTEND(160)
ATTEND(192)
ATTEND(224)
ATTEND(256)

extern "C" __global__ void attend_merge(const float *part, float *out, int8_t *xq, float *xd,
                                        int heads, int d, int quantize) {
    inputs_ready();
    const int t = blockIdx.x, head = blockIdx.y, i = threadIdx.x;
    float m[ATT_SPLITS], l[ATT_SPLITS], o[ATT_SPLITS];
#pragma unroll
    for (int s = 0; s < ATT_SPLITS; s++) {
        const float *src = part + att_part(t, head, heads, s, d);
        m[s] = src[0];
        l[s] = src[1];
        o[s] = src[2 + i];
    }
    float big = -INFINITY;
#pragma unroll
    for (int s = 0; s < ATT_SPLITS; s++) big = fmaxf(big, m[s]);
    float total = 0.f, v = 0.f;
#pragma unroll
    for (int s = 0; s < ATT_SPLITS; s++)
        if (l[s] > 0.f) {
            const float f = expf(m[s] - big);
            total += l[s] * f;
            v += o[s] * f;
        }
    const size_t at = ((size_t)t * heads + head) * d + i;
    out[at] = v / total;
    if (quantize) quantize32(v / total, xq, xd, at - i % WARP);
}

// ---------------------------------------------------------------------------------------------
// The index of each row's largest value (the greedy token of a position's logits), the first
// one among equals, as the host's `argmax` picks it; NaNs never win, and a row whose first
// value is NaN gives 0, as on the host. Grid rows, ARGMAX_THREADS threads; `x` `[rows, cols]`.
// Exact: a maximum does not depend on the order it is taken in.

#define ARGMAX_THREADS 1024
#define NO_INDEX 0x7fffffff

__device__ __forceinline__ void better(float &v, int &i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

extern "C" __global__ void argmax_rows(const float *x, int *out, int cols) {
    inputs_ready();
    const float *xr = x + (size_t)blockIdx.x * cols;
    float v = -INFINITY;
    int i = NO_INDEX;
    for (int j = threadIdx.x; j < cols; j += ARGMAX_THREADS) {
        const float xj = xr[j];
        if (!isnan(xj)) better(v, i, xj, j);
    }
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1)
        better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    __shared__ float vs[ARGMAX_THREADS / WARP];
    __shared__ int is[ARGMAX_THREADS / WARP];
    if (threadIdx.x % WARP == 0) {
        vs[threadIdx.x / WARP] = v;
        is[threadIdx.x / WARP] = i;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < ARGMAX_THREADS / WARP; w++) better(v, i, vs[w], is[w]);
        out[blockIdx.x] = (i == NO_INDEX || isnan(xr[0])) ? 0 : i;
    }
}

// ---------------------------------------------------------------------------------------------
// What a sampled step needs of each row's logits: the tokens its draw can reach, with their
// weights w = exp((x - max) * inv_t), and the whole row's total weight. The head is every
// token whose weight is at least the largest of HEAD_CUTS cuts (1e-1, 1e-2, ... of the top
// weight) under which the tokens number at least `k_min` (top-k) and weigh at least `p` of
// the total (top-p); when no cut gives both, or more than HEAD_CAP tokens, the row reports -1
// and the host reads its logits whole. NaNs weigh nothing, as on the host. Grid rows,
// HEAD_THREADS threads; `out` per row, as 32-bit words: n, the total, HEAD_CAP ids,
// HEAD_CAP weights, the first n of each written, in no particular order (the host sorts).
// A row's head and total depend on that row alone, summed in a fixed order.

#define HEAD_THREADS 1024
#define HEAD_CUTS 8
#define HEAD_CAP 512

__device__ __forceinline__ float head_cut(int c) {
    const float cuts[HEAD_CUTS] = {1e-1f, 1e-2f, 1e-3f, 1e-4f, 1e-5f, 1e-6f, 1e-7f, 1e-8f};
    return cuts[c];
}

__device__ __forceinline__ float head_weight(float x, float max, float inv_t) {
    return isnan(x) ? 0.f : expf((x - max) * inv_t);
}

// Sums `v` over the block; every thread gets the sum. `scratch` holds a warp's share.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (threadIdx.x % WARP == 0) scratch[threadIdx.x / WARP] = v;
    __syncthreads();
    float s = 0.f;
    for (int w = 0; w < HEAD_THREADS / WARP; w++) s += scratch[w];
    return s;
}

extern "C" __global__ void head_rows(const float *x, unsigned *out, int cols, int k_min,
                                     float p, float inv_t) {
    inputs_ready();
    const float *xr = x + (size_t)blockIdx.x * cols;
    unsigned *o = out + (size_t)blockIdx.x * (2 + 2 * HEAD_CAP);
    __shared__ float scratch[HEAD_THREADS / WARP];
    __shared__ int taken;

    float max = -INFINITY;
    for (int j = threadIdx.x; j < cols; j += HEAD_THREADS)
        if (!isnan(xr[j])) max = fmaxf(max, xr[j]);
#pragma unroll
    for (int s = WARP / 2; s > 0; s >>= 1) max = fmaxf(max, __shfl_xor_sync(0xffffffffu, max, s));
    __syncthreads();
    if (threadIdx.x % WARP == 0) scratch[threadIdx.x / WARP] = max;
    __syncthreads();
    for (int w = 0; w < HEAD_THREADS / WARP; w++) max = fmaxf(max, scratch[w]);

    float total = 0.f, mass[HEAD_CUTS], count[HEAD_CUTS];
#pragma unroll
    for (int c = 0; c < HEAD_CUTS; c++) mass[c] = count[c] = 0.f;
    for (int j = threadIdx.x; j < cols; j += HEAD_THREADS) {
        const float w = head_weight(xr[j], max, inv_t);
        total += w;
#pragma unroll
        for (int c = 0; c < HEAD_CUTS; c++)
            if (w >= head_cut(c)) {
                mass[c] += w;
                count[c] += 1.f;
            }
    }
    total = block_sum(total, scratch);
    int cut = -1;
    for (int c = 0; c < HEAD_CUTS; c++) {
        const float m = block_sum(mass[c], scratch), n = block_sum(count[c], scratch);
        if (cut < 0 && n >= (float)k_min && m >= p * total) cut = n <= (float)HEAD_CAP ? c : -2;
    }
    if (threadIdx.x == 0) taken = 0;
    __syncthreads();
    if (cut >= 0) {
        const float bar = head_cut(cut);
        for (int j = threadIdx.x; j < cols; j += HEAD_THREADS) {
            const float w = head_weight(xr[j], max, inv_t);
            if (w >= bar) {
                const int at = atomicAdd(&taken, 1);
                if (at < HEAD_CAP) {
                    o[2 + at] = (unsigned)j;
                    o[2 + HEAD_CAP + at] = __float_as_uint(w);
                }
            }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        o[0] = cut >= 0 ? (unsigned)taken : 0xffffffffu;
        o[1] = __float_as_uint(total);
    }
}
