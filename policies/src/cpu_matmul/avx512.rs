//! Tiles of several rows of the 32-wide types (Q4_0, Q4_1, Q5_0, Q8_0) on 512-bit vectors, where
//! the CPU has AVX-512 VNNI, two columns at a time.
//!
//! Why: a tile of rows is bound by its integer multiply-adds, one `vpdpbusd` per row and 32
//! weights on 256-bit vectors. On 512-bit vectors one takes 64: vector `v` of a group of both
//! columns of a pair, column 0's in the low half and column 1's in the high, against the row's
//! vector `v` in both halves (one broadcasting load). Lane `j` of each half then sums block `j`
//! of its column, so the integer sums come out as the eight blocks of both columns side by
//! side, and the float work that scales them takes both columns in one vector. Every lane's
//! float operations are the 256-bit kernels', in the same order, and integer sums are exact
//! whatever their order, so the results are the same bits (tested): a row's result does not
//! depend on whether it was computed alone, on AVX2, or in a tile.

use super::avx2::{self, Unpack};
use super::blocks::{Act8x32, Q8_0};
use super::groups;
use std::arch::x86_64::*;

/// A run of columns of a 32-wide unsigned type against a tile of rows, as `avx2::unsigned32`
/// takes them; a run's odd last column goes to the 256-bit kernel, alone. The rows come by
/// reference: passed by value into a function compiled for other features, the array went
/// through the stack in pieces and its read stalled on them (3% of a 5-position
/// verification's samples on an Intel Xeon).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, DQ, VL and VNNI (`avx2::has_vnni`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub(crate) unsafe fn unsigned32<B: Unpack, const R: usize>(
    w: &[B],
    per_row: usize,
    xs: &[&[Act8x32]; R],
    out: &mut [f32],
    stride: usize,
) {
    // SAFETY: this function runs with VNNI, and AVX2 with it; closures inherit it.
    in_pairs(
        w,
        per_row,
        out,
        stride,
        |p| pair::<B, R>(p, *xs),
        |c| unsafe { avx2::unsigned32_cols::<B, R, 1, true>([c], *xs)[0] },
    );
}

/// Walks a run of columns (`per_row` blocks each, one after another) two at a time with
/// `pair`, and its odd last column alone with `one`; column `c`'s results for the tile's rows
/// go where `put` puts them.
#[inline(always)]
fn in_pairs<T, const R: usize>(
    w: &[T],
    per_row: usize,
    out: &mut [f32],
    stride: usize,
    pair: impl Fn([&[T]; 2]) -> [[f32; R]; 2],
    one: impl Fn(&[T]) -> [f32; R],
) {
    let mut pairs = w.chunks_exact(2 * per_row);
    for (p, columns) in (&mut pairs).enumerate() {
        super::fetch::<_, R>(w, per_row, 2 * p + 2..2 * p + 4);
        let (a, b) = columns.split_at(per_row);
        let [a, b] = pair([a, b]);
        super::put(out, stride, 2 * p, &a);
        super::put(out, stride, 2 * p + 1, &b);
    }
    let last = pairs.remainder();
    if !last.is_empty() {
        let c = (w.len() - last.len()) / per_row;
        super::put(out, stride, c, &one(last));
    }
}

/// Two columns against a tile of rows. Lanes 0..8 of the float accumulators are column 0's,
/// lanes 8..16 column 1's.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn pair<B: Unpack, const R: usize>(w: [&[B]; 2], xs: [&[Act8x32]; R]) -> [[f32; R]; 2] {
    let n = w[0].len();
    assert_eq!(w[1].len(), n, "columns of different widths");
    avx2::same_lengths(&xs, n.div_ceil(8));
    let mut acc = [_mm512_setzero_ps(); R];
    let full = n / 8;
    for g in 0..full {
        let groups = [groups::group(w[0], g), groups::group(w[1], g)];
        let q = nibbles::<B>(groups);
        // SAFETY: this function runs with AVX2 enabled.
        let ((d0, m0), (d1, m1)) = unsafe { (B::scales(groups[0]), B::scales(groups[1])) };
        let (d, m) = (join(d0, d1), join(m0, m1));
        for r in 0..R {
            // SAFETY: `g < full <= xs[r].len()` (checked above).
            let x = unsafe { xs[r].get_unchecked(g) };
            let total = sums(&q, |v| broadcast(&x.qs[v]));
            let scale = _mm512_mul_ps(d, twice(&x.d));
            acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(total), acc[r]);
            acc[r] = _mm512_fmadd_ps(m, twice(&x.s), acc[r]);
        }
    }
    let unpack = |block: &B| {
        let (d, m) = block.scale_offset();
        // SAFETY: this function runs with AVX2.
        (unsafe { block.unpack() }, d, m)
    };
    pair_rest(w, xs, &mut acc, unpack, true, |q, x| (q, x));
    totals(&acc)
}

