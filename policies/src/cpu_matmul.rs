//! Quantized matrix products on the CPU that give a row the same bits whatever else the call
//! holds.
//!
//! candle's `QMatMul` picks between two families of CPU kernels at run time: its generic
//! kernels (activations quantized row by row to the weight type's dot-product format, one dot
//! product per row and column) and repacked tile kernels that quantize activations in wider
//! blocks and accumulate in another order. Which one runs depends on the CPU (AVX2, AVX-VNNI,
//! AVX-512 VNNI, AMX) and on the number of rows: Q6_K weights take the tiles only for more
//! than one row, Q4_K the AMX tiles only from 32 rows. A token's logits then change with the
//! batch it is decoded in, and from one machine to the next. Here every product goes through
//! the generic kernels, which are compiled for one instruction level and compute each
//! (row, column) the same way for any number of rows.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8_0, GgmlType,
};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Storage, Tensor};

/// A weight matrix `[out, in]` as blocks of one quantized type.
#[derive(Debug, Clone)]
pub(crate) enum QuantMatrix {
    Q8_0(Blocks<BlockQ8_0>),
    Q2K(Blocks<BlockQ2K>),
    Q3K(Blocks<BlockQ3K>),
    Q4K(Blocks<BlockQ4K>),
    Q5K(Blocks<BlockQ5K>),
    Q6K(Blocks<BlockQ6K>),
}

#[derive(Debug, Clone)]
pub(crate) struct Blocks<T> {
    blocks: std::sync::Arc<Vec<T>>,
    rows: usize,
    cols: usize,
}

impl QuantMatrix {
    /// The matrix of a CPU tensor of a type with a generic kernel; `None` for other types.
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        if !q.device().is_cpu() {
            return Ok(None);
        }
        let (rows, cols) = q.shape().dims2()?;
        Ok(Some(match q.dtype() {
            GgmlDType::Q8_0 => Self::Q8_0(Blocks::read(q, rows, cols)?),
            GgmlDType::Q2K => Self::Q2K(Blocks::read(q, rows, cols)?),
            GgmlDType::Q3K => Self::Q3K(Blocks::read(q, rows, cols)?),
            GgmlDType::Q4K => Self::Q4K(Blocks::read(q, rows, cols)?),
            GgmlDType::Q5K => Self::Q5K(Blocks::read(q, rows, cols)?),
            GgmlDType::Q6K => Self::Q6K(Blocks::read(q, rows, cols)?),
            _ => return Ok(None),
        }))
    }

    /// `xs @ selfᵀ` for `xs` `[..., in]` (f32): `[..., out]`.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Q8_0(b) => b.forward(xs),
            Self::Q2K(b) => b.forward(xs),
            Self::Q3K(b) => b.forward(xs),
            Self::Q4K(b) => b.forward(xs),
            Self::Q5K(b) => b.forward(xs),
            Self::Q6K(b) => b.forward(xs),
        }
    }
}

impl<T: GgmlType + Send + Sync> Blocks<T> {
    fn read(q: &QTensor, rows: usize, cols: usize) -> candle_core::Result<Self> {
        let bytes = q.data()?;
        let size = std::mem::size_of::<T>();
        let per_row = cols / T::BLCK_SIZE;
        if !cols.is_multiple_of(T::BLCK_SIZE) || bytes.len() != rows * per_row * size {
            candle_core::bail!(
                "{:?} matrix [{rows}, {cols}] does not fit its {} bytes",
                T::DTYPE,
                bytes.len()
            );
        }
        let mut blocks = vec![T::zeros(); rows * per_row];
        // SAFETY: the block types are `repr(C)` plain data (integers, f16, f32 and arrays of
        // them) for which every bit pattern is a value, and the lengths match (checked above);
        // this is how candle itself stores them.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                blocks.as_mut_ptr().cast::<u8>(),
                bytes.len(),
            );
        }
        Ok(Self {
            blocks: std::sync::Arc::new(blocks),
            rows,
            cols,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dims = xs.dims();
        let k = dims.last().copied().unwrap_or(0);
        if k != self.cols {
            candle_core::bail!(
                "matmul: input of width {k} for a [{}, {k}] matrix",
                self.cols
            );
        }
        let m = xs.elem_count() / k.max(1);
        let xs = xs.contiguous()?;
        let (storage, layout) = xs.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("matmul: the input is not on the CPU");
        };
        let lhs = &cpu.as_slice::<f32>()?[layout.start_offset()..][..m * k];
        let mut out = vec![0f32; m * self.rows];
        candle_core::quantized::k_quants::matmul((m, k, self.rows), lhs, &self.blocks, &mut out)?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Tensor::from_vec(out, shape, &Device::Cpu)
    }
}
