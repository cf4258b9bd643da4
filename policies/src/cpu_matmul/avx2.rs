//! The kernels with AVX2: 32 products of unsigned 8-bit weights by signed 8-bit activations
//! per instruction (`maddubs`), summed in 32-bit integers over a block (over a whole super-block
//! of 256 for the k-quants) before one conversion to float.
//!
//! Where the CPU has AVX-512 VNNI (Intel since Cascade Lake, AMD since Zen 4), `vpdpbusd` does
//! in one instruction what AVX2 needs three for (`maddubs`, a 16-bit add or a widening `madd`, a
//! 32-bit add), and `vpdpwssd` fuses the k-quants' scale `madd` with its add. That is most of a
//! row's cost beside the weights it shares with the other rows of a tile, and AVX-512's 32
//! vector registers hold a tile of eight rows where AVX2's 16 hold four. Tiles of the 32-wide
//! types take 512-bit vectors (`avx512.rs`); the k-quants' bodies here compile with VNNI on
//! 256-bit vectors (`VNNI = true`), as do the 32-wide bodies for what the 512-bit kernels leave
//! over (a run's odd last column, the blocks after a row's last group). A single row is bound by
//! reading its weights, not by arithmetic, so it keeps AVX2. The sums are exact integers either
//! way (AVX2's 16-bit ones never saturate here), so every path gives the same bits (tested).
//!
//! The 32-wide types read a group of eight interleaved blocks (`groups.rs`) at a time.
//! Each kernel reads a block of weights once for every row of its tile. A row's arithmetic is the
//! same instructions in the same order whatever `R` is, so its result does not depend on the
//! rows it is computed with.

use super::blocks::{k_scales, Act256, Act8x32, Unsigned32, Q4K, Q4_0, Q4_1, Q5K, Q5_0, Q6K, Q8_0};
use super::each_column;
use super::groups::{self, Grouped, Q4_0x8, Q4_1x8, Q5_0x8};
use std::arch::x86_64::*;

/// A 32-wide type with unsigned values: one block (a row's blocks after its last full group)
/// and a group of eight interleaved ones.
pub(crate) trait Unpack: Unsigned32 + Grouped {
    /// The 32 unsigned values of a block, one per byte.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    unsafe fn unpack(&self) -> __m256i;
    /// The eight vectors of a group's unsigned values (`groups::slot`).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    unsafe fn unpack_group(group: &Self::Group) -> [__m256i; 8];
    /// `(d, m)` of a group's eight blocks as two vectors, as [`Unsigned32::scale_offset`]
    /// gives them.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    unsafe fn scales(group: &Self::Group) -> (__m256, __m256);
    /// A group's packed nibbles: load `s` holds vectors `2s` (low) and `2s + 1` (high).
    fn packed(group: &Self::Group) -> &[[u8; 32]; 4];
    /// Whether values have a fifth bit (`fifth_bits`).
    const FIFTH: bool = false;
    /// The fifth bits of vectors `2s` (bit `b` for byte `b`) and `2s + 1` (bit `32 + b`).
    fn fifth_bits(_group: &Self::Group, _s: usize) -> u64 {
        0
    }
}

impl Unpack for Q4_0 {
    unsafe fn unpack(&self) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe { nibbles(&self.qs) }
    }
    unsafe fn unpack_group(g: &Q4_0x8) -> [__m256i; 8] {
        // SAFETY: the caller guarantees AVX2.
        unsafe { group_nibbles(&g.qs) }
    }
    unsafe fn scales(g: &Q4_0x8) -> (__m256, __m256) {
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            let d = halves(&g.d);
            (d, _mm256_mul_ps(d, _mm256_set1_ps(-8.0)))
        }
    }
    fn packed(g: &Q4_0x8) -> &[[u8; 32]; 4] {
        &g.qs
    }
}

