//! The T5 encoder (T5-v1.1: RMS norms, unscaled attention with a bucketed relative position
//! bias from the first block, gated-GELU feed-forward) over [`Weights`], so that it builds
//! from dense tensors or from a GGUF file. Written here because candle-transformers' T5 builds
//! only from a dense VarBuilder, and its quantized T5 only from GGUF files that use
//! transformers' tensor names, while the T5 GGUF files FLUX users have use llama.cpp's
//! (`enc.blk.0.attn_q.weight`, `token_embd.weight`). Dense safetensors T5 weights keep using
//! candle-transformers' encoder; this one is checked against it.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::Init;

use crate::weights::{LinearWeight, Weights};

/// The encoder's sizes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct T5EncoderConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
}

/// How the tensors are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Names {
    /// transformers' `T5EncoderModel`: `shared.weight`, `encoder.block.{i}.layer.0.SelfAttention.q.weight`.
    Transformers,
    /// llama.cpp's GGUF names: `token_embd.weight`, `enc.blk.{i}.attn_q.weight`.
    LlamaCpp,
}

/// The parts of one block, named in both schemes.
#[derive(Clone, Copy)]
enum Part {
    Q,
    K,
    V,
    O,
    RelBias,
    AttnNorm,
    Gate,
    Up,
    Down,
    FfnNorm,
}

impl T5Names {
    fn embedding(self) -> &'static str {
        match self {
            T5Names::Transformers => "shared.weight",
            T5Names::LlamaCpp => "token_embd.weight",
        }
    }

    fn final_norm(self) -> &'static str {
        match self {
            T5Names::Transformers => "encoder.final_layer_norm.weight",
            T5Names::LlamaCpp => "enc.output_norm.weight",
        }
    }

    fn block(self, i: usize, p: Part) -> String {
        match self {
            T5Names::Transformers => {
                let tail = match p {
                    Part::Q => "layer.0.SelfAttention.q",
                    Part::K => "layer.0.SelfAttention.k",
                    Part::V => "layer.0.SelfAttention.v",
                    Part::O => "layer.0.SelfAttention.o",
                    Part::RelBias => "layer.0.SelfAttention.relative_attention_bias",
                    Part::AttnNorm => "layer.0.layer_norm",
                    Part::Gate => "layer.1.DenseReluDense.wi_0",
                    Part::Up => "layer.1.DenseReluDense.wi_1",
                    Part::Down => "layer.1.DenseReluDense.wo",
                    Part::FfnNorm => "layer.1.layer_norm",
                };
                format!("encoder.block.{i}.{tail}.weight")
            }
            T5Names::LlamaCpp => {
                let tail = match p {
                    Part::Q => "attn_q",
                    Part::K => "attn_k",
                    Part::V => "attn_v",
                    Part::O => "attn_o",
                    Part::RelBias => "attn_rel_b",
                    Part::AttnNorm => "attn_norm",
                    Part::Gate => "ffn_gate",
                    Part::Up => "ffn_up",
                    Part::Down => "ffn_down",
                    Part::FfnNorm => "ffn_norm",
                };
                format!("enc.blk.{i}.{tail}.weight")
            }
        }
    }
}

/// T5's RMS norm, computed in f32.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?
        .to_dtype(dt)?
        .broadcast_mul(w)
}

/// `x (…, in) → (…, out)` through a linear weight.
fn linear(w: &LinearWeight, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let inp = dims[dims.len() - 1];
    let rows = x.elem_count() / inp;
    let y = w.matmul_t(&x.reshape((rows, inp))?)?;
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = y.dim(1)?;
    y.reshape(out)
}

/// The bucket of relative position `rel` (key − query) in a bidirectional encoder: half the
/// buckets for each sign; exact below `num_buckets / 4`, logarithmic up to `max_distance`.
pub fn relative_bucket(rel: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let mut bucket = if rel > 0 { half } else { 0 };
    let n = rel.unsigned_abs() as usize;
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        let log = ((n as f64 / max_exact as f64).ln()
            / (max_distance as f64 / max_exact as f64).ln()
            * (half - max_exact) as f64) as usize;
        (max_exact + log).min(half - 1)
    };
    bucket
}

struct Block {
    q: LinearWeight,
    k: LinearWeight,
    v: LinearWeight,
    o: LinearWeight,
    attn_norm: Tensor,
    gate: LinearWeight,
    up: LinearWeight,
    down: LinearWeight,
    ffn_norm: Tensor,
}

pub struct T5Encoder {
    cfg: T5EncoderConfig,
    embedding: candle_nn::Embedding,
    rel_bias: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
}

