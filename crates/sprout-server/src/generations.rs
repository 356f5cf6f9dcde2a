//! `POST /v1/images/generations`: the OpenAI request body, parsed and checked field by field
//! before any work is queued.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use sprout_models::ae::DOWNSCALE;
use sprout_pipeline::generate::{Request, MAX_STEPS};

use crate::encode::OutputFormat;
use crate::error::ApiError;
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationBody {
    pub prompt: String,
    pub model: Option<String>,
    pub n: Option<i64>,
    pub size: Option<String>,
    pub response_format: Option<String>,
    pub output_format: Option<String>,
    pub output_compression: Option<i64>,
    pub stream: Option<bool>,
    pub partial_images: Option<i64>,
    pub seed: Option<u64>,
    pub steps: Option<i64>,
    pub guidance: Option<f64>,
    // OpenAI fields without an effect here, accepted so that clients sending them work.
    pub quality: Option<String>,
    pub style: Option<String>,
    pub user: Option<String>,
    pub background: Option<String>,
    pub moderation: Option<String>,
}

/// A checked generation request.
#[derive(Debug)]
pub struct Generation {
    pub req: Request,
    pub format: OutputFormat,
    pub compression: u8,
    /// Answer with server-sent events (`image_generation.partial_image` previews, then
    /// `image_generation.completed` per image).
    pub stream: bool,
    /// Previews to send while streaming (0–3, as OpenAI).
    pub partial_images: usize,
    /// Answer with URLs of stored images instead of base64.
    pub url: bool,
}

/// Parse a JSON body; the error names the offending field where serde knows it.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let param = if path != "." && !path.is_empty() {
            Some(path)
        } else {
            // "missing field `prompt`", "unknown field `foo`, expected …"
            message.split('`').nth(1).map(str::to_string)
        };
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the request body is not valid JSON: {message}")
        } else {
            match &param {
                Some(p) => format!("invalid parameter {p}: {message}"),
                None => format!("invalid request body: {message}"),
            }
        };
        ApiError::Invalid { message, param }
    })
}

/// `WxH` with both sides positive multiples of the autoencoder's factor and within the
/// model's maximum, or `auto` (256x256).
pub fn parse_size(size: Option<&str>, max_side: u32) -> Result<(u32, u32), ApiError> {
    let s = match size {
        None | Some("auto") => return Ok((256, 256)),
        Some(s) => s,
    };
    let bad = |m: String| Err(ApiError::invalid("size", m));
    let Some((w, h)) = s.split_once('x') else {
        return bad(format!(
            "size {s:?} is not WIDTHxHEIGHT (e.g. 256x256) or auto"
        ));
    };
    let (Ok(w), Ok(h)) = (w.trim().parse::<u32>(), h.trim().parse::<u32>()) else {
        return bad(format!(
            "size {s:?} is not WIDTHxHEIGHT (e.g. 256x256) or auto"
        ));
    };
    let m = DOWNSCALE as u32;
    for v in [w, h] {
        if v == 0 || v % m != 0 {
            return bad(format!(
                "size {s}: {v} is not a positive multiple of {m}; this model draws sizes such as 256x256, 320x224 or 512x512"
            ));
        }
        if v > max_side {
            return bad(format!(
                "size {s}: {v} exceeds this model's maximum side of {max_side}"
            ));
        }
    }
    Ok((w, h))
}

/// A seed for requests that give none: from the clock, so that it differs per request (the
/// response reports it, so the image can be made again). Kept below 2^53 so that it survives
/// JavaScript numbers (the web page reuses seeds).
fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    sprout_world::seed::mix64(t) >> 11
}