/// A run of Q8_0 columns against a tile of rows, as `avx2::q8_0` takes them; a run's odd
/// last column goes to the 256-bit kernel, alone.
///
/// # Safety
/// As `unsigned32`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub(crate) unsafe fn q8_0<const R: usize>(
    w: &[Q8_0],
    per_row: usize,
    xs: &[&[Act8x32]; R],
    out: &mut [f32],
    stride: usize,
) {
    // SAFETY: this function runs with VNNI, and AVX2 with it; closures inherit it.
    in_pairs(
        w,
        per_row,
        out,
        stride,
        |p| q8_0_pair::<R>(p, *xs),
        |c| unsafe { avx2::q8_0_at::<R, true>(c, *xs) },
    );
}

/// Two Q8_0 columns against a tile of rows, as `pair` takes the unsigned types. `vpdpbusd`
/// wants its weights unsigned: it takes their magnitudes, and the activations negated where a
/// weight is negative (the same integer products as AVX2's `sign`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn q8_0_pair<const R: usize>(w: [&[Q8_0]; 2], xs: [&[Act8x32]; R]) -> [[f32; R]; 2] {
    let n = w[0].len();
    assert_eq!(w[1].len(), n, "columns of different widths");
    avx2::same_lengths(&xs, n.div_ceil(8));
    let mut acc = [_mm512_setzero_ps(); R];
    let full = n / 8;
    for g in 0..full {
        let groups = [groups::group(w[0], g), groups::group(w[1], g)];
        let mut magnitude = [_mm512_setzero_si512(); 8];
        let mut negative = [0u64; 8];
        for v in 0..8 {
            let q = both(&groups[0].qs[v], &groups[1].qs[v]);
            magnitude[v] = _mm512_abs_epi8(q);
            negative[v] = _mm512_movepi8_mask(q);
        }
        // SAFETY: 16 readable bytes each; no alignment requirement.
        let d = unsafe {
            join(
                _mm256_cvtph_ps(_mm_loadu_si128(groups[0].d.as_ptr().cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(groups[1].d.as_ptr().cast())),
            )
        };
        for r in 0..R {
            // SAFETY: `g < full <= xs[r].len()` (checked above).
            let x = unsafe { xs[r].get_unchecked(g) };
            let total = sums(&magnitude, |v| {
                let x = broadcast(&x.qs[v]);
                _mm512_mask_sub_epi8(x, negative[v], _mm512_setzero_si512(), x)
            });
            let scale = _mm512_mul_ps(d, twice(&x.d));
            acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(total), acc[r]);
        }
    }
    // SAFETY: 32 readable bytes; no alignment requirement.
    let unpack = |block: &Q8_0| unsafe {
        let q = _mm256_loadu_si256(block.qs.as_ptr().cast());
        (q, block.d.to_f32(), 0.0)
    };
    // |q| times x with q's sign, as in the groups above.
    let operands = |q: __m512i, x: __m512i| {
        let negative = _mm512_movepi8_mask(q);
        (
            _mm512_abs_epi8(q),
            _mm512_mask_sub_epi8(x, negative, _mm512_setzero_si512(), x),
        )
    };
    pair_rest(w, xs, &mut acc, unpack, false, operands);
    totals(&acc)
}

/// The blocks of two columns after their last full group, added to `acc` (column 0's in the
/// low half) with the float operations, lane by lane, that `avx2::rest_blocks` does for each
/// column: for each row, block `j` adds its integer sums times its scale and the row's to
/// every lane of its column, then (with `offsets`) the blocks' offsets times the row's sums.
/// One 512-bit instruction does what two 256-bit ones did, a column in each half.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn pair_rest<T, const R: usize>(
    w: [&[T]; 2],
    xs: [&[Act8x32]; R],
    acc: &mut [__m512; R],
    unpack: impl Fn(&T) -> (__m256i, f32, f32),
    offsets: bool,
    operands: impl Fn(__m512i, __m512i) -> (__m512i, __m512i),
) {
    let full = w[0].len() / 8;
    let rest = [&w[0][8 * full..], &w[1][8 * full..]];
    assert_eq!(rest[0].len(), rest[1].len(), "columns of different widths");
    if rest[0].is_empty() {
        return;
    }
    let mut q = [_mm512_setzero_si512(); 8];
    let (mut d, mut m) = ([0f32; 16], [0f32; 16]);
    for (j, (a, b)) in rest[0].iter().zip(rest[1]).enumerate() {
        let ((qa, da, ma), (qb, db, mb)) = (unpack(a), unpack(b));
        q[j] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qa), qb);
        (d[j], d[8 + j], m[j], m[8 + j]) = (da, db, ma, mb);
    }
    // SAFETY: 64 readable bytes each; no alignment requirement.
    let (d, m) = unsafe { (_mm512_loadu_ps(d.as_ptr()), _mm512_loadu_ps(m.as_ptr())) };
    for r in 0..R {
        // SAFETY: the last group exists when blocks are left over (`same_lengths`).
        let x = unsafe { xs[r].get_unchecked(full) };
        let scale = _mm512_mul_ps(d, twice(&x.d));
        for (j, &q) in q.iter().enumerate().take(rest[0].len()) {
            // SAFETY: 32 readable bytes; no alignment requirement.
            let xj = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(x.qs[j].as_ptr().cast()) });
            let (a, b) = operands(q, xj);
            let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), a, b);
            // Lane j of each half in every lane of that half.
            let at = _mm512_permutexvar_ps(
                _mm512_set_epi32(
                    8 + j as i32,
                    8 + j as i32,
                    8 + j as i32,
                    8 + j as i32,
                    8 + j as i32,
                    8 + j as i32,
                    8 + j as i32,
                    8 + j as i32,
                    j as i32,
                    j as i32,
                    j as i32,
                    j as i32,
                    j as i32,
                    j as i32,
                    j as i32,
                    j as i32,
                ),
                scale,
            );
            acc[r] = _mm512_fmadd_ps(at, _mm512_cvtepi32_ps(sums), acc[r]);
        }
        if offsets {
            acc[r] = _mm512_fmadd_ps(m, twice(&x.s), acc[r]);
        }
    }
}

