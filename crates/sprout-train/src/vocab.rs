//! The caption vocabulary: every lower-case word the world's captions use.

use std::collections::BTreeSet;

use sprout_world::sampler::{sample, SamplerConfig};
use sprout_world::{assets, AspectRatio, CaptionLevel, Color, ShapeKind};

/// Words of `n` sampled captions (all levels) plus every colour, shape, icon and aspect word.
pub fn world_vocabulary(n: u64) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let mut add = |text: &str| {
        for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
            if !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                words.insert(w.to_string());
            }
        }
    };
    let cfg = SamplerConfig {
        canvas: sprout_world::sampler::CanvasChoice::AnyAspect,
        ..SamplerConfig::default()
    };
    for i in 0..n {
        let s = sample(&cfg, 0x70CE, i);
        for level in CaptionLevel::ALL {
            add(s.captions.get(level));
        }
    }
    for c in Color::ALL {
        add(c.name());
    }
    for k in ShapeKind::ALL {
        add(k.name());
        add(&sprout_world::captions::plural(k.name()));
    }
    for name in assets::icon_names() {
        let w = assets::icon_words(name);
        add(&w);
        add(&sprout_world::captions::plural(&w));
    }
    for a in AspectRatio::ALL {
        add(a.describe());
    }
    for w in [
        "one", "two", "three", "four", "five", "six", "image", "picture", "drawing", "showing",
        "of", "a", "an", "and", "the",
    ] {
        add(w);
    }
    words
}
