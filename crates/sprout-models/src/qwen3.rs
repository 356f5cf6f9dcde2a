//! Qwen3 as a text encoder (FLUX.2 [klein]'s conditioning): the decoder-only stack run over a
//! padded prompt, returning the hidden states of chosen layers stacked per token, as
//! diffusers' `Flux2KleinPipeline` takes them (`output_hidden_states`, layers 9, 18, 27).
//!
//! Written here rather than taken from candle-transformers because its `qwen3::Model`
//! returns only the final, normed state and attends causally with no padding mask, while
//! FLUX.2 needs the states of inner layers and the padded positions' states as transformers
//! computes them (a padded query attends to the prompt's tokens only): every one of the 512
//! positions is part of the transformer's conditioning. Only the layers up to the last tapped
//! one are loaded. Builds from dense tensors or GGUF (llama.cpp's names) through [`Weights`].

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::Init;

use crate::weights::{LinearWeight, Weights};

/// The stack's sizes (transformers' `Qwen3Config`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub attention_bias: bool,
}

fn bad(e: impl std::fmt::Display) -> crate::ModelError {
    crate::ModelError::Config(e.to_string())
}

impl Qwen3Config {
    /// From transformers' `config.json` of a Qwen3 model. Fields that change what the stack
    /// computes and that this encoder does not implement (another activation, rope scaling,
    /// sliding windows) are refused by name.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Qwen3Config, crate::ModelError> {
        let n = |k: &str| {
            v[k].as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("text encoder config.json lacks {k}")))
        };
        if let Some(a) = v["hidden_act"].as_str().filter(|a| *a != "silu") {
            return Err(bad(format!(
                "text encoder config.json: hidden_act = {a} is not supported (Qwen3 uses silu)"
            )));
        }
        let rope_type = v["rope_scaling"]["rope_type"]
            .as_str()
            .or(v["rope_parameters"]["rope_type"].as_str());
        if let Some(t) = rope_type.filter(|t| *t != "default") {
            return Err(bad(format!(
                "text encoder config.json: rope scaling {t} is not supported"
            )));
        }
        if v["use_sliding_window"].as_bool() == Some(true) {
            return Err(bad(
                "text encoder config.json: use_sliding_window = true is not supported",
            ));
        }
        if let Some(mt) = v["model_type"].as_str().filter(|m| *m != "qwen3") {
            return Err(bad(format!(
                "text encoder config.json: model_type = {mt}, expected qwen3"
            )));
        }
        let heads = n("num_attention_heads")?;
        let hidden = n("hidden_size")?;
        let theta = v["rope_theta"]
            .as_f64()
            .or(v["rope_parameters"]["rope_theta"].as_f64())
            .unwrap_or(1_000_000.0);
        Ok(Qwen3Config {
            vocab_size: n("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: n("intermediate_size")?,
            num_hidden_layers: n("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: v["num_key_value_heads"]
                .as_u64()
                .map_or(heads, |x| x as usize),
            head_dim: v["head_dim"]
                .as_u64()
                .map_or(hidden / heads, |x| x as usize),
            rope_theta: theta,
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            attention_bias: v["attention_bias"].as_bool().unwrap_or(false),
        })
    }

    /// From the tensors of a weight file given without its `config.json` (transformers'
    /// names, with or without the `model.` prefix): the sizes from the shapes — vocabulary
    /// and width from the embedding, head width from the query norm, heads and key-value
    /// heads from the projections, the MLP from its gate, the depth from the layer count —
    /// and Qwen3's own rotary base (10⁶) and norm epsilon (10⁻⁶), which no shape carries.
    pub fn from_tensors(
        infos: &[crate::flux::inspect::TensorInfo],
    ) -> std::result::Result<Qwen3Config, crate::ModelError> {
        let find = |name: &str| {
            infos
                .iter()
                .find(|t| t.name == name || t.name.strip_prefix("model.") == Some(name))
        };
        let shape = |name: &str| {
            find(name).map(|t| t.shape.clone()).ok_or_else(|| {
                bad(format!(
                    "no tensor {name} (nor model.{name}): not a Qwen3 text encoder"
                ))
            })
        };
        let emb = shape("embed_tokens.weight")?;
        let rows =
            |name: &str| -> std::result::Result<usize, crate::ModelError> { Ok(shape(name)?[0]) };
        let head_dim = rows("layers.0.self_attn.q_norm.weight")?;
        let layers = infos
            .iter()
            .filter_map(|t| {
                let n = t.name.strip_prefix("model.").unwrap_or(&t.name);
                n.strip_prefix("layers.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |i| i + 1);
        if emb.len() != 2 || head_dim == 0 || layers == 0 {
            return Err(bad(format!(
                "text encoder: embedding {emb:?}, head width {head_dim}, {layers} layers: not a Qwen3 stack"
            )));
        }
        Ok(Qwen3Config {
            vocab_size: emb[0],
            hidden_size: emb[1],
            intermediate_size: rows("layers.0.mlp.gate_proj.weight")?,
            num_hidden_layers: layers,
            num_attention_heads: rows("layers.0.self_attn.q_proj.weight")? / head_dim,
            num_key_value_heads: rows("layers.0.self_attn.k_proj.weight")? / head_dim,
            head_dim,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            attention_bias: find("layers.0.self_attn.q_proj.bias").is_some(),
        })
    }

    /// Qwen3-4B (FLUX.2 [klein] 4B's encoder).
    pub fn qwen3_4b() -> Qwen3Config {
        Qwen3Config {
            vocab_size: 151_936,
            hidden_size: 2560,
            intermediate_size: 9728,
            num_hidden_layers: 36,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            attention_bias: false,
        }
    }

    /// Qwen3-8B (FLUX.2 [klein] 9B's encoder).
    pub fn qwen3_8b() -> Qwen3Config {
        Qwen3Config {
            hidden_size: 4096,
            intermediate_size: 12_288,
            ..Qwen3Config::qwen3_4b()
        }
    }
}

/// How the tensors are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qwen3Names {
    /// transformers' `Qwen3ForCausalLM`: `model.layers.{i}.self_attn.q_proj.weight`.
    Transformers,
    /// llama.cpp's GGUF names: `blk.{i}.attn_q.weight`, `token_embd.weight`.
    LlamaCpp,
}

#[derive(Clone, Copy)]
enum Part {
    Q,
    K,
    V,
    O,
    QNorm,
    KNorm,
    AttnNorm,
    FfnNorm,
    Gate,
    Up,
    Down,
}

impl Qwen3Names {
    fn embedding(self) -> &'static str {
        match self {
            Qwen3Names::Transformers => "model.embed_tokens.weight",
            Qwen3Names::LlamaCpp => "token_embd.weight",
        }
    }

    fn final_norm(self) -> &'static str {
        match self {
            Qwen3Names::Transformers => "model.norm.weight",
            Qwen3Names::LlamaCpp => "output_norm.weight",
        }
    }

    /// The module path of `p` in layer `i`; `param` is "weight" or "bias".
    fn layer(self, i: usize, p: Part, param: &str) -> String {
        match self {
            Qwen3Names::Transformers => {
                let tail = match p {
                    Part::Q => "self_attn.q_proj",
                    Part::K => "self_attn.k_proj",
                    Part::V => "self_attn.v_proj",
                    Part::O => "self_attn.o_proj",
                    Part::QNorm => "self_attn.q_norm",
                    Part::KNorm => "self_attn.k_norm",
                    Part::AttnNorm => "input_layernorm",
                    Part::FfnNorm => "post_attention_layernorm",
                    Part::Gate => "mlp.gate_proj",
                    Part::Up => "mlp.up_proj",
                    Part::Down => "mlp.down_proj",
                };
                format!("model.layers.{i}.{tail}.{param}")
            }
            Qwen3Names::LlamaCpp => {
                let tail = match p {
                    Part::Q => "attn_q",
                    Part::K => "attn_k",
                    Part::V => "attn_v",
                    Part::O => "attn_output",
                    Part::QNorm => "attn_q_norm",
                    Part::KNorm => "attn_k_norm",
                    Part::AttnNorm => "attn_norm",
                    Part::FfnNorm => "ffn_norm",
                    Part::Gate => "ffn_gate",
                    Part::Up => "ffn_up",
                    Part::Down => "ffn_down",
                };
                format!("blk.{i}.{tail}.{param}")
            }
        }
    }
}

