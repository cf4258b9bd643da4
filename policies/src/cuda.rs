//! hone's CUDA kernels (`kernels/decode.cu`, compiled to PTX by the crate's build) and the
//! calls that launch them on candle's stream.
//!
//! They replace candle's quantized matmul and attention on NVIDIA GPUs for two reasons: speed
//! (a decode step of a small model was launch-bound on dozens of small candle ops per layer) and
//! exactness (candle picks kernels by batch size, so a row's logits changed with its batch and
//! speculative verification was not lossless). Every kernel here reduces each output element in
//! an order fixed by the reduction length alone; see the comments in the `.cu` file.

use crate::sampling::{Head, HeadParams, HEAD_CAP};
use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaFunction, CudaModule, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PinnedHostSlice,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::op::BackpropOp;
use candle_core::quantized::GgmlDType;
use candle_core::{bail, DType, Device, Result, Shape, Storage, Tensor};
use std::collections::hash_map::{Entry, HashMap};
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode.ptx"));
/// Warps (output columns) per block of the matrix kernels that use one warp per column.
const COLUMN_WARPS: u32 = 4;
/// Must match `MMA_WARPS`, `MMA_ROWS` and `MMA_COLS` in the kernel file: the tensor-core
/// kernels' block and tile.
const MMA_WARPS: u32 = 8;
const MMA_ROWS: usize = 16;
const MMA_COLS: usize = 16;
/// The grid's y dimension may not pass 65,535.
const MAX_ROW_GROUPS: usize = 65_535;
/// Must match `ATT_SPLITS` and `ATT_WARPS` in the kernel file; head sizes are the kernel
/// file's `ATTEND` instances.
const ATTENTION_SPLITS: u32 = 8;
const ATTENTION_WARPS: u32 = 4;
const MAX_HEAD_DIM: usize = 256;
/// Must match `NORM_THREADS` in the kernel file.
const NORM_THREADS: u32 = 256;
/// Warps (runs of 32 values) per block of `quantize_q8`.
const QUANTIZE_WARPS: u32 = 8;
/// The most values [`read_rows`] stages through page-locked memory (256 MiB); larger reads
/// (long prompts' logits) take candle's path.
const MAX_STAGED: usize = 1 << 26;

/// A quantized weight matrix `[rows, cols]` in GGUF block layout on the GPU: `rows` outputs,
/// each a run of blocks over `cols` inputs.
#[derive(Debug, Clone)]
pub struct GpuMatrix {
    data: CudaSlice<u8>,
    kind: &'static str,
    rows: usize,
    cols: usize,
}

impl GpuMatrix {
    /// Uploads GGUF block data; `None` for types without a kernel here (callers fall back to
    /// candle's).
    pub fn upload(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
        device: &Device,
    ) -> Result<Option<Self>> {
        let Device::Cuda(dev) = device else {
            return Ok(None);
        };
        let kind = match dtype {
            GgmlDType::Q4_0 => "Q4_0",
            GgmlDType::Q4_1 => "Q4_1",
            GgmlDType::Q5_0 => "Q5_0",
            GgmlDType::Q5_1 => "Q5_1",
            GgmlDType::Q8_0 => "Q8_0",
            GgmlDType::Q4K => "Q4_K",
            GgmlDType::Q5K => "Q5_K",
            GgmlDType::Q6K => "Q6_K",
            _ => return Ok(None),
        };
        let block = dtype.block_size();
        if !cols.is_multiple_of(block) || bytes.len() != rows * cols / block * dtype.type_size() {
            bail!(
                "{dtype:?} matrix [{rows}, {cols}] does not fit its {} bytes",
                bytes.len()
            );
        }
        // SAFETY: every byte is written by the copy below before any kernel reads it.
        let mut data = unsafe { dev.alloc::<u8>(bytes.len()) }?;
        dev.memcpy_htod(bytes, &mut data)?;
        Ok(Some(Self {
            data,
            kind,
            rows,
            cols,
        }))
    }

    /// Whether [`glu`] can take this matrix and `other` together.
    pub fn pairs_with(&self, other: &Self) -> bool {
        self.kind == other.kind && self.rows == other.rows && self.cols == other.cols
    }

