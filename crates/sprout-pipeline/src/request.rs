//! The one request type every caller fills (the command line, the server, bench and eval),
//! the profile of limits and defaults a model offers, and the one check of a request
//! against it. A refusal names its field ([`PipelineError::Invalid`]); the server answers
//! it as HTTP 400 with that `param`, the command line names the matching flag.

use candle_core::Tensor;
use image::RgbImage;
use sprout_world::AspectRatio;

use crate::flow::Sampler;
use crate::PipelineError;

/// Largest number of images one request may ask for.
pub const MAX_IMAGES: usize = 16;
/// Largest number of sampling steps.
pub const MAX_STEPS: usize = 1000;
/// Largest guidance and true-CFG scale.
pub const MAX_GUIDANCE: f64 = 50.0;

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub n: usize,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f64,
    pub width: u32,
    pub height: u32,
    pub sampler: Sampler,
    /// img2img: start from this image instead of pure noise.
    pub init: Option<InitImage>,
    /// What guidance steers away from: for Sprout's models the unconditional prompt of
    /// classifier-free guidance (empty when None); for FLUX the negative prompt of true CFG.
    pub negative_prompt: Option<String>,
    /// FLUX's true classifier-free guidance scale: above 1 each step also runs the negative
    /// prompt (empty when None). Sprout's models take none.
    pub true_cfg: Option<f64>,
    /// Input images: an edit's references (FLUX.1 Kontext), or the control image (FLUX.1
    /// Canny / Depth). Models that draw from text only take none.
    pub images: Vec<RgbImage>,
    /// Initial latents instead of seeded noise, one sample per image (FLUX: packed
    /// (n, tokens, 4·C) as diffusers' `latents=`), to compare with another implementation.
    pub latents: Option<Tensor>,
    /// FLUX: T5 tokens per prompt (the variant's own when None).
    pub max_sequence_length: Option<usize>,
}

impl Request {
    /// A text-to-image request with the model's defaults: `n` images at its default size.
    pub fn new(prompt: &str, profile: &Profile) -> Request {
        Request {
            prompt: prompt.to_string(),
            n: 1,
            seed: 0,
            steps: profile.default_steps,
            guidance: profile.default_guidance,
            width: profile.default_size.0,
            height: profile.default_size.1,
            sampler: profile.sampler,
            init: None,
            negative_prompt: None,
            true_cfg: None,
            images: Vec::new(),
            latents: None,
            max_sequence_length: None,
        }
    }
}

/// img2img (SDEdit): of a `steps`-step schedule only the last ones run, from the image's
/// latents noised to the time where they begin (`t·noise + (1 − t)·latents`).
#[derive(Debug, Clone)]
pub struct InitImage {
    /// (1, 3, height, width) in [-1, 1], at the request's canvas size.
    pub image: Tensor,
    /// In (0, 1]: 1 starts from pure noise (the image is ignored), small values keep it.
    pub strength: f64,
    /// Inpainting: (1, 1, height, width), 1 where the image is redrawn and 0 where it is
    /// kept. Latent cells touching the redrawn area are drawn ([`crate::flow::Blend`]), the
    /// rest follow the image; the kept pixels of the result are the image's own.
    pub mask: Option<Tensor>,
}

/// Index of the first step of a `steps`-step schedule that img2img at `strength` runs
/// (diffusers' rule: `steps − min(steps·strength, steps)`, rounded down; at least the last
/// step runs).
pub fn img2img_first_step(steps: usize, strength: f64) -> Result<usize, PipelineError> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(PipelineError::invalid(
            "strength",
            format!("strength {strength} is out of range (0, 1]"),
        ));
    }
    let n = steps as f64;
    Ok((n - (n * strength).min(n)).max(0.0) as usize)
}

/// What a model offers: what requests are checked against, and filled in with. A
/// distributed server's workers advertise theirs to the front end as JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// Canvas sides must be multiples of this.
    pub multiple: u32,
    pub max_side: u32,
    /// The canvas of a request that names none.
    pub default_size: (u32, u32),
    pub default_steps: usize,
    pub default_guidance: f64,
    pub sampler: Sampler,
    /// Samplers the model runs (FLUX's schedules are distilled for Euler).
    pub samplers: Vec<Sampler>,
    /// Whether the model takes input images (`/v1/images/edits` without a mask).
    pub edits: bool,
    /// How many input images a request must give: (at least, at most).
    pub images: (usize, usize),
    /// What those images are, for messages ("reference images", "control image (an edge
    /// map)").
    pub images_are: String,
    /// Whether the model runs true CFG (a negative prompt at its own scale) rather than
    /// classifier-free guidance with the negative prompt as the unconditional one.
    pub true_cfg: bool,
    /// Whether a request may start from an image (img2img), whether it may carry an
    /// inpainting mask, and whether it must (FLUX.1 Fill only inpaints).
    pub takes_init: bool,
    pub takes_mask: bool,
    pub needs_mask: bool,
    /// The canvas of an edit that names no size.
    #[serde(default)]
    pub edit_sizing: EditSizing,
}

