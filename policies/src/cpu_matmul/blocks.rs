//! The GGUF block layouts the CPU kernels read, and the 8-bit activation blocks they multiply.
//!
//! Weights stay in the file's layout, except that the 32-wide types' full groups of eight
//! blocks are interleaved in place (`groups.rs`), so a matrix is its bytes copied once.
//! Activations are quantized once per row per product: to blocks of 32 for the 32-wide weight
//! types, to blocks of 256 with per-16 sums for the k-quants, the way llama.cpp pairs them.

use super::groups;
use half::f16;

/// A block whose values are `d · q + m` with unsigned `q` (4 or 5 bits): Q4_0 (m = -8d),
/// Q4_1, Q5_0 (m = -16d). The kernels multiply the unsigned `q` and add `m · Σx` once.
pub(crate) trait Unsigned32: Copy + Send + Sync + 'static {
    /// `(d, m)`.
    fn scale_offset(&self) -> (f32, f32);
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// 256 weights in 8 groups of 32, each with a 6-bit scale and a 6-bit minimum.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// Q4K with a fifth bit per weight in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// 256 weights in 16 groups of 16 with signed 8-bit scales; values are 6-bit, offset by 32.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}

impl Unsigned32 for Q4_0 {
    fn scale_offset(&self) -> (f32, f32) {
        let d = self.d.to_f32();
        (d, -8.0 * d)
    }
}

impl Unsigned32 for Q4_1 {
    fn scale_offset(&self) -> (f32, f32) {
        (self.d.to_f32(), self.m.to_f32())
    }
}

impl Unsigned32 for Q5_0 {
    fn scale_offset(&self) -> (f32, f32) {
        let d = self.d.to_f32();
        (d, -16.0 * d)
    }
}

/// The 6-bit scales and minimums of Q4K/Q5K's 8 groups, unpacked from their 12 bytes.
pub(crate) fn k_scales(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            scales[j] = packed[j] & 63;
            mins[j] = packed[j + 4] & 63;
        } else {
            scales[j] = (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4);
            mins[j] = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        }
    }
    (scales, mins)
}

/// Eight blocks of 32 activations, block `j` as `d[j] · q[j]`, with `s[j] = d[j] · Σq[j]`
/// for the weight types' offsets. Scales side by side, so that a kernel loads the eight of them
/// as one vector. A full group's values are interleaved as the weights' groups are
/// (`groups::slot`); a row's last group, when it holds fewer than eight blocks, keeps block `j`
/// in `qs[j]` (as the weights after the last full group do) and is padded with zero blocks.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Act8x32 {
    pub d: [f32; 8],
    pub s: [f32; 8],
    pub qs: [[i8; 32]; 8],
}

/// 256 activations as `d · qs`, with the sum of each group of 16 for the k-quants' offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Act256 {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

/// An activation block: quantized from up to `WIDTH` floats (a row's last block may be short).
pub(crate) trait Activations: Copy + Send + Sync + 'static {
    const WIDTH: usize;
    /// All zeros: what a buffer of blocks starts as before it is filled.
    const ZERO: Self;
    fn quantize(xs: &[f32]) -> Self;
}

/// Symmetric 8-bit quantization of one block of `N` values (a multiple of 32): `(d, q)` with
/// `|x - d·q| <= d/2`, ties rounded to even. The largest magnitude is taken in eight lanes,
/// which the compiler vectorizes (the maximum of floats is the same in any order).
fn quantize_block<const N: usize>(xs: &[f32]) -> (f32, [i8; N]) {
    let xs = &xs[..N];
    let mut lanes = [0f32; 8];
    for chunk in xs.as_chunks::<8>().0 {
        for (m, x) in lanes.iter_mut().zip(chunk) {
            *m = m.max(x.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &x| m.max(x));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; N];
    // Both are N / 32 blocks long.
    for (q, x) in qs
        .as_chunks_mut::<32>()
        .0
        .iter_mut()
        .zip(xs.as_chunks::<32>().0)
    {
        *q = super::simd::scaled_i8(x, inv);
    }
    (d, qs)
}

impl Activations for Act8x32 {
    const WIDTH: usize = 256;
    const ZERO: Self = Self {
        d: [0.0; 8],
        s: [0.0; 8],
        qs: [[0; 32]; 8],
    };
    fn quantize(xs: &[f32]) -> Self {
        let mut group = Self::ZERO;
        for (j, block) in xs.chunks_exact(32).take(8).enumerate() {
            let (d, qs) = quantize_block::<32>(block);
            let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
            group.d[j] = d;
            group.s[j] = d * sum as f32;
            group.qs[j] = qs;
        }
        if xs.len() == Self::WIDTH {
            group.qs = groups::spread_activations(&group.qs);
        }
        group
    }
}

impl Act8x32 {
    /// Block `j`'s values, from a full group (`interleaved`) or a row's short last one.
    // Read by the portable kernels (built for CPUs without AVX2) and the tests.
    #[allow(dead_code)]
    pub fn block(&self, j: usize, interleaved: bool) -> [i8; 32] {
        if interleaved {
            groups::activation_block(&self.qs, j)
        } else {
            self.qs[j]
        }
    }
}

impl Activations for Act256 {
    const WIDTH: usize = 256;
    const ZERO: Self = Self {
        d: 0.0,
        qs: [0; 256],
        bsums: [0; 16],
    };
    fn quantize(xs: &[f32]) -> Self {
        let (d, qs) = quantize_block::<256>(xs);
        let bsums =
            std::array::from_fn(|g| qs[16 * g..16 * g + 16].iter().map(|&q| i16::from(q)).sum());
        Self { d, qs, bsums }
    }
}
