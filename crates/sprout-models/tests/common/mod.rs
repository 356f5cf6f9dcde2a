//! What the parity tests share: reading a fixture made by `tools/flux-parity`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// The tensors of fixture `name` in `tests/fixtures/{dir}` as f32, and the `config` JSON the
/// tool stored in the file's metadata (Null where there is none).
pub fn load(dir: &str, name: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
