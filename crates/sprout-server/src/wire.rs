//! What travels through the broker between the front end and the workers: a checked
//! request with its input images and tensors, images produced, and errors, as JSON (binary
//! parts in base64). Nothing here depends on the process that reads it: a request decoded
//! by a worker is the request the front end checked.

use base64::Engine;
use candle_core::{Device, Tensor};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use sprout_pipeline::flow::Sampler;
use sprout_pipeline::request::{InitImage, Request};

use crate::error::ApiError;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A tensor as its shape and its f32 values, little-endian, in base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireTensor {
    pub shape: Vec<usize>,
    pub f32_le: String,
}

impl WireTensor {
    pub fn from_tensor(t: &Tensor) -> Result<WireTensor, ApiError> {
        let v: Vec<f32> = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(|e| ApiError::Internal(format!("a request tensor: {e}")))?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Ok(WireTensor {
            shape: t.dims().to_vec(),
            f32_le: b64().encode(bytes),
        })
    }

    pub fn to_tensor(&self, dev: &Device) -> Result<Tensor, ApiError> {
        let bad = |m: String| ApiError::Internal(format!("a job's tensor: {m}"));
        let bytes = b64().decode(&self.f32_le).map_err(|e| bad(e.to_string()))?;
        let n: usize = self.shape.iter().product();
        if bytes.len() != 4 * n {
            return Err(bad(format!(
                "{} bytes for shape {:?} ({} values)",
                bytes.len(),
                self.shape,
                n
            )));
        }
        let v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::from_vec(v, self.shape.as_slice(), dev).map_err(|e| bad(e.to_string()))
    }
}

/// An RGB image: its size and its pixels, row-major, in base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireImage {
    pub width: u32,
    pub height: u32,
    pub rgb: String,
}

impl WireImage {
    pub fn from_image(img: &RgbImage) -> WireImage {
        WireImage {
            width: img.width(),
            height: img.height(),
            rgb: b64().encode(img.as_raw()),
        }
    }

    pub fn to_image(&self) -> Result<RgbImage, ApiError> {
        let bytes = b64()
            .decode(&self.rgb)
            .map_err(|e| ApiError::Internal(format!("an image from the broker: {e}")))?;
        RgbImage::from_raw(self.width, self.height, bytes).ok_or_else(|| {
            ApiError::Internal(format!(
                "an image from the broker does not hold {}x{} RGB pixels",
                self.width, self.height
            ))
        })
    }
}

/// Images as one JSON document.
pub fn images_to_json(images: &[RgbImage]) -> String {
    let v: Vec<WireImage> = images.iter().map(WireImage::from_image).collect();
    serde_json::to_string(&v).expect("images serialise")
}

pub fn images_from_json(s: &str) -> Result<Vec<RgbImage>, ApiError> {
    let v: Vec<WireImage> = serde_json::from_str(s)
        .map_err(|e| ApiError::Internal(format!("images from the broker: {e}")))?;
    v.iter().map(WireImage::to_image).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireInit {
    pub image: WireTensor,
    pub strength: f64,
    pub mask: Option<WireTensor>,
}

/// A job as a worker receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireJob {
    pub prompt: String,
    pub n: usize,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f64,
    pub width: u32,
    pub height: u32,
    pub sampler: Sampler,
    pub init: Option<WireInit>,
    pub negative_prompt: Option<String>,
    pub true_cfg: Option<f64>,
    pub images: Vec<WireImage>,
    pub latents: Option<WireTensor>,
    pub max_sequence_length: Option<usize>,
    /// Previews the client asked for.
    pub previews: usize,
    /// When the front end accepted the job (ms since the Unix epoch) and how long it may
    /// take from then (the server's deadline), in seconds.
    pub accepted_ms: u64,
    pub deadline_s: u64,
}

impl WireJob {
    pub fn new(
        r: &Request,
        previews: usize,
        accepted_ms: u64,
        deadline_s: u64,
    ) -> Result<WireJob, ApiError> {
        Ok(WireJob {
            prompt: r.prompt.clone(),
            n: r.n,
            seed: r.seed,
            steps: r.steps,
            guidance: r.guidance,
            width: r.width,
            height: r.height,
            sampler: r.sampler,
            init: match &r.init {
                None => None,
                Some(i) => Some(WireInit {
                    image: WireTensor::from_tensor(&i.image)?,
                    strength: i.strength,
                    mask: i.mask.as_ref().map(WireTensor::from_tensor).transpose()?,
                }),
            },
            negative_prompt: r.negative_prompt.clone(),
            true_cfg: r.true_cfg,
            images: r.images.iter().map(WireImage::from_image).collect(),
            latents: r
                .latents
                .as_ref()
                .map(WireTensor::from_tensor)
                .transpose()?,
            max_sequence_length: r.max_sequence_length,
            previews,
            accepted_ms,
            deadline_s,
        })
    }

