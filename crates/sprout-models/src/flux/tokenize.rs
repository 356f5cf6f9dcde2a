//! FLUX's tokenizers from a diffusers snapshot: CLIP-L's byte-level BPE (`tokenizer/`) and
//! T5's SentencePiece unigram (`tokenizer_2/tokenizer.json`), with the fixed-length padding
//! and truncation the FLUX pipelines use (CLIP: 77 tokens padded with its end token; T5: 256
//! for schnell, 512 for dev, padded with 0).

use std::path::Path;

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{ModelError, Result};

fn bad(p: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(format!("{}: {e}", p.display()))
}

/// CLIP's tokenizer: `tokenizer.json` if the folder has one; otherwise built from
/// `vocab.json` + `merges.txt` (what diffusers snapshots of FLUX ship) exactly as
/// transformers converts them: NFC, whitespace runs to one space, lower case; CLIP's word
/// pattern; byte-level BPE with `</w>` word ends; start and end tokens around the text.
pub fn clip_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return Tokenizer::from_file(&json).map_err(|e| bad(&json, e));
    }
    let vp = dir.join("vocab.json");
    let mp = dir.join("merges.txt");
    let vocab: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&vp).map_err(|e| bad(&vp, e))?)
            .map_err(|e| bad(&vp, e))?;
    let text = std::fs::read_to_string(&mp).map_err(|e| bad(&mp, e))?;
    let mut merges: Vec<[&str; 2]> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let (a, b) = line
            .split_once(' ')
            .ok_or_else(|| bad(&mp, format!("line {} is not a merge pair", i + 1)))?;
        merges.push([a, b]);
    }
    let id = |t: &str| {
        vocab
            .get(t)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad(&vp, format!("no {t} token")))
    };
    let (bos, eos) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
    let special = |content: &str, id: u64| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let spec = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special("<|startoftext|>", bos), special("<|endoftext|>", eos)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", eos],
            "cls": ["<|startoftext|>", bos], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    Tokenizer::from_bytes(spec.to_string()).map_err(|e| bad(dir, e))
}

/// T5's tokenizer (`tokenizer.json`; a SentencePiece `spiece.model` alone is not read).
pub fn t5_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if !json.is_file() && dir.join("spiece.model").is_file() {
        return Err(bad(
            dir,
            "has spiece.model but no tokenizer.json; save one with transformers' T5TokenizerFast",
        ));
    }
    Tokenizer::from_file(&json).map_err(|e| bad(&json, e))
}

/// Token ids of `text`, truncated and padded to exactly `len` (special tokens kept).
pub fn encode_fixed(tok: &Tokenizer, text: &str, len: usize, pad_id: u32) -> Result<Vec<u32>> {
    let mut tok = tok.clone();
    let pad_token = tok.id_to_token(pad_id).unwrap_or_default();
    tok.with_truncation(Some(TruncationParams {
        max_length: len,
        ..Default::default()
    }))
    .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(len),
        pad_id,
        pad_token,
        ..Default::default()
    }));
    let enc = tok
        .encode(text, true)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(enc.get_ids().to_vec())
}

/// A FLUX.2 text encoder's tokenizer: the `tokenizer.json` transformers saves (FLUX.2
/// [klein]'s Qwen2Tokenizer, FLUX.2 [dev]'s Mistral tokenizer behind its processor).
pub fn flux2_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if !json.is_file() {
        return Err(bad(
            dir,
            "has no tokenizer.json (a tokenizer saved by transformers has one)",
        ));
    }
    Tokenizer::from_file(&json).map_err(|e| bad(&json, e))
}

