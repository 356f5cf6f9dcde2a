//! Writing quantized weights as GGUF (candle reads and writes the container and the block
//! formats; this module only decides which tensors to quantize, as community FLUX
//! conversions do: 2-D `*.weight` matrices whose rows split into whole blocks; norm scales,
//! biases and short rows stay f32).

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};

/// The block formats `sprout` writes and reads by name.
pub const QUANTS: [(&str, GgmlDType); 4] = [
    ("q8_0", GgmlDType::Q8_0),
    ("q4_0", GgmlDType::Q4_0),
    ("q4_k", GgmlDType::Q4K),
    ("f16", GgmlDType::F16),
];

pub fn parse_quant(name: &str) -> Result<GgmlDType> {
    let lower = name.to_ascii_lowercase();
    QUANTS
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, q)| *q)
        .ok_or_else(|| {
            let names: Vec<&str> = QUANTS.iter().map(|(n, _)| *n).collect();
            ModelError::Config(format!(
                "unknown quantization {name:?}; one of {}",
                names.join(", ")
            ))
        })
}

/// Whether tensor `name` of shape `dims` is stored as `q` (else as f32).
pub fn quantizes(name: &str, dims: &[usize], q: GgmlDType) -> bool {
    name.ends_with(".weight") && dims.len() == 2 && dims[1].is_multiple_of(q.block_size())
}

/// `t` as stored for tensor `name` in a `q` file.
pub fn quantize(name: &str, t: &Tensor, q: GgmlDType) -> Result<QTensor> {
    let t = t.to_dtype(DType::F32)?;
    let q = if quantizes(name, t.dims(), q) {
        q
    } else {
        GgmlDType::F32
    };
    Ok(QTensor::quantize(&t, q)?)
}

/// Write `tensors` (already in their stored form) to `path`, with `general.architecture`
/// and any extra string metadata.
pub fn write(path: &Path, tensors: &[(String, QTensor)], meta: &[(&str, &str)]) -> Result<()> {
    let io = |e: &dyn std::fmt::Display| ModelError::Config(format!("{}: {e}", path.display()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| io(&e))?);
    let values: Vec<(&str, gguf_file::Value)> = meta
        .iter()
        .map(|(k, v)| (*k, gguf_file::Value::String(v.to_string())))
        .collect();
    let meta: Vec<(&str, &gguf_file::Value)> = values.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta, &ts).map_err(|e| io(&e))?;
    std::io::Write::flush(&mut f).map_err(|e| io(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn which_tensors_are_quantized_and_names() {
        assert!(quantizes("a.qkv.weight", &[96, 64], GgmlDType::Q4_0));
        assert!(!quantizes("a.qkv.weight", &[96, 48], GgmlDType::Q4_0));
        assert!(!quantizes("a.qkv.weight", &[96, 64], GgmlDType::Q4K));
        assert!(!quantizes("a.qkv.bias", &[96, 64], GgmlDType::Q8_0));
        assert!(!quantizes("a.norm.scale", &[64], GgmlDType::Q8_0));
        assert_eq!(parse_quant("Q4_0").unwrap(), GgmlDType::Q4_0);
        let e = parse_quant("q3").unwrap_err().to_string();
        assert!(e.contains("q8_0, q4_0, q4_k"), "{e}");
    }

    #[test]
    fn written_files_read_back() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (4, 64), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        let tensors = vec![
            (
                "l.weight".to_string(),
                quantize("l.weight", &w, GgmlDType::Q8_0).unwrap(),
            ),
            (
                "l.bias".to_string(),
                quantize("l.bias", &b, GgmlDType::Q8_0).unwrap(),
            ),
        ];
        write(&p, &tensors, &[("general.architecture", "flux")]).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        let c = gguf_file::Content::read(&mut f).unwrap();
        let qw = c.tensor(&mut f, "l.weight", &dev).unwrap();
        let qb = c.tensor(&mut f, "l.bias", &dev).unwrap();
        assert_eq!((qw.dtype(), qb.dtype()), (GgmlDType::Q8_0, GgmlDType::F32));
        assert_eq!(qw.shape().dims(), &[4, 64]);
        // Q8_0 keeps each value to within half a step of its block's scale (max |x| / 127).
        let back = qw.dequantize(&dev).unwrap();
        let err = crate::ops::max_abs_diff(&back, &w).unwrap();
        let bound = crate::ops::max_abs(&w).unwrap() / 127.0 * 0.6;
        assert!(err <= bound, "{err} > {bound}");
        let bb = qb.dequantize(&dev).unwrap();
        assert_eq!(crate::ops::max_abs_diff(&bb, &b).unwrap(), 0.0);
        assert_eq!(
            c.metadata["general.architecture"].to_string().unwrap(),
            "flux"
        );
    }
}