    pub fn request(&self, dev: &Device) -> Result<Request, ApiError> {
        Ok(Request {
            prompt: self.prompt.clone(),
            n: self.n,
            seed: self.seed,
            steps: self.steps,
            guidance: self.guidance,
            width: self.width,
            height: self.height,
            sampler: self.sampler,
            init: match &self.init {
                None => None,
                Some(i) => Some(InitImage {
                    image: i.image.to_tensor(dev)?,
                    strength: i.strength,
                    mask: i.mask.as_ref().map(|m| m.to_tensor(dev)).transpose()?,
                }),
            },
            negative_prompt: self.negative_prompt.clone(),
            true_cfg: self.true_cfg,
            images: self
                .images
                .iter()
                .map(WireImage::to_image)
                .collect::<Result<_, _>>()?,
            latents: self
                .latents
                .as_ref()
                .map(|l| l.to_tensor(dev))
                .transpose()?,
            max_sequence_length: self.max_sequence_length,
        })
    }
}

/// An error as a worker reports it: enough to rebuild the same [`ApiError`] in the front
/// end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WireError {
    /// [`ApiError::label`].
    pub label: String,
    pub message: String,
    pub param: Option<String>,
    /// The deadline in seconds, for `deadline`.
    pub seconds: Option<u64>,
}

impl WireError {
    pub fn from_error(e: &ApiError) -> WireError {
        WireError {
            label: e.label().to_string(),
            message: match e {
                ApiError::Invalid { message, .. } => message.clone(),
                ApiError::Internal(m) => m.clone(),
                other => other.to_string(),
            },
            param: match e {
                ApiError::Invalid { param, .. } => param.clone(),
                _ => None,
            },
            seconds: match e {
                ApiError::Deadline(s) => Some(*s),
                _ => None,
            },
        }
    }

    pub fn to_error(&self) -> ApiError {
        match self.label.as_str() {
            "invalid" => ApiError::Invalid {
                message: self.message.clone(),
                param: self.param.clone(),
            },
            "cancelled" => ApiError::Cancelled,
            "deadline" => ApiError::Deadline(self.seconds.unwrap_or(0)),
            "shutting_down" => ApiError::ShuttingDown,
            _ => ApiError::Internal(self.message.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_tensors_and_images_round_trips() {
        let dev = Device::Cpu;
        let image = Tensor::arange(0f32, 24.0, &dev)
            .unwrap()
            .reshape((1, 3, 2, 4))
            .unwrap();
        let mask = Tensor::ones((1, 1, 2, 4), candle_core::DType::F32, &dev).unwrap();
        let mut pic = RgbImage::new(3, 2);
        pic.put_pixel(2, 1, image::Rgb([1, 2, 250]));
        let r = Request {
            prompt: "a red circle".into(),
            n: 2,
            seed: 77,
            steps: 5,
            guidance: 3.5,
            width: 64,
            height: 32,
            sampler: Sampler::Heun,
            init: Some(InitImage {
                image: (image * 0.1).unwrap(),
                strength: 0.6,
                mask: Some(mask),
            }),
            negative_prompt: Some("blurry".into()),
            true_cfg: Some(2.0),
            images: vec![pic.clone()],
            latents: None,
            max_sequence_length: Some(128),
        };
        let w = WireJob::new(&r, 2, 1234, 600).unwrap();
        let back: WireJob = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        let q = back.request(&dev).unwrap();
        assert_eq!(
            (q.prompt.as_str(), q.n, q.seed, q.steps, q.width, q.height),
            ("a red circle", 2, 77, 5, 64, 32)
        );
        assert_eq!(
            (q.guidance, q.sampler, q.true_cfg),
            (3.5, Sampler::Heun, Some(2.0))
        );
        assert_eq!(q.negative_prompt.as_deref(), Some("blurry"));
        assert_eq!(q.max_sequence_length, Some(128));
        assert_eq!(q.images, vec![pic]);
        let (a, b) = (r.init.unwrap(), q.init.unwrap());
        assert_eq!(a.strength, b.strength);
        let va: Vec<f32> = a.image.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = b.image.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, vb, "bit-exact");
        assert_eq!(b.image.dims(), &[1, 3, 2, 4]);
        assert_eq!(b.mask.unwrap().dims(), &[1, 1, 2, 4]);
        assert_eq!(
            (back.previews, back.accepted_ms, back.deadline_s),
            (2, 1234, 600)
        );
    }

    #[test]
    fn a_truncated_tensor_is_refused_by_shape() {
        let w = WireTensor {
            shape: vec![2, 2],
            f32_le: b64().encode([0u8; 12]),
        };
        let e = w.to_tensor(&Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("12 bytes") && e.contains("[2, 2]"), "{e}");
    }

    #[test]
    fn errors_keep_their_kind_and_param() {
        for e in [
            ApiError::invalid("steps", "steps 0 is out of range"),
            ApiError::Deadline(30),
            ApiError::Cancelled,
            ApiError::Internal("out of memory".into()),
        ] {
            let w = WireError::from_error(&e);
            let back: WireError =
                serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
            let e2 = back.to_error();
            assert_eq!(e2.to_string(), e.to_string());
            assert_eq!(e2.status(), e.status());
            assert_eq!(e2.label(), e.label());
        }
        let img = RgbImage::from_pixel(2, 3, image::Rgb([9, 8, 7]));
        let back = images_from_json(&images_to_json(std::slice::from_ref(&img))).unwrap();
        assert_eq!(back, vec![img]);
    }
}