/// Whether a tokenizer pads on the left, in transformers' order: its `tokenizer_config.json`'s
/// `padding_side`, else its `tokenizer.json`'s padding direction, else its class's default
/// (transformers' Llama tokenizers pad on the left), else `default_left` (the pipeline's own:
/// FLUX.2 [dev]'s Mistral tokenizer pads on the left, klein's Qwen on the right). A
/// truncation side other than the right, in either file, is refused by name.
pub fn pads_left(
    config: &serde_json::Value,
    tokenizer_json: &serde_json::Value,
    default_left: bool,
) -> Result<bool> {
    let truncation = config["truncation_side"]
        .as_str()
        .map(str::to_lowercase)
        .or(tokenizer_json["truncation"]["direction"]
            .as_str()
            .map(str::to_lowercase));
    if let Some(t) = truncation.filter(|t| t != "right") {
        return Err(ModelError::Tokenizer(format!(
            "tokenizer truncation_side = {t} is not supported"
        )));
    }
    let side = config["padding_side"]
        .as_str()
        .map(str::to_lowercase)
        .or(tokenizer_json["padding"]["direction"]
            .as_str()
            .map(str::to_lowercase));
    match side.as_deref() {
        Some("left") => Ok(true),
        Some("right") => Ok(false),
        Some(other) => Err(ModelError::Tokenizer(format!(
            "tokenizer padding_side = {other}; expected left or right"
        ))),
        None => Ok(config["tokenizer_class"]
            .as_str()
            .map_or(default_left, |c| {
                c.starts_with("LlamaTokenizer") || default_left
            })),
    }
}

/// The system prompt FLUX.2 [dev]'s pipeline gives Mistral (Black Forest Labs', as
/// diffusers' `SYSTEM_MESSAGE`).
pub const FLUX2_SYSTEM_MESSAGE: &str = "You are an AI that reasons about image descriptions. \
You give structured responses focusing on object relationships, object\nattribution and actions \
without speculation.";

/// The text FLUX.2 [dev]'s pipeline gives Mistral: Mistral Small's chat template over the
/// system prompt and one user message, no generation prompt — the start token, the system
/// prompt between `[SYSTEM_PROMPT]` tags, the prompt between `[INST]` tags — with `[IMG]`
/// taken out of the prompt as the pipeline does. It is tokenized without added special
/// tokens (the start token is in the text), as `apply_chat_template` does.
pub fn mistral_chat_prompt(system: &str, prompt: &str) -> String {
    let prompt = prompt.replace("[IMG]", "");
    format!("<s>[SYSTEM_PROMPT]{system}[/SYSTEM_PROMPT][INST]{prompt}[/INST]")
}

/// How a prompt is padded: to `len` tokens with `pad_id`, on the left or right, with or
/// without the tokenizer's added special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    pub len: usize,
    pub pad_id: u32,
    pub left: bool,
    pub add_special_tokens: bool,
}

/// The text FLUX.2's pipelines give the Qwen3 encoder: Qwen3's chat template applied to one
/// user message, with the assistant's turn opened and thinking switched off (its empty think
/// block), as `apply_chat_template(..., add_generation_prompt=True, enable_thinking=False)`
/// writes it.
pub fn qwen_chat_prompt(prompt: &str) -> String {
    format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
}

/// Token ids of `text` truncated (on the right) and padded to exactly `p.len`, with the
/// attention mask (1 for the text's tokens, 0 for padding), as transformers'
/// `padding="max_length", truncation=True`.
pub fn encode_padded(tok: &Tokenizer, text: &str, p: Padding) -> Result<(Vec<u32>, Vec<u32>)> {
    // The padding and truncation a tokenizer.json may carry are replaced by these.
    let mut tok = tok.clone();
    tok.with_padding(None);
    tok.with_truncation(None)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let enc = tok
        .encode(text, p.add_special_tokens)
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    let mut ids = enc.get_ids().to_vec();
    ids.truncate(p.len);
    let mut mask = vec![1u32; ids.len()];
    let pad = p.len - ids.len();
    if p.left {
        ids.splice(0..0, std::iter::repeat_n(p.pad_id, pad));
        mask.splice(0..0, std::iter::repeat_n(0, pad));
    } else {
        ids.resize(p.len, p.pad_id);
        mask.resize(p.len, 0);
    }
    Ok((ids, mask))
}
