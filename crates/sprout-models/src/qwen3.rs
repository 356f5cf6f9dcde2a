//! Qwen3 as a text encoder (FLUX.2 [klein]'s conditioning): the decoder-only stack run over a
//! padded prompt, returning the hidden states of chosen layers stacked per token, as
//! diffusers' `Flux2KleinPipeline` takes them (`output_hidden_states`, layers 9, 18, 27).
//! Mistral's language model (FLUX.2 [dev]'s Mistral Small 3.2, layers 10, 20, 30) is the same
//! stack without Qwen3's per-head query and key norms, so it is this encoder with
//! [`Qwen3Config::qk_norm`] off rather than a second copy.
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
    /// Per-head RMS norms on the queries and keys (Qwen3's); Mistral's stack has none.
    #[serde(default = "qk_norm_default")]
    pub qk_norm: bool,
}

fn qk_norm_default() -> bool {
    true
}

/// The prefixes under which transformers saves a language model's `embed_tokens`, `layers`
/// and `norm`: a multimodal Mistral3 model (legacy and current layout), a causal LM, a bare
/// body.
const BODY_PREFIXES: [&str; 4] = [
    "language_model.model.",
    "model.language_model.",
    "model.",
    "",
];

/// The prefix a text encoder's tensors `names` carry before `embed_tokens.weight` (one of
/// transformers' layouts), if any.
pub fn body_prefix<'a>(names: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let names: Vec<&str> = names.collect();
    BODY_PREFIXES.into_iter().find(|p| {
        names
            .iter()
            .any(|n| n.strip_prefix(p) == Some("embed_tokens.weight"))
    })
}

/// The rotary base where a config leaves it out: Qwen3's 10⁶, Mistral's 10⁴ (transformers'
/// `MistralConfig`, llama.cpp's `llama`).
fn default_rope_theta(qwen3: bool) -> f64 {
    if qwen3 {
        1_000_000.0
    } else {
        10_000.0
    }
}

/// Prompts are at most this many tokens (FLUX.2's pipelines; `sprout_pipeline::flux2::
/// MAX_PROMPT_TOKENS` is this): a sliding window at least this long never hides a key, so it
/// changes nothing.
pub const LONGEST_PROMPT: u64 = 512;

fn bad(e: impl std::fmt::Display) -> crate::ModelError {
    crate::ModelError::Config(e.to_string())
}