/// How an edit that names no size is sized from its first input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditSizing {
    /// The image's aspect ratio at the default canvas's area (FLUX.1 Kontext).
    #[default]
    DefaultArea,
    /// The image's own size as the reference is prepared: scaled down to about 1024² when
    /// larger, cropped to the multiple (FLUX.2's pipelines).
    AsReference,
}

impl Profile {
    /// Canvases to offer (the web page's choices): the default area at 1:1, 3:2, 2:3, 16:9
    /// and 9:16, then twice the default side where the model allows it.
    pub fn sizes(&self) -> Vec<(u32, u32)> {
        let side = self.default_size.0.max(self.default_size.1);
        let mut out: Vec<(u32, u32)> = ["1:1", "3:2", "2:3", "16:9", "9:16"]
            .iter()
            .filter_map(|r| AspectRatio::parse(r).ok())
            .map(|r| r.canvas(side))
            .collect();
        out.push((2 * side, 2 * side));
        out.retain(|&(w, h)| {
            w.max(h) <= self.max_side && w % self.multiple == 0 && h % self.multiple == 0
        });
        out.dedup();
        out
    }

    /// The canvas of an edit that names none, from its first image, within the model's
    /// limits: that image's aspect ratio at the default canvas's area (FLUX.1 Kontext's
    /// nearest preferred resolution, scaled), or its prepared size (FLUX.2).
    pub fn edit_canvas(&self, (w, h): (u32, u32)) -> (u32, u32) {
        let (w, h) = match self.edit_sizing {
            EditSizing::DefaultArea => crate::flux::reference_size(
                w as usize,
                h as usize,
                (self.default_size.0 * self.default_size.1) as usize,
                self.multiple as usize,
            ),
            EditSizing::AsReference => {
                crate::flux2::reference_dims(w as usize, h as usize, self.multiple as usize)
            }
        };
        self.fit(w as u32, h as u32)
    }

    /// `w`×`h` rounded down to the model's multiple and capped at its largest side.
    pub fn fit(&self, w: u32, h: u32) -> (u32, u32) {
        let m = self.multiple;
        let cap = self.max_side / m * m;
        ((w / m * m).clamp(m, cap), (h / m * m).clamp(m, cap))
    }
}

/// A canvas of `w`×`h` against the profile's multiple and largest side (param `size`).
pub fn check_size(w: u32, h: u32, p: &Profile) -> Result<(), PipelineError> {
    for (name, v) in [("width", w), ("height", h)] {
        if v == 0 || !v.is_multiple_of(p.multiple) {
            return Err(PipelineError::invalid(
                "size",
                format!(
                    "size {w}x{h}: {name} {v} is not a positive multiple of {0} (this model \
                     needs sides that are multiples of {0})",
                    p.multiple
                ),
            ));
        }
        if v > p.max_side {
            return Err(PipelineError::invalid(
                "size",
                format!(
                    "size {w}x{h}: {name} {v} exceeds this model's maximum of {}",
                    p.max_side
                ),
            ));
        }
    }
    Ok(())
}

/// The one check of a request against a model's profile; the error names the field.
pub fn check(req: &Request, p: &Profile) -> Result<(), PipelineError> {
    check_fields(req, p)?;
    check_inputs(req)
}

