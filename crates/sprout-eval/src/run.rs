//! Running WorldEval: the self-check on rendered ground truth (and its baselines), and
//! scoring a directory of generated images named by prompt id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use sprout_world::{BgColor, Renderer};

use crate::degrade::{degrade, pure_noise};
use crate::prompts::{Prompt, PromptSet};
use crate::reader::Reader;
use crate::report::{result_for, PromptResult, Report};
use crate::score::check_prompt;
use crate::truth::ground_truth;
use crate::EvalError;

/// What the self-check feeds the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Renders of scenes that satisfy the prompt.
    GroundTruth,
    /// The same renders, blurred (σ 1 px), noised (σ 0.03) and JPEG-compressed (q 70).
    Degraded,
    /// A plain white canvas of the prompt's size.
    Blank,
    /// Uniform random pixels.
    Noise,
    /// The ground truth of another prompt of the same category.
    WrongPrompt,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::GroundTruth => "ground_truth",
            Source::Degraded => "degraded",
            Source::Blank => "blank",
            Source::Noise => "noise",
            Source::WrongPrompt => "wrong_prompt",
        }
    }
}

/// Position of `p` in the full prompt set (seeds derive from it, not from a selection).
pub fn index_of(set: &PromptSet, p: &Prompt) -> usize {
    set.prompts
        .iter()
        .position(|q| q.id == p.id)
        .expect("prompt from this set")
}

/// The image the self-check scores for `p`.
pub fn source_image(
    set: &PromptSet,
    p: &Prompt,
    source: Source,
    seed: u64,
) -> Result<RgbImage, EvalError> {
    let idx = index_of(set, p) as u64;
    let render = |q: &Prompt, i: u64| Renderer::new().render(&ground_truth(q, seed, i));
    Ok(match source {
        Source::GroundTruth => render(p, idx)?,
        Source::Degraded => degrade(&render(p, idx)?, seed, idx),
        Source::Blank => sprout_world::render::blank(p.width, p.height, BgColor::White),
        Source::Noise => pure_noise(p.width, p.height, seed, idx),
        Source::WrongPrompt => {
            let same: Vec<&Prompt> = set
                .prompts
                .iter()
                .filter(|q| q.category == p.category)
                .collect();
            let k = same
                .iter()
                .position(|q| q.id == p.id)
                .expect("in its category");
            let other = same[(k + same.len() / 2) % same.len()];
            render(other, index_of(set, other) as u64)?
        }
    })
}

/// Run `f` over `items` on all cores, keeping order.
fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().max(1));
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<U>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread"))
            .collect()
    })
}

fn score_one(reader: &Reader, p: &Prompt, images: &[RgbImage]) -> PromptResult {
    let mut r = result_for(p);
    for img in images {
        let reading = reader.read(img);
        let (ok, failed) = check_prompt(p, &reading);
        r.images += 1;
        if ok {
            r.correct += 1;
        } else if r.failed.is_empty() {
            r.failed = failed;
        }
        if r.reading.is_none() {
            r.reading = Some(reading);
        }
    }
    r
}

/// Self-check: render (or make) an image per prompt, read it back and score it.
pub fn self_check(
    set: &PromptSet,
    prompts: &[&Prompt],
    source: Source,
    seed: u64,
    save: Option<&Path>,
    tick: &(dyn Fn() + Sync),
) -> Result<Report, EvalError> {
    if let Some(dir) = save {
        std::fs::create_dir_all(dir)?;
    }
    let reader = Reader::new();
    let results = par_map(prompts, |p| -> Result<PromptResult, EvalError> {
        let img = source_image(set, p, source, seed)?;
        if let Some(dir) = save {
            img.save(dir.join(format!("{}.png", p.id)))
                .map_err(|e| EvalError::Io(std::io::Error::other(e)))?;
        }
        let r = score_one(&reader, p, std::slice::from_ref(&img));
        tick();
        Ok(r)
    });
    let results = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(Report::new(&set.version, source.name(), results))
}