    /// `xs @ selfᵀ (+ bias) (+ residual)` for `xs` `[n, cols]` in 8-bit form: `[n, rows]`.
    pub fn forward(
        &self,
        xs: &Q8Rows,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (dev, n, shape) = self.input(xs)?;
        if let Some(r) = residual {
            if r.elem_count() != n * self.rows {
                bail!(
                    "matvec: residual of {} for {n} x {}",
                    r.elem_count(),
                    self.rows
                );
            }
        }
        if bias.is_some_and(|b| b.elem_count() != self.rows) {
            bail!("matvec: bias does not match {} outputs", self.rows);
        }
        // Bound here so that any copy lives until after the launch.
        let bias = bias.map(Tensor::contiguous).transpose()?;
        let residual = residual.map(Tensor::contiguous).transpose()?;
        let (xq, xd) = xs.ptrs()?;
        let b = bias.as_ref().map(ptr::<f32>).transpose()?;
        let r = residual.as_ref().map(ptr::<f32>).transpose()?;
        let y = Output::new(&dev, n * self.rows)?;
        let (bias, residual) = (b.unwrap_or(xd), r.unwrap_or(xd));
        let (has_bias, has_residual) = (b.is_some() as i32, r.is_some() as i32);
        let (n32, k, cols) = (n as i32, self.cols as i32, self.rows as i32);
        let tile = Tile::of(n);
        let cfg = tile.config(self.rows, n);
        let split = tile.split(&cfg, &dev)?;
        if split == 1 {
            launch(
                &dev,
                &format!("matvec_{}{}", self.kind, tile.suffix()),
                cfg,
                &[self.ptr(&dev), xq, xd, y.ptr, bias, residual],
                &[has_bias, has_residual, n32, k, cols],
                &[],
            )?;
            return y.tensor(shape);
        }
        // Each of `split` blocks per tile sums a share of its units; a second kernel adds the
        // shares in the one-block order and finishes the elements.
        let share = MMA_WARPS as usize * MMA_ROWS * MMA_COLS;
        let part = Output::new(
            &dev,
            n.div_ceil(MMA_ROWS) * cfg.grid_dim.0 as usize * split * share,
        )?;
        let grid = (cfg.grid_dim.0, cfg.grid_dim.1, split as u32);
        launch(
            &dev,
            &format!("matvec_{}_mma{split}", self.kind),
            LaunchConfig {
                grid_dim: grid,
                ..cfg
            },
            &[self.ptr(&dev), xq, xd, part.ptr],
            &[n32, k, cols],
            &[],
        )?;
        launch(
            &dev,
            &format!("mma_merge{split}"),
            cfg,
            &[part.ptr, y.ptr, bias, residual],
            &[has_bias, has_residual, n32, cols],
            &[],
        )?;
        y.tensor(shape)
    }

    /// Whether [`forward3`] can take this matrix with `other`: same type and input size, and
    /// column counts that no tile of columns straddles.
    pub fn fuses_with(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.cols == other.cols
            && self.rows.is_multiple_of(MMA_COLS)
            && other.rows.is_multiple_of(MMA_COLS)
    }

    fn ptr(&self, dev: &CudaDevice) -> u64 {
        let stream = dev.cuda_stream();
        let (p, _sync) = self.data.device_ptr(&stream);
        p
    }

    fn input(&self, xs: &Q8Rows) -> Result<(CudaDevice, usize, Shape)> {
        let Device::Cuda(dev) = xs.data.device() else {
            bail!("matvec: the input is not on a CUDA device");
        };
        if xs.k != self.cols {
            bail!(
                "matvec: rows of {} for a [{}, {}] matrix",
                xs.k,
                self.rows,
                self.cols
            );
        }
        Ok((dev.clone(), xs.n, Shape::from((xs.n, self.rows))))
    }
}

/// The kernel variant for `n` input rows (the kernel file's `QUANT_KERNELS`). Every variant
/// reduces each element the same way, so the choice changes speed, never bits.
#[derive(Debug, Clone, Copy)]
enum Tile {
    /// One row, one column per warp: a decode step of one row gets the most warps.
    One,
    /// Up to 2 or 4 rows, one column per warp: small batches and drafted tokens. A warp does
    /// work in proportion to its rows, so a step of 2 rows (a token and one draft) does not pay
    /// for 4. Five rows take two warps of rows per column (each reads the column's weights,
    /// the second probably from L2): on an H200 a 5-position verification costs 1.75 steps against the tensor cores'
    /// 1.82, and batch-5 decoding gains 2-3%; at 6 rows the two are even, beyond it the tensor
    /// cores win (docs/PERFORMANCE.md).
    Two,
    Four,
    /// Tensor cores, 16 rows by 16 columns per block: from 6 rows on (prefill, batches,
    /// verification of 5 drafted tokens and more), where each weight unit serves every row.
    /// They beat warps of 8 rows on an H200: batch-8 decoding 1.23x, verifying 8 positions of
    /// one row 1.88 steps against 2.30 (docs/PERFORMANCE.md).
    Mma,
}