/// The checks that do not depend on the canvas or the input tensors: counts, ranges,
/// sampler, guidance, negative prompt, the number of input images and which starts the
/// model takes. The command line runs them before a large model loads.
pub fn check_fields(req: &Request, p: &Profile) -> Result<(), PipelineError> {
    let bad = |param: &'static str, m: String| Err(PipelineError::invalid(param, m));
    if req.prompt.trim().is_empty() {
        return bad("prompt", "prompt is empty".into());
    }
    if req.n == 0 || req.n > MAX_IMAGES {
        return bad(
            "n",
            format!("n = {} is out of range (1..={MAX_IMAGES})", req.n),
        );
    }
    if req.steps == 0 || req.steps > MAX_STEPS {
        return bad(
            "steps",
            format!("steps = {} is out of range (1..={MAX_STEPS})", req.steps),
        );
    }
    if !req.guidance.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&req.guidance) {
        return bad(
            "guidance",
            format!(
                "guidance = {} is out of range (0..={MAX_GUIDANCE})",
                req.guidance
            ),
        );
    }
    if !p.samplers.contains(&req.sampler) {
        let names: Vec<String> = p
            .samplers
            .iter()
            .map(|s| format!("{s:?}").to_lowercase())
            .collect();
        return bad(
            "sampler",
            format!(
                "this model samples with {} (its schedule is made for it), not {:?}",
                names.join(" or "),
                req.sampler
            )
            .to_lowercase(),
        );
    }
    check_size(req.width, req.height, p)?;
    match (p.true_cfg, req.true_cfg) {
        (false, Some(_)) => {
            return bad(
                "true_cfg_scale",
                "true_cfg_scale applies to the FLUX models; Sprout's models guide by guidance \
                 (with negative_prompt as the unconditional prompt)"
                    .into(),
            )
        }
        (true, Some(s)) if !s.is_finite() || !(1.0..=MAX_GUIDANCE).contains(&s) => {
            return bad(
                "true_cfg_scale",
                format!("true_cfg_scale = {s} is out of range (1..={MAX_GUIDANCE}; 1 disables it)"),
            )
        }
        _ => {}
    }
    if req.negative_prompt.is_some() {
        if p.true_cfg && req.true_cfg.is_none_or(|s| s <= 1.0) {
            return bad(
                "negative_prompt",
                "negative_prompt needs true_cfg_scale above 1 (FLUX's true classifier-free \
                 guidance); without it, it has no effect"
                    .into(),
            );
        }
        if !p.true_cfg && req.guidance == 1.0 {
            return bad(
                "negative_prompt",
                "negative_prompt has no effect at guidance 1".into(),
            );
        }
    }
    let (least, most) = p.images;
    let given = req.images.len();
    if given < least || given > most {
        let want = match (least, most) {
            (0, 0) => "takes no input images (it draws from text only)".to_string(),
            (a, b) if a == b => format!("takes exactly {a}: its {}", p.images_are),
            (a, b) => format!("takes {a}..={b}: its {}", p.images_are),
        };
        return bad(
            "image",
            format!("{given} input images given; this model {want}"),
        );
    }
    let mask = req.init.as_ref().is_some_and(|i| i.mask.is_some());
    if req.init.is_some() && !p.takes_init {
        return bad(
            "image",
            "this model does not start from an image (no img2img)".into(),
        );
    }
    if mask && !p.takes_mask {
        return bad(
            "mask",
            format!(
                "this model takes no inpainting mask (it draws from its {})",
                p.images_are
            ),
        );
    }
    if p.needs_mask && !mask {
        return bad(
            "mask",
            "this model only redraws the masked area of an image: give the image and a mask".into(),
        );
    }
    if let Some(init) = &req.init {
        img2img_first_step(req.steps, init.strength)?;
    }
    Ok(())
}

