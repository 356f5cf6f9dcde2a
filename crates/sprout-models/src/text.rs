//! Text encoding: the [`TextEncoder`] trait (so CLIP/T5 plug in later), Sprout's word-piece
//! tokenizer over the world's caption language, and a small transformer encoder trained from
//! scratch jointly with the DiT.
//!
//! The tokenizer keeps case: caption words are lower-case whole tokens, while the upper-case
//! strings that images must render ("CAT", "X9") are split into single characters
//! (`C ##A ##T`), so the encoder sees exactly which glyphs to draw.

use std::collections::BTreeSet;

use crate::ops::Linear;
use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokenizers::Tokenizer;

use crate::error::{ModelError, Result as MResult};
use crate::ops::attention;

pub const PAD: &str = "[PAD]";
pub const UNK: &str = "[UNK]";

/// Encoded text: per-token states, their mask and a pooled vector.
pub struct TextEmbedding {
    /// (B, L, context_dim)
    pub states: Tensor,
    /// (B, L), 1 for real tokens, 0 for padding.
    pub mask: Tensor,
    /// (B, pooled_dim)
    pub pooled: Tensor,
}

/// Anything that turns prompts into DiT conditioning.
pub trait TextEncoder {
    fn context_dim(&self) -> usize;
    fn pooled_dim(&self) -> usize;
    fn encode(&self, prompts: &[String], device: &Device) -> MResult<TextEmbedding>;
}

/// Build the word-piece tokenizer for a set of words (case kept as given). Single characters
/// a–z, A–Z, 0–9 and punctuation, and their `##` continuations, are always included, so no
/// input of the world's alphabet is unknown.
pub fn build_tokenizer<'a>(words: impl IntoIterator<Item = &'a str>) -> MResult<Tokenizer> {
    let mut vocab: BTreeSet<String> = BTreeSet::new();
    for w in words {
        if !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
            vocab.insert(w.to_string());
        }
    }
    let chars = ('a'..='z').chain('A'..='Z').chain('0'..='9');
    for c in chars {
        vocab.insert(c.to_string());
        vocab.insert(format!("##{c}"));
    }
    for p in ['"', ',', ';', ':', '(', ')', '-', '.', '\'', '!', '?'] {
        vocab.insert(p.to_string());
    }
    let mut map = serde_json::Map::new();
    map.insert(PAD.into(), json!(0));
    map.insert(UNK.into(), json!(1));
    for (i, w) in vocab.iter().enumerate() {
        map.insert(w.clone(), json!(i + 2));
    }
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": UNK, "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": map}
    });
    Tokenizer::from_bytes(spec.to_string()).map_err(|e| ModelError::Tokenizer(e.to_string()))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub max_len: usize,
}

impl TextConfig {
    pub fn native(vocab_size: usize) -> TextConfig {
        TextConfig {
            vocab_size,
            dim: 256,
            layers: 4,
            heads: 4,
            max_len: 48,
        }
    }

    pub fn tiny(vocab_size: usize) -> TextConfig {
        TextConfig {
            vocab_size,
            dim: 16,
            layers: 1,
            heads: 2,
            max_len: 24,
        }
    }
}

fn layer_norm(dim: usize, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(dim, 1e-5, vb)
}