impl T5Encoder {
    /// Build from `w`; every tensor's shape is checked against `cfg` and named if it differs.
    pub fn new(cfg: &T5EncoderConfig, names: T5Names, w: &Weights) -> Result<T5Encoder> {
        let (d, inner) = (cfg.d_model, cfg.num_heads * cfg.d_kv);
        let z = Init::Const(0.);
        let lin = |o, i, n: String| w.linear_weight(o, i, &n, z);
        let norm = |n: &str| w.get_with_hints(d, n, Init::Const(1.));
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let b = |p| names.block(i, p);
            blocks.push(Block {
                q: lin(inner, d, b(Part::Q))?,
                k: lin(inner, d, b(Part::K))?,
                v: lin(inner, d, b(Part::V))?,
                o: lin(d, inner, b(Part::O))?,
                attn_norm: norm(&b(Part::AttnNorm))?,
                gate: lin(cfg.d_ff, d, b(Part::Gate))?,
                up: lin(cfg.d_ff, d, b(Part::Up))?,
                down: lin(d, cfg.d_ff, b(Part::Down))?,
                ffn_norm: norm(&b(Part::FfnNorm))?,
            });
        }
        Ok(T5Encoder {
            embedding: candle_nn::Embedding::new(
                w.get_with_hints((cfg.vocab_size, d), names.embedding(), z)?,
                d,
            ),
            rel_bias: w.get_with_hints(
                (cfg.relative_attention_num_buckets, cfg.num_heads),
                &names.block(0, Part::RelBias),
                z,
            )?,
            final_norm: norm(names.final_norm())?,
            blocks,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &T5EncoderConfig {
        &self.cfg
    }

    /// The position bias (1, heads, L, L) every block adds to its attention scores.
    fn position_bias(&self, len: usize) -> Result<Tensor> {
        let c = &self.cfg;
        let buckets: Vec<u32> = (0..len)
            .flat_map(|q| {
                (0..len).map(move |k| {
                    relative_bucket(
                        k as i64 - q as i64,
                        c.relative_attention_num_buckets,
                        c.relative_attention_max_distance,
                    ) as u32
                })
            })
            .collect();
        let idx = Tensor::from_vec(buckets, len * len, self.rel_bias.device())?;
        self.rel_bias
            .index_select(&idx, 0)?
            .reshape((len, len, c.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }

    /// Token ids (B, L) → hidden states (B, L, d_model).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, l) = ids.dims2()?;
        let (h, dk) = (c.num_heads, c.d_kv);
        let mut x = self.embedding.forward(ids)?;
        let bias = self.position_bias(l)?.to_dtype(DType::F32)?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, h, dk))?.transpose(1, 2)?.contiguous()
        };
        for blk in &self.blocks {
            let n = rms_norm(&x, &blk.attn_norm, c.layer_norm_epsilon)?;
            let q = heads(linear(&blk.q, &n)?)?.to_dtype(DType::F32)?;
            let k = heads(linear(&blk.k, &n)?)?.to_dtype(DType::F32)?;
            let v = heads(linear(&blk.v, &n)?)?;
            // T5 does not scale the scores by 1/√d_kv (its initialisation accounts for it).
            let s = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let p = candle_nn::ops::softmax_last_dim(&s)?.to_dtype(v.dtype())?;
            let a = p.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h * dk))?;
            x = (x + linear(&blk.o, &a)?)?;
            let n = rms_norm(&x, &blk.ffn_norm, c.layer_norm_epsilon)?;
            let g = candle_nn::Activation::NewGelu.forward(&linear(&blk.gate, &n)?)?;
            let f = (g * linear(&blk.up, &n)?)?;
            x = (x + linear(&blk.down, &f)?)?;
        }
        rms_norm(&x, &self.final_norm, c.layer_norm_epsilon)
    }
}

/// transformers' name of a T5 encoder tensor → llama.cpp's, as GGUF conversions of T5
/// encoders name them (`encoder.block.3.layer.1.DenseReluDense.wi_0.weight` →
/// `enc.blk.3.ffn_gate.weight`).
pub fn llama_cpp_name(name: &str) -> String {
    let n = name
        .replace("encoder.final_layer_norm", "enc.output_norm")
        .replace("encoder.block.", "enc.blk.")
        .replace("shared.weight", "token_embd.weight");
    [
        (
            "layer.0.SelfAttention.relative_attention_bias",
            "attn_rel_b",
        ),
        ("layer.0.SelfAttention.q", "attn_q"),
        ("layer.0.SelfAttention.k", "attn_k"),
        ("layer.0.SelfAttention.v", "attn_v"),
        ("layer.0.SelfAttention.o", "attn_o"),
        ("layer.0.layer_norm", "attn_norm"),
        ("layer.1.DenseReluDense.wi_0", "ffn_gate"),
        ("layer.1.DenseReluDense.wi_1", "ffn_up"),
        ("layer.1.DenseReluDense.wo", "ffn_down"),
        ("layer.1.layer_norm", "ffn_norm"),
    ]
    .iter()
    .fold(n, |n, (a, b)| n.replace(a, b))
}