/// The input tensors against the canvas: the init image, the mask, given latents.
fn check_inputs(req: &Request) -> Result<(), PipelineError> {
    let bad = |param: &'static str, m: String| Err(PipelineError::invalid(param, m));
    if let Some(init) = &req.init {
        let want = [1, 3, req.height as usize, req.width as usize];
        if init.image.dims() != want {
            return bad(
                "image",
                format!(
                    "the init image has shape {:?}; a {}x{} canvas needs {want:?}",
                    init.image.dims(),
                    req.width,
                    req.height
                ),
            );
        }
        if let Some(m) = &init.mask {
            let want = [1, 1, req.height as usize, req.width as usize];
            if m.dims() != want {
                return bad(
                    "mask",
                    format!(
                        "the mask has shape {:?}; a {}x{} canvas needs {want:?}",
                        m.dims(),
                        req.width,
                        req.height
                    ),
                );
            }
            if m.sum_all()?.to_scalar::<f32>()? == 0.0 {
                return bad(
                    "mask",
                    "the mask marks nothing to redraw (transparent pixels of a mask with \
                     alpha, else white ones)"
                        .into(),
                );
            }
        }
    }
    if let Some(l) = &req.latents {
        if l.rank() == 0 || l.dim(0)? < req.n {
            return bad(
                "latents",
                format!(
                    "the latents hold {} samples of shape {:?}; n = {} asks for {}",
                    if l.rank() == 0 { 0 } else { l.dim(0)? },
                    l.dims(),
                    req.n,
                    req.n
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn profile() -> Profile {
        crate::model::native_profile(512, 20, 4.0, Sampler::Heun)
    }

    #[test]
    fn every_refusal_names_its_field() {
        let p = profile();
        let ok = Request::new("a red circle", &p);
        check(&ok, &p).unwrap();
        let dev = Device::Cpu;
        let zeros = |s: &[usize]| Tensor::zeros(s, DType::F32, &dev).unwrap();
        let cases: Vec<(Request, &str, &str)> = vec![
            (
                Request {
                    prompt: " ".into(),
                    ..ok.clone()
                },
                "prompt",
                "empty",
            ),
            (Request { n: 0, ..ok.clone() }, "n", "n = 0 is out of range"),
            (
                Request {
                    n: 17,
                    ..ok.clone()
                },
                "n",
                "(1..=16)",
            ),
            (
                Request {
                    steps: 0,
                    ..ok.clone()
                },
                "steps",
                "steps = 0",
            ),
            (
                Request {
                    guidance: f64::NAN,
                    ..ok.clone()
                },
                "guidance",
                "out of range",
            ),
            (
                Request {
                    guidance: 51.0,
                    ..ok.clone()
                },
                "guidance",
                "out of range",
            ),
            (
                Request {
                    width: 100,
                    ..ok.clone()
                },
                "size",
                "width 100 is not a positive multiple of 32",
            ),
            (
                Request {
                    height: 1024,
                    ..ok.clone()
                },
                "size",
                "height 1024 exceeds this model's maximum of 512",
            ),
            (
                Request {
                    true_cfg: Some(2.0),
                    ..ok.clone()
                },
                "true_cfg_scale",
                "FLUX",
            ),
            (
                Request {
                    negative_prompt: Some("x".into()),
                    guidance: 1.0,
                    ..ok.clone()
                },
                "negative_prompt",
                "no effect at guidance 1",
            ),
            (
                Request {
                    images: vec![RgbImage::new(8, 8)],
                    ..ok.clone()
                },
                "image",
                "takes no input images",
            ),
            (
                Request {
                    init: Some(InitImage {
                        image: zeros(&[1, 3, 256, 256]),
                        strength: 1.5,
                        mask: None,
                    }),
                    ..ok.clone()
                },
                "strength",
                "strength 1.5 is out of range",
            ),
            (
                Request {
                    init: Some(InitImage {
                        image: zeros(&[1, 3, 64, 64]),
                        strength: 0.5,
                        mask: None,
                    }),
                    ..ok.clone()
                },
                "image",
                "a 256x256 canvas needs",
            ),
            (
                Request {
                    init: Some(InitImage {
                        image: zeros(&[1, 3, 256, 256]),
                        strength: 1.0,
                        mask: Some(zeros(&[1, 1, 256, 256])),
                    }),
                    ..ok.clone()
                },
                "mask",
                "marks nothing",
            ),
            (
                Request {
                    latents: Some(zeros(&[1, 4, 8])),
                    n: 2,
                    ..ok.clone()
                },
                "latents",
                "n = 2 asks for 2",
            ),
        ];
        for (req, param, text) in cases {
            match check(&req, &p) {
                Err(PipelineError::Invalid {
                    param: got,
                    message,
                }) => {
                    assert_eq!(got, param, "{message}");
                    assert!(message.contains(text), "{param}: {message}");
                }
                other => panic!("{param}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn flux_like_profiles_take_true_cfg_and_images() {
        let p = Profile {
            multiple: 16,
            max_side: 2048,
            default_size: (1024, 1024),
            sampler: Sampler::Euler,
            samplers: vec![Sampler::Euler],
            edits: true,
            images: (1, 4),
            true_cfg: true,
            ..profile()
        };
        let ok = Request {
            images: vec![RgbImage::new(8, 8)],
            ..Request::new("make it blue", &p)
        };
        check(&ok, &p).unwrap();
        let refuse = |r: Request, param: &str| {
            let e = check(&r, &p).unwrap_err();
            assert!(
                matches!(&e, PipelineError::Invalid { param: got, .. } if *got == param),
                "{e:?}"
            );
            e.to_string()
        };
        let e = refuse(
            Request {
                sampler: Sampler::Heun,
                ..ok.clone()
            },
            "sampler",
        );
        assert!(e.contains("samples with euler"), "{e}");
        refuse(
            Request {
                images: vec![],
                ..ok.clone()
            },
            "image",
        );
        refuse(
            Request {
                images: vec![RgbImage::new(8, 8); 5],
                ..ok.clone()
            },
            "image",
        );
        refuse(
            Request {
                true_cfg: Some(0.5),
                ..ok.clone()
            },
            "true_cfg_scale",
        );
        refuse(
            Request {
                negative_prompt: Some("x".into()),
                ..ok.clone()
            },
            "negative_prompt",
        );
        check(
            &Request {
                negative_prompt: Some("x".into()),
                true_cfg: Some(3.0),
                ..ok.clone()
            },
            &p,
        )
        .unwrap();
        assert_eq!(p.fit(1000, 5000), (992, 2048));
        // Which starts a model takes: a control model no mask, an inpainting-only model
        // nothing without one.
        let dev = Device::Cpu;
        let init = |mask: bool| InitImage {
            image: Tensor::zeros((1, 3, 1024, 1024), DType::F32, &dev).unwrap(),
            strength: 1.0,
            mask: mask.then(|| Tensor::ones((1, 1, 1024, 1024), DType::F32, &dev).unwrap()),
        };
        let control = Profile {
            takes_mask: false,
            images: (1, 1),
            images_are: "control image (an edge map)".into(),
            ..p.clone()
        };
        let one = Request {
            images: vec![RgbImage::new(8, 8)],
            ..ok.clone()
        };
        check(
            &Request {
                init: Some(init(false)),
                ..one.clone()
            },
            &control,
        )
        .unwrap();
        let e = check(
            &Request {
                init: Some(init(true)),
                ..one.clone()
            },
            &control,
        )
        .unwrap_err();
        assert!(e.to_string().contains("control image"), "{e}");
        let fill = Profile {
            needs_mask: true,
            images: (0, 0),
            ..p.clone()
        };
        let plain = Request {
            images: vec![],
            ..ok.clone()
        };
        let e = check(
            &Request {
                init: Some(init(false)),
                ..plain.clone()
            },
            &fill,
        )
        .unwrap_err();
        assert!(
            matches!(e, PipelineError::Invalid { param: "mask", .. }),
            "{e:?}"
        );
        check(
            &Request {
                init: Some(init(true)),
                ..plain.clone()
            },
            &fill,
        )
        .unwrap();
        let text_only = Profile {
            takes_init: false,
            ..fill
        };
        let e = check(
            &Request {
                init: Some(init(true)),
                ..plain
            },
            &text_only,
        )
        .unwrap_err();
        assert!(e.to_string().contains("img2img"), "{e}");
        assert_eq!(p.fit(3, 3), (16, 16));
    }

    /// An edit that names no size: FLUX.1 Kontext draws on the first image's nearest
    /// preferred resolution; FLUX.2 on the first image's own size as prepared (scaled down
    /// to about 1024² when larger, cropped to multiples of 16), as diffusers' pipelines do.
    #[test]
    fn edit_canvases_follow_each_family_rule() {
        use sprout_models::flux::files::Variant;
        let kontext = crate::model::flux_profile(Variant::Kontext, 16);
        assert_eq!(kontext.edit_canvas((800, 600)), (1184, 880));
        let klein = crate::model::flux2_profile(crate::flux2::Flux2Variant::Klein);
        assert_eq!(klein.edit_canvas((800, 600)), (800, 592));
        assert_eq!(klein.edit_canvas((100, 70)), (96, 64));
        // 3000×2000 scaled by √(1024² / 6·10⁶): 1254×836, cropped to 1248×832.
        assert_eq!(klein.edit_canvas((3000, 2000)), (1248, 832));
        // The profile a distributed worker advertises keeps the rule; an older worker's JSON
        // without the field reads as the FLUX.1 rule.
        let json = serde_json::to_value(&klein).unwrap();
        let back: Profile = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.edit_sizing, EditSizing::AsReference);
        let mut old = json;
        old.as_object_mut().unwrap().remove("edit_sizing");
        let old: Profile = serde_json::from_value(old).unwrap();
        assert_eq!(old.edit_sizing, EditSizing::DefaultArea);
    }
}
