//! Quantized matrix products on the CPU, hone's own: fast, and a row's result the same bits
//! whatever else the call holds.
//!
//! Why not candle's `QMatMul`: it picks among several kernel families at run time (generic
//! ones, and repacked tiles that quantize activations in wider blocks and sum in another
//! order) by CPU level and by the number of rows, so a token's logits changed with the batch
//! it was decoded in and from one machine to the next; and its generic kernels have no SIMD
//! code for the legacy 4/5-bit types.
//!
//! Here, as in llama.cpp, activations are quantized once per row to 8 bits and multiplied
//! with the weights' integers, summed in 32-bit integers per block before one conversion to
//! float. The pool's threads take runs of up to 16 output columns; a kernel call computes a
//! run for a tile of rows (four, eight with AVX-512 VNNI), a block of weights at a time, with
//! the same instructions for every row and column (with AVX-512 VNNI the 32-wide kernels take
//! two columns at a time on 512-bit vectors, `avx512.rs`): the result depends on
//! the row and the column only. Weights keep the GGUF layout but for the 32-wide types' groups of eight blocks,
//! interleaved in place (`groups.rs`), in memory on 2 MiB pages (`pages.rs`); types without a
//! kernel are re-quantized to Q8_0 at load (see `weights.rs`).

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
mod avx2;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
mod avx512;
mod blocks;
mod groups;
mod pages;
#[cfg(any(
    test,
    not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))
))]
mod portable;

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
use avx2 as simd;
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
)))]
use portable as simd;

use blocks::{Act256, Act8x32, Activations, Q4K, Q4_0, Q4_1, Q5K, Q5_0, Q6K, Q8_0};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Storage, Tensor};
use pages::Region;

/// A weight block type with a kernel: its activation format and its dot product of one block
/// row against a tile of up to eight activation rows.
pub(crate) trait Kernel: Copy + Send + Sync + 'static {
    /// Weights per block.
    const WIDTH: usize;
    type Act: Activations;
    const DTYPE: GgmlDType;
    /// Puts one matrix row, as read from the file, in the layout `dot` reads.
    fn prepare(row: &mut [Self]);
    /// A run of columns (`per_row` blocks each) against a tile of up to eight activation rows:
    /// column `c`'s result for row `r` at `out[r * stride + c]`.
    fn dot<const R: usize>(
        w: &[Self],
        per_row: usize,
        xs: [&[Self::Act]; R],
        out: &mut [f32],
        stride: usize,
    );
}

/// The file's layout is the kernel's (the k-quants).
fn keep<B>(_: &mut [B]) {}

macro_rules! kernel {
    ($block:ty, $width:literal, $act:ty, $dtype:expr, $prepare:path, $f:ident $(::<$g:ty>)?) => {
        impl Kernel for $block {
            const WIDTH: usize = $width;
            type Act = $act;
            const DTYPE: GgmlDType = $dtype;
            fn prepare(row: &mut [Self]) {
                $prepare(row)
            }
            fn dot<const R: usize>(
                w: &[Self],
                per_row: usize,
                xs: [&[$act]; R],
                out: &mut [f32],
                stride: usize,
            ) {
                simd::$f$(::<$g, R>)?(w, per_row, xs, out, stride)
            }
        }
    };
}

use groups::interleave_row;
kernel!(
    Q4_0,
    32,
    Act8x32,
    GgmlDType::Q4_0,
    interleave_row,
    unsigned32::<Q4_0>
);
kernel!(
    Q4_1,
    32,
    Act8x32,
    GgmlDType::Q4_1,
    interleave_row,
    unsigned32::<Q4_1>
);
kernel!(
    Q5_0,
    32,
    Act8x32,
    GgmlDType::Q5_0,
    interleave_row,
    unsigned32::<Q5_0>
);
kernel!(Q8_0, 32, Act8x32, GgmlDType::Q8_0, interleave_row, q8_0);
kernel!(Q4K, 256, Act256, GgmlDType::Q4K, keep, q4k);
kernel!(Q5K, 256, Act256, GgmlDType::Q5K, keep, q5k);
kernel!(Q6K, 256, Act256, GgmlDType::Q6K, keep, q6k);