/// Each column's total of its eight lanes, for every row.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn totals<const R: usize>(acc: &[__m512; R]) -> [[f32; R]; 2] {
    let halves = split(acc);
    // SAFETY: this function runs with AVX2.
    unsafe { [avx2::lane_totals(&halves[0]), avx2::lane_totals(&halves[1])] }
}

/// Two groups' unsigned values as eight vectors: vector `v` holds the first group's vector
/// `v` in its low half and the second's in its high half (`groups::slot`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn nibbles<B: Unpack>(groups: [&B::Group; 2]) -> [__m512i; 8] {
    let packed = [B::packed(groups[0]), B::packed(groups[1])];
    let m4 = _mm512_set1_epi8(0x0F);
    let mut q = [_mm512_setzero_si512(); 8];
    for s in 0..4 {
        // Load `s` of each group holds its vectors 2s (low nibbles) and 2s + 1 (high).
        let p = both(&packed[0][s], &packed[1][s]);
        q[2 * s] = _mm512_and_si512(p, m4);
        q[2 * s + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(p), m4);
        if B::FIFTH {
            // Bits 0..32 of a group's mask are vector 2s's bytes, 32..64 vector 2s + 1's.
            let (a, b) = (B::fifth_bits(groups[0], s), B::fifth_bits(groups[1], s));
            let low = (a & 0xFFFF_FFFF) | (b << 32);
            let high = (a >> 32) | (b & !0xFFFF_FFFF);
            let bit = _mm512_set1_epi8(0x10);
            q[2 * s] = _mm512_or_si512(q[2 * s], _mm512_maskz_mov_epi8(low, bit));
            q[2 * s + 1] = _mm512_or_si512(q[2 * s + 1], _mm512_maskz_mov_epi8(high, bit));
        }
    }
    q
}

/// Per 32-bit lane, the lane's products of `q[v]` by `x(v)` over the eight vectors, in two
/// chains so that consecutive instructions do not wait for each other.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn sums(q: &[__m512i; 8], x: impl Fn(usize) -> __m512i) -> __m512i {
    let (mut a, mut b) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    for v in (0..8).step_by(2) {
        a = _mm512_dpbusd_epi32(a, q[v], x(v));
        b = _mm512_dpbusd_epi32(b, q[v + 1], x(v + 1));
    }
    _mm512_add_epi32(a, b)
}

/// 32 bytes of the first column in the low half, 32 of the second in the high.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn both<T>(a: &[T; 32], b: &[T; 32]) -> __m512i {
    // SAFETY: 32 readable bytes each (`T` is a byte type); no alignment requirement.
    unsafe {
        let low = _mm512_castsi256_si512(_mm256_loadu_si256(a.as_ptr().cast()));
        _mm512_inserti64x4::<1>(low, _mm256_loadu_si256(b.as_ptr().cast()))
    }
}

/// A row's 32 activation bytes in both halves.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn broadcast(x: &[i8; 32]) -> __m512i {
    // SAFETY: 32 readable bytes; no alignment requirement.
    _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(x.as_ptr().cast()) })
}

/// Float accumulators of two columns as each column's 256-bit ones.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn split<const R: usize>(acc: &[__m512; R]) -> [[__m256; R]; 2] {
    let mut halves = [[_mm256_setzero_ps(); R]; 2];
    for (r, acc) in acc.iter().enumerate() {
        halves[0][r] = _mm512_castps512_ps256(*acc);
        halves[1][r] = _mm512_extractf32x8_ps::<1>(*acc);
    }
    halves
}

/// `a` in the low half, `b` in the high.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn join(a: __m256, b: __m256) -> __m512 {
    _mm512_insertf32x8::<1>(_mm512_castps256_ps512(a), b)
}

/// Eight floats in both halves.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
fn twice(v: &[f32; 8]) -> __m512 {
    // SAFETY: 32 readable bytes; no alignment requirement.
    _mm512_broadcast_f32x8(unsafe { _mm256_loadu_ps(v.as_ptr()) })
}