impl Tile {
    fn of(n: usize) -> Self {
        match n {
            0 | 1 => Self::One,
            2 => Self::Two,
            3..=5 => Self::Four,
            _ => Self::Mma,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Self::One => "_1",
            Self::Two => "_2",
            Self::Four => "_4",
            Self::Mma => "_mma",
        }
    }

    /// Into how many blocks (1, 2 or 4) a tensor-core tile's units are split, so that a
    /// product with few tiles (few columns, a long k: the MLP's output at 16 rows) still
    /// covers the device's multiprocessors. The split changes no sum's order.
    fn split(self, cfg: &LaunchConfig, dev: &CudaDevice) -> Result<usize> {
        let Self::Mma = self else {
            return Ok(1);
        };
        let blocks = cfg.grid_dim.0 as usize * cfg.grid_dim.1 as usize;
        let sms = sm_count(dev)?;
        Ok(match blocks {
            b if b < sms => 4,
            b if b < 2 * sms => 2,
            _ => 1,
        })
    }

    /// The launch for `cols` output columns of `n` rows: a warp (or for `Mma` a block) per
    /// column tile and group of rows (grid y, capped: a warp then takes several groups, which
    /// changes no sum's order).
    fn config(self, cols: usize, n: usize) -> LaunchConfig {
        let (rows, cols_per_block, threads) = match self {
            Self::One => (1, COLUMN_WARPS as usize, 32 * COLUMN_WARPS),
            Self::Two => (2, COLUMN_WARPS as usize, 32 * COLUMN_WARPS),
            Self::Four => (4, COLUMN_WARPS as usize, 32 * COLUMN_WARPS),
            Self::Mma => (MMA_ROWS, MMA_COLS, 32 * MMA_WARPS),
        };
        let groups = n.div_ceil(rows).clamp(1, MAX_ROW_GROUPS) as u32;
        LaunchConfig {
            grid_dim: (cols.div_ceil(cols_per_block) as u32, groups, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// The multiprocessors of `dev`, which a grid should cover.
fn sm_count(dev: &CudaDevice) -> Result<usize> {
    let sms = dev
        .cuda_stream()
        .context()
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(candle_core::Error::wrap)?;
    Ok(sms.max(1) as usize)
}

/// The activation of a gated MLP.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    Silu = 0,
    Gelu = 1,
}

/// `act(xs @ gateᵀ) * (xs @ upᵀ)` in one pass, `[n, rows]`; the matrices must pair
/// ([`GpuMatrix::pairs_with`]).
pub fn glu(gate: &GpuMatrix, up: &GpuMatrix, xs: &Q8Rows, act: Activation) -> Result<Tensor> {
    if !gate.pairs_with(up) {
        bail!("glu: gate and up matrices differ in type or shape");
    }
    let (dev, n, shape) = gate.input(xs)?;
    let (xq, xd) = xs.ptrs()?;
    let y = Output::new(&dev, n * gate.rows)?;
    launch(
        &dev,
        &format!("glu_{}{}", gate.kind, Tile::of(n).suffix()),
        Tile::of(n).config(gate.rows, n),
        &[gate.ptr(&dev), up.ptr(&dev), xq, xd, y.ptr],
        &[act as i32, n as i32, gate.cols as i32, gate.rows as i32],
        &[],
    )?;
    y.tensor(shape)
}

/// Three products of the same input in one launch (a layer's q, k and v: two launches fewer
/// per layer, at batch 1 where launches bound a step): `[n, rows]` of each. The matrices must
/// fuse ([`GpuMatrix::fuses_with`]) and have biases all or none.
pub fn forward3(mats: [(&GpuMatrix, Option<&Tensor>); 3], xs: &Q8Rows) -> Result<[Tensor; 3]> {
    let [(m0, b0), (m1, b1), (m2, b2)] = mats;
    if !m0.fuses_with(m1) || !m0.fuses_with(m2) {
        bail!("matvec3: the matrices differ in type or input size");
    }
    let has_bias = b0.is_some();
    if b1.is_some() != has_bias || b2.is_some() != has_bias {
        bail!("matvec3: biases on some matrices only");
    }
    for (m, b) in mats {
        if b.is_some_and(|b| b.elem_count() != m.rows) {
            bail!("matvec3: bias does not match {} outputs", m.rows);
        }
    }
    let (dev, n, _) = m0.input(xs)?;
    let (xq, xd) = xs.ptrs()?;
    let biases = [b0, b1, b2]
        .map(|b| b.map(Tensor::contiguous).transpose())
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let b = biases
        .iter()
        .map(|b| b.as_ref().map_or(Ok(xd), ptr::<f32>))
        .collect::<Result<Vec<_>>>()?;
    let ys = [m0, m1, m2].map(|m| Output::new(&dev, n * m.rows));
    let [y0, y1, y2] = ys;
    let (y0, y1, y2) = (y0?, y1?, y2?);
    let tile = Tile::of(n);
    launch(
        &dev,
        &format!("matvec3_{}{}", m0.kind, tile.suffix()),
        tile.config(m0.rows + m1.rows + m2.rows, n),
        &[
            m0.ptr(&dev),
            m1.ptr(&dev),
            m2.ptr(&dev),
            xq,
            xd,
            y0.ptr,
            y1.ptr,
            y2.ptr,
            b[0],
            b[1],
            b[2],
        ],
        &[
            has_bias as i32,
            n as i32,
            m0.cols as i32,
            m0.rows as i32,
            m1.rows as i32,
            m2.rows as i32,
        ],
        &[],
    )?;
    Ok([
        y0.tensor(Shape::from((n, m0.rows)))?,
        y1.tensor(Shape::from((n, m1.rows)))?,
        y2.tensor(Shape::from((n, m2.rows)))?,
    ])
}

/// Input rows `[..., k]` (k a multiple of 32) as the products read them: each run of 32 values
/// as 32 signed bytes and an f32 scale (the largest magnitude maps to 127), as llama.cpp's
/// integer products do. Integer dot products (dp4a) then replace the dequantization of every
/// weight to f32, which bound the products at batch sizes above one. One buffer: `n * k`
/// bytes, then `n * k / 32` scales.
#[derive(Debug)]
pub struct Q8Rows {
    data: Tensor,
    n: usize,
    k: usize,
}

impl Q8Rows {
    fn alloc(dev: &CudaDevice, shape: &Shape) -> Result<(Self, u64, u64)> {
        let k = shape.dims().last().copied().unwrap_or(0);
        if k == 0 || !k.is_multiple_of(32) {
            bail!("8-bit rows need a last dimension that is a multiple of 32, not {shape:?}");
        }
        let n = shape.elem_count() / k;
        let out = Buffer::<u8>::new(dev, n * k + 4 * (n * k / 32))?;
        let (xq, xd) = (out.ptr, out.ptr + (n * k) as u64);
        let data = out.tensor(Shape::from(n * k + 4 * (n * k / 32)))?;
        let rows = Self { data, n, k };
        Ok((rows, xq, xd))
    }

    /// For a kernel that writes the 8-bit form beside its output when `quantize` is set: the
    /// rows and the addresses of their values and scales, or `unused` for both addresses (the
    /// kernel then writes neither).
    fn alloc_if(
        quantize: bool,
        dev: &CudaDevice,
        shape: &Shape,
        unused: u64,
    ) -> Result<(Option<Self>, u64, u64)> {
        if !quantize {
            return Ok((None, unused, unused));
        }
        let (rows, xq, xd) = Self::alloc(dev, shape)?;
        Ok((Some(rows), xq, xd))
    }

    /// The addresses of the values and of the scales.
    fn ptrs(&self) -> Result<(u64, u64)> {
        let xq = ptr::<u8>(&self.data)?;
        Ok((xq, xq + (self.n * self.k) as u64))
    }
}

/// `xs` `[..., k]` f32 in the products' 8-bit form.
pub fn quantize(xs: &Tensor) -> Result<Q8Rows> {
    let Device::Cuda(dev) = xs.device() else {
        bail!("quantize: not on a CUDA device");
    };
    if xs.dtype() != DType::F32 {
        bail!("quantize: {:?} input, f32 expected", xs.dtype());
    }
    let xs = xs.contiguous()?;
    let (rows, xq, xd) = Q8Rows::alloc(dev, xs.shape())?;
    let runs = (xs.elem_count() / 32) as u32;
    let cfg = LaunchConfig {
        grid_dim: (runs.div_ceil(QUANTIZE_WARPS), 1, 1),
        block_dim: (32 * QUANTIZE_WARPS, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        "quantize_q8",
        cfg,
        &[ptr::<f32>(&xs)?, xq, xd],
        &[xs.elem_count() as i32],
        &[],
    )?;
    Ok(rows)
}

/// Where each packed token of a call goes: its position, cache row and cache slot (u32 device
/// vectors shared by every layer).
pub struct Placement {
    pub pos: Tensor,
    pub row: Tensor,
    pub slot: Tensor,
}

/// Rotates q `[tokens, heads * d]` and k `[tokens, kv_heads * d]` by each token's position,
/// writes the rotated keys and the values into the cache `[batch, kv_heads, cap, d]` at each
/// token's row and slot, and returns the rotated queries.
#[allow(clippy::too_many_arguments)]
pub fn rope_store(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    at: &Placement,
    cache: (&Tensor, &Tensor),
    interleaved: bool,
) -> Result<Tensor> {
    let Device::Cuda(dev) = q.device() else {
        bail!("rope_store: not on a CUDA device");
    };
    let (_, kv_heads, cap, d) = cache.0.dims4()?;
    let n = at.pos.elem_count();
    let heads = q.elem_count() / (n * d).max(1);
    if d % 2 != 0
        || heads * n * d != q.elem_count()
        || k.elem_count() != n * kv_heads * d
        || v.elem_count() != k.elem_count()
    {
        bail!(
            "rope_store: q {:?}, k {:?} for {n} tokens of head size {d}",
            q.shape(),
            k.shape()
        );
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let out = Output::new(dev, q.elem_count())?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, (heads + kv_heads) as u32, 1),
        block_dim: ((d / 2) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        "rope_store",
        cfg,
        &[
            ptr::<f32>(&q)?,
            ptr::<f32>(&k)?,
            ptr::<f32>(&v)?,
            ptr::<f32>(cos)?,
            ptr::<f32>(sin)?,
            ptr::<u32>(&at.pos)?,
            ptr::<u32>(&at.row)?,
            ptr::<u32>(&at.slot)?,
            out.ptr,
            ptr::<f32>(cache.0)?,
            ptr::<f32>(cache.1)?,
        ],
        &[
            heads as i32,
            kv_heads as i32,
            d as i32,
            cap as i32,
            interleaved as i32,
        ],
        &[],
    )?;
    out.tensor(q.shape().clone())
}

/// The keys each packed query sees, as u32 device vectors: `keys` holds cache slots, and
/// `meta[3t..3t + 3]` is query t's (cache row, offset into `keys`, count).
pub struct QueryKeys {
    pub keys: Tensor,
    pub meta: Tensor,
}

/// Attention of every packed query `q` `[tokens, heads * d]` over its keys in the cache:
/// `[tokens, heads * d]`, and the same in the products' 8-bit form where `quantize` is set.
pub fn attend(
    q: &Tensor,
    cache: (&Tensor, &Tensor),
    plan: &QueryKeys,
    scale: f32,
    quantize: bool,
) -> Result<(Tensor, Option<Q8Rows>)> {
    let Device::Cuda(dev) = q.device() else {
        bail!("attend: not on a CUDA device");
    };
    let (_, kv_heads, cap, d) = cache.0.dims4()?;
    let n = plan.meta.elem_count() / 3;
    let heads = q.elem_count() / (n * d).max(1);
    if d > MAX_HEAD_DIM
        || !d.is_multiple_of(32)
        || heads * n * d != q.elem_count()
        || !heads.is_multiple_of(kv_heads)
    {
        bail!(
            "attend: q {:?} for {n} queries, head size {d}, {kv_heads} kv heads",
            q.shape()
        );
    }
    let q = q.contiguous()?;
    // Each run's (max, sum, output) between the two kernels.
    let part = Output::new(dev, n * heads * ATTENTION_SPLITS as usize * (d + 2))?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, heads as u32, ATTENTION_SPLITS),
        block_dim: (32 * ATTENTION_WARPS, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        &format!("attend_{d}"),
        cfg,
        &[
            ptr::<f32>(&q)?,
            ptr::<f32>(cache.0)?,
            ptr::<f32>(cache.1)?,
            ptr::<u32>(&plan.keys)?,
            ptr::<u32>(&plan.meta)?,
            part.ptr,
        ],
        &[heads as i32, kv_heads as i32, cap as i32],
        &[scale],
    )?;
    let out = Output::new(dev, q.elem_count())?;
    let (q8, xq, xd) = Q8Rows::alloc_if(quantize, dev, q.shape(), out.ptr)?;
    let cfg = LaunchConfig {
        grid_dim: (n as u32, heads as u32, 1),
        block_dim: (d as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        "attend_merge",
        cfg,
        &[part.ptr, out.ptr, xq, xd],
        &[heads as i32, d as i32, quantize as i32],
        &[],
    )?;
    Ok((out.tensor(q.shape().clone())?, q8))
}

/// `[rows, cols]` f32 values on the GPU (a step's logits) as one vector per row. The copy goes
/// through a page-locked buffer kept per device and grown as needed: candle's `to_vec2` copies
/// from pageable memory into a fresh allocation, whose page faults cost more than the step's
/// kernels at batch 64 with a 152k vocabulary.
pub fn read_rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let (rows, cols) = t.dims2()?;
    let Device::Cuda(dev) = t.device() else {
        bail!("read_rows: not on a CUDA device");
    };
    if t.dtype() != DType::F32 || rows * cols > MAX_STAGED {
        return t.to_dtype(DType::F32)?.to_vec2();
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("read_rows: not contiguous");
    };
    let Storage::Cuda(s) = &*storage else {
        bail!("read_rows: not on a CUDA device");
    };
    let view = s.as_cuda_slice::<f32>()?.slice(start..end);
    static STAGING: OnceLock<Mutex<HashMap<DeviceId, PinnedHostSlice<f32>>>> = OnceLock::new();
    let mut staging = STAGING
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("logits staging buffer poisoned".into()))?;
    let stream = dev.cuda_stream();
    let buf = match staging.entry(dev.id()) {
        Entry::Occupied(e) if e.get().len() >= end - start => e.into_mut(),
        entry => {
            // SAFETY: only the values the copy below writes are read.
            let fresh = unsafe {
                stream
                    .context()
                    .alloc_pinned_with_flags::<f32>((end - start).max(1 << 20), 0)
            }
            .map_err(candle_core::Error::wrap)?;
            match entry {
                Entry::Occupied(mut e) => {
                    e.insert(fresh);
                    e.into_mut()
                }
                Entry::Vacant(e) => e.insert(fresh),
            }
        }
    };
    // Into exactly the values read (a copy takes its length from the destination), then wait.
    let host = &mut buf.as_mut_slice().map_err(candle_core::Error::wrap)?[..end - start];
    stream
        .memcpy_dtoh(&view, host)
        .map_err(candle_core::Error::wrap)?;
    stream.synchronize().map_err(candle_core::Error::wrap)?;
    Ok(host
        .chunks_exact(cols.max(1))
        .map(<[f32]>::to_vec)
        .collect())
}

/// The index of each row's largest value of `[rows, cols]` f32 values on the GPU (a step's
/// logits): what greedy decoding needs of them, read back as `rows` integers instead of
/// `rows × cols` floats. The same index as [`crate::sampling::argmax`] of the row.
pub fn argmax_rows(t: &Tensor) -> Result<Vec<u32>> {
    let host = per_row::<i32>(t, "argmax_rows", ARGMAX_THREADS, 1, &[], &[])?;
    // Indices are in `0..cols`.
    Ok(host.into_iter().map(|i| i as u32).collect())
}

/// Threads per row of [`argmax_rows`] (`ARGMAX_THREADS` in the kernel file).
const ARGMAX_THREADS: u32 = 1024;

/// Each row's [`Head`] of `[rows, cols]` f32 values on the GPU (a step's logits), taken as
/// [`Head::of`] takes it on the host, or `None` where it would be too wide: what a top-k or
/// top-p draw needs, read back as at most [`HEAD_CAP`] (token, weight) pairs a row.
pub fn head_rows(t: &Tensor, params: &HeadParams) -> Result<Vec<Option<Head>>> {
    let words = 2 + 2 * HEAD_CAP;
    // More tokens than the vocabulary holds: no cut keeps them, as on the host.
    let min_tokens = params.min_tokens.min(i32::MAX as usize) as i32;
    let host = per_row::<u32>(
        t,
        "head_rows",
        HEAD_THREADS,
        words,
        &[min_tokens],
        &[params.min_mass, params.inv_temperature],
    )?;
    let heads = host
        .chunks_exact(words)
        .map(|row| {
            let n = row[0] as usize;
            (n <= HEAD_CAP).then(|| Head {
                weights: (0..n)
                    .map(|i| (row[2 + i], f32::from_bits(row[2 + HEAD_CAP + i])))
                    .collect(),
                total: f32::from_bits(row[1]),
            })
        })
        .collect();
    Ok(heads)
}

/// Threads per row of [`head_rows`] (`HEAD_THREADS` in the kernel file, which also has
/// [`HEAD_CAP`] and [`crate::sampling::HEAD_CUTS`]).
const HEAD_THREADS: u32 = 1024;

/// Runs `name`, a kernel of one block of `threads` per row of `[rows, cols]` f32 values on the
/// GPU (a step's logits) that writes `words` values a row, and reads back those `rows ×
/// words` values. The kernel's parameters are `(x, out, cols, ints.., floats..)`.
fn per_row<T: CudaDType + DeviceRepr>(
    t: &Tensor,
    name: &str,
    threads: u32,
    words: usize,
    ints: &[i32],
    floats: &[f32],
) -> Result<Vec<T>> {
    let (rows, cols) = t.dims2()?;
    let Device::Cuda(dev) = t.device() else {
        bail!("{name}: not on a CUDA device");
    };
    if t.dtype() != DType::F32 || cols == 0 || cols > i32::MAX as usize {
        bail!("{name}: {:?} {:?}", t.dtype(), t.shape());
    }
    let t = t.contiguous()?;
    let out = Buffer::<T>::new(dev, rows * words)?;
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let ints: Vec<i32> = std::iter::once(cols as i32)
        .chain(ints.iter().copied())
        .collect();
    launch(dev, name, cfg, &[ptr::<f32>(&t)?, out.ptr], &ints, floats)?;
    let stream = dev.cuda_stream();
    let mut host = stream
        .clone_dtoh(&out.slice)
        .map_err(candle_core::Error::wrap)?;
    stream.synchronize().map_err(candle_core::Error::wrap)?;
    // The buffer holds at least one value, even for no rows.
    host.truncate(rows * words);
    Ok(host)
}

/// Launches `name` with its pointer arguments first, then its integers, then its floats: the
/// order every kernel of the file declares.
///
/// On Hopper and later the launch lets the kernel start before the one ahead of it in the
/// stream has finished (programmatic dependent launch): its blocks become resident and fetch
/// their weights while the previous kernel runs, and wait for its results in
/// `inputs_ready` (see the kernel file). A decode step is a chain of a few hundred short
/// kernels, so the gap between two of them is a large share of the step.
/// `HONE_CUDA_OVERLAP=0` launches them one after the other instead (to measure the gain).
fn launch(
    dev: &CudaDevice,
    name: &str,
    cfg: LaunchConfig,
    ptrs: &[u64],
    ints: &[i32],
    floats: &[f32],
) -> Result<()> {
    let (func, overlap) = function(dev, name)?;
    let stream = dev.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(candle_core::Error::wrap)?;
    let mut params: Vec<*mut c_void> = Vec::with_capacity(ptrs.len() + ints.len() + floats.len());
    params.extend(ptrs.iter().map(|p| p as *const u64 as *mut c_void));
    params.extend(ints.iter().map(|i| i as *const i32 as *mut c_void));
    params.extend(floats.iter().map(|f| f as *const f32 as *mut c_void));
    let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    value.programmaticStreamSerializationAllowed = 1;
    let mut attr = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value,
    };
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: u32::from(overlap),
    };
    // SAFETY: `params` points at one live value per kernel parameter, matching the kernel's
    // declaration in number, order and type; every pointer among them addresses a live
    // allocation large enough for the shapes checked by the caller; `attr` outlives the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            func.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(candle_core::Error::wrap)?;
    Ok(())
}