struct Proj {
    w: LinearWeight,
    b: Option<Tensor>,
}

impl Proj {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, inp) = x.dims3()?;
        let y = self
            .w
            .matmul_t_bias(&x.reshape((b * l, inp))?, self.b.as_ref())?;
        let out = y.dim(1)?;
        y.reshape((b, l, out))
    }
}

struct Layer {
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    q_norm: Tensor,
    k_norm: Tensor,
    attn_norm: Tensor,
    ffn_norm: Tensor,
    gate: Proj,
    up: Proj,
    down: Proj,
}

/// Qwen3's RMS norm over the last dimension, computed in f32 (as transformers does).
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dt = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?
        .to_dtype(dt)?
        .broadcast_mul(w)
}

pub struct Qwen3Encoder {
    cfg: Qwen3Config,
    embedding: candle_nn::Embedding,
    layers: Vec<Layer>,
    /// Present when the last layer itself is tapped (its state is the normed output).
    final_norm: Option<Tensor>,
    taps: Vec<usize>,
}

impl Qwen3Encoder {
    /// Build the layers that `taps` need from `w` (every tensor's shape checked against
    /// `cfg` and named if it differs). A tap `k` is transformers' `hidden_states[k]`: the
    /// output of the first `k` layers (`k = num_hidden_layers` is the normed final state).
    pub fn new(
        cfg: &Qwen3Config,
        names: Qwen3Names,
        taps: &[usize],
        w: &Weights,
    ) -> std::result::Result<Qwen3Encoder, crate::ModelError> {
        let last = *taps
            .iter()
            .max()
            .ok_or_else(|| bad("no hidden-state layers to tap"))?;
        if last > cfg.num_hidden_layers || taps.contains(&0) {
            return Err(bad(format!(
                "tapped layers {taps:?} must lie in 1..={} (the encoder's layers)",
                cfg.num_hidden_layers
            )));
        }
        let d = cfg.hidden_size;
        let (hq, hk) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        let z = Init::Const(0.);
        let proj = |o: usize, i: usize, l: usize, p: Part, bias: bool| -> Result<Proj> {
            Ok(Proj {
                w: w.linear_weight(o, i, &names.layer(l, p, "weight"), z)?,
                b: if bias {
                    Some(w.get_with_hints(o, &names.layer(l, p, "bias"), z)?)
                } else {
                    None
                },
            })
        };
        let norm = |n: usize, name: String| w.get_with_hints(n, &name, Init::Const(1.));
        let ab = cfg.attention_bias;
        let mut layers = Vec::with_capacity(last);
        for l in 0..last {
            layers.push(Layer {
                q: proj(hq, d, l, Part::Q, ab)?,
                k: proj(hk, d, l, Part::K, ab)?,
                v: proj(hk, d, l, Part::V, ab)?,
                o: proj(d, hq, l, Part::O, ab)?,
                q_norm: norm(cfg.head_dim, names.layer(l, Part::QNorm, "weight"))?,
                k_norm: norm(cfg.head_dim, names.layer(l, Part::KNorm, "weight"))?,
                attn_norm: norm(d, names.layer(l, Part::AttnNorm, "weight"))?,
                ffn_norm: norm(d, names.layer(l, Part::FfnNorm, "weight"))?,
                gate: proj(cfg.intermediate_size, d, l, Part::Gate, false)?,
                up: proj(cfg.intermediate_size, d, l, Part::Up, false)?,
                down: proj(d, cfg.intermediate_size, l, Part::Down, false)?,
            });
        }
        let final_norm = if last == cfg.num_hidden_layers {
            Some(norm(d, names.final_norm().into())?)
        } else {
            None
        };
        Ok(Qwen3Encoder {
            embedding: candle_nn::Embedding::new(
                w.get_with_hints((cfg.vocab_size, d), names.embedding(), z)?,
                d,
            ),
            layers,
            final_norm,
            taps: taps.to_vec(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.cfg
    }

    /// Width of one token's output: the tapped states side by side.
    pub fn out_dim(&self) -> usize {
        self.taps.len() * self.cfg.hidden_size
    }

    /// Token ids (B, L) and their attention mask (B, L; 1 for the prompt's tokens, 0 for
    /// padding) → (B, L, taps · hidden): for each token the tapped states in tap order, as
    /// diffusers stacks them (`stack(dim=1)`, then `(B, L, taps · hidden)`).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let dev = ids.device();
        let dt = self.embedding.embeddings().dtype();
        let mut h = candle_core::Module::forward(&self.embedding, ids)?;
        let bias = attention_bias(mask, l, dt, dev)?;
        let (cos, sin) = self.rope_tables(l, dt, dev)?;
        let mut taps: Vec<Option<Tensor>> = vec![None; self.taps.len()];
        for (i, layer) in self.layers.iter().enumerate() {
            h = self.layer_forward(layer, &h, &bias, &cos, &sin)?;
            let k = i + 1;
            for (slot, &t) in taps.iter_mut().zip(&self.taps) {
                if t == k {
                    *slot = Some(match (&self.final_norm, k == self.cfg.num_hidden_layers) {
                        (Some(n), true) => rms_norm(&h, n, self.cfg.rms_norm_eps)?,
                        _ => h.clone(),
                    });
                }
            }
        }
        let taps = taps
            .into_iter()
            .map(|t| t.ok_or_else(|| candle_core::Error::Msg("a tapped layer was not run".into())))
            .collect::<Result<Vec<_>>>()?;
        let out = Tensor::cat(&taps, D::Minus1)?;
        debug_assert_eq!(out.dims(), &[b, l, self.out_dim()]);
        Ok(out)
    }

    /// Rotary tables (L, head_dim / 2) for positions 0..L (transformers' default rope).
    fn rope_tables(&self, l: usize, dt: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.cfg.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| {
                1.0 / self
                    .cfg
                    .rope_theta
                    .powf(2.0 * i as f64 / self.cfg.head_dim as f64) as f32
            })
            .collect();
        let inv = Tensor::from_vec(inv, (1, half), dev)?;
        let pos = Tensor::arange(0u32, l as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((l, 1))?;
        let f = pos.matmul(&inv)?;
        Ok((f.cos()?.to_dtype(dt)?, f.sin()?.to_dtype(dt)?))
    }

    fn layer_forward(
        &self,
        p: &Layer,
        x: &Tensor,
        bias: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, l, _) = x.dims3()?;
        let (hd, nh, nkv) = (c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let h = rms_norm(x, &p.attn_norm, c.rms_norm_eps)?;
        let heads = |t: Tensor, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let t = t.reshape((b, l, n, hd))?;
            let t = match norm {
                Some(w) => rms_norm(&t, w, c.rms_norm_eps)?,
                None => t,
            };
            t.transpose(1, 2)?.contiguous()
        };
        let q = heads(p.q.forward(&h)?, nh, Some(&p.q_norm))?;
        let k = heads(p.k.forward(&h)?, nkv, Some(&p.k_norm))?;
        let v = heads(p.v.forward(&h)?, nkv, None)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = (repeat_kv(&k, nh / nkv)?, repeat_kv(&v, nh / nkv)?);
        let a = crate::ops::attention(&q, &k, &v, Some(bias))?;
        let a = a.transpose(1, 2)?.reshape((b, l, nh * hd))?;
        let x = (x + p.o.forward(&a)?)?;
        let h = rms_norm(&x, &p.ffn_norm, c.rms_norm_eps)?;
        let g = candle_nn::ops::silu(&p.gate.forward(&h)?)?;
        let m = p.down.forward(&(g * p.up.forward(&h)?)?)?;
        x + m
    }
}

/// Grouped-query attention: each of the `n_kv` key/value heads serves `rep` query heads.
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, n, l, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, n, rep, l, d))?
        .reshape((b, n * rep, l, d))
}