impl Unpack for Q4_1 {
    unsafe fn unpack(&self) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe { nibbles(&self.qs) }
    }
    unsafe fn unpack_group(g: &Q4_1x8) -> [__m256i; 8] {
        // SAFETY: the caller guarantees AVX2.
        unsafe { group_nibbles(&g.qs) }
    }
    unsafe fn scales(g: &Q4_1x8) -> (__m256, __m256) {
        // SAFETY: the caller guarantees AVX2.
        unsafe { (halves(&g.d), halves(&g.m)) }
    }
    fn packed(g: &Q4_1x8) -> &[[u8; 32]; 4] {
        &g.qs
    }
}

impl Unpack for Q5_0 {
    unsafe fn unpack(&self) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe { _mm256_or_si256(nibbles(&self.qs), high_bits(u32::from_le_bytes(self.qh))) }
    }
    unsafe fn unpack_group(g: &Q5_0x8) -> [__m256i; 8] {
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            let low = group_nibbles(&g.qs);
            std::array::from_fn(|v| _mm256_or_si256(low[v], high_bits(u32::from_le_bytes(g.qh[v]))))
        }
    }
    unsafe fn scales(g: &Q5_0x8) -> (__m256, __m256) {
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            let d = halves(&g.d);
            (d, _mm256_mul_ps(d, _mm256_set1_ps(-16.0)))
        }
    }
    fn packed(g: &Q5_0x8) -> &[[u8; 32]; 4] {
        &g.qs
    }
    const FIFTH: bool = true;
    fn fifth_bits(g: &Q5_0x8, s: usize) -> u64 {
        u64::from(u32::from_le_bytes(g.qh[2 * s]))
            | u64::from(u32::from_le_bytes(g.qh[2 * s + 1])) << 32
    }
}

/// A group's packed nibbles as eight vectors: load `s` gives vectors `2s` (low nibbles) and
/// `2s + 1` (high).
#[target_feature(enable = "avx2,fma,f16c")]
fn group_nibbles(qs: &[[u8; 32]; 4]) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0F);
    std::array::from_fn(|v| {
        let packed = load_u8(&qs[v / 2]);
        if v % 2 == 0 {
            _mm256_and_si256(packed, m4)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(packed), m4)
        }
    })
}

/// Low nibbles to bytes 0..16, high nibbles to bytes 16..32.
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes; the load has no alignment requirement.
    let v = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(v), v),
        _mm256_set1_epi8(0x0F),
    )
}

/// 0x10 in byte `i` where bit `i` of `bits` is set, 0 elsewhere.
#[target_feature(enable = "avx2,fma,f16c")]
fn high_bits(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        ),
    );
    // Every bit but bit `i % 8` set in byte `i`: the byte is all ones exactly where bit `i` was.
    let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn load(bytes: &[i8]) -> __m256i {
    assert!(bytes.len() >= 32);
    // SAFETY: at least 32 readable bytes (checked); no alignment requirement.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8(bytes: &[u8]) -> __m256i {
    assert!(bytes.len() >= 32);
    // SAFETY: as in `load`.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// Unsigned `q` times signed `x`, summed in pairs to 16 bits (no overflow: `q` < 64, |x| < 128).
#[target_feature(enable = "avx2,fma,f16c")]
fn pairs(q: __m256i, x: __m256i) -> __m256i {
    _mm256_maddubs_epi16(q, x)
}

/// Pairs of 16-bit sums to 32 bits.
#[target_feature(enable = "avx2,fma,f16c")]
fn widen(p: __m256i) -> __m256i {
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// Each vector's eight lanes summed, four vectors at a time (`hadd` pairs lanes within one
/// vector only), every vector in the same tree whatever `R` is: ((0+1)+(2+3))+((4+5)+(6+7)).
///
/// # Safety
/// The CPU must have AVX2 (every caller runs with it enabled).
#[inline(always)]
pub(super) unsafe fn lane_totals<const R: usize>(v: &[__m256; R]) -> [f32; R] {
    let mut out = [0f32; R];
    for first in (0..R).step_by(4) {
        let at = |i: usize| v[(first + i).min(R - 1)];
        let (a, b, c, d) = (at(0), at(1), at(2), at(3));
        let h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        let mut lanes = [0f32; 4];
        // SAFETY: four floats' room; unaligned store.
        unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), s) };
        for (i, &total) in lanes.iter().enumerate() {
            if first + i < R {
                out[first + i] = total;
            }
        }
    }
    out
}

