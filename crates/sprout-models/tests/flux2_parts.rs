//! FLUX.2's autoencoder and Qwen3 text encoder against the reference implementation
//! (diffusers' `AutoencoderKLFlux2` and `Flux2KleinPipeline`'s prompt embedding over
//! transformers' `Qwen3ForCausalLM`, see `tools/flux-parity/make_flux2_fixtures.py`). The
//! diffusers-layout weights are those of the fixture snapshot (`fixtures/flux2/snapshot/`).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sprout_models::flux::configs::flux2_vae_config;
use sprout_models::flux::convert::Renamed;
use sprout_models::flux::tokenize::{
    encode_padded, flux2_tokenizer, mistral_chat_prompt, pads_left, qwen_chat_prompt, Padding,
    FLUX2_SYSTEM_MESSAGE,
};
use sprout_models::flux::vae2::Flux2Vae;
use sprout_models::ops::{max_abs, max_abs_diff};
use sprout_models::qwen3::{Qwen3Config, Qwen3Encoder, Qwen3Names};
use sprout_models::weights::Weights;

mod common;

const TOL: f32 = 1e-4;

fn snapshot(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/flux2/snapshot")
        .join(part)
}

fn json(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let d = max_abs_diff(got, want).unwrap();
    eprintln!(
        "{what}: max abs error {d:.2e} (reference max |x| {:.2})",
        max_abs(want).unwrap()
    );
    assert!(d <= tol, "{what}: max abs error {d:e} > {tol:e}");
}

fn mmap(path: PathBuf) -> candle_core::safetensors::MmapedSafetensors {
    unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.unwrap()
}

#[test]
fn autoencoder_matches_diffusers_in_both_layouts() {
    let (io, _) = common::load("flux2", "vae_io.safetensors");
    let cfg = flux2_vae_config(&json(snapshot("vae/config.json"))).unwrap();
    assert_eq!((cfg.z_channels, cfg.downscale()), (4, 4));
    let bfl =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flux2/vae_bfl.safetensors");
    let dev = Device::Cpu;
    for (layout, vb) in [
        (
            "bfl",
            VarBuilder::from_backend(Box::new(mmap(bfl)), DType::F32, dev.clone()),
        ),
        (
            "diffusers",
            VarBuilder::from_backend(
                Box::new(Renamed::vae(
                    mmap(snapshot("vae/diffusion_pytorch_model.safetensors")),
                    cfg.ch_mult.len(),
                )),
                DType::F32,
                dev.clone(),
            ),
        ),
    ] {
        let vae = Flux2Vae::new(&cfg, vb).unwrap();
        let latents = vae.encode(&io["image"]).unwrap();
        assert_close(&format!("{layout} encode"), &latents, &io["latents"], TOL);
        let decoded = vae.decode(&io["tokens"]).unwrap();
        assert_close(&format!("{layout} decode"), &decoded, &io["decoded"], TOL);
    }
}