/// The additive attention bias (B, 1, L, L): query i sees key j when j ≤ i and key j is
/// one of the prompt's tokens (transformers' causal mask combined with the padding mask).
/// A query that would see no key at all (possible only with left padding, a position before
/// the prompt) attends to every key instead of producing NaN; right padding, which Qwen's
/// tokenizers use, never makes one.
fn attention_bias(mask: &Tensor, l: usize, dt: DType, dev: &Device) -> Result<Tensor> {
    let (b, ml) = mask.dims2()?;
    if ml != l {
        candle_core::bail!("attention mask has {ml} positions for {l} tokens");
    }
    let keep = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut v = vec![0f32; b * l * l];
    for (bi, row) in keep.iter().enumerate() {
        for i in 0..l {
            let seen = (0..=i).any(|j| row[j] > 0.5);
            for j in 0..l {
                if seen && (j > i || row[j] <= 0.5) {
                    v[(bi * l + i) * l + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    Tensor::from_vec(v, (b, 1, l, l), dev)?.to_dtype(dt)
}

/// The sizes of a Qwen3 GGUF file as llama.cpp writes them (`general.architecture` =
/// `qwen3`, `qwen3.*` metadata), read from its header.
pub fn gguf_config(path: &std::path::Path) -> std::result::Result<Qwen3Config, crate::ModelError> {
    let err = |e: &dyn std::fmt::Display| bad(format!("{}: {e}", path.display()));
    let content = crate::gguf::read_content(path)?;
    let meta = &content.metadata;
    let arch = meta
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    if arch != "qwen3" {
        return Err(err(&format!(
            "general.architecture = {arch:?}; a Qwen3 text encoder's is \"qwen3\""
        )));
    }
    let int = |k: &str| -> std::result::Result<usize, crate::ModelError> {
        let v = meta
            .get(&format!("qwen3.{k}"))
            .ok_or_else(|| err(&format!("no metadata qwen3.{k}")))?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .map_err(|e| err(&format!("qwen3.{k}: {e}")))
    };
    let float = |k: &str, default: f64| {
        meta.get(&format!("qwen3.{k}"))
            .and_then(|v| v.to_f32().ok())
            .map_or(default, |x| x as f64)
    };
    let emb = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| err(&"no tensor token_embd.weight"))?;
    let (heads, hidden) = (int("attention.head_count")?, int("embedding_length")?);
    Ok(Qwen3Config {
        vocab_size: emb.shape.dims()[0],
        hidden_size: hidden,
        intermediate_size: int("feed_forward_length")?,
        num_hidden_layers: int("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
        head_dim: int("attention.key_length").unwrap_or(hidden / heads),
        rope_theta: float("rope.freq_base", 1_000_000.0),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6),
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
    })
}

/// A Qwen3 encoder from a GGUF file as llama.cpp writes them ([`gguf_config`], llama.cpp's
/// tensor names), the layers `taps` need; linear layers keep their quantized blocks, the
/// rest is dequantized to `dtype`.
pub fn load_gguf(
    path: &std::path::Path,
    taps: &[usize],
    dtype: DType,
    device: &Device,
) -> std::result::Result<Qwen3Encoder, crate::ModelError> {
    let cfg = gguf_config(path)?;
    let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(path, device)
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    Qwen3Encoder::new(
        &cfg,
        Qwen3Names::LlamaCpp,
        taps,
        &Weights::Quantized { vb, dtype },
    )
}

/// llama.cpp's name of a transformers Qwen3 tensor (`model.layers.3.mlp.up_proj.weight` →
/// `blk.3.ffn_up.weight`); None for tensors a text encoder does not use (`lm_head`).
pub fn llama_cpp_name(k: &str) -> Option<String> {
    match k {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let (i, tail) = k.strip_prefix("model.layers.")?.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let (module, param) = tail.rsplit_once('.')?;
    let part = match module {
        "self_attn.q_proj" => Part::Q,
        "self_attn.k_proj" => Part::K,
        "self_attn.v_proj" => Part::V,
        "self_attn.o_proj" => Part::O,
        "self_attn.q_norm" => Part::QNorm,
        "self_attn.k_norm" => Part::KNorm,
        "input_layernorm" => Part::AttnNorm,
        "post_attention_layernorm" => Part::FfnNorm,
        "mlp.gate_proj" => Part::Gate,
        "mlp.up_proj" => Part::Up,
        "mlp.down_proj" => Part::Down,
        _ => return None,
    };
    Some(Qwen3Names::LlamaCpp.layer(i, part, param))
}

/// Write a transformers Qwen3's `tensors` as a GGUF file llama.cpp and [`load_gguf`] read:
/// llama.cpp's names, its `qwen3.*` metadata from `cfg`, the linear weights (and the
/// embedding table) as `q` where their rows fit its blocks, the rest f32. Returns how many
/// tensors were written and how many of them as `q`.
pub fn write_gguf(
    path: &std::path::Path,
    tensors: &std::collections::HashMap<String, Tensor>,
    cfg: &Qwen3Config,
    q: candle_core::quantized::GgmlDType,
) -> std::result::Result<(usize, usize), crate::ModelError> {
    use candle_core::quantized::gguf_file::{self, Value};
    let mut out = Vec::new();
    for (k, v) in tensors {
        if let Some(n) = llama_cpp_name(k) {
            let stored = crate::gguf::quantize(&n, v, q)?;
            out.push((n, stored));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let quantized = out.iter().filter(|(_, t)| t.dtype() == q).count();
    let u = |x: usize| Value::U32(x as u32);
    let meta = [
        ("general.architecture", Value::String("qwen3".into())),
        ("qwen3.block_count", u(cfg.num_hidden_layers)),
        ("qwen3.embedding_length", u(cfg.hidden_size)),
        ("qwen3.feed_forward_length", u(cfg.intermediate_size)),
        ("qwen3.attention.head_count", u(cfg.num_attention_heads)),
        ("qwen3.attention.head_count_kv", u(cfg.num_key_value_heads)),
        ("qwen3.attention.key_length", u(cfg.head_dim)),
        ("qwen3.attention.value_length", u(cfg.head_dim)),
        ("qwen3.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        (
            "qwen3.attention.layer_norm_rms_epsilon",
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &candle_core::quantized::QTensor)> =
        out.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let io = |e: &dyn std::fmt::Display| bad(format!("{}: {e}", path.display()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| io(&e))?);
    gguf_file::write(&mut f, &meta, &ts).map_err(|e| io(&e))?;
    std::io::Write::flush(&mut f).map_err(|e| io(&e))?;
    Ok((out.len(), quantized))
}
