//! Writing quantized weights as GGUF (candle reads and writes the container and the block
//! formats; this module only decides which tensors to quantize, as community FLUX
//! conversions do: 2-D `*.weight` matrices whose rows split into whole blocks; norm scales,
//! biases and short rows stay f32).

use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};

/// Read a GGUF file's header (metadata and tensor table) with candle's reader, after
/// checking what that reader does not: a `general.alignment` of 0 makes it divide by zero.
/// Every GGUF file `sprout` opens is read through here.
pub fn read_content(path: &Path) -> Result<gguf_file::Content> {
    let bad = |e: String| {
        ModelError::Config(format!(
            "{}: not a readable GGUF file ({e})",
            path.display()
        ))
    };
    let mut f = std::fs::File::open(path)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    if let Some(a) = scan_alignment(&mut std::io::BufReader::new(&mut f)) {
        if a == 0 {
            return Err(bad("general.alignment is 0".into()));
        }
    }
    use std::io::Seek;
    f.rewind().map_err(|e| bad(e.to_string()))?;
    gguf_file::Content::read(&mut f).map_err(|e| bad(e.to_string()))
}

/// The value of `general.alignment` in a GGUF header as candle's reader takes it, found by
/// walking the metadata: only 8-, 16- and 32-bit integers count (candle uses its default for
/// other types), and a key given twice counts as the last one (candle keeps the last).
/// `None` when no such entry is found before the header ends or turns malformed (candle's
/// reader then names what is wrong).
fn scan_alignment(r: &mut impl std::io::Read) -> Option<u64> {
    fn bytes<const N: usize>(r: &mut impl std::io::Read) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        r.read_exact(&mut b).ok().map(|_| b)
    }
    fn u32_(r: &mut impl std::io::Read) -> Option<u32> {
        bytes::<4>(r).map(u32::from_le_bytes)
    }
    fn len(r: &mut impl std::io::Read, v1: bool) -> Option<u64> {
        if v1 {
            u32_(r).map(u64::from)
        } else {
            bytes::<8>(r).map(u64::from_le_bytes)
        }
    }
    fn skip(r: &mut impl std::io::Read, n: u64) -> Option<()> {
        let got = std::io::copy(&mut std::io::Read::take(&mut *r, n), &mut std::io::sink()).ok()?;
        (got == n).then_some(())
    }
    /// Skip one value of type `t`; an alignment candle would read from it is returned.
    fn value(r: &mut impl std::io::Read, t: u32, v1: bool, depth: u32) -> Option<Option<u64>> {
        Some(match t {
            0 | 1 => Some(bytes::<1>(r)?[0] as u64),
            2 | 3 => Some(u16::from_le_bytes(bytes::<2>(r)?) as u64),
            4 | 5 => Some(u32_(r)? as u64),
            7 => {
                skip(r, 1)?;
                None
            }
            6 => {
                skip(r, 4)?;
                None
            }
            10..=12 => {
                skip(r, 8)?;
                None
            }
            8 => {
                let n = len(r, v1)?;
                skip(r, n)?;
                None
            }
            9 if depth < 4 => {
                let et = u32_(r)?;
                for _ in 0..len(r, v1)? {
                    value(r, et, v1, depth + 1)?;
                }
                None
            }
            _ => return None,
        })
    }
    if &bytes::<4>(r)? != b"GGUF" {
        return None;
    }
    let v1 = u32_(r)? == 1;
    let _tensors = len(r, v1)?;
    let mut alignment = None;
    for _ in 0..len(r, v1)? {
        let Some(n) = len(r, v1).filter(|&n| n <= 1 << 20) else {
            break;
        };
        let mut key = vec![0u8; n as usize];
        let Some(v) = r
            .read_exact(&mut key)
            .ok()
            .and_then(|_| u32_(r))
            .and_then(|t| value(r, t, v1, 0))
        else {
            break;
        };
        if key == b"general.alignment" {
            alignment = v;
        }
    }
    alignment
}

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
    fn alignment_is_refused_only_where_candles_reader_would_divide_by_zero() {
        let d = tempfile::tempdir().unwrap();
        let read = |name: &str, meta: &[(&str, &gguf_file::Value)]| {
            let p = d.path().join(name);
            let mut f = std::fs::File::create(&p).unwrap();
            gguf_file::write(&mut f, meta, &[]).unwrap();
            read_content(&p)
        };
        use gguf_file::Value;
        let zero = read("zero.gguf", &[("general.alignment", &Value::U32(0))]).unwrap_err();
        assert!(
            zero.to_string().contains("general.alignment is 0"),
            "{zero}"
        );
        // candle keeps a key's last entry: a valid alignment before a zero one hides nothing.
        let (a, z) = (Value::U32(32), Value::U16(0));
        let twice = read(
            "twice.gguf",
            &[("general.alignment", &a), ("general.alignment", &z)],
        );
        assert!(twice.is_err());
        // 64-bit integers are not read as an alignment (candle falls back to its default).
        let wide = read("wide.gguf", &[("general.alignment", &Value::U64(0))]).unwrap();
        assert_eq!(wide.tensor_data_offset % 32, 0);
        let fine = read("fine.gguf", &[("general.alignment", &Value::U32(64))]).unwrap();
        assert_eq!(fine.tensor_data_offset % 64, 0);
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