/// A weight matrix `[out, in]` as blocks of one quantized type.
#[derive(Debug, Clone)]
pub(crate) enum QuantMatrix {
    Q4_0(Blocks<Q4_0>),
    Q4_1(Blocks<Q4_1>),
    Q5_0(Blocks<Q5_0>),
    Q8_0(Blocks<Q8_0>),
    Q4K(Blocks<Q4K>),
    Q5K(Blocks<Q5K>),
    Q6K(Blocks<Q6K>),
}

#[derive(Debug, Clone)]
pub(crate) struct Blocks<B> {
    blocks: Region<B>,
    rows: usize,
    cols: usize,
}

impl QuantMatrix {
    /// Whether weights of this type have a kernel.
    pub fn has_kernel(dtype: GgmlDType) -> bool {
        use GgmlDType::*;
        matches!(dtype, Q4_0 | Q4_1 | Q5_0 | Q8_0 | Q4K | Q5K | Q6K)
    }

    /// The matrix of a CPU tensor of a type with a kernel; `None` for other types.
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        if !q.device().is_cpu() {
            return Ok(None);
        }
        let (rows, cols) = q.shape().dims2()?;
        let bytes = q.data()?;
        Ok(Some(match q.dtype() {
            GgmlDType::Q4_0 => Self::Q4_0(Blocks::read(&bytes, rows, cols)?),
            GgmlDType::Q4_1 => Self::Q4_1(Blocks::read(&bytes, rows, cols)?),
            GgmlDType::Q5_0 => Self::Q5_0(Blocks::read(&bytes, rows, cols)?),
            GgmlDType::Q8_0 => Self::Q8_0(Blocks::read(&bytes, rows, cols)?),
            GgmlDType::Q4K => Self::Q4K(Blocks::read(&bytes, rows, cols)?),
            GgmlDType::Q5K => Self::Q5K(Blocks::read(&bytes, rows, cols)?),
            GgmlDType::Q6K => Self::Q6K(Blocks::read(&bytes, rows, cols)?),
            _ => return Ok(None),
        }))
    }

    /// `xs @ selfᵀ` for `xs` `[..., in]` (f32): `[..., out]`.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut ys = Self::forward_each(&[self], xs)?;
        ys.pop()
            .ok_or_else(|| candle_core::Error::Msg("matmul: no result".into()))
    }

    /// `xs @ mᵀ` for each of `mats`, which read the same rows (q, k and v; gate and up). Where
    /// they share a type, the rows are quantized once and all their columns are one pass over
    /// the worker pool: each pass ends at a barrier where every thread waits for the slowest.
    pub fn forward_each(mats: &[&Self], xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        macro_rules! shared {
            ($($variant:ident),*) => {
                match mats.first() {
                    $(Some(Self::$variant(_)) => {
                        let blocks: Option<Vec<&Blocks<_>>> = mats
                            .iter()
                            .map(|m| match m {
                                Self::$variant(b) => Some(b),
                                _ => None,
                            })
                            .collect();
                        if let Some(blocks) = blocks {
                            return Blocks::forward_each(&blocks, xs);
                        }
                    })*
                    None => return Ok(Vec::new()),
                }
            };
        }
        shared!(Q4_0, Q4_1, Q5_0, Q8_0, Q4K, Q5K, Q6K);
        // Types differ: one pass each.
        let mut ys = Vec::with_capacity(mats.len());
        for m in mats {
            ys.extend(Self::forward_each(&[*m], xs)?);
        }
        Ok(ys)
    }
}

impl<B: Kernel> Blocks<B> {
    fn read(bytes: &[u8], rows: usize, cols: usize) -> candle_core::Result<Self> {
        let size = std::mem::size_of::<B>();
        let width = B::WIDTH;
        if cols == 0 || !cols.is_multiple_of(width) || bytes.len() != rows * (cols / width) * size {
            candle_core::bail!(
                "{:?} matrix [{rows}, {cols}] does not fit its {} bytes",
                B::DTYPE,
                bytes.len()
            );
        }
        // SAFETY: the block types are `repr(C)` structs of integers, f16 and arrays of them, for
        // which every bit pattern is a value.
        let blocks = unsafe {
            Region::<B>::from_bytes(bytes, |blocks| {
                for row in blocks.chunks_exact_mut(cols / width) {
                    B::prepare(row);
                }
            })
        };
        Ok(Self { blocks, rows, cols })
    }

