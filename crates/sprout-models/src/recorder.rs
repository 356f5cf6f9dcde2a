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