/// Checks that every row has the activation groups for `n` weight blocks, so that the loops
/// below can read them unchecked.
pub(super) fn same_lengths<A, const R: usize>(xs: &[&[A]; R], groups: usize) {
    assert!(
        xs.iter().all(|x| x.len() == groups),
        "a row of activations does not match the weights"
    );
}

/// Eight f16 values as a vector of f32.
#[target_feature(enable = "avx2,fma,f16c")]
fn halves(h: &[half::f16; 8]) -> __m256 {
    // SAFETY: 16 readable bytes; no alignment requirement.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn load_ps(v: &[f32; 8]) -> __m256 {
    // SAFETY: 32 readable bytes; no alignment requirement.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// Lane `j` of `v` in every lane.
#[target_feature(enable = "avx2,fma,f16c")]
fn lane(v: __m256, j: usize) -> __m256 {
    _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(j as i32))
}

/// `x · inv` rounded to the nearest integer, ties to even (the conversion's rounding mode,
/// which Rust leaves at its default), clamped to ±127: a block of activations as 8-bit values.
/// Same results as `portable::scaled_i8` for every finite input.
pub(crate) fn scaled_i8(xs: &[f32; 32], inv: f32) -> [i8; 32] {
    let mut out = [0i8; 32];
    // SAFETY: the build has AVX2; loads and the store stay inside the two arrays.
    unsafe {
        let inv = _mm256_set1_ps(inv);
        let (hi, lo) = (_mm256_set1_ps(127.0), _mm256_set1_ps(-127.0));
        let int = |i: usize| {
            let v = _mm256_mul_ps(_mm256_loadu_ps(xs.as_ptr().add(8 * i)), inv);
            _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(v, hi), lo))
        };
        // Packing works per 128-bit half: dword `d` of the packed bytes holds values
        // 4·[0, 2, 4, 6, 1, 3, 5, 7][d]..+4, put back in order by the permutation.
        let words = (
            _mm256_packs_epi32(int(0), int(1)),
            _mm256_packs_epi32(int(2), int(3)),
        );
        let bytes = _mm256_packs_epi16(words.0, words.1);
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out.as_mut_ptr().cast(), ordered);
    }
    out
}

/// Whether the CPU has AVX-512 VNNI, with the F, BW, DQ and VL subsets that every CPU with it
/// has (`avx512.rs` uses them on 512-bit vectors), detected once.
pub(crate) fn has_vnni() -> bool {
    static VNNI: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
    });
    *VNNI
}

/// Rows per tile: how many rows one read of a weight block serves.
pub(crate) fn tile_rows() -> usize {
    if has_vnni() {
        8
    } else {
        4
    }
}

/// `acc` plus, in each 32-bit lane, the lane's four products of unsigned `q` by signed `x`.
///
/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL.
#[inline(always)]
unsafe fn dot4<const VNNI: bool>(acc: __m256i, q: __m256i, x: __m256i) -> __m256i {
    if VNNI {
        // SAFETY: the caller guarantees VNNI.
        unsafe { _mm256_dpbusd_epi32(acc, q, x) }
    } else {
        _mm256_add_epi32(acc, widen(pairs(q, x)))
    }
}