    /// `xs` `[..., cols]` times each of `mats`: `[..., rows]` each.
    fn forward_each(mats: &[&Self], xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let dims = xs.dims();
        let k = dims.last().copied().unwrap_or(0);
        if let Some(m) = mats.iter().find(|m| m.cols != k) {
            candle_core::bail!(
                "matmul: input of width {k} for a [{}, {}] matrix",
                m.rows,
                m.cols
            );
        }
        let m = xs.elem_count() / k.max(1);
        let xs = xs.contiguous()?;
        let (storage, layout) = xs.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("matmul: the input is not on the CPU");
        };
        let lhs = &cpu.as_slice::<f32>()?[layout.start_offset()..][..m * k];
        let outs = Self::products(mats, lhs, m)?;
        mats.iter()
            .zip(outs)
            .map(|(mat, out)| {
                let mut shape = dims.to_vec();
                if let Some(last) = shape.last_mut() {
                    *last = mat.rows;
                }
                Tensor::from_vec(out, shape, &Device::Cpu)
            })
            .collect()
    }

    /// `lhs` `[m, k]` times each of `mats` (all `k` wide): `[m, rows]` each, from one
    /// quantization of `lhs` and one pass over the pool for every column of every matrix.
    fn products(mats: &[&Self], lhs: &[f32], m: usize) -> candle_core::Result<Vec<Vec<f32>>> {
        let Some(k) = mats.first().map(|b| b.cols) else {
            return Ok(Vec::new());
        };
        if m == 0 {
            return Ok(mats.iter().map(|_| Vec::new()).collect());
        }
        let per_row = k / B::WIDTH;
        let rows = Self::quantize(lhs, m, k)?;
        let rows: Vec<&[B::Act]> = rows.chunks_exact(k.div_ceil(B::Act::WIDTH)).collect();
        // The results, `[m, rows]` per matrix. The pool takes runs of up to `COLUMNS` columns
        // (a kernel call's run stops at the end of its matrix); a run's results lie row by
        // row in its thread's scratch, `COLUMNS` apart, and each row's are copied into place.
        let mut outs: Vec<Vec<f32>> = mats
            .iter()
            .map(|b| Vec::with_capacity(m * b.rows))
            .collect();
        let dst: Vec<crate::cpu::Shared<std::mem::MaybeUninit<f32>>> = outs
            .iter_mut()
            .map(|o| crate::cpu::Shared::new(o.spare_capacity_mut()))
            .collect();
        let total: usize = mats.iter().map(|b| b.rows).sum();
        const COLUMNS: usize = 16;
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        crate::cpu::for_each(total.div_ceil(COLUMNS), |run| {
            SCRATCH.with_borrow_mut(|scratch| {
                let columns = COLUMNS.min(total - run * COLUMNS);
                scratch.resize(COLUMNS * m, 0.0);
                let (mut mat, mut col) = (0, run * COLUMNS);
                let mut done = 0;
                while done < columns {
                    while col >= mats[mat].rows {
                        col -= mats[mat].rows;
                        mat += 1;
                    }
                    let width = mats[mat].rows;
                    let n = (width - col).min(columns - done);
                    let w = &mats[mat].blocks[col * per_row..(col + n) * per_row];
                    let tile = simd::tile_rows();
                    for (t, rows) in rows.chunks(tile).enumerate() {
                        dot_tile(
                            w,
                            per_row,
                            rows,
                            &mut scratch[t * tile * COLUMNS..],
                            COLUMNS,
                        );
                    }
                    for (r, from) in scratch.chunks_exact(COLUMNS).take(m).enumerate() {
                        // SAFETY: `outs[mat]` has room for `m * width` values and outlives the
                        // pass; this run alone holds columns `col..col + n` of its matrix, so
                        // no other thread writes `r * width + col..` up to `+ n`; `from` holds
                        // `COLUMNS >= n` values.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                from.as_ptr(),
                                dst[mat].get().add(r * width + col).cast::<f32>(),
                                n,
                            )
                        };
                    }
                    (col, done) = (col + n, done + n);
                }
            });
            Ok(())
        })?;
        for (out, mat) in outs.iter_mut().zip(mats) {
            // SAFETY: the runs cover every column of every matrix once, and each wrote its
            // columns' values for all `m` rows: all `m * rows` values are written.
            unsafe { out.set_len(m * mat.rows) };
        }
        Ok(outs)
    }

    /// `lhs` `[m, k]` as activation blocks, row after row; over the pool when there are
    /// enough of them to pay for waking it.
    fn quantize(lhs: &[f32], m: usize, k: usize) -> candle_core::Result<Vec<B::Act>> {
        let width = B::Act::WIDTH;
        let per_row = k.div_ceil(width);
        let mut acts = vec![B::Act::ZERO; m * per_row];
        const BLOCKS: usize = 8;
        crate::cpu::for_each_chunk(&mut acts, BLOCKS, |chunk, acts| {
            for (i, act) in (chunk * BLOCKS..).zip(acts.iter_mut()) {
                let (row, block) = (i / per_row, i % per_row);
                let from = row * k + block * width;
                let to = row * k + (block * width + width).min(k);
                *act = B::Act::quantize(&lhs[from..to]);
            }
            Ok(())
        })?;
        Ok(acts)
    }
}

