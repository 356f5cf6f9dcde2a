//! `POST /v1/images/generations`: the OpenAI request body, parsed and checked field by field
//! before any work is queued.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use sprout_pipeline::request::{Request, MAX_STEPS};

use crate::encode::OutputFormat;
use crate::error::ApiError;
use crate::{AppState, Profile};

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
    /// What guidance steers away from (Sprout's models: the unconditional prompt; FLUX: the
    /// negative prompt of true_cfg_scale).
    pub negative_prompt: Option<String>,
    /// FLUX's true classifier-free guidance scale (above 1 runs the negative prompt too).
    pub true_cfg_scale: Option<f64>,
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
    /// The name of the model that runs it, and that model's profile.
    pub model: String,
    pub profile: Profile,
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

/// `WxH` with both sides positive multiples of the model's size step and within its
/// maximum, or `auto` (the model's default canvas).
pub fn parse_size(size: Option<&str>, p: &Profile) -> Result<(u32, u32), ApiError> {
    let s = match size {
        None | Some("auto") => return Ok(p.default_size),
        Some(s) => s,
    };
    let bad = |m: String| Err(ApiError::invalid("size", m));
    let parsed = s
        .split_once('x')
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)));
    let Some((w, h)) = parsed else {
        return bad(format!(
            "size {s:?} is not WIDTHxHEIGHT (e.g. {}x{}) or auto",
            p.default_size.0, p.default_size.1
        ));
    };
    // The limits are the pipeline's one check; the hint says what the model draws.
    sprout_pipeline::request::check_size(w, h, p).map_err(|e| {
        let message = match e {
            sprout_pipeline::PipelineError::Invalid { message, .. } => message,
            other => other.to_string(),
        };
        let (d, m) = (p.default_size.0, p.multiple);
        ApiError::invalid(
            "size",
            format!(
                "{message}; this model draws sizes such as {d}x{d}, {}x{d} or {d}x{}",
                d + 2 * m,
                d + 2 * m
            ),
        )
    })?;
    Ok((w, h))
}

/// A seed for requests that give none: from the clock, so that it differs per request (the
/// response reports it, so the image can be made again). Kept below 2^53 so that it survives
/// JavaScript numbers (the web page reuses seeds).
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    sprout_world::seed::mix64(t) >> 11
}

/// The request checked against the model it names (or the default one) among those
/// `state` serves.
pub fn check(body: GenerationBody, state: &AppState) -> Result<Generation, ApiError> {
    let (model, profile) = state.served(body.model.as_deref())?;
    check_with(body, &state.cfg, &model, &profile)
}

/// [`check`] against a served model given by its parts (the server's limits, the name
/// clients use for the model, its profile): what the fuzz targets call without a server.
pub fn check_with(
    body: GenerationBody,
    cfg: &crate::ServerConfig,
    model: &str,
    profile: &Profile,
) -> Result<Generation, ApiError> {
    if body.prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "prompt is empty"));
    }
    let chars = body.prompt.chars().count();
    if chars > cfg.max_prompt_chars {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "prompt has {chars} characters; the limit is {}",
                cfg.max_prompt_chars
            ),
        ));
    }
    if let Some(m) = &body.model {
        if !crate::serves(model, m) {
            return Err(ApiError::UnknownModel(m.clone()));
        }
    }
    let n = body.n.unwrap_or(1);
    if n < 1 || n > cfg.max_n as i64 {
        return Err(ApiError::invalid(
            "n",
            format!("n = {n} is out of range (1..={})", cfg.max_n),
        ));
    }
    let (width, height) = parse_size(body.size.as_deref(), profile)?;
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
    // Steps, guidance, true CFG and the rest are checked by the pipeline's one check when
    // the job is submitted; a count that does not fit is named here.
    let steps = body.steps.unwrap_or(profile.default_steps as i64);
    let steps = usize::try_from(steps).map_err(|_| {
        ApiError::invalid(
            "steps",
            format!("steps = {steps} is out of range (1..={MAX_STEPS})"),
        )
    })?;
    let guidance = body.guidance.unwrap_or(profile.default_guidance);
    if let Some(neg) = &body.negative_prompt {
        if neg.chars().count() > cfg.max_prompt_chars {
            return Err(ApiError::invalid(
                "negative_prompt",
                format!(
                    "negative_prompt is longer than {} characters",
                    cfg.max_prompt_chars
                ),
            ));
        }
    }
    Ok(Generation {
        req: Request {
            n: n as usize,
            seed: body.seed.unwrap_or_else(fresh_seed),
            steps,
            guidance,
            width,
            height,
            negative_prompt: body.negative_prompt,
            true_cfg: body.true_cfg_scale,
            ..Request::new(&body.prompt, profile)
        },
        model: model.to_string(),
        profile: profile.clone(),
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
        let p = sprout_pipeline::model::native_profile(
            512,
            20,
            4.0,
            sprout_pipeline::flow::Sampler::Heun,
        );
        assert_eq!(parse_size(None, &p).unwrap(), (256, 256));
        assert_eq!(parse_size(Some("auto"), &p).unwrap(), (256, 256));
        assert_eq!(parse_size(Some("320x224"), &p).unwrap(), (320, 224));
        for (s, want) in [
            ("7x7", "7 is not a positive multiple of 32"),
            ("1024x1024", "exceeds this model's maximum of 512"),
            ("big", "not WIDTHxHEIGHT"),
            ("0x256", "0 is not a positive multiple"),
        ] {
            let e = parse_size(Some(s), &p).unwrap_err();
            assert!(e.to_string().contains(want), "{s}: {e}");
            assert!(matches!(e, ApiError::Invalid { param: Some(ref p), .. } if p == "size"));
        }
        // FLUX.1: steps of 16, 1024² by default.
        let flux = Profile {
            multiple: 16,
            max_side: 2048,
            default_size: (1024, 1024),
            ..p
        };
        assert_eq!(parse_size(None, &flux).unwrap(), (1024, 1024));
        assert_eq!(parse_size(Some("1024x768"), &flux).unwrap(), (1024, 768));
        let e = parse_size(Some("1000x1000"), &flux)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1000 is not a positive multiple of 16"), "{e}");
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
