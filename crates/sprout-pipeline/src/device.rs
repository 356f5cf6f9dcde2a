//! The compute device, chosen by the caller (`--device cpu|cuda[:N]`), never assumed.

use candle_core::Device;

use crate::PipelineError;

/// `cpu`, `cuda` (the first GPU) or `cuda:N`; a CUDA device in a build without CUDA is
/// refused by name, with how to get one.
pub fn parse(name: &str) -> Result<Device, PipelineError> {
    let bad = |m: String| PipelineError::invalid("device", m);
    match name {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let Some(index) = name
                .strip_prefix("cuda")
                .map(|rest| match rest.strip_prefix(':') {
                    Some(n) => n.parse::<usize>().ok(),
                    None if rest.is_empty() => Some(0),
                    None => None,
                })
            else {
                return Err(bad(format!(
                    "device {name:?} is not one of cpu, cuda, cuda:N"
                )));
            };
            let Some(index) = index else {
                return Err(bad(format!("device {name:?}: expected cuda or cuda:N")));
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(bad(format!(
                    "device {name}: this build has no CUDA support (build with `--features cuda` on a machine with the CUDA toolkit; tools/cuda/build.sh does)"
                )));
            }
            Device::new_cuda(index).map_err(|e| bad(format!("device {name}: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_named() {
        assert!(parse("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "cudax", ""] {
            let e = parse(bad).unwrap_err();
            assert!(
                matches!(&e, PipelineError::Invalid { param: "device", message } if message.contains("cuda")),
                "{bad}: {e:?}"
            );
        }
        if !candle_core::utils::cuda_is_available() {
            let e = parse("cuda").unwrap_err().to_string();
            assert!(e.contains("no CUDA support"), "{e}");
        }
    }
}