/// Write a T5 encoder's tensors (transformers' names) as a GGUF file with llama.cpp's names,
/// linear weights stored as `q` where their rows split into blocks (as [`crate::gguf`]
/// decides), and `cfg` in the metadata.
pub fn write_gguf(
    path: &std::path::Path,
    tensors: &std::collections::HashMap<String, Tensor>,
    q: candle_core::quantized::GgmlDType,
    cfg: Option<&T5EncoderConfig>,
) -> crate::error::Result<()> {
    let mut out = tensors
        .iter()
        .map(|(k, v)| {
            let n = llama_cpp_name(k);
            Ok((n.clone(), crate::gguf::quantize(&n, v, q)?))
        })
        .collect::<crate::error::Result<Vec<_>>>()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let json = cfg
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| crate::error::ModelError::Config(e.to_string()))?;
    let meta: Vec<(&str, &str)> = json
        .as_deref()
        .map(|j| vec![(GGUF_T5_CONFIG_KEY, j)])
        .unwrap_or_default();
    crate::gguf::write(path, &out, &meta)
}

/// The GGUF metadata key under which `sprout` writes a T5 file's config (other files get
/// their sizes from the tensor shapes, with T5's relative max distance 128 and ε 1e-6).
pub const GGUF_T5_CONFIG_KEY: &str = "sprout.t5_config";

fn gguf_err(path: &std::path::Path, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {e}", path.display()))
}

/// A T5 encoder from a GGUF file with llama.cpp's or transformers' tensor names: linear
/// weights stay quantized, the embedding table and norms are dequantized to `dtype`.
pub fn load_gguf(
    path: &std::path::Path,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<T5Encoder> {
    let content =
        crate::gguf::read_content(path).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let shape = |n: &str| content.tensor_infos.get(n).map(|t| t.shape.dims().to_vec());
    let names = if shape("token_embd.weight").is_some() {
        T5Names::LlamaCpp
    } else if shape("shared.weight").is_some() {
        T5Names::Transformers
    } else {
        return Err(gguf_err(
            path,
            "not a T5 encoder (neither token_embd.weight nor shared.weight)",
        ));
    };
    let cfg = match content.metadata.get(GGUF_T5_CONFIG_KEY) {
        Some(v) => {
            let s = v.to_string().map_err(|e| gguf_err(path, e))?;
            serde_json::from_str(s)
                .map_err(|e| gguf_err(path, format!("{GGUF_T5_CONFIG_KEY}: {e}")))?
        }
        None => {
            let need =
                |n: String| shape(&n).ok_or_else(|| gguf_err(path, format!("no tensor {n}")));
            let emb = need(names.embedding().to_string())?;
            let rel = need(names.block(0, Part::RelBias))?;
            let q = need(names.block(0, Part::Q))?;
            let gate = need(names.block(0, Part::Gate))?;
            let num_layers = (0..)
                .take_while(|&i| shape(&names.block(i, Part::Q)).is_some())
                .count();
            if emb.len() != 2 || rel.len() != 2 || q.len() != 2 || gate.len() != 2 {
                return Err(gguf_err(path, "T5 tensors are not matrices"));
            }
            T5EncoderConfig {
                vocab_size: emb[0],
                d_model: emb[1],
                d_kv: q[0] / rel[1].max(1),
                d_ff: gate[0],
                num_layers,
                num_heads: rel[1],
                relative_attention_num_buckets: rel[0],
                relative_attention_max_distance: 128,
                layer_norm_epsilon: 1e-6,
            }
        }
    };
    let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(path, device)
        .map_err(|e| gguf_err(path, e))?;
    T5Encoder::new(&cfg, names, &Weights::Quantized { vb, dtype }).map_err(|e| gguf_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_between_the_schemes() {
        for i in [0, 23] {
            for p in [
                Part::Q,
                Part::K,
                Part::V,
                Part::O,
                Part::RelBias,
                Part::AttnNorm,
                Part::Gate,
                Part::Up,
                Part::Down,
                Part::FfnNorm,
            ] {
                let hf = T5Names::Transformers.block(i, p);
                assert_eq!(llama_cpp_name(&hf), T5Names::LlamaCpp.block(i, p));
            }
        }
        for (a, b) in [
            (
                T5Names::Transformers.embedding(),
                T5Names::LlamaCpp.embedding(),
            ),
            (
                T5Names::Transformers.final_norm(),
                T5Names::LlamaCpp.final_norm(),
            ),
        ] {
            assert_eq!(llama_cpp_name(a), b);
        }
    }

    #[test]
    fn buckets_by_hand() {
        // 32 buckets, max distance 128 (T5's): exact up to 7 each way, then logarithmic,
        // keys after the query in the upper half.
        let b = |r| relative_bucket(r, 32, 128);
        assert_eq!((b(0), b(-1), b(-7), b(1), b(7)), (0, 1, 7, 17, 23));
        // n = 8 → 8 + ⌊ln(1)/ln(16)·8⌋ = 8; n = 32 → 8 + ⌊ln 4/ln 16·8⌋ = 12.
        assert_eq!((b(-8), b(-32), b(32)), (8, 12, 28));
        // Beyond the max distance: the last bucket of each half.
        assert_eq!((b(-1000), b(1000)), (15, 31));
    }
}
