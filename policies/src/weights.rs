//! Reading weights by their GGUF names, from a GGUF file or an HF safetensors checkpoint.
//!
//! The transformer body asks for tensors by llama.cpp's names (`blk.3.attn_q.weight`); HF
//! checkpoints are mapped onto those names here, so the model code has one vocabulary.

use crate::cpu_matmul::QuantMatrix;
#[cfg(feature = "cuda")]
use crate::cuda::{GpuMatrix, Q8Rows};
use crate::error::{PolicyError, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A linear layer: quantized or dense weights, optional bias.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Matrix,
    bias: Option<Tensor>,
}

/// A linear layer's weights: quantized types go through hone's row-invariant products, on the
/// CPU ([`QuantMatrix`]) and on CUDA ([`GpuMatrix`]); everything else through candle's.
#[derive(Debug, Clone)]
enum Matrix {
    Quant(QuantMatrix),
    #[cfg(feature = "cuda")]
    Gpu(GpuMatrix),
    Candle(QMatMul),
}

impl Matrix {
    fn quantized(q: Arc<QTensor>) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if q.device().is_cuda() {
            let (rows, cols) = q.shape().dims2()?;
            if let Some(m) = GpuMatrix::upload(q.dtype(), rows, cols, &q.data()?, &q.device())? {
                return Ok(Self::Gpu(m));
            }
        }
        let q = for_cpu_matmul(q)?;
        Ok(match QuantMatrix::from_qtensor(&q)? {
            Some(m) => Self::Quant(m),
            None => Self::Candle(QMatMul::from_arc(q)?),
        })
    }
}

/// The input rows of one or more products, `[..., k]`. hone's CUDA kernels read them in an
/// 8-bit form ([`Q8Rows`]), made once here and shared by every product of the same rows (q, k
/// and v; gate and up), or handed over by the kernel that wrote the rows (RMS norm, attention).
#[derive(Debug)]
pub struct Rows {
    xs: Tensor,
    #[cfg(feature = "cuda")]
    q8: std::cell::OnceCell<Q8Rows>,
}

impl Rows {
    pub fn new(xs: Tensor) -> Self {
        Self {
            xs,
            #[cfg(feature = "cuda")]
            q8: Default::default(),
        }
    }

    /// Rows whose 8-bit form a kernel already wrote.
    #[cfg(feature = "cuda")]
    pub fn with_q8(xs: Tensor, q8: Option<Q8Rows>) -> Self {
        Self {
            xs,
            q8: q8.map(std::cell::OnceCell::from).unwrap_or_default(),
        }
    }

    pub fn tensor(&self) -> &Tensor {
        &self.xs
    }

    pub fn into_tensor(self) -> Tensor {
        self.xs
    }

    #[cfg(feature = "cuda")]
    pub fn q8(&self) -> candle_core::Result<&Q8Rows> {
        if let Some(q8) = self.q8.get() {
            return Ok(q8);
        }
        let q8 = crate::cuda::quantize(&self.xs)?;
        Ok(self.q8.get_or_init(|| q8))
    }

    /// `ys` `[n, m]`, computed from these rows, in their shape: `[..., m]`.
    #[cfg(feature = "cuda")]
    pub fn shaped(&self, ys: Tensor) -> candle_core::Result<Tensor> {
        let mut dims = self.xs.dims().to_vec();
        if let (Some(last), Some(m)) = (dims.last_mut(), ys.dims().last()) {
            *last = *m;
        }
        ys.reshape(dims)
    }
}

impl Linear {
    pub fn forward(&self, xs: &Rows) -> candle_core::Result<Tensor> {
        let ys = match &self.weight {
            Matrix::Quant(m) => m.forward(xs.tensor())?,
            #[cfg(feature = "cuda")]
            Matrix::Gpu(m) => return xs.shaped(m.forward(xs.q8()?, self.bias.as_ref(), None)?),
            Matrix::Candle(m) => m.forward(xs.tensor())?,
        };
        match &self.bias {
            Some(b) => ys.broadcast_add(b),
            None => Ok(ys),
        }
    }

    /// `residual + self.forward(xs)`, in one kernel where there is one.
    pub fn forward_add(&self, xs: &Rows, residual: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Matrix::Gpu(m) = &self.weight {
            return xs.shaped(m.forward(xs.q8()?, self.bias.as_ref(), Some(residual))?);
        }
        residual + self.forward(xs)?
    }