/// The loop of a kernel's entry point: column `c` of a run (`per_row` blocks each) through
/// `dot`, its `R` results put in `out` (`put`). (Entry points compiled for a feature the build
/// lacks, AVX-512 VNNI, write this loop out: a closure would not be inlined there.)
pub(crate) fn each_column<W, const R: usize>(
    w: &[W],
    per_row: usize,
    out: &mut [f32],
    stride: usize,
    dot: impl Fn(&[W]) -> [f32; R],
) {
    for (c, column) in w.chunks_exact(per_row).enumerate() {
        fetch::<_, R>(w, per_row, c + 1..c + 2);
        put(out, stride, c, &dot(column));
    }
}

/// Columns `columns` of a run (`per_row` blocks each, as far as the run goes) requested
/// toward the core before they are read.
///
/// Why: a product's weights stream from memory (a model's layers together outgrow the caches),
/// and the hardware prefetcher alone keeps too few lines in flight: in a 5-row product, stalls on
/// the first load of a group of weights were over half of the kernel's samples, and a single
/// row stalled as often on the loads themselves. Tiles of `R` = 8 rows (a prompt's) compute
/// long enough per column for the hardware to keep up, and there the requests only cost
/// (Qwen2.5-Coder-0.5B's prefill 11% slower with them). A prefetch never faults; the range is
/// clamped to the slice anyway, so no address outside it is named.
#[inline(always)]
pub(crate) fn fetch<W, const R: usize>(w: &[W], per_row: usize, columns: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    if R < 8 {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let from = (columns.start * per_row).min(w.len());
        let to = (columns.end * per_row).min(w.len());
        let start = w[from..].as_ptr().cast::<i8>();
        for at in (0..std::mem::size_of_val(&w[from..to])).step_by(64) {
            // SAFETY: `start + at` lies within `w[from..to]`; a prefetch reads nothing back.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(at)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (w, per_row, columns);
}

/// Column `c`'s results for a tile's rows: row `r`'s at `out[r * stride + c]`, so that a run's
/// results lie row by row, each row's columns side by side, as the product's output does.
#[inline(always)]
pub(crate) fn put<const R: usize>(out: &mut [f32], stride: usize, c: usize, results: &[f32; R]) {
    for (r, &y) in results.iter().enumerate() {
        out[r * stride + c] = y;
    }
}

/// A run of weight columns against a tile of 1 to 8 activation rows: row `r`'s results at
/// `out[r * stride..]`.
fn dot_tile<B: Kernel>(
    w: &[B],
    per_row: usize,
    rows: &[&[B::Act]],
    out: &mut [f32],
    stride: usize,
) {
    fn tile<B: Kernel, const R: usize>(
        w: &[B],
        per_row: usize,
        rows: &[&[B::Act]],
        out: &mut [f32],
        stride: usize,
    ) {
        debug_assert_eq!(rows.len(), R);
        B::dot::<R>(w, per_row, std::array::from_fn(|r| rows[r]), out, stride);
    }
    match rows.len() {
        8 => tile::<B, 8>(w, per_row, rows, out, stride),
        7 => tile::<B, 7>(w, per_row, rows, out, stride),
        6 => tile::<B, 6>(w, per_row, rows, out, stride),
        5 => tile::<B, 5>(w, per_row, rows, out, stride),
        4 => tile::<B, 4>(w, per_row, rows, out, stride),
        3 => tile::<B, 3>(w, per_row, rows, out, stride),
        2 => tile::<B, 2>(w, per_row, rows, out, stride),
        _ => {
            for (r, &row) in rows.iter().enumerate() {
                B::dot::<1>(w, per_row, [row], &mut out[r * stride..], stride);
            }
        }
    }
}

#[cfg(test)]
mod tests;