#[test]
fn the_autoencoder_refuses_a_wrong_token_width_by_name() {
    let cfg = flux2_vae_config(&json(snapshot("vae/config.json"))).unwrap();
    let vb = VarBuilder::from_backend(
        Box::new(Renamed::vae(
            mmap(snapshot("vae/diffusion_pytorch_model.safetensors")),
            cfg.ch_mult.len(),
        )),
        DType::F32,
        Device::Cpu,
    );
    let vae = Flux2Vae::new(&cfg, vb).unwrap();
    let z = Tensor::zeros((1, 8, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let e = vae.decode(&z).unwrap_err().to_string();
    assert!(e.contains("16 channels"), "{e}");
    let x = Tensor::zeros((1, 3, 10, 8), DType::F32, &Device::Cpu).unwrap();
    let e = vae.encode(&x).unwrap_err().to_string();
    assert!(e.contains("multiples of 4"), "{e}");
}

#[test]
fn prompt_tokens_are_the_chat_template_padded_as_transformers_pads() {
    let (io, meta) = common::load("flux2", "qwen3_io.safetensors");
    let _ = meta;
    let tok = flux2_tokenizer(&snapshot("tokenizer")).unwrap();
    let pad = tok.token_to_id("<|endoftext|>").unwrap();
    let want_ids = io["input_ids"].to_vec2::<f32>().unwrap();
    let want_mask = io["attention_mask"].to_vec2::<f32>().unwrap();
    let prompts = [
        "a photo of a red circle",
        "make the circle blue and the star red, please",
    ];
    for (i, p) in prompts.iter().enumerate() {
        let padding = Padding {
            len: 40,
            pad_id: pad,
            left: false,
            add_special_tokens: true,
        };
        let (ids, mask) = encode_padded(&tok, &qwen_chat_prompt(p), padding).unwrap();
        let ids: Vec<f32> = ids.iter().map(|&x| x as f32).collect();
        let mask: Vec<f32> = mask.iter().map(|&x| x as f32).collect();
        assert_eq!(ids, want_ids[i], "{p}: ids");
        assert_eq!(mask, want_mask[i], "{p}: mask");
    }
    // The longer prompt is truncated to the length (no padding left).
    assert!(want_mask[1].iter().all(|&m| m == 1.0));
    assert!(want_mask[0].contains(&0.0));
}

#[test]
fn qwen3_tapped_states_match_transformers() {
    let (io, _) = common::load("flux2", "qwen3_io.safetensors");
    let cfg = Qwen3Config::from_json(&json(snapshot("text_encoder/config.json"))).unwrap();
    let vb = VarBuilder::from_backend(
        Box::new(mmap(snapshot("text_encoder/model.safetensors"))),
        DType::F32,
        Device::Cpu,
    );
    let enc = Qwen3Encoder::new(
        &cfg,
        Qwen3Names::Transformers,
        &[2, 4, 6],
        &Weights::Dense(vb),
    )
    .unwrap();
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let got = enc.forward(&ids, &io["attention_mask"]).unwrap();
    assert_close("qwen3 prompt embeds", &got, &io["embeds"], TOL);
}

#[test]
fn qwen3_configs_and_taps_outside_the_stack_are_refused_by_name() {
    let base = json(snapshot("text_encoder/config.json"));
    for (field, value) in [
        ("hidden_act", serde_json::json!("gelu")),
        ("use_sliding_window", serde_json::json!(true)),
        ("model_type", serde_json::json!("gemma")),
    ] {
        let mut v = base.clone();
        v[field] = value;
        let e = Qwen3Config::from_json(&v).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    let mut v = base.clone();
    v["rope_parameters"]["rope_type"] = serde_json::json!("yarn");
    assert!(Qwen3Config::from_json(&v)
        .unwrap_err()
        .to_string()
        .contains("yarn"));
    let cfg = Qwen3Config::from_json(&base).unwrap();
    let vb = VarBuilder::from_backend(
        Box::new(mmap(snapshot("text_encoder/model.safetensors"))),
        DType::F32,
        Device::Cpu,
    );
    let e = Qwen3Encoder::new(&cfg, Qwen3Names::Transformers, &[2, 7], &Weights::Dense(vb))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("1..=6"), "{e}");
}

/// The text encoder of the fixture snapshot `text_encoder` (a folder) written as llama.cpp
/// writes a GGUF (its names and metadata), in f32 and with Q8_0 linear layers, loaded back
/// and run over the prompts of fixture `io`: the f32 file gives transformers' states within
/// 1e-4, the Q8_0 one within Q8's rounding. `written` is how many tensors the file holds,
/// `quantized` how many of them are Q8_0.
fn gguf_matches_transformers(text_encoder: PathBuf, io: &str, written: usize, quantized: usize) {
    use candle_core::quantized::GgmlDType;
    let (io, _) = common::load("flux2", io);
    let cfg = Qwen3Config::from_json(&json(text_encoder.join("config.json"))).unwrap();
    let dense =
        candle_core::safetensors::load(text_encoder.join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let names: Vec<String> = dense.keys().cloned().collect();
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (q, tol) in [(GgmlDType::F32, TOL), (GgmlDType::Q8_0, 0.1)] {
        let path = dir.path().join(format!("te-{q:?}.gguf"));
        let (n, nq) =
            sprout_models::qwen3::write_gguf(&path, &names, |k| Ok(dense[k].clone()), &cfg, q)
                .unwrap();
        assert_eq!(n, written);
        if q == GgmlDType::Q8_0 {
            assert_eq!(nq, quantized);
        }
        // GGUF stores the norm epsilon as f32.
        let read = sprout_models::qwen3::gguf_config(&path).unwrap();
        assert!((read.rms_norm_eps - cfg.rms_norm_eps).abs() < 1e-12);
        assert_eq!(
            read,
            Qwen3Config {
                rms_norm_eps: read.rms_norm_eps,
                ..cfg.clone()
            }
        );
        let enc =
            sprout_models::qwen3::load_gguf(&path, &[2, 4, 6], DType::F32, &Device::Cpu).unwrap();
        let got = enc.forward(&ids, &io["attention_mask"]).unwrap();
        assert_close(&format!("GGUF {q:?}"), &got, &io["embeds"], tol);
    }
}

#[test]
fn qwen3_from_llama_cpp_gguf_matches_transformers() {
    // Every tensor has a llama.cpp name (the embedding is tied); Q8_0 takes the linear
    // weights whose rows fit its blocks of 32 (all but down_proj's 48) and the embedding
    // table; norms stay f32.
    gguf_matches_transformers(
        snapshot("text_encoder"),
        "qwen3_io.safetensors",
        68,
        6 * 6 + 1,
    );
    let dir = tempfile::tempdir().unwrap();
    // Another architecture is refused by name.
    let other = dir.path().join("t5.gguf");
    let v = candle_core::quantized::gguf_file::Value::String("t5".into());
    let mut f = std::fs::File::create(&other).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &[("general.architecture", &v)], &[]).unwrap();
    drop(f);
    let e = sprout_models::qwen3::load_gguf(&other, &[2], DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("qwen3") && e.contains("\"t5\""), "{e}");
}

/// A text encoder or autoencoder file given without its `config.json` has its config read
/// from its tensors' shapes: for the fixture snapshot's parts, the configs their own
/// `config.json` files give (and for the autoencoder, under Black Forest Labs' names too).
#[test]
fn configs_read_from_the_shapes_equal_the_config_files() {
    use sprout_models::flux::inspect::{safetensors_header, TensorInfo};
    use sprout_models::flux::vae2::Flux2VaeConfig;
    let te = safetensors_header(&snapshot("text_encoder/model.safetensors")).unwrap();
    let want = Qwen3Config::from_json(&json(snapshot("text_encoder/config.json"))).unwrap();
    assert_eq!(Qwen3Config::from_tensors(&te).unwrap(), want);
    // transformers' bare `Qwen3Model` body (no `model.` prefix) reads the same.
    let bare: Vec<TensorInfo> = te
        .iter()
        .map(|t| TensorInfo {
            name: t.name.strip_prefix("model.").unwrap_or(&t.name).to_string(),
            ..t.clone()
        })
        .collect();
    assert_eq!(Qwen3Config::from_tensors(&bare).unwrap(), want);
    let e = Qwen3Config::from_tensors(&te[..0]).unwrap_err().to_string();
    assert!(e.contains("embed_tokens.weight"), "{e}");

    let vae = safetensors_header(&snapshot("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let want = flux2_vae_config(&json(snapshot("vae/config.json"))).unwrap();
    assert_eq!(Flux2VaeConfig::from_tensors(&vae).unwrap(), want);
    // The same tensors under Black Forest Labs' names (as Renamed::vae asks for them).
    let names = sprout_models::recorder::record(|vb| Flux2Vae::new(&want, vb).map(|_| ())).unwrap();
    let bfl: Vec<TensorInfo> = names
        .into_iter()
        .map(|(name, shape)| TensorInfo {
            name,
            shape,
            bytes: 0,
        })
        .collect();
    assert!(bfl
        .iter()
        .any(|t| t.name.starts_with("encoder.down.0.block.")));
    assert_eq!(Flux2VaeConfig::from_tensors(&bfl).unwrap(), want);
    let e = Flux2VaeConfig::from_tensors(&bfl[..1]).unwrap_err();
    assert!(
        e.contains("not an autoencoder") || e.contains("no tensor"),
        "{e}"
    );
}

// ---------------------------------------------------------------- FLUX.2 [dev]'s Mistral

fn dev_snapshot(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/flux2/dev_snapshot")
        .join(part)
}

/// A string the fixture tool stored in `name`'s metadata under `key`, parsed as JSON.
fn fixture_meta(name: &str, key: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/flux2")
        .join(name);
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    serde_json::from_str(&meta.metadata().as_ref().unwrap()[key]).unwrap()
}

/// The fixture's tiny Mistral3 (a Mistral language model beside a Pixtral vision tower),
/// its language model read under the `language_model.model.` prefix transformers saves.
fn mistral(taps: &[usize]) -> Qwen3Encoder {
    let cfg = Qwen3Config::from_json(&json(dev_snapshot("text_encoder/config.json"))).unwrap();
    assert!(!cfg.qk_norm, "Mistral's stack has no query / key norms");
    let vb = VarBuilder::from_backend(
        Box::new(Renamed::replace_prefix(
            mmap(dev_snapshot("text_encoder/model.safetensors")),
            "model.",
            "language_model.model.".into(),
        )),
        DType::F32,
        Device::Cpu,
    );
    Qwen3Encoder::new(&cfg, Qwen3Names::Transformers, taps, &Weights::Dense(vb)).unwrap()
}

#[test]
fn mistral_prompts_are_the_chat_template_left_padded_as_transformers_pads() {
    let (io, _) = common::load("flux2", "mistral_io.safetensors");
    let prompts = fixture_meta("mistral_io.safetensors", "prompts");
    let rendered = fixture_meta("mistral_io.safetensors", "rendered");
    let tok = flux2_tokenizer(&dev_snapshot("tokenizer")).unwrap();
    let tok_cfg = json(dev_snapshot("tokenizer/tokenizer_config.json"));
    assert!(pads_left(&tok_cfg, &serde_json::Value::Null, false).unwrap());
    let pad = tok.token_to_id("<pad>").unwrap();
    let want_ids = io["input_ids"].to_vec2::<f32>().unwrap();
    let want_mask = io["attention_mask"].to_vec2::<f32>().unwrap();
    for i in 0..2 {
        let text = mistral_chat_prompt(FLUX2_SYSTEM_MESSAGE, prompts[i].as_str().unwrap());
        assert_eq!(
            text,
            rendered[i].as_str().unwrap(),
            "the rendered chat template"
        );
        let padding = Padding {
            len: 96,
            pad_id: pad,
            left: true,
            add_special_tokens: false,
        };
        let (ids, mask) = encode_padded(&tok, &text, padding).unwrap();
        let ids: Vec<f32> = ids.iter().map(|&x| x as f32).collect();
        let mask: Vec<f32> = mask.iter().map(|&x| x as f32).collect();
        assert_eq!(ids, want_ids[i], "prompt {i}: ids");
        assert_eq!(mask, want_mask[i], "prompt {i}: mask");
    }
    // `[IMG]` is taken out of a prompt, as the pipeline does.
    assert_eq!(
        mistral_chat_prompt("s", "a [IMG]cat"),
        "<s>[SYSTEM_PROMPT]s[/SYSTEM_PROMPT][INST]a cat[/INST]"
    );
}

#[test]
fn padding_sides_come_from_the_tokenizer_config_or_its_class() {
    let none = serde_json::Value::Null;
    let side = |v: serde_json::Value| pads_left(&v, &none, false);
    assert!(side(serde_json::json!({"padding_side": "left"})).unwrap());
    assert!(!side(serde_json::json!({"padding_side": "right"})).unwrap());
    // transformers' Llama tokenizers (Mistral's) pad on the left by default, the rest right.
    assert!(side(serde_json::json!({"tokenizer_class": "LlamaTokenizerFast"})).unwrap());
    assert!(!side(serde_json::json!({"tokenizer_class": "Qwen2Tokenizer"})).unwrap());
    // With neither file saying, the pipeline's own side ([dev]'s Mistral: left).
    assert!(pads_left(&none, &none, true).unwrap());
    // tokenizer.json's padding direction when the config has no padding_side.
    let json = serde_json::json!({"padding": {"direction": "Left"}});
    assert!(pads_left(&serde_json::json!({}), &json, false).unwrap());
    assert!(!pads_left(&serde_json::json!({"padding_side": "right"}), &json, true).unwrap());
    let e = side(serde_json::json!({"padding_side": "middle"})).unwrap_err();
    assert!(e.to_string().contains("padding_side"), "{e}");
    let e = side(serde_json::json!({"truncation_side": "left"})).unwrap_err();
    assert!(e.to_string().contains("truncation_side"), "{e}");
    let json = serde_json::json!({"truncation": {"direction": "Left"}});
    let e = pads_left(&none, &json, false).unwrap_err();
    assert!(e.to_string().contains("truncation_side"), "{e}");
}

#[test]
fn mistral_tapped_states_match_transformers() {
    let (io, _) = common::load("flux2", "mistral_io.safetensors");
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let got = mistral(&[2, 4, 6])
        .forward(&ids, &io["attention_mask"])
        .unwrap();
    // Left padding: the positions before the prompt see no key; PyTorch's attention gives
    // them zeros (their MLPs still run), and so does Sprout's.
    assert_close("mistral prompt embeds", &got, &io["embeds"], TOL);
}

#[test]
fn mistral_from_llama_cpp_gguf_matches_transformers() {
    // The language model's 9 tensors a layer, its embedding and norm (no vision tower, no
    // lm_head), its query and key rows permuted as llama.cpp's converter does; Q8_0 as for
    // Qwen3 (q, k, v, o, gate and up a layer, and the embedding).
    gguf_matches_transformers(
        dev_snapshot("text_encoder"),
        "mistral_io.safetensors",
        9 * 6 + 2,
        6 * 6 + 1,
    );
}

#[test]
fn a_mistral_config_is_read_from_its_files_or_refused_by_name() {
    use sprout_models::flux::inspect::{safetensors_header, TensorInfo};
    let base = json(dev_snapshot("text_encoder/config.json"));
    let cfg = Qwen3Config::from_json(&base).unwrap();
    assert_eq!(
        (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim),
        (32, 6, 8)
    );
    assert_eq!(cfg.rope_theta, 1e9);
    assert_eq!(cfg.rms_norm_eps, 1e-5);
    // The bare language model's config reads the same.
    assert_eq!(Qwen3Config::from_json(&base["text_config"]).unwrap(), cfg);
    // A sliding window shorter than a prompt would hide keys: refused by name.
    let mut v = base.clone();
    v["text_config"]["sliding_window"] = serde_json::json!(128);
    let e = Qwen3Config::from_json(&v).unwrap_err().to_string();
    assert!(e.contains("sliding_window"), "{e}");
    let mut v = base.clone();
    v["text_config"]["sliding_window"] = serde_json::json!(4096);
    assert!(Qwen3Config::from_json(&v).is_ok());
    // Without its config: the tiny stack's head width is in no shape, so it is refused...
    let te = safetensors_header(&dev_snapshot("text_encoder/model.safetensors")).unwrap();
    let e = Qwen3Config::from_tensors(&te).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
    // ...while Mistral Small 3.2's shapes (as a single file of it lists them) read as it.
    let full = Qwen3Config::mistral_small_3_2();
    let names = sprout_models::recorder::record(|vb| {
        Qwen3Encoder::new(&full, Qwen3Names::Transformers, &[40], &Weights::Dense(vb))
            .map(|_| ())
            .map_err(candle_core::Error::wrap)
    })
    .unwrap();
    let infos: Vec<TensorInfo> = names
        .into_iter()
        .map(|(name, shape)| TensorInfo {
            name: format!("language_model.{name}"),
            shape,
            bytes: 0,
        })
        .collect();
    assert!(infos
        .iter()
        .any(|t| t.name == "language_model.model.embed_tokens.weight"));
    assert_eq!(Qwen3Config::from_tensors(&infos).unwrap(), full);
    // The preset against independent truth: transformers' own Mistral3Config defaults
    // (Mistral Small 3.x's language model), as the fixture tool saved them.
    let defaults = json(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/flux2/mistral3_default_config.json"),
    );
    assert_eq!(Qwen3Config::from_json(&defaults).unwrap(), full);
}
