//! `POST /v1/images/edits`: input images (multipart `image` / `image[]`, or the JSON
//! `images` form with data URLs) and an optional mask, each decoded under size and
//! allocation limits before anything else happens.

use std::io::Cursor;

use axum::extract::Multipart;
use base64::Engine;
use image::{DynamicImage, ImageReader, Limits};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::generations::{parse_json, GenerationBody};

/// Most input images per edit.
pub const MAX_IMAGES: usize = 16;

/// The decoded inputs of an edit and its text fields.
#[derive(Debug, Default)]
pub struct EditInputs {
    pub images: Vec<DynamicImage>,
    pub mask: Option<DynamicImage>,
    pub prompt: Option<String>,
    pub model: Option<String>,
    /// The generation fields (`n`, `size`, `seed`, …), checked by the generation rules.
    pub fields: Map<String, Value>,
}

impl EditInputs {
    /// The generation request these fields make (prompt and model included); a field of
    /// the wrong type is named in the error.
    pub fn generation_body(&self) -> Result<GenerationBody, ApiError> {
        let mut f = self.fields.clone();
        // OpenAI's input fidelity has no counterpart here; accepted so that clients work.
        f.remove("input_fidelity");
        if let Some(p) = &self.prompt {
            f.insert("prompt".into(), Value::String(p.clone()));
        }
        if let Some(m) = &self.model {
            f.insert("model".into(), Value::String(m.clone()));
        }
        parse_json(&serde_json::to_vec(&Value::Object(f)).expect("a JSON map serializes"))
    }
}

/// A multipart text field as JSON: the numeric and boolean generation fields are parsed
/// (when they do not parse, they stay text and the generation rules name them).
fn field_value(name: &str, text: String) -> Value {
    let parsed = match name {
        "n" | "output_compression" | "partial_images" | "steps" => {
            text.trim().parse::<i64>().ok().map(Value::from)
        }
        "seed" => text.trim().parse::<u64>().ok().map(Value::from),
        "guidance" => text.trim().parse::<f64>().ok().map(Value::from),
        "stream" => text.trim().parse::<bool>().ok().map(Value::from),
        _ => None,
    };
    parsed.unwrap_or(Value::String(text))
}

/// Decoding limits: no side beyond `max_side`, no allocation beyond `max_alloc` bytes, so a
/// small file that claims a huge canvas (a decompression bomb) is refused before decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_side: u32,
    pub max_alloc: u64,
}

pub fn decode_image(
    bytes: &[u8],
    param: &str,
    lim: DecodeLimits,
) -> Result<DynamicImage, ApiError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::invalid(param, format!("{param}: cannot be read: {e}")))?;
    if reader.format().is_none() {
        return Err(ApiError::invalid(
            param,
            format!("{param}: not an image (PNG, JPEG or WebP expected)"),
        ));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(lim.max_side);
    limits.max_image_height = Some(lim.max_side);
    limits.max_alloc = Some(lim.max_alloc);
    reader.limits(limits);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => ApiError::invalid(
            param,
            format!(
                "{param}: the image is larger than this server accepts (at most {0}x{0} pixels): {l}",
                lim.max_side
            ),
        ),
        other => ApiError::invalid(param, format!("{param}: not a readable image: {other}")),
    })
}

/// The JSON form: `{"prompt": …, "images": [{"image_url": "data:image/png;base64,…"}], "mask": {…}}`
/// and the generation fields.
#[derive(Debug, Deserialize)]
pub struct JsonEdit {
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub images: Vec<ImageRef>,
    pub mask: Option<ImageRef>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    pub image_url: Option<String>,
    pub file_id: Option<String>,
}

fn data_url(r: &ImageRef, param: &str) -> Result<Vec<u8>, ApiError> {
    if r.file_id.is_some() {
        return Err(ApiError::invalid(
            param,
            format!("{param}: file_id references are not served; send the image as a data URL"),
        ));
    }
    let Some(url) = &r.image_url else {
        return Err(ApiError::invalid(
            param,
            format!("{param}: image_url is missing"),
        ));
    };
    let Some(b64) = url
        .strip_prefix("data:")
        .and_then(|u| u.split_once(";base64,"))
        .map(|x| x.1)
    else {
        return Err(ApiError::invalid(
            param,
            format!("{param}: only data URLs (data:image/png;base64,…) are served; the server fetches nothing"),
        ));
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| ApiError::invalid(param, format!("{param}: invalid base64: {e}")))
}