    /// `xs` through three layers that read it (a layer's q, k and v): on CUDA in one launch
    /// where their matrices fuse ([`crate::cuda::forward3`]).
    pub fn forward3(layers: [&Linear; 3], xs: &Rows) -> candle_core::Result<[Tensor; 3]> {
        #[cfg(feature = "cuda")]
        if let [Matrix::Gpu(a), Matrix::Gpu(b), Matrix::Gpu(c)] = layers.map(|l| &l.weight) {
            let biases = layers.map(|l| l.bias.is_some());
            if a.fuses_with(b) && a.fuses_with(c) && biases.iter().all(|&x| x == biases[0]) {
                let ys = crate::cuda::forward3(
                    [
                        (a, layers[0].bias.as_ref()),
                        (b, layers[1].bias.as_ref()),
                        (c, layers[2].bias.as_ref()),
                    ],
                    xs.q8()?,
                )?;
                let [q, k, v] = ys;
                return Ok([xs.shaped(q)?, xs.shaped(k)?, xs.shaped(v)?]);
            }
        }
        Self::forward_each(layers, xs)
    }

    /// `xs` through layers that read it: on the CPU, where their matrices share a type, in one
    /// pass over the worker pool ([`QuantMatrix::forward_each`]).
    pub fn forward_each<const N: usize>(
        layers: [&Linear; N],
        xs: &Rows,
    ) -> candle_core::Result<[Tensor; N]> {
        let quant: Option<Vec<&QuantMatrix>> = layers
            .iter()
            .map(|l| match &l.weight {
                Matrix::Quant(m) => Some(m),
                _ => None,
            })
            .collect();
        let ys = match quant {
            Some(mats) => QuantMatrix::forward_each(&mats, xs.tensor())?
                .into_iter()
                .zip(layers)
                .map(|(y, l)| match &l.bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                })
                .collect::<candle_core::Result<Vec<_>>>()?,
            None => layers
                .iter()
                .map(|l| l.forward(xs))
                .collect::<candle_core::Result<Vec<_>>>()?,
        };
        ys.try_into()
            .map_err(|_| candle_core::Error::Msg("linear: a layer gave no result".into()))
    }

    /// Whether the product computes each row the same way whatever else the call holds:
    /// true for hone's own kernels, false for candle's (dense weights, or a quantized type
    /// hone has no kernel for on this device).
    pub fn row_invariant(&self) -> bool {
        !matches!(self.weight, Matrix::Candle(_))
    }

    /// The GPU matrix, for kernels that take two layers at once.
    #[cfg(feature = "cuda")]
    pub fn gpu(&self) -> Option<&GpuMatrix> {
        match &self.weight {
            Matrix::Gpu(m) if self.bias.is_none() => Some(m),
            _ => None,
        }
    }
}

/// The token embedding table, kept quantized when the file is (Gemma's is 262k rows).
#[derive(Debug, Clone)]
pub enum Embedding {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Quantized(q) => q.embedding(ids),
            Self::Dense(w) => {
                let (b, t) = ids.dims2()?;
                w.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, ()))
            }
        }
    }

    /// The same table used as the output projection (tied embeddings).
    pub fn as_linear(&self) -> Result<Linear> {
        let weight = match self {
            Self::Quantized(q) => Matrix::quantized(q.clone())?,
            Self::Dense(w) => Matrix::Candle(QMatMul::Tensor(w.clone())),
        };
        Ok(Linear { weight, bias: None })
    }
}

/// Where weights come from.
pub enum Weights {
    Gguf {
        path: PathBuf,
        file: File,
        content: gguf_file::Content,
        device: Device,
    },
    Safetensors {
        tensors: HashMap<String, Tensor>,
        device: Device,
    },
}

impl Weights {
    pub fn device(&self) -> &Device {
        match self {
            Self::Gguf { device, .. } | Self::Safetensors { device, .. } => device,
        }
    }

    /// Loads every `*.safetensors` file of a checkpoint folder as f32 on `device`.
    pub fn from_safetensors(files: &[PathBuf], device: &Device) -> Result<Self> {
        let mut tensors = HashMap::new();
        for file in files {
            let loaded =
                candle_core::safetensors::load(file, device).map_err(|e| PolicyError::Corrupt {
                    path: file.clone(),
                    reason: e.to_string(),
                })?;
            for (name, t) in loaded {
                tensors.insert(hf_to_gguf_name(&name), t.to_dtype(DType::F32)?);
            }
        }
        Ok(Self::Safetensors {
            tensors,
            device: device.clone(),
        })
    }

    pub fn has(&self, name: &str) -> bool {
        match self {
            Self::Gguf { content, .. } => content.tensor_infos.contains_key(name),
            Self::Safetensors { tensors, .. } => tensors.contains_key(name),
        }
    }

