//! Eight 32-wide blocks interleaved: the layout the products read full groups in.
//!
//! In the file's layout a block's 32 values are contiguous, so a 32-byte load holds one block,
//! and its integer dot product ends up spread over eight lanes that must be added across
//! (horizontal adds, the costliest part of a block). Interleaved, lane `j` of every vector
//! holds values of block `j` only: the products of eight blocks are summed with plain vector
//! adds, lane by lane, and the eight scales are one load. A group takes exactly the bytes of
//! its eight blocks and is written over them at load (`interleave_row`), so a matrix is still
//! its file's bytes copied once. Blocks after a row's last full group stay as they are.
//!
//! The integer sums are exact either way, so interleaving changes no result.

use super::blocks::{Q4_0, Q4_1, Q5_0, Q8_0};
use half::f16;

/// Where value `i` of block `j` sits in a group: (vector, byte). Vector `2s` holds values
/// `4s..4s + 4` of every block and vector `2s + 1` values `16 + 4s..16 + 4s + 4`, block `j`
/// in bytes `4j..4j + 4`: for the 4-bit types, the low and the high nibbles of bytes `4s..4s + 4`
/// of each block, so that one 32-byte load of packed nibbles gives two vectors.
pub(crate) const fn slot(j: usize, i: usize) -> (usize, usize) {
    (2 * ((i % 16) / 4) + i / 16, 4 * j + i % 4)
}

/// A 32-wide block type whose full groups of eight are stored interleaved.
pub(crate) trait Grouped: Copy + 'static {
    /// Eight blocks interleaved: `repr(C)`, the size of `[Self; 8]`, aligned no more strictly.
    type Group: Copy;
    fn interleave(blocks: &[Self; 8]) -> Self::Group;
    /// Block `j` back in the file's layout (the portable kernels and the tests read these).
    #[allow(dead_code)]
    fn block(group: &Self::Group, j: usize) -> Self;
}

/// Rewrites each full group of eight blocks of one matrix row in place as a `B::Group`.
pub(crate) fn interleave_row<B: Grouped>(row: &mut [B]) {
    const { fits::<B>() };
    for chunk in row.chunks_exact_mut(8) {
        let blocks: [B; 8] = std::array::from_fn(|j| chunk[j]);
        let group = B::interleave(&blocks);
        // SAFETY: `fits` checked that a group is the size of the eight blocks it replaces and
        // needs no stricter alignment than they have; every bit pattern is a block.
        unsafe { chunk.as_mut_ptr().cast::<B::Group>().write(group) };
    }
}

/// Group `g` of a row that `interleave_row` rewrote.
pub(crate) fn group<B: Grouped>(row: &[B], g: usize) -> &B::Group {
    const { fits::<B>() };
    let blocks = &row[8 * g..8 * g + 8];
    // SAFETY: the eight blocks hold a group (written by `interleave_row`), which fits in them
    // and is aligned as they are (`fits`); every bit pattern is a group.
    unsafe { &*blocks.as_ptr().cast::<B::Group>() }
}

const fn fits<B: Grouped>() {
    assert!(std::mem::size_of::<B::Group>() == 8 * std::mem::size_of::<B>());
    assert!(std::mem::align_of::<B::Group>() <= std::mem::align_of::<B>());
}

/// Packed nibbles interleaved: byte `4j + t` of load `s` is byte `4s + t` of block `j`.
fn nibbles(qs: [&[u8; 16]; 8]) -> [[u8; 32]; 4] {
    std::array::from_fn(|s| std::array::from_fn(|b| qs[b / 4][4 * s + b % 4]))
}

/// The inverse of `nibbles` for block `j`.
// Read by the portable kernels (built for CPUs without AVX2) and the tests.
#[allow(dead_code)]
fn block_nibbles(qs: &[[u8; 32]; 4], j: usize) -> [u8; 16] {
    std::array::from_fn(|i| qs[i / 4][4 * j + i % 4])
}

/// Value `i` of block `j`, read from eight interleaved vectors.
// Read by the portable kernels (built for CPUs without AVX2) and the tests.
#[allow(dead_code)]
fn value<T: Copy>(v: &[[T; 32]; 8], j: usize, i: usize) -> T {
    let (vector, byte) = slot(j, i);
    v[vector][byte]
}