pub fn from_json(j: JsonEdit, lim: DecodeLimits) -> Result<EditInputs, ApiError> {
    if j.images.is_empty() || j.images.len() > MAX_IMAGES {
        return Err(ApiError::invalid(
            "images",
            format!(
                "{} images given; an edit takes 1..={MAX_IMAGES}",
                j.images.len()
            ),
        ));
    }
    let mut images = Vec::new();
    for (i, r) in j.images.iter().enumerate() {
        let p = format!("images[{i}]");
        images.push(decode_image(&data_url(r, &p)?, &p, lim)?);
    }
    let mask = match &j.mask {
        Some(m) => Some(decode_image(&data_url(m, "mask")?, "mask", lim)?),
        None => None,
    };
    let inputs = EditInputs {
        images,
        mask,
        prompt: j.prompt,
        model: j.model,
        fields: j.rest,
    };
    check_mask(&inputs)?;
    Ok(inputs)
}

pub async fn from_multipart(
    mut mp: Multipart,
    lim: DecodeLimits,
    body_limit: usize,
) -> Result<EditInputs, ApiError> {
    let mut out = EditInputs::default();
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge { limit: body_limit }
        } else {
            ApiError::Invalid {
                message: format!("the multipart body could not be read: {}", e.body_text()),
                param: None,
            }
        }
    };
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        let bytes = field.bytes().await.map_err(bad)?;
        match name.as_str() {
            "image" | "image[]" => {
                if out.images.len() == MAX_IMAGES {
                    return Err(ApiError::invalid(
                        "image",
                        format!("more than {MAX_IMAGES} images; an edit takes 1..={MAX_IMAGES}"),
                    ));
                }
                let p = format!("image[{}]", out.images.len());
                out.images.push(decode_image(&bytes, &p, lim)?);
            }
            "mask" => out.mask = Some(decode_image(&bytes, "mask", lim)?),
            "prompt" | "model" => {
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| ApiError::invalid(&name, format!("{name} is not UTF-8 text")))?;
                if name == "prompt" {
                    out.prompt = Some(text);
                } else {
                    out.model = Some(text);
                }
            }
            _ => {
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| ApiError::invalid(&name, format!("{name} is not UTF-8 text")))?;
                out.fields.insert(name.clone(), field_value(&name, text));
            }
        }
    }
    if out.images.is_empty() {
        return Err(ApiError::invalid(
            "image",
            "no image given; send one as `image`",
        ));
    }
    check_mask(&out)?;
    Ok(out)
}

/// The mask must match the first image's size and carry an alpha channel (transparent =
/// the area to edit).
fn check_mask(e: &EditInputs) -> Result<(), ApiError> {
    let Some(mask) = &e.mask else { return Ok(()) };
    let (iw, ih) = (e.images[0].width(), e.images[0].height());
    if (mask.width(), mask.height()) != (iw, ih) {
        return Err(ApiError::invalid(
            "mask",
            format!(
                "the mask is {}x{}; it must have the first image's size, {iw}x{ih}",
                mask.width(),
                mask.height()
            ),
        ));
    }
    if !mask.color().has_alpha() {
        return Err(ApiError::invalid(
            "mask",
            "the mask has no alpha channel; transparent pixels mark the area to edit",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: DecodeLimits = DecodeLimits {
        max_side: 4096,
        max_alloc: 256 << 20,
    };

    fn png(w: u32, h: u32, alpha: bool) -> Vec<u8> {
        let img = if alpha {
            DynamicImage::ImageRgba8(image::RgbaImage::new(w, h))
        } else {
            DynamicImage::ImageRgb8(image::RgbImage::new(w, h))
        };
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn oversized_and_non_images_are_refused() {
        // 20000x20000 pixels would be 1.2 GB decoded; a 5000x5000 image already exceeds the
        // side limit (the HTTP tests send a header-only 20000x20000 PNG).
        let e = decode_image(&png(5000, 8, false), "image", LIM)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than this server accepts"), "{e}");
        let e = decode_image(b"hello, not an image", "image", LIM)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an image"), "{e}");
        assert_eq!(
            decode_image(&png(64, 32, true), "image", LIM)
                .unwrap()
                .width(),
            64
        );
    }

    #[test]
    fn masks_must_match_and_carry_alpha() {
        let img = |w, h, a| decode_image(&png(w, h, a), "x", LIM).unwrap();
        let mut e = EditInputs {
            images: vec![img(64, 64, false)],
            mask: Some(img(32, 32, true)),
            ..EditInputs::default()
        };
        assert!(check_mask(&e).unwrap_err().to_string().contains("32x32"));
        e.mask = Some(img(64, 64, false));
        assert!(check_mask(&e).unwrap_err().to_string().contains("alpha"));
        e.mask = Some(img(64, 64, true));
        check_mask(&e).unwrap();
    }
}