/// The kernel `name` on `dev`, loaded once (a lookup costs a driver call, and a decode step
/// launches hundreds of kernels), and whether launches on `dev` may overlap (see [`launch`]).
fn function(dev: &CudaDevice, name: &str) -> Result<(CudaFunction, bool)> {
    struct Loaded {
        module: Arc<CudaModule>,
        overlap: bool,
        funcs: HashMap<String, CudaFunction>,
    }
    static LOADED: OnceLock<Mutex<HashMap<DeviceId, Loaded>>> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("cuda kernel table poisoned".into()))?;
    let entry = match loaded.entry(dev.id()) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let ctx = dev.cuda_stream().context().clone();
            let module = ctx
                .load_module(PTX.into())
                .map_err(candle_core::Error::wrap)?;
            let (major, _) = ctx.compute_capability().map_err(candle_core::Error::wrap)?;
            let wanted = std::env::var("HONE_CUDA_OVERLAP").map_or(true, |v| v != "0");
            e.insert(Loaded {
                module,
                overlap: major >= 9 && wanted,
                funcs: HashMap::new(),
            })
        }
    };
    if let Some(f) = entry.funcs.get(name) {
        return Ok((f.clone(), entry.overlap));
    }
    let f = entry
        .module
        .load_function(name)
        .map_err(candle_core::Error::wrap)?;
    entry.funcs.insert(name.to_string(), f.clone());
    Ok((f, entry.overlap))
}