/// `acc` plus, in each 32-bit lane, the lane's two 16-bit products of `a` by `b`.
///
/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL.
#[inline(always)]
unsafe fn madd_add<const VNNI: bool>(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    if VNNI {
        // SAFETY: the caller guarantees VNNI.
        unsafe { _mm256_dpwssd_epi32(acc, a, b) }
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
}

/// A kernel's entry point, `$name`: for a tile of several rows where the CPU has AVX-512 VNNI,
/// `$vnni`; otherwise `$body`, column by column.
///
/// It takes a run of columns (`w` holds `per_row` blocks per column) and writes column `c`'s
/// result for row `r` to `out[r * stride + c]`: the loop over columns runs inside the function
/// compiled for the CPU's features, so a column costs no call and no dispatch.
macro_rules! entry {
    ($name:ident, $vnni:expr, $body:expr, [$($g:ident: $b:path),*], $w:ty, $x:ty) => {
        pub(crate) fn $name<$($g: $b,)* const R: usize>(
            w: &[$w],
            per_row: usize,
            xs: [&[$x]; R],
            out: &mut [f32],
            stride: usize,
        ) {
            // One row too: Q5_0's fifth bits unpack with one masked move on 512-bit vectors,
            // where AVX2 spreads them with a shuffle, an or and a compare (Q5_0 products of
            // one row 1.5-1.9x faster on an Intel Xeon; the other types the same or faster).
            if has_vnni() {
                // SAFETY: the CPU has AVX-512 F, BW, DQ, VL and VNNI (checked).
                unsafe { $vnni(w, per_row, &xs, out, stride) }
            } else {
                // SAFETY: the body needs only what the build is compiled for.
                each_column(w, per_row, out, stride, |w| unsafe { $body(w, xs) });
            }
        }
    };
}

/// A k-quant kernel's body with VNNI on 256-bit vectors, for a run of columns. (On 512-bit
/// vectors the k-quants' 16-bit products and scale multiply-adds measured slower on an Intel
/// Xeon, where the 32-wide types' `vpdpbusd` gained: `avx512.rs` takes those.)
macro_rules! vnni256 {
    ($vnni:ident, $body:ident, $w:ty) => {
        /// # Safety
        /// The CPU must have AVX-512 VNNI and VL.
        #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
        pub(crate) unsafe fn $vnni<const R: usize>(
            w: &[$w],
            per_row: usize,
            xs: &[&[Act256]; R],
            out: &mut [f32],
            stride: usize,
        ) {
            for (c, column) in w.chunks_exact(per_row).enumerate() {
                super::fetch::<_, R>(w, per_row, c + 1..c + 2);
                // SAFETY: this function runs with VNNI enabled.
                let results = unsafe { $body::<R, true>(column, *xs) };
                super::put(out, stride, c, &results);
            }
        }
    };
}

entry!(
    unsigned32,
    super::avx512::unsigned32::<B, R>,
    unsigned32_at::<B, R, false>,
    [B: Unpack],
    B,
    Act8x32
);
entry!(
    q8_0,
    super::avx512::q8_0::<R>,
    q8_0_at::<R, false>,
    [],
    Q8_0,
    Act8x32
);
entry!(q4k, q4k_vnni::<R>, q4k_at::<R, false>, [], Q4K, Act256);
entry!(q5k, q5k_vnni::<R>, q5k_at::<R, false>, [], Q5K, Act256);
entry!(q6k, q6k_vnni::<R>, q6k_at::<R, false>, [], Q6K, Act256);
vnni256!(q4k_vnni, q4k_at, Q4K);
vnni256!(q5k_vnni, q5k_at, Q5K);
vnni256!(q6k_vnni, q6k_at, Q6K);

// The 32-wide kernels take a group of eight interleaved blocks at a time: lane j of every
// product vector belongs to block j, so vector adds give the eight integer sums side by side,
// scaled by the eight scales in one multiply-add. Blocks after the last full group are summed
// one by one. The order of every addition is fixed by the block count.

/// Lane `j`: the integer dot product of block `j` of a group with its activations. `pairs`
/// sums are at most 2·31·127 in magnitude for 5-bit values, so four of them fit in 16 bits.
///
/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL.
#[inline(always)]
unsafe fn group_sums<const VNNI: bool>(q: &[__m256i; 8], x: &[[i8; 32]; 8]) -> __m256i {
    if VNNI {
        // Two chains, so that consecutive instructions do not wait for each other.
        let (mut a, mut b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for v in (0..8).step_by(2) {
            // SAFETY: the caller guarantees VNNI.
            unsafe {
                a = dot4::<true>(a, q[v], load(&x[v]));
                b = dot4::<true>(b, q[v + 1], load(&x[v + 1]));
            }
        }
        return _mm256_add_epi32(a, b);
    }
    let p: [__m256i; 8] = std::array::from_fn(|v| pairs(q[v], load(&x[v])));
    let low = _mm256_add_epi16(_mm256_add_epi16(p[0], p[1]), _mm256_add_epi16(p[2], p[3]));
    let high = _mm256_add_epi16(_mm256_add_epi16(p[4], p[5]), _mm256_add_epi16(p[6], p[7]));
    _mm256_add_epi32(widen(low), widen(high))
}

/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL.
#[inline(always)]
pub(crate) unsafe fn unsigned32_at<B: Unpack, const R: usize, const VNNI: bool>(
    w: &[B],
    xs: [&[Act8x32]; R],
) -> [f32; R] {
    // SAFETY: the caller's guarantees.
    let [out] = unsafe { unsigned32_cols::<B, R, 1, VNNI>([w], xs) };
    out
}

/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL.
#[inline(always)]
pub(super) unsafe fn unsigned32_cols<
    B: Unpack,
    const R: usize,
    const C: usize,
    const VNNI: bool,
>(
    w: [&[B]; C],
    xs: [&[Act8x32]; R],
) -> [[f32; R]; C] {
    let n = w[0].len();
    assert!(
        w.iter().all(|w| w.len() == n),
        "columns of different widths"
    );
    same_lengths(&xs, n.div_ceil(8));
    let mut acc = [[_mm256_setzero_ps(); R]; C];
    let full = n / 8;
    for g in 0..full {
        let mut q = [[_mm256_setzero_si256(); 8]; C];
        let mut dm = [(_mm256_setzero_ps(), _mm256_setzero_ps()); C];
        for c in 0..C {
            let group = groups::group(w[c], g);
            // SAFETY: this function runs with AVX2 enabled.
            (q[c], dm[c]) = unsafe { (B::unpack_group(group), B::scales(group)) };
        }
        for r in 0..R {
            // SAFETY: `g < full <= xs[r].len()` (checked above).
            let x = unsafe { xs[r].get_unchecked(g) };
            for c in 0..C {
                let (d, m) = dm[c];
                // SAFETY: the caller guarantees VNNI where it is asked for.
                let sums = unsafe { group_sums::<VNNI>(&q[c], &x.qs) };
                let scale = _mm256_mul_ps(d, load_ps(&x.d));
                acc[c][r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums), acc[c][r]);
                acc[c][r] = _mm256_fmadd_ps(m, load_ps(&x.s), acc[c][r]);
            }
        }
    }
    let mut out = [[0f32; R]; C];
    for c in 0..C {
        // SAFETY: the caller's guarantees.
        unsafe {
            unsigned32_rest::<B, R, VNNI>(w[c], xs, &mut acc[c]);
            out[c] = lane_totals(&acc[c]);
        }
    }
    out
}

/// A column's blocks after its last full group, added to `acc`, in the file's layout (one
/// vector each). Block j's eight integer lane sums go to float as they are and are scaled by
/// lane j of the blocks' scales, broadcast: the float lanes are summed at the end anyway, so no
/// horizontal add is needed here. The offsets take the groups' path (the last group's
/// activations hold zeros past the last block).
///
/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL; the rows must hold `w`'s groups
/// (`same_lengths`).
#[inline(always)]
unsafe fn unsigned32_rest<B: Unpack, const R: usize, const VNNI: bool>(
    w: &[B],
    xs: [&[Act8x32]; R],
    acc: &mut [__m256; R],
) {
    let unpack = |block: &B| {
        let (d, m) = block.scale_offset();
        // SAFETY: the build has AVX2.
        (unsafe { block.unpack() }, d, m)
    };
    // SAFETY: the caller's.
    unsafe { rest_blocks::<B, R, VNNI>(w, xs, acc, unpack, true, |q, x| (q, x)) };
}

/// The blocks of a column after its last full group, added to `acc` (the float work of
/// `unsigned32_rest` and `q8_0_rest`). For each row, block `j` adds its integer sums times its
/// scale and the row's to lane `j`; then, with `offsets`, the blocks' offsets times the row's
/// sums. `unpack` gives a block's values, scale and offset; `operands` turns its values and
/// the row's into what `dot4` multiplies.
///
/// # Safety
/// As `unsigned32_rest`.
#[inline(always)]
unsafe fn rest_blocks<T, const R: usize, const VNNI: bool>(
    w: &[T],
    xs: [&[Act8x32]; R],
    acc: &mut [__m256; R],
    unpack: impl Fn(&T) -> (__m256i, f32, f32),
    offsets: bool,
    operands: impl Fn(__m256i, __m256i) -> (__m256i, __m256i),
) {
    let full = w.len() / 8;
    let rest = &w[8 * full..];
    if rest.is_empty() {
        return;
    }
    let mut q = [_mm256_setzero_si256(); 8];
    let (mut d, mut m) = ([0f32; 8], [0f32; 8]);
    for (j, block) in rest.iter().enumerate() {
        (q[j], d[j], m[j]) = unpack(block);
    }
    let (d, m) = (load_ps(&d), load_ps(&m));
    for r in 0..R {
        // SAFETY: the last group exists when blocks are left over (the caller's guarantee).
        let x = unsafe { xs[r].get_unchecked(full) };
        let scale = _mm256_mul_ps(d, load_ps(&x.d));
        for (j, &q) in q.iter().enumerate().take(rest.len()) {
            let (a, b) = operands(q, load(&x.qs[j]));
            // SAFETY: the caller guarantees VNNI where it is asked for.
            let sums = unsafe { dot4::<VNNI>(_mm256_setzero_si256(), a, b) };
            acc[r] = _mm256_fmadd_ps(lane(scale, j), _mm256_cvtepi32_ps(sums), acc[r]);
        }
        if offsets {
            acc[r] = _mm256_fmadd_ps(m, load_ps(&x.s), acc[r]);
        }
    }
}

/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL.
#[inline(always)]
pub(crate) unsafe fn q8_0_at<const R: usize, const VNNI: bool>(
    w: &[Q8_0],
    xs: [&[Act8x32]; R],
) -> [f32; R] {
    same_lengths(&xs, w.len().div_ceil(8));
    let mut acc = [_mm256_setzero_ps(); R];
    let full = w.len() / 8;
    for g in 0..full {
        let group = groups::group(w, g);
        let q: [__m256i; 8] = std::array::from_fn(|v| load(&group.qs[v]));
        // |q| times x with q's sign: maddubs wants its first operand unsigned. Its pair sums
        // reach 2·128·127, so each is widened to 32 bits before they are added.
        let magnitude = q.map(|q| _mm256_sign_epi8(q, q));
        let d = halves(&group.d);
        for r in 0..R {
            // SAFETY: as in `unsigned32`.
            let x = unsafe { xs[r].get_unchecked(g) };
            let signed: [__m256i; 8] =
                std::array::from_fn(|v| _mm256_sign_epi8(load(&x.qs[v]), q[v]));
            let sums = if VNNI {
                let (mut a, mut b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for v in (0..8).step_by(2) {
                    // SAFETY: the caller guarantees VNNI.
                    unsafe {
                        a = dot4::<true>(a, magnitude[v], signed[v]);
                        b = dot4::<true>(b, magnitude[v + 1], signed[v + 1]);
                    }
                }
                _mm256_add_epi32(a, b)
            } else {
                let products: [__m256i; 8] =
                    std::array::from_fn(|v| widen(pairs(magnitude[v], signed[v])));
                _mm256_add_epi32(
                    _mm256_add_epi32(
                        _mm256_add_epi32(products[0], products[1]),
                        _mm256_add_epi32(products[2], products[3]),
                    ),
                    _mm256_add_epi32(
                        _mm256_add_epi32(products[4], products[5]),
                        _mm256_add_epi32(products[6], products[7]),
                    ),
                )
            };
            let scale = _mm256_mul_ps(d, load_ps(&x.d));
            acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums), acc[r]);
        }
    }
    // SAFETY: the caller's guarantees; the rows hold `w`'s groups (checked above).
    unsafe {
        q8_0_rest::<R, VNNI>(w, xs, &mut acc);
        lane_totals(&acc)
    }
}

