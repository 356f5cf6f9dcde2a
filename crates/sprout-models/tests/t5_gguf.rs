//! Sprout's T5 encoder (for GGUF files) against transformers' reference states on the tiny
//! T5 fixture (`tools/flux-parity/make_fixtures.py`): from dense weights, and from GGUF files
//! with llama.cpp's tensor names, stored as f32 (equal) and Q8_0 (close).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sprout_models::ops::{max_abs, max_abs_diff};
use sprout_models::t5::{
    llama_cpp_name, load_gguf, T5Encoder, T5EncoderConfig, T5Names, GGUF_T5_CONFIG_KEY,
};
use sprout_models::weights::Weights;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/flux")
        .join(name)
}

fn load(name: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cfg = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .map(|c| serde_json::from_str(c).unwrap())
        .unwrap_or(serde_json::Value::Null);
    let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap()))
        .collect();
    (t, cfg)
}

fn config(c: &serde_json::Value) -> T5EncoderConfig {
    serde_json::from_value(c.clone()).unwrap()
}

fn write_gguf(path: &Path, w: &HashMap<String, Tensor>, q: GgmlDType, meta: &[(&str, &str)]) {
    let mut tensors: Vec<(String, candle_core::quantized::QTensor)> = w
        .iter()
        .map(|(k, v)| {
            let n = llama_cpp_name(k);
            (n.clone(), sprout_models::gguf::quantize(&n, v, q).unwrap())
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    sprout_models::gguf::write(path, &tensors, meta).unwrap();
}

#[test]
fn t5_encoder_from_dense_and_gguf_weights_matches_the_reference() {
    let (w, c) = load("t5.safetensors");
    let (io, _) = load("t5_io.safetensors");
    let ids = io["input_ids"].to_dtype(DType::U32).unwrap();
    let want = &io["last_hidden_state"];
    let scale = max_abs(want).unwrap();
    let cfg = config(&c);

    let vb = VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
    let dense = T5Encoder::new(&cfg, T5Names::Transformers, &Weights::Dense(vb)).unwrap();
    let got = dense.forward(&ids).unwrap();
    let d = max_abs_diff(&got, want).unwrap();
    eprintln!("dense: max abs error {d:.2e} (reference max |x| {scale:.2})");
    assert!(d <= 1e-4, "dense: {d}");

    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::to_string(&cfg).unwrap();
    for (q, tol) in [(GgmlDType::F32, 1e-4), (GgmlDType::Q8_0, 0.03 * scale)] {
        let p = dir.path().join(format!("t5-{q:?}.gguf"));
        write_gguf(&p, &w, q, &[(GGUF_T5_CONFIG_KEY, &json)]);
        let t5 = load_gguf(&p, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t5.config(), &cfg);
        let d = max_abs_diff(&t5.forward(&ids).unwrap(), want).unwrap();
        eprintln!("gguf {q:?}: max abs error {d:.2e}");
        assert!(d <= tol, "{q:?}: {d} > {tol}");
    }

    // A file without Sprout's metadata: the sizes come from the shapes, with T5's own
    // relative max distance (128; the fixture uses 20).
    let p = dir.path().join("community.gguf");
    write_gguf(&p, &w, GgmlDType::Q8_0, &[]);
    let t5 = load_gguf(&p, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        t5.config(),
        &T5EncoderConfig {
            relative_attention_max_distance: 128,
            ..cfg.clone()
        }
    );

    // A tensor of the wrong shape is named.
    let mut bad = w.clone();
    bad.insert(
        "encoder.block.1.layer.1.DenseReluDense.wo.weight".into(),
        Tensor::zeros((32, 40), DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("bad.gguf");
    write_gguf(&p, &bad, GgmlDType::F32, &[(GGUF_T5_CONFIG_KEY, &json)]);
    let e = load_gguf(&p, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("enc.blk.1.ffn_down.weight") && e.contains("bad.gguf"),
        "{e}"
    );
}