pub fn check(body: GenerationBody, state: &AppState) -> Result<Generation, ApiError> {
    if body.prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "prompt is empty"));
    }
    let chars = body.prompt.chars().count();
    if chars > state.cfg.max_prompt_chars {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "prompt has {chars} characters; the limit is {}",
                state.cfg.max_prompt_chars
            ),
        ));
    }
    if let Some(m) = &body.model {
        if !state.serves(m) {
            return Err(ApiError::UnknownModel(m.clone()));
        }
    }
    let n = body.n.unwrap_or(1);
    if n < 1 || n > state.cfg.max_n as i64 {
        return Err(ApiError::invalid(
            "n",
            format!("n = {n} is out of range (1..={})", state.cfg.max_n),
        ));
    }
    let (width, height) = parse_size(body.size.as_deref(), state.max_side)?;
    let url = match body.response_format.as_deref() {
        None | Some("b64_json") => false,
        Some("url") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format",
                format!("response_format {other:?} is not one of b64_json, url"),
            ))
        }
    };
    let format = OutputFormat::parse(body.output_format.as_deref())?;
    let compression = match body.output_compression {
        None => 100,
        Some(c) if (0..=100).contains(&c) => c as u8,
        Some(c) => {
            return Err(ApiError::invalid(
                "output_compression",
                format!("output_compression {c} is out of range (0..=100)"),
            ))
        }
    };
    let stream = body.stream.unwrap_or(false);
    let partial_images = match body.partial_images {
        None => 0,
        Some(p) if !(0..=3).contains(&p) => {
            return Err(ApiError::invalid(
                "partial_images",
                format!("partial_images {p} is out of range (0..=3)"),
            ))
        }
        Some(p) => p as usize,
    };
    let steps = body.steps.unwrap_or(state.default_steps as i64);
    if steps < 1 || steps > MAX_STEPS as i64 {
        return Err(ApiError::invalid(
            "steps",
            format!("steps = {steps} is out of range (1..={MAX_STEPS})"),
        ));
    }
    let guidance = body.guidance.unwrap_or(state.default_guidance);
    if !guidance.is_finite() || !(0.0..=50.0).contains(&guidance) {
        return Err(ApiError::invalid(
            "guidance",
            format!("guidance = {guidance} is out of range (0..=50)"),
        ));
    }
    Ok(Generation {
        req: Request {
            prompt: body.prompt,
            n: n as usize,
            seed: body.seed.unwrap_or_else(fresh_seed),
            steps: steps as usize,
            guidance,
            width,
            height,
            sampler: state.sampler,
            init: None,
        },
        format,
        compression,
        stream,
        partial_images,
        url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_and_named() {
        assert_eq!(parse_size(None, 512).unwrap(), (256, 256));
        assert_eq!(parse_size(Some("auto"), 512).unwrap(), (256, 256));
        assert_eq!(parse_size(Some("320x224"), 512).unwrap(), (320, 224));
        for (s, want) in [
            ("7x7", "7 is not a positive multiple of 32"),
            ("1024x1024", "exceeds this model's maximum side of 512"),
            ("big", "not WIDTHxHEIGHT"),
            ("0x256", "0 is not a positive multiple"),
        ] {
            let e = parse_size(Some(s), 512).unwrap_err();
            assert!(e.to_string().contains(want), "{s}: {e}");
            assert!(matches!(e, ApiError::Invalid { param: Some(ref p), .. } if p == "size"));
        }
    }

    #[test]
    fn json_errors_name_the_parameter() {
        let e = parse_json::<GenerationBody>(br#"{"prompt": "a", "n": "two"}"#).unwrap_err();
        assert!(
            matches!(e, ApiError::Invalid { param: Some(ref p), .. } if p == "n"),
            "{e:?}"
        );
        let e = parse_json::<GenerationBody>(br#"{"n": 1}"#).unwrap_err();
        assert!(
            matches!(e, ApiError::Invalid { param: Some(ref p), .. } if p == "prompt"),
            "{e:?}"
        );
        let e = parse_json::<GenerationBody>(br#"{"prompt": "a", "colour": 1}"#).unwrap_err();
        assert!(
            matches!(e, ApiError::Invalid { param: Some(ref p), .. } if p == "colour"),
            "{e:?}"
        );
        let e = parse_json::<GenerationBody>(br#"{"prompt": "#).unwrap_err();
        assert!(e.to_string().contains("not valid JSON"), "{e}");
    }
}