/// A column's blocks after its last full group, added to `acc`, as in `unsigned32_rest`.
///
/// # Safety
/// As `unsigned32_rest`.
#[inline(always)]
unsafe fn q8_0_rest<const R: usize, const VNNI: bool>(
    w: &[Q8_0],
    xs: [&[Act8x32]; R],
    acc: &mut [__m256; R],
) {
    let unpack = |block: &Q8_0| (load(&block.qs), block.d.to_f32(), 0.0);
    // |q| times x with q's sign, as in `q8_0_at`.
    let operands = |q, x| (_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
    // SAFETY: the caller's.
    unsafe { rest_blocks::<Q8_0, R, VNNI>(w, xs, acc, unpack, false, operands) };
}

/// Q4K and Q5K once their 4 chunks of 64 values are unpacked: chunk `c` holds groups `2c`
/// (bytes 0..32) and `2c + 1` (bytes 32..64) as two vectors.
///
/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL.
#[inline(always)]
unsafe fn k_minimums<const R: usize, const VNNI: bool>(
    d: f32,
    dmin: f32,
    packed: &[u8; 12],
    chunk: impl Fn(usize) -> (__m256i, __m256i),
    xs: [&Act256; R],
    acc: &mut [__m256; R],
    offset: &mut [f32; R],
) {
    let (scales, mins) = k_scales(packed);
    let mut isum = [_mm256_setzero_si256(); R];
    for c in 0..4 {
        let (low, high) = chunk(c);
        let s_low = _mm256_set1_epi16(i16::from(scales[2 * c]));
        let s_high = _mm256_set1_epi16(i16::from(scales[2 * c + 1]));
        for r in 0..R {
            let x = &xs[r].qs[64 * c..];
            // SAFETY: the caller guarantees VNNI where it is asked for.
            unsafe {
                isum[r] = madd_add::<VNNI>(isum[r], pairs(low, load(x)), s_low);
                isum[r] = madd_add::<VNNI>(isum[r], pairs(high, load(&x[32..])), s_high);
            }
        }
    }
    for r in 0..R {
        let x = xs[r];
        let min_sum: i32 = (0..8)
            .map(|j| {
                i32::from(mins[j]) * (i32::from(x.bsums[2 * j]) + i32::from(x.bsums[2 * j + 1]))
            })
            .sum();
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(isum[r]), acc[r]);
        offset[r] += dmin * x.d * min_sum as f32;
    }
}

