//! The kernels in plain Rust, for CPUs without AVX2, and as the reference the SIMD kernels are
//! tested against. Integer sums are exact, so the two differ only in the order of the float
//! additions.

use super::blocks::{k_scales, Act256, Act8x32, Unsigned32, Q4K, Q4_0, Q4_1, Q5K, Q5_0, Q6K, Q8_0};
use super::each_column;
use super::groups::{self, Grouped};

/// Rows per tile: how many rows one read of a weight block serves. (Where the build has AVX2,
/// this module is compiled only for tests, as the SIMD kernels' reference.)
#[cfg_attr(test, allow(dead_code))]
pub(crate) fn tile_rows() -> usize {
    4
}

/// `x · inv` rounded to the nearest integer, ties to even, clamped to ±127: a block of
/// activations as 8-bit values.
#[cfg_attr(test, allow(dead_code))]
pub(crate) fn scaled_i8(xs: &[f32; 32], inv: f32) -> [i8; 32] {
    std::array::from_fn(|i| (xs[i] * inv).round_ties_even().clamp(-127.0, 127.0) as i8)
}

/// The 32 unsigned values of a 32-wide block, element `i` in byte `i`.
pub(crate) trait Values: Unsigned32 {
    fn values(&self) -> [u8; 32];
}

impl Values for Q4_0 {
    fn values(&self) -> [u8; 32] {
        std::array::from_fn(|i| nibble(&self.qs, i))
    }
}

impl Values for Q4_1 {
    fn values(&self) -> [u8; 32] {
        std::array::from_fn(|i| nibble(&self.qs, i))
    }
}

impl Values for Q5_0 {
    fn values(&self) -> [u8; 32] {
        let high = u32::from_le_bytes(self.qh);
        std::array::from_fn(|i| nibble(&self.qs, i) | ((((high >> i) & 1) as u8) << 4))
    }
}

/// Element `i` of a 32-wide block packed two per byte: low nibbles hold 0..16, high 16..32.
fn nibble(qs: &[u8; 16], i: usize) -> u8 {
    if i < 16 {
        qs[i] & 0x0F
    } else {
        qs[i - 16] >> 4
    }
}

/// Q5K's 256 unsigned 5-bit values, element `i` in byte `i`.
fn q5k_values(b: &Q5K) -> [u8; 256] {
    std::array::from_fn(|i| {
        let (chunk, l) = (i / 64, i % 64);
        let (low, bit) = if l < 32 {
            (b.qs[32 * chunk + l] & 0x0F, 2 * chunk)
        } else {
            (b.qs[32 * chunk + l - 32] >> 4, 2 * chunk + 1)
        };
        low | (((b.qh[l % 32] >> bit) & 1) << 4)
    })
}

/// Q4K's 256 unsigned 4-bit values, element `i` in byte `i`.
fn q4k_values(b: &Q4K) -> [u8; 256] {
    std::array::from_fn(|i| {
        let (chunk, l) = (i / 64, i % 64);
        if l < 32 {
            b.qs[32 * chunk + l] & 0x0F
        } else {
            b.qs[32 * chunk + l - 32] >> 4
        }
    })
}

/// Q6K's 256 unsigned 6-bit values (before the offset of 32), element `i` in byte `i`.
fn q6k_values(b: &Q6K) -> [u8; 256] {
    std::array::from_fn(|i| {
        let (half, rest) = (i / 128, i % 128);
        let (chunk, l) = (rest / 32, rest % 32);
        let ql = &b.ql[64 * half..];
        let qh = b.qh[32 * half + l];
        let low = match chunk {
            0 => ql[l] & 0x0F,
            1 => ql[l + 32] & 0x0F,
            2 => ql[l] >> 4,
            _ => ql[l + 32] >> 4,
        };
        low | (((qh >> (2 * chunk)) & 3) << 4)
    })
}

fn products<const N: usize>(
    q: impl Fn(usize) -> i32,
    x: &[i8; N],
    range: std::ops::Range<usize>,
) -> i32 {
    range.map(|i| q(i) * i32::from(x[i])).sum()
}

/// Block `b` of a row of a 32-wide type in the file's layout, and whether its activations are
/// interleaved (it lies in a full group of eight).
fn block<B: Grouped>(w: &[B], b: usize) -> (B, bool) {
    if b < w.len() / 8 * 8 {
        (B::block(groups::group(w, b / 8), b % 8), true)
    } else {
        (w[b], false)
    }
}

fn unsigned32_column<B: Values + Grouped, const R: usize>(
    w: &[B],
    xs: [&[Act8x32]; R],
) -> [f32; R] {
    let mut acc = [0f32; R];
    for b in 0..w.len() {
        let (block, interleaved) = block(w, b);
        let q = block.values();
        let (d, m) = block.scale_offset();
        for (r, row) in xs.iter().enumerate() {
            let (x, j) = (&row[b / 8], b % 8);
            let isum = products(|i| i32::from(q[i]), &x.block(j, interleaved), 0..32);
            acc[r] += d * x.d[j] * isum as f32 + m * x.s[j];
        }
    }
    acc
}