/// Layer norm from candle's composition (differentiable), with the learned affine.
fn ln(x: &Tensor, n: &LayerNorm) -> Result<Tensor> {
    let y = crate::ops::layer_norm(x, 1e-5)?;
    let y = y.broadcast_mul(n.weight())?;
    match n.bias() {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl EncoderLayer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.dim;
        Ok(EncoderLayer {
            ln1: layer_norm(d, vb.pp("ln1"))?,
            qkv: crate::ops::linear(d, 3 * d, vb.pp("qkv"))?,
            proj: crate::ops::linear(d, d, vb.pp("proj"))?,
            ln2: layer_norm(d, vb.pp("ln2"))?,
            fc1: crate::ops::linear(d, 4 * d, vb.pp("fc1"))?,
            fc2: crate::ops::linear(4 * d, d, vb.pp("fc2"))?,
            heads: cfg.heads,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(&ln(x, &self.ln1)?)?
            .reshape((b, l, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (
            qkv.get(0)?.contiguous()?,
            qkv.get(1)?.contiguous()?,
            qkv.get(2)?.contiguous()?,
        );
        let a = attention(&q, &k, &v, Some(mask))?
            .transpose(1, 2)?
            .reshape((b, l, d))?;
        let x = (x + self.proj.forward(&a)?)?;
        let h = self
            .fc2
            .forward(&crate::ops::gelu(&self.fc1.forward(&ln(&x, &self.ln2)?)?)?)?;
        x + h
    }
}

/// The small transformer text encoder.
pub struct SmallTextEncoder {
    pub cfg: TextConfig,
    tokenizer: Tokenizer,
    tok_emb: Embedding,
    pos_emb: Tensor,
    layers: Vec<EncoderLayer>,
    ln_f: LayerNorm,
}

impl SmallTextEncoder {
    pub fn new(cfg: &TextConfig, tokenizer: Tokenizer, vb: VarBuilder) -> MResult<Self> {
        let vocab = tokenizer.get_vocab_size(true);
        if vocab != cfg.vocab_size {
            return Err(ModelError::Config(format!(
                "tokenizer has {vocab} tokens but the text config says {}",
                cfg.vocab_size
            )));
        }
        let layers = (0..cfg.layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(SmallTextEncoder {
            tok_emb: candle_nn::embedding(cfg.vocab_size, cfg.dim, vb.pp("tok_emb"))?,
            pos_emb: vb.get_with_hints(
                (cfg.max_len, cfg.dim),
                "pos_emb",
                // The same scale as the token embeddings (N(0, 1)): word order (which colour
                // goes with which shape, which way a relation points) starts as visible to the
                // encoder as the words themselves.
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?,
            layers,
            ln_f: layer_norm(cfg.dim, vb.pp("ln_f"))?,
            tokenizer,
            cfg: cfg.clone(),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of each prompt, truncated to `max_len`, padded to the longest (with 0).
    pub fn tokenize(&self, prompts: &[String]) -> MResult<(Vec<Vec<u32>>, usize)> {
        let mut ids = Vec::with_capacity(prompts.len());
        for p in prompts {
            let enc = self
                .tokenizer
                .encode(p.as_str(), false)
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            let mut v = enc.get_ids().to_vec();
            v.truncate(self.cfg.max_len);
            ids.push(v);
        }
        let len = ids.iter().map(|v| v.len()).max().unwrap_or(0).max(1);
        Ok((ids, len))
    }

    pub fn forward_ids(
        &self,
        ids: &[Vec<u32>],
        len: usize,
        device: &Device,
    ) -> Result<TextEmbedding> {
        let b = ids.len();
        let mut flat = vec![0u32; b * len];
        let mut m = vec![0f32; b * len];
        for (i, v) in ids.iter().enumerate() {
            for (j, &t) in v.iter().enumerate() {
                flat[i * len + j] = t;
                m[i * len + j] = 1.0;
            }
            if v.is_empty() {
                // An empty prompt (the unconditional branch) still has one real slot: padding.
                m[i * len] = 1.0;
            }
        }
        let tokens = Tensor::from_vec(flat, (b, len), device)?;
        let mask = Tensor::from_vec(m, (b, len), device)?;
        let mut x = self
            .tok_emb
            .forward(&tokens)?
            .broadcast_add(&self.pos_emb.narrow(0, 0, len)?.unsqueeze(0)?)?;
        let additive = ((mask.clone() - 1.0)? * 1e9)?.reshape((b, 1, 1, len))?;
        for l in &self.layers {
            x = l.forward(&x, &additive)?;
        }
        let states = ln(&x, &self.ln_f)?;
        let denom = mask.sum_keepdim(1)?;
        let pooled = states
            .broadcast_mul(&mask.unsqueeze(2)?)?
            .sum(1)?
            .broadcast_div(&denom)?;
        Ok(TextEmbedding {
            states,
            mask,
            pooled,
        })
    }
}

impl TextEncoder for SmallTextEncoder {
    fn context_dim(&self) -> usize {
        self.cfg.dim
    }

    fn pooled_dim(&self) -> usize {
        self.cfg.dim
    }

    fn encode(&self, prompts: &[String], device: &Device) -> MResult<TextEmbedding> {
        let (ids, len) = self.tokenize(prompts)?;
        Ok(self.forward_ids(&ids, len, device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::VarMap;

    fn tok() -> Tokenizer {
        build_tokenizer([
            "a", "red", "circle", "and", "the", "word", "to", "left", "of", "t-rex",
        ])
        .unwrap()
    }

    #[test]
    fn tokenizer_keeps_words_and_spells_rendered_text() {
        let t = tok();
        let enc = t
            .encode("a red circle and the word \"CAT9\"", false)
            .unwrap();
        let toks: Vec<&str> = enc.get_tokens().iter().map(|s| s.as_str()).collect();
        assert_eq!(
            toks,
            vec!["a", "red", "circle", "and", "the", "word", "\"", "C", "##A", "##T", "##9", "\""]
        );
        // Unknown lower-case words fall back to letters, never to [UNK].
        let enc = t.encode("a zebra", false).unwrap();
        assert!(!enc.get_tokens().iter().any(|s| s == UNK));
        assert_eq!(t.token_to_id(PAD), Some(0));
        // Round trip through JSON.
        let back = Tokenizer::from_bytes(t.to_string(false).unwrap()).unwrap();
        assert_eq!(back.get_vocab_size(true), t.get_vocab_size(true));
    }

    #[test]
    fn encoder_shapes_padding_and_batch_independence() {
        let t = tok();
        let cfg = TextConfig::tiny(t.get_vocab_size(true));
        let vm = VarMap::new();
        let enc = SmallTextEncoder::new(
            &cfg,
            t,
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let prompts = vec![
            "a red circle".to_string(),
            "the word \"HELLO\" to the left of a circle".to_string(),
            String::new(),
        ];
        let e = enc.encode(&prompts, &Device::Cpu).unwrap();
        let (b, l, d) = e.states.dims3().unwrap();
        assert_eq!((b, d), (3, 16));
        assert_eq!(e.pooled.dims(), &[3, 16]);
        assert_eq!(
            e.mask.sum_all().unwrap().to_scalar::<f32>().unwrap(),
            (3 + l + 1) as f32
        );
        // The first prompt's pooled vector does not depend on the padding a longer prompt forces.
        let alone = enc.encode(&prompts[..1], &Device::Cpu).unwrap();
        let d =
            crate::ops::max_abs_diff(&alone.pooled, &e.pooled.narrow(0, 0, 1).unwrap()).unwrap();
        assert!(d < 1e-5, "{d}");
        // Truncation at max_len.
        let long = vec!["a ".repeat(100)];
        let (ids, len) = enc.tokenize(&long).unwrap();
        assert_eq!((ids[0].len(), len), (24, 24));
    }
}
