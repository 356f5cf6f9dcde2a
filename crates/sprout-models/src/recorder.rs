//! The parameters a model asks for, without weights: a VarBuilder backend that records each
//! requested name and shape and answers with a zero-size broadcast view (no memory is
//! allocated), so building a model over it lists exactly what its loaders will ask a file for.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// A parameter's name and shape.
pub type Param = (String, Vec<usize>);

struct Recorder(Arc<Mutex<Vec<Param>>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        self.0
            .lock()
            .expect("recorder")
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("{name}: the recorder needs the shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The (name, shape) of every parameter `build` asks for, sorted.
pub fn record(build: impl FnOnce(VarBuilder) -> Result<()>) -> Result<Vec<Param>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let vb = VarBuilder::from_backend(Box::new(Recorder(seen.clone())), DType::F32, Device::Cpu);
    build(vb)?;
    let mut v = seen.lock().expect("recorder").clone();
    v.sort();
    v.dedup();
    Ok(v)
}

/// A random value for parameter `name` of shape `dims`, for full-size test files of real
/// shapes: ones for 1-D norm scales (`scale`, `weight`) and running variances, zeros for
/// biases and running means, N(0, 0.02²) elsewhere.
pub fn random_param(name: &str, dims: &[usize]) -> Result<Tensor> {
    let dev = Device::Cpu;
    let last = name.rsplit('.').next().unwrap_or(name);
    if (dims.len() == 1 && (last == "scale" || last == "weight")) || last == "running_var" {
        Tensor::ones(dims, DType::F32, &dev)
    } else if last == "bias" || last == "running_mean" {
        Tensor::zeros(dims, DType::F32, &dev)
    } else {
        Tensor::randn(0f32, 0.02, dims, &dev)
    }
}

/// Write `params` with [`random_param`] values as one bf16 safetensors file at `path`
/// (its folder created), returning the parameter count.
pub fn save_random_bf16(params: &[Param], path: &std::path::Path) -> Result<usize> {
    let mut map = std::collections::HashMap::new();
    for (name, dims) in params {
        map.insert(
            name.clone(),
            random_param(name, dims)?.to_dtype(DType::BF16)?,
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    candle_core::safetensors::save(&map, path)?;
    Ok(params
        .iter()
        .map(|(_, d)| d.iter().product::<usize>())
        .sum())
}