impl Qwen3Config {
    /// From transformers' `config.json` of a Qwen3 model. Fields that change what the stack
    /// computes and that this encoder does not implement (another activation, rope scaling,
    /// sliding windows) are refused by name.
    /// A Mistral text encoder's config (`model_type` `mistral3`, whose `text_config` is read,
    /// or `mistral`) reads as Mistral's stack: no query / key norms, its defaults.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Qwen3Config, crate::ModelError> {
        match v["model_type"].as_str() {
            Some("mistral3") => {
                let t = &v["text_config"];
                if !t.is_object() {
                    return Err(bad(
                        "text encoder config.json: model_type = mistral3 without text_config",
                    ));
                }
                // transformers reads a text_config without a model_type as Mistral's.
                return Qwen3Config::from_json_as(t, false);
            }
            Some("mistral") => return Qwen3Config::from_json_as(v, false),
            _ => {}
        }
        Qwen3Config::from_json_as(v, true)
    }

    /// [`from_json`](Self::from_json) for Qwen3 (`qwen3`) or Mistral (`!qwen3`).
    fn from_json_as(
        v: &serde_json::Value,
        qwen3: bool,
    ) -> std::result::Result<Qwen3Config, crate::ModelError> {
        let n = |k: &str| {
            v[k].as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("text encoder config.json lacks {k}")))
        };
        if let Some(a) = v["hidden_act"].as_str().filter(|a| *a != "silu") {
            return Err(bad(format!(
                "text encoder config.json: hidden_act = {a} is not supported (Qwen3 and Mistral use silu)"
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
        if let Some(mt) = v["model_type"]
            .as_str()
            .filter(|m| *m != if qwen3 { "qwen3" } else { "mistral" })
        {
            return Err(bad(format!(
                "text encoder config.json: model_type = {mt}, expected qwen3, mistral or mistral3"
            )));
        }
        if let Some(w) = v["sliding_window"]
            .as_u64()
            .filter(|w| !qwen3 && *w < LONGEST_PROMPT)
        {
            return Err(bad(format!(
                "text encoder config.json: sliding_window = {w} is not supported (FLUX.2 prompts take {LONGEST_PROMPT} tokens)"
            )));
        }
        let heads = n("num_attention_heads")?;
        let hidden = n("hidden_size")?;
        let theta = v["rope_theta"]
            .as_f64()
            .or(v["rope_parameters"]["rope_theta"].as_f64())
            .unwrap_or(default_rope_theta(qwen3));
        Ok(Qwen3Config {
            vocab_size: n("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: n("intermediate_size")?,
            num_hidden_layers: n("num_hidden_layers")?,
            num_attention_heads: heads,
            // Absent: Qwen3 has as many key-value heads as heads, transformers' Mistral 8.
            num_key_value_heads: v["num_key_value_heads"]
                .as_u64()
                .map_or(if qwen3 { heads } else { 8 }, |x| x as usize),
            head_dim: v["head_dim"]
                .as_u64()
                .map_or(hidden / heads, |x| x as usize),
            rope_theta: theta,
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            attention_bias: v["attention_bias"].as_bool().unwrap_or(false),
            qk_norm: qwen3,
        })
    }

    /// From the tensors of a weight file given without its `config.json` (transformers'
    /// names under any of its prefixes, [`body_prefix`]): the sizes from the shapes —
    /// vocabulary and width from the embedding, head width from the query norm, heads and
    /// key-value heads from the projections, the MLP from its gate, the depth from the layer
    /// count — and Qwen3's own rotary base (10⁶) and norm epsilon (10⁻⁶), which no shape
    /// carries. A stack without query norms is Mistral's, whose head width no shape carries
    /// either: read as Mistral Small 3.2 when its shapes are that model's, else refused.
    pub fn from_tensors(
        infos: &[crate::flux::inspect::TensorInfo],
    ) -> std::result::Result<Qwen3Config, crate::ModelError> {
        let prefix = body_prefix(infos.iter().map(|t| t.name.as_str())).ok_or_else(|| {
            bad("no tensor embed_tokens.weight (nor model.embed_tokens.weight): not a Qwen3 or Mistral text encoder")
        })?;
        let find = |name: &str| {
            infos
                .iter()
                .find(|t| t.name.strip_prefix(prefix) == Some(name))
        };
        let shape = |name: &str| {
            find(name).map(|t| t.shape.clone()).ok_or_else(|| {
                bad(format!(
                    "no tensor {prefix}{name}: not a Qwen3 text encoder"
                ))
            })
        };
        let emb = shape("embed_tokens.weight")?;
        if find("layers.0.self_attn.q_norm.weight").is_none() {
            let mistral = Qwen3Config::mistral_small_3_2();
            let same = emb == [mistral.vocab_size, mistral.hidden_size]
                && find(&format!(
                    "layers.{}.mlp.gate_proj.weight",
                    mistral.num_hidden_layers - 1
                ))
                .is_some_and(|t| t.shape == [mistral.intermediate_size, mistral.hidden_size])
                && find(&format!(
                    "layers.{}.mlp.gate_proj.weight",
                    mistral.num_hidden_layers
                ))
                .is_none()
                && find("layers.0.self_attn.q_proj.weight").is_some_and(|t| {
                    t.shape
                        == [
                            mistral.num_attention_heads * mistral.head_dim,
                            mistral.hidden_size,
                        ]
                });
            if same {
                return Ok(mistral);
            }
            return Err(bad(format!(
                "a text encoder without query norms (Mistral's stack) of embedding {emb:?}, not Mistral Small 3.2's: its head width is in no shape, so it needs its config.json beside the file"
            )));
        }
        let rows =
            |name: &str| -> std::result::Result<usize, crate::ModelError> { Ok(shape(name)?[0]) };
        let head_dim = rows("layers.0.self_attn.q_norm.weight")?;
        let layers = infos
            .iter()
            .filter_map(|t| {
                t.name
                    .strip_prefix(prefix)?
                    .strip_prefix("layers.")?
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
            qk_norm: true,
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
            qk_norm: true,
        }
    }

    /// Mistral Small 3.2 24B's language model (FLUX.2 [dev]'s encoder; transformers'
    /// `Mistral3ForConditionalGeneration.text_config`).
    pub fn mistral_small_3_2() -> Qwen3Config {
        Qwen3Config {
            vocab_size: 131_072,
            hidden_size: 5120,
            intermediate_size: 32_768,
            num_hidden_layers: 40,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            rope_theta: 1_000_000_000.0,
            rms_norm_eps: 1e-5,
            attention_bias: false,
            qk_norm: false,
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
    /// Qwen3's per-head norms (None for Mistral).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
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
    /// Rotary pairs of adjacent channels (llama.cpp's `llama` files, whose query and key rows
    /// its converter permuted to that layout) instead of transformers' halves.
    interleaved_rope: bool,
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
                q_norm: cfg
                    .qk_norm
                    .then(|| norm(cfg.head_dim, names.layer(l, Part::QNorm, "weight")))
                    .transpose()?,
                k_norm: cfg
                    .qk_norm
                    .then(|| norm(cfg.head_dim, names.layer(l, Part::KNorm, "weight")))
                    .transpose()?,
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
            interleaved_rope: false,
        })
    }

    /// Rotate adjacent channel pairs (weights in llama.cpp's permuted `llama` layout). The
    /// permutation moves query and key channels alike, so every attention score, and with it
    /// every output, equals transformers' on the unpermuted weights.
    pub fn with_interleaved_rope(self) -> Qwen3Encoder {
        Qwen3Encoder {
            interleaved_rope: true,
            ..self
        }
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
        let (bias, seeing) = attention_bias(mask, l, dt, dev)?;
        let (cos, sin) = self.rope_tables(l, dt, dev)?;
        let mut taps: Vec<Option<Tensor>> = vec![None; self.taps.len()];
        for (i, layer) in self.layers.iter().enumerate() {
            h = self.layer_forward(layer, &h, &bias, seeing.as_ref(), &cos, &sin)?;
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
        seeing: Option<&Tensor>,
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
        let q = heads(p.q.forward(&h)?, nh, p.q_norm.as_ref())?;
        let k = heads(p.k.forward(&h)?, nkv, p.k_norm.as_ref())?;
        let v = heads(p.v.forward(&h)?, nkv, None)?;
        let rope = if self.interleaved_rope {
            candle_nn::rotary_emb::rope_i
        } else {
            candle_nn::rotary_emb::rope
        };
        let (q, k) = (rope(&q, cos, sin)?, rope(&k, cos, sin)?);
        let (k, v) = (repeat_kv(&k, nh / nkv)?, repeat_kv(&v, nh / nkv)?);
        let mut a = crate::ops::attention(&q, &k, &v, Some(bias))?;
        if let Some(s) = seeing {
            a = a.broadcast_mul(s)?;
        }
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
/// A query that sees no key at all (with left padding, as Mistral's tokenizer pads, every
/// position before the prompt) gets zeros from attention, as PyTorch's scaled-dot-product
/// attention under transformers gives them (the Mistral fixture pads on the left): its row
/// of the bias stays open, so that softmax has no NaN, and the second tensor (B, 1, L, 1),
/// 0 for such queries and 1 for the rest, zeroes its output. None when every query sees a
/// key (right padding, which Qwen's tokenizers use).
fn attention_bias(
    mask: &Tensor,
    l: usize,
    dt: DType,
    dev: &Device,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, ml) = mask.dims2()?;
    if ml != l {
        candle_core::bail!("attention mask has {ml} positions for {l} tokens");
    }
    let keep = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut v = vec![0f32; b * l * l];
    let mut seeing = vec![1f32; b * l];
    for (bi, row) in keep.iter().enumerate() {
        for i in 0..l {
            let seen = (0..=i).any(|j| row[j] > 0.5);
            if !seen {
                seeing[bi * l + i] = 0.0;
            }
            for j in 0..l {
                if seen && (j > i || row[j] <= 0.5) {
                    v[(bi * l + i) * l + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    let bias = Tensor::from_vec(v, (b, 1, l, l), dev)?.to_dtype(dt)?;
    let seeing = if seeing.contains(&0.0) {
        Some(Tensor::from_vec(seeing, (b, 1, l, 1), dev)?.to_dtype(dt)?)
    } else {
        None
    };
    Ok((bias, seeing))
}

/// The sizes of a text encoder's GGUF file as llama.cpp writes them, read from its header:
/// Qwen3 (`general.architecture` = `qwen3`, `qwen3.*` metadata) or Mistral Small 3.x, which
/// llama.cpp converts as `llama` (`llama.*` metadata, no query / key norms, query and key
/// rows permuted for its rotary layout: [`load_gguf`] rotates to match).
pub fn gguf_config(path: &std::path::Path) -> std::result::Result<Qwen3Config, crate::ModelError> {
    let err = |e: &dyn std::fmt::Display| bad(format!("{}: {e}", path.display()));
    let content = crate::gguf::read_content(path)?;
    let meta = &content.metadata;
    let arch = meta
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    let qwen3 = match arch.as_str() {
        "qwen3" => true,
        "llama" => false,
        _ => {
            return Err(err(&format!(
                "general.architecture = {arch:?}; a Qwen3 text encoder's is \"qwen3\", a Mistral one's \"llama\""
            )))
        }
    };
    let int = |k: &str| -> std::result::Result<usize, crate::ModelError> {
        let v = meta
            .get(&format!("{arch}.{k}"))
            .ok_or_else(|| err(&format!("no metadata {arch}.{k}")))?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .map_err(|e| err(&format!("{arch}.{k}: {e}")))
    };
    let float = |k: &str, default: f64| {
        meta.get(&format!("{arch}.{k}"))
            .and_then(|v| v.to_f32().ok())
            .map_or(default, |x| x as f64)
    };
    let emb = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| err(&"no tensor token_embd.weight"))?;
    // Rotary scaling (llama 3's, YaRN) changes the positions' angles, which this encoder does
    // not implement: refused by name rather than ignored.
    if let Some(k) = meta
        .keys()
        .find(|k| k.starts_with(&format!("{arch}.rope.scaling.")))
    {
        return Err(err(&format!("{k} is not supported (rope scaling)")));
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(err(
            &"rope_freqs.weight (llama 3's scaled rotary frequencies) is not supported",
        ));
    }
    let (heads, hidden) = (int("attention.head_count")?, int("embedding_length")?);
    Ok(Qwen3Config {
        vocab_size: emb.shape.dims()[0],
        hidden_size: hidden,
        intermediate_size: int("feed_forward_length")?,
        num_hidden_layers: int("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
        // Mistral Small's heads (128) are not hidden / heads (160): the rotary width says.
        head_dim: int("attention.key_length")
            .or_else(|_| int("rope.dimension_count"))
            .unwrap_or(hidden / heads),
        rope_theta: float("rope.freq_base", default_rope_theta(qwen3)),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-6),
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        qk_norm: qwen3,
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
    let enc = Qwen3Encoder::new(
        &cfg,
        Qwen3Names::LlamaCpp,
        taps,
        &Weights::Quantized { vb, dtype },
    )?;
    // llama.cpp's `llama` files (Mistral) hold permuted query and key rows.
    Ok(if cfg.qk_norm {
        enc
    } else {
        enc.with_interleaved_rope()
    })
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

/// llama.cpp's converter's reordering of a `llama` model's query or key rows (`heads` heads):
/// each head's two halves interleaved, for its adjacent-pair rotary layout.
fn llama_cpp_permute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))
}

/// Write a transformers text encoder's `tensors` (Qwen3, or Mistral's language model under
/// any of transformers' prefixes, [`body_prefix`]) as a GGUF file llama.cpp and
/// [`load_gguf`] read: llama.cpp's names, its `qwen3.*` (Mistral: `llama.*`, with the query
/// and key rows permuted as llama.cpp's converter does) metadata from `cfg`, the linear
/// weights (and the embedding table) as `q` where their rows fit its blocks, the rest f32.
/// Tensors outside the language model (a vision tower, `lm_head`) are left out. `names`
/// lists the tensors, `load` reads one (in f32) when it is quantized, so that only the
/// quantized file's worth of memory is held. Returns how many tensors were written and how
/// many of them as `q`.
pub fn write_gguf(
    path: &std::path::Path,
    names: &[String],
    load: impl Fn(&str) -> Result<Tensor>,
    cfg: &Qwen3Config,
    q: candle_core::quantized::GgmlDType,
) -> std::result::Result<(usize, usize), crate::ModelError> {
    use candle_core::quantized::gguf_file::{self, Value};
    let prefix = body_prefix(names.iter().map(String::as_str))
        .ok_or_else(|| bad("no embed_tokens.weight among the text encoder's tensors"))?;
    let arch = if cfg.qk_norm { "qwen3" } else { "llama" };
    let mut out = Vec::new();
    for k in names {
        let Some(body) = k.strip_prefix(prefix) else {
            continue;
        };
        if let Some(n) = llama_cpp_name(&format!("model.{body}")) {
            let v = load(k)?;
            let v = match (cfg.qk_norm, body.rsplit_once(".self_attn.")) {
                (false, Some((_, "q_proj.weight"))) => {
                    llama_cpp_permute(&v, cfg.num_attention_heads)?
                }
                (false, Some((_, "k_proj.weight"))) => {
                    llama_cpp_permute(&v, cfg.num_key_value_heads)?
                }
                _ => v,
            };
            let stored = crate::gguf::quantize(&n, &v, q)?;
            out.push((n, stored));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let quantized = out.iter().filter(|(_, t)| t.dtype() == q).count();
    let u = |x: usize| Value::U32(x as u32);
    let meta = [
        (
            "general.architecture".to_string(),
            Value::String(arch.into()),
        ),
        (format!("{arch}.block_count"), u(cfg.num_hidden_layers)),
        (format!("{arch}.embedding_length"), u(cfg.hidden_size)),
        (
            format!("{arch}.feed_forward_length"),
            u(cfg.intermediate_size),
        ),
        (
            format!("{arch}.attention.head_count"),
            u(cfg.num_attention_heads),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            u(cfg.num_key_value_heads),
        ),
        (format!("{arch}.attention.key_length"), u(cfg.head_dim)),
        (format!("{arch}.attention.value_length"), u(cfg.head_dim)),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ];
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &candle_core::quantized::QTensor)> =
        out.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let io = |e: &dyn std::fmt::Display| bad(format!("{}: {e}", path.display()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| io(&e))?);
    gguf_file::write(&mut f, &meta, &ts).map_err(|e| io(&e))?;
    std::io::Write::flush(&mut f).map_err(|e| io(&e))?;
    Ok((out.len(), quantized))
}