const IMAGE_EXTS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// Image files in `dir` by prompt id (`<id>.<ext>` or `<id>_<k>.<ext>`), for the selected
/// prompts; files named after no prompt of the set are returned as unknown.
type DirFiles = (BTreeMap<String, Vec<PathBuf>>, Vec<String>);

fn files_by_prompt(
    dir: &Path,
    set: &PromptSet,
    prompts: &[&Prompt],
) -> Result<DirFiles, EvalError> {
    let mut map: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut unknown = Vec::new();
    let selected: std::collections::HashSet<&str> = prompts.iter().map(|p| p.id.as_str()).collect();
    let all: std::collections::HashSet<&str> = set.prompts.iter().map(|p| p.id.as_str()).collect();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        EvalError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", dir.display()),
        ))
    })?;
    for e in entries {
        let path = e?.path();
        let Some(ext) = path.extension().and_then(|x| x.to_str()) else {
            continue;
        };
        if !IMAGE_EXTS.contains(&ext.to_ascii_lowercase().as_str()) {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let id = if all.contains(stem) {
            stem
        } else {
            match stem.rsplit_once('_') {
                Some((head, k))
                    if all.contains(head)
                        && !k.is_empty()
                        && k.chars().all(|c| c.is_ascii_digit()) =>
                {
                    head
                }
                _ => {
                    unknown.push(path.display().to_string());
                    continue;
                }
            }
        };
        if selected.contains(id) {
            map.entry(id.to_string()).or_default().push(path);
        }
    }
    for v in map.values_mut() {
        v.sort();
    }
    unknown.sort();
    Ok((map, unknown))
}

/// Score a directory of images named by prompt id. Missing, unreadable and unknown-named
/// images are listed in the report (the caller decides to fail); everything readable is scored.
pub fn score_dir(
    set: &PromptSet,
    prompts: &[&Prompt],
    dir: &Path,
    tick: &(dyn Fn() + Sync),
) -> Result<Report, EvalError> {
    let (files, unknown) = files_by_prompt(dir, set, prompts)?;
    let reader = Reader::new();
    let outcome = par_map(prompts, |p| {
        let mut images = Vec::new();
        let mut bad = Vec::new();
        for path in files.get(&p.id).map(|v| v.as_slice()).unwrap_or(&[]) {
            match image::open(path) {
                Ok(img) => images.push(img.to_rgb8()),
                Err(e) => bad.push(format!("{}: {e}", path.display())),
            }
        }
        let r = score_one(&reader, p, &images);
        tick();
        (r, bad)
    });
    let mut results = Vec::new();
    let mut missing = Vec::new();
    let mut unreadable = Vec::new();
    for (r, bad) in outcome {
        if r.images == 0 && bad.is_empty() {
            missing.push(r.id.clone());
        }
        unreadable.extend(bad);
        results.push(r);
    }
    let mut report = Report::new(&set.version, &dir.display().to_string(), results);
    report.missing = missing;
    report.unreadable = unreadable;
    report.unknown = unknown;
    Ok(report)
}

/// Score images produced on demand (e.g. by a model) for each prompt, in prompt order.
/// `make` returns the images of one prompt; `tick` runs after each prompt.
pub fn score_generated<E>(
    set: &PromptSet,
    prompts: &[&Prompt],
    source: &str,
    mut make: impl FnMut(usize, &Prompt) -> Result<Vec<RgbImage>, E>,
    tick: &(dyn Fn() + Sync),
) -> Result<Report, E> {
    let reader = Reader::new();
    let mut results = Vec::with_capacity(prompts.len());
    for p in prompts {
        let images = make(index_of(set, p), p)?;
        results.push(score_one(&reader, p, &images));
        tick();
    }
    Ok(Report::new(&set.version, source, results))
}