    fn qtensor(&mut self, name: &str) -> Result<Arc<QTensor>> {
        match self {
            Self::Gguf {
                path,
                file,
                content,
                device,
            } => {
                let t = content
                    .tensor(file, name, device)
                    .map_err(|e| PolicyError::Corrupt {
                        path: path.clone(),
                        reason: format!("tensor `{name}`: {e}"),
                    })?;
                Ok(Arc::new(t))
            }
            Self::Safetensors { .. } => Err(PolicyError::MissingMetadata(name.to_string())),
        }
    }

    /// A dense f32 tensor (norm weights, biases).
    pub fn dense(&mut self, name: &str) -> Result<Tensor> {
        match self {
            Self::Gguf { device, .. } => {
                let device = device.clone();
                Ok(self.qtensor(name)?.dequantize(&device)?)
            }
            Self::Safetensors { tensors, .. } => tensors
                .get(name)
                .cloned()
                .ok_or_else(|| PolicyError::MissingMetadata(format!("tensor `{name}`"))),
        }
    }

    pub fn linear(&mut self, name: &str, with_bias: bool) -> Result<Linear> {
        let weight = match self {
            Self::Gguf { .. } => Matrix::quantized(self.qtensor(&format!("{name}.weight"))?)?,
            Self::Safetensors { .. } => {
                Matrix::Candle(QMatMul::Tensor(self.dense(&format!("{name}.weight"))?))
            }
        };
        let bias = if with_bias {
            Some(self.dense(&format!("{name}.bias"))?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    pub fn embedding(&mut self, name: &str) -> Result<Embedding> {
        match self {
            Self::Gguf { .. } => Ok(Embedding::Quantized(self.qtensor(name)?)),
            Self::Safetensors { .. } => Ok(Embedding::Dense(self.dense(name)?)),
        }
    }
}

/// hone's CPU kernels cover the types our models use (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K,
/// Q6_K). Other quantized types (Q2_K, Q3_K, Q5_1, ...) are re-quantized to Q8_0 once, at
/// load, so that every quantized product on the CPU goes through them: the 8-bit grid is finer
/// than the original one, so the extra error is a fraction of the original quantization error.
fn for_cpu_matmul(q: Arc<QTensor>) -> Result<Arc<QTensor>> {
    if QuantMatrix::has_kernel(q.dtype()) || !q.device().is_cpu() {
        return Ok(q);
    }
    let dense = q.dequantize(&Device::Cpu)?;
    Ok(Arc::new(QTensor::quantize(&dense, GgmlDType::Q8_0)?))
}

/// Opens a GGUF file and reads its header.
pub fn open_gguf(path: &Path, device: &Device) -> Result<Weights> {
    if !path.exists() {
        return Err(PolicyError::NotFound(path.to_path_buf()));
    }
    let mut file = File::open(path)?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| PolicyError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Weights::Gguf {
        path: path.to_path_buf(),
        file,
        content,
        device: device.clone(),
    })
}

/// Maps an HF Llama/Qwen2/Qwen3/Gemma3 tensor name onto llama.cpp's name for it.
fn hf_to_gguf_name(name: &str) -> String {
    let name = name.strip_prefix("model.").unwrap_or(name);
    match name {
        "embed_tokens.weight" => return "token_embd.weight".into(),
        "norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let Some(rest) = name.strip_prefix("layers.") else {
        return name.to_string();
    };
    let Some((layer, part)) = rest.split_once('.') else {
        return name.to_string();
    };
    let part = match part {
        p if p.starts_with("self_attn.q_proj.") => p.replacen("self_attn.q_proj", "attn_q", 1),
        p if p.starts_with("self_attn.k_proj.") => p.replacen("self_attn.k_proj", "attn_k", 1),
        p if p.starts_with("self_attn.v_proj.") => p.replacen("self_attn.v_proj", "attn_v", 1),
        p if p.starts_with("self_attn.o_proj.") => p.replacen("self_attn.o_proj", "attn_output", 1),
        "self_attn.q_norm.weight" => "attn_q_norm.weight".into(),
        "self_attn.k_norm.weight" => "attn_k_norm.weight".into(),
        p if p.starts_with("mlp.gate_proj.") => p.replacen("mlp.gate_proj", "ffn_gate", 1),
        p if p.starts_with("mlp.up_proj.") => p.replacen("mlp.up_proj", "ffn_up", 1),
        p if p.starts_with("mlp.down_proj.") => p.replacen("mlp.down_proj", "ffn_down", 1),
        "input_layernorm.weight" => "attn_norm.weight".into(),
        "post_attention_layernorm.weight" => "ffn_norm.weight".into(),
        other => other.to_string(),
    };
    format!("blk.{layer}.{part}")
}