/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL.
#[inline(always)]
pub(crate) unsafe fn q4k_at<const R: usize, const VNNI: bool>(
    w: &[Q4K],
    xs: [&[Act256]; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offset = [0f32; R];
    let m4 = _mm256_set1_epi8(0x0F);
    for (b, block) in w.iter().enumerate() {
        let chunk = |c: usize| {
            let v = load_u8(&block.qs[32 * c..]);
            (
                _mm256_and_si256(v, m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
            )
        };
        let rows = std::array::from_fn(|r| &xs[r][b]);
        let (d, dmin) = (block.d.to_f32(), block.dmin.to_f32());
        // SAFETY: the caller guarantees VNNI where it is asked for.
        unsafe {
            k_minimums::<R, VNNI>(d, dmin, &block.scales, chunk, rows, &mut acc, &mut offset)
        };
    }
    // SAFETY: this function runs with AVX2 enabled.
    let mut totals = unsafe { lane_totals(&acc) };
    for (t, o) in totals.iter_mut().zip(offset) {
        *t -= o;
    }
    totals
}

/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL.
#[inline(always)]
pub(crate) unsafe fn q5k_at<const R: usize, const VNNI: bool>(
    w: &[Q5K],
    xs: [&[Act256]; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offset = [0f32; R];
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    for (b, block) in w.iter().enumerate() {
        let high = load_u8(&block.qh);
        // Bit `shift` of each byte of `qh`, moved to bit 4 (0x10).
        let fifth = |shift: i32| {
            let bit = _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(shift)), one);
            _mm256_slli_epi16::<4>(bit)
        };
        let chunk = |c: usize| {
            let v = load_u8(&block.qs[32 * c..]);
            let low = _mm256_or_si256(_mm256_and_si256(v, m4), fifth(2 * c as i32));
            let up = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            (low, _mm256_or_si256(up, fifth(2 * c as i32 + 1)))
        };
        let rows = std::array::from_fn(|r| &xs[r][b]);
        let (d, dmin) = (block.d.to_f32(), block.dmin.to_f32());
        // SAFETY: the caller guarantees VNNI where it is asked for.
        unsafe {
            k_minimums::<R, VNNI>(d, dmin, &block.scales, chunk, rows, &mut acc, &mut offset)
        };
    }
    // SAFETY: this function runs with AVX2 enabled.
    let mut totals = unsafe { lane_totals(&acc) };
    for (t, o) in totals.iter_mut().zip(offset) {
        *t -= o;
    }
    totals
}

/// # Safety
/// With `VNNI` the CPU must have AVX-512 VNNI and VL.
#[inline(always)]
pub(crate) unsafe fn q6k_at<const R: usize, const VNNI: bool>(
    w: &[Q6K],
    xs: [&[Act256]; R],
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offset = [0f32; R];
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(3);
    for (b, block) in w.iter().enumerate() {
        let mut isum = [_mm256_setzero_si256(); R];
        for half in 0..2 {
            let low0 = load_u8(&block.ql[64 * half..]);
            let low1 = load_u8(&block.ql[64 * half + 32..]);
            let high = load_u8(&block.qh[32 * half..]);
            let two = |shift: i32| {
                let bits = _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(shift)), m2);
                _mm256_slli_epi16::<4>(bits)
            };
            let q = [
                _mm256_or_si256(_mm256_and_si256(low0, m4), two(0)),
                _mm256_or_si256(_mm256_and_si256(low1, m4), two(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(low0), m4), two(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(low1), m4), two(6)),
            ];
            for (c, &q) in q.iter().enumerate() {
                // Values 0..16 of the chunk take group g's scale, 16..32 group g + 1's.
                let g = 8 * half + 2 * c;
                let scale = _mm256_set_m128i(
                    _mm_set1_epi16(i16::from(block.scales[g + 1])),
                    _mm_set1_epi16(i16::from(block.scales[g])),
                );
                for r in 0..R {
                    let x = load(&xs[r][b].qs[128 * half + 32 * c..]);
                    // SAFETY: the caller guarantees VNNI where it is asked for.
                    isum[r] = unsafe { madd_add::<VNNI>(isum[r], pairs(q, x), scale) };
                }
            }
        }
        let d = block.d.to_f32();
        for r in 0..R {
            let x = &xs[r][b];
            let sums: i32 = (0..16)
                .map(|g| i32::from(block.scales[g]) * i32::from(x.bsums[g]))
                .sum();
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(isum[r]), acc[r]);
            offset[r] += d * x.d * (32 * sums) as f32;
        }
    }
    // SAFETY: this function runs with AVX2 enabled.
    let mut totals = unsafe { lane_totals(&acc) };
    for (t, o) in totals.iter_mut().zip(offset) {
        *t -= o;
    }
    totals
}