/// Eight blocks' 32 values interleaved into eight vectors.
fn spread<T: Copy + Default>(values: impl Fn(usize, usize) -> T) -> [[T; 32]; 8] {
    let mut v = [[T::default(); 32]; 8];
    for j in 0..8 {
        for i in 0..32 {
            let (vector, byte) = slot(j, i);
            v[vector][byte] = values(j, i);
        }
    }
    v
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q4_0x8 {
    pub d: [f16; 8],
    pub qs: [[u8; 32]; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q4_1x8 {
    pub d: [f16; 8],
    pub m: [f16; 8],
    pub qs: [[u8; 32]; 4],
}

/// Q5_0's fifth bits: bit `b` of `qh[v]` (little-endian) belongs to byte `b` of vector `v`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q5_0x8 {
    pub d: [f16; 8],
    pub qh: [[u8; 4]; 8],
    pub qs: [[u8; 32]; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Q8_0x8 {
    pub d: [f16; 8],
    pub qs: [[i8; 32]; 8],
}

impl Grouped for Q4_0 {
    type Group = Q4_0x8;
    fn interleave(b: &[Self; 8]) -> Q4_0x8 {
        Q4_0x8 {
            d: b.map(|b| b.d),
            qs: nibbles(std::array::from_fn(|j| &b[j].qs)),
        }
    }
    fn block(g: &Q4_0x8, j: usize) -> Self {
        Self {
            d: g.d[j],
            qs: block_nibbles(&g.qs, j),
        }
    }
}

impl Grouped for Q4_1 {
    type Group = Q4_1x8;
    fn interleave(b: &[Self; 8]) -> Q4_1x8 {
        Q4_1x8 {
            d: b.map(|b| b.d),
            m: b.map(|b| b.m),
            qs: nibbles(std::array::from_fn(|j| &b[j].qs)),
        }
    }
    fn block(g: &Q4_1x8, j: usize) -> Self {
        Self {
            d: g.d[j],
            m: g.m[j],
            qs: block_nibbles(&g.qs, j),
        }
    }
}

impl Grouped for Q5_0 {
    type Group = Q5_0x8;
    fn interleave(b: &[Self; 8]) -> Q5_0x8 {
        let fifth = spread(|j, i| (u32::from_le_bytes(b[j].qh) >> i) & 1);
        Q5_0x8 {
            d: b.map(|b| b.d),
            qh: fifth.map(|bits| {
                let mask = (0..32).fold(0u32, |m, byte| m | (bits[byte] << byte));
                mask.to_le_bytes()
            }),
            qs: nibbles(std::array::from_fn(|j| &b[j].qs)),
        }
    }
    fn block(g: &Q5_0x8, j: usize) -> Self {
        let bits = g.qh.map(u32::from_le_bytes);
        let qh = (0..32).fold(0u32, |m, i| {
            let (vector, byte) = slot(j, i);
            m | (((bits[vector] >> byte) & 1) << i)
        });
        Self {
            d: g.d[j],
            qh: qh.to_le_bytes(),
            qs: block_nibbles(&g.qs, j),
        }
    }
}

impl Grouped for Q8_0 {
    type Group = Q8_0x8;
    fn interleave(b: &[Self; 8]) -> Q8_0x8 {
        Q8_0x8 {
            d: b.map(|b| b.d),
            qs: spread(|j, i| b[j].qs[i]),
        }
    }
    fn block(g: &Q8_0x8, j: usize) -> Self {
        Self {
            d: g.d[j],
            qs: std::array::from_fn(|i| value(&g.qs, j, i)),
        }
    }
}

/// Eight activation blocks' values interleaved as a group's weights are (`Act8x32`).
pub(crate) fn spread_activations(q: &[[i8; 32]; 8]) -> [[i8; 32]; 8] {
    spread(|j, i| q[j][i])
}

/// Block `j`'s values out of interleaved activations.
// Read by the portable kernels (built for CPUs without AVX2) and the tests.
#[allow(dead_code)]
pub(crate) fn activation_block(v: &[[i8; 32]; 8], j: usize) -> [i8; 32] {
    std::array::from_fn(|i| value(v, j, i))
}