/// The device address of a contiguous tensor's first element. The tensor must outlive the
/// launches that use it (candle frees device memory in stream order, so dropping it after the
/// launch is enough).
fn ptr<T: CudaDType>(t: &Tensor) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, _)) = layout.contiguous_offsets() else {
        bail!("cuda kernel input is not contiguous");
    };
    let Storage::Cuda(s) = &*storage else {
        bail!("cuda kernel input is not on a CUDA device");
    };
    let slice = s.as_cuda_slice::<T>()?;
    let stream = slice.stream().clone();
    let (base, _sync) = slice.device_ptr(&stream);
    Ok(base + (start * std::mem::size_of::<T>()) as u64)
}

/// A fresh device buffer that a kernel fills completely.
struct Buffer<T> {
    slice: CudaSlice<T>,
    ptr: u64,
    dev: CudaDevice,
}

/// Most kernels write f32.
type Output = Buffer<f32>;

impl<T: CudaDType + DeviceRepr> Buffer<T> {
    fn new(dev: &CudaDevice, len: usize) -> Result<Self> {
        // SAFETY: the kernel it is passed to writes every element before anything reads it.
        let slice = unsafe { dev.alloc::<T>(len.max(1)) }?;
        let stream = dev.cuda_stream();
        let ptr = slice.device_ptr(&stream).0;
        Ok(Self {
            slice,
            ptr,
            dev: dev.clone(),
        })
    }