fn q8_0_column<const R: usize>(w: &[Q8_0], xs: [&[Act8x32]; R]) -> [f32; R] {
    let mut acc = [0f32; R];
    for b in 0..w.len() {
        let (block, interleaved) = block(w, b);
        let d = block.d.to_f32();
        for (r, row) in xs.iter().enumerate() {
            let (x, j) = (&row[b / 8], b % 8);
            let isum = products(|i| i32::from(block.qs[i]), &x.block(j, interleaved), 0..32);
            acc[r] += d * x.d[j] * isum as f32;
        }
    }
    acc
}

/// Q4K and Q5K: 8 groups of 32 with a scale and a minimum each.
fn k_minimums<const R: usize>(
    d: f32,
    dmin: f32,
    packed: &[u8; 12],
    q: &[u8; 256],
    xs: [&Act256; R],
    acc: &mut [f32; R],
) {
    let (scales, mins) = k_scales(packed);
    for (r, x) in xs.iter().enumerate() {
        let isum: i32 = (0..8)
            .map(|j| {
                i32::from(scales[j]) * products(|i| i32::from(q[i]), &x.qs, 32 * j..32 * j + 32)
            })
            .sum();
        let min_sum: i32 = (0..8)
            .map(|j| {
                i32::from(mins[j]) * (i32::from(x.bsums[2 * j]) + i32::from(x.bsums[2 * j + 1]))
            })
            .sum();
        acc[r] += d * x.d * isum as f32 - dmin * x.d * min_sum as f32;
    }
}

fn q4k_column<const R: usize>(w: &[Q4K], xs: [&[Act256]; R]) -> [f32; R] {
    let mut acc = [0f32; R];
    for (b, block) in w.iter().enumerate() {
        let rows = std::array::from_fn(|r| &xs[r][b]);
        let (d, dmin) = (block.d.to_f32(), block.dmin.to_f32());
        k_minimums(d, dmin, &block.scales, &q4k_values(block), rows, &mut acc);
    }
    acc
}

fn q5k_column<const R: usize>(w: &[Q5K], xs: [&[Act256]; R]) -> [f32; R] {
    let mut acc = [0f32; R];
    for (b, block) in w.iter().enumerate() {
        let rows = std::array::from_fn(|r| &xs[r][b]);
        let (d, dmin) = (block.d.to_f32(), block.dmin.to_f32());
        k_minimums(d, dmin, &block.scales, &q5k_values(block), rows, &mut acc);
    }
    acc
}

fn q6k_column<const R: usize>(w: &[Q6K], xs: [&[Act256]; R]) -> [f32; R] {
    let mut acc = [0f32; R];
    for (b, block) in w.iter().enumerate() {
        let q = q6k_values(block);
        let d = block.d.to_f32();
        for (r, row) in xs.iter().enumerate() {
            let x = &row[b];
            let isum: i32 = (0..16)
                .map(|g| {
                    i32::from(block.scales[g])
                        * products(|i| i32::from(q[i]), &x.qs, 16 * g..16 * g + 16)
                })
                .sum();
            let offset: i32 = (0..16)
                .map(|g| i32::from(block.scales[g]) * i32::from(x.bsums[g]))
                .sum();
            acc[r] += d * x.d * isum as f32 - d * x.d * (32 * offset) as f32;
        }
    }
    acc
}

/// The entry points, as the AVX2 module's: a run of columns (`per_row` blocks each), column
/// `c`'s result for row `r` at `out[r * stride + c]`.
macro_rules! columns {
    ($name:ident, $column:ident, $w:ty, $x:ty) => {
        pub(crate) fn $name<const R: usize>(
            w: &[$w],
            per_row: usize,
            xs: [&[$x]; R],
            out: &mut [f32],
            stride: usize,
        ) {
            each_column(w, per_row, out, stride, |w| $column::<R>(w, xs));
        }
    };
}

columns!(q8_0, q8_0_column, Q8_0, Act8x32);
columns!(q4k, q4k_column, Q4K, Act256);
columns!(q5k, q5k_column, Q5K, Act256);
columns!(q6k, q6k_column, Q6K, Act256);

pub(crate) fn unsigned32<B: Values + Grouped, const R: usize>(
    w: &[B],
    per_row: usize,
    xs: [&[Act8x32]; R],
    out: &mut [f32],
    stride: usize,
) {
    each_column(w, per_row, out, stride, |w| {
        unsigned32_column::<B, R>(w, xs)
    });
}