    fn tensor(self, shape: Shape) -> Result<Tensor> {
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(self.slice, self.dev));
        Ok(Tensor::from_storage(
            storage,
            shape,
            BackpropOp::none(),
            false,
        ))
    }
}

/// RMS norm over the last dimension: `xs / sqrt(mean(xs²) + eps) * weight`, one block per row;
/// with `quantize`, also the result in the products' 8-bit form, from the same kernel.
pub fn rms_norm(
    xs: &Tensor,
    weight: &Tensor,
    eps: f32,
    quantize: bool,
) -> Result<(Tensor, Option<Q8Rows>)> {
    let Device::Cuda(dev) = xs.device() else {
        bail!("rms_norm: not on a CUDA device");
    };
    let d = weight.elem_count();
    if xs.dims().last() != Some(&d) || xs.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        bail!("rms_norm: input {:?} for a weight of {d}", xs.shape());
    }
    let xs = xs.contiguous()?;
    let rows = xs.elem_count() / d.max(1);
    let out = Output::new(dev, xs.elem_count())?;
    let (q8, xq, xd) = Q8Rows::alloc_if(quantize, dev, xs.shape(), out.ptr)?;
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (NORM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    launch(
        dev,
        "rms_norm",
        cfg,
        &[ptr::<f32>(&xs)?, ptr::<f32>(weight)?, out.ptr, xq, xd],
        &[d as i32, quantize as i32],
        &[eps],
    )?;
    Ok((out.tensor(xs.shape().clone())?, q8))
}
