//! The WorldEval prompt set: categories, constraints, and the versioned set itself.
//!
//! The set is generated once by [`generate`] and committed as `data/worldeval-v1.json`; a test
//! checks that the generator still reproduces the committed file, so the benchmark cannot
//! drift silently. A changed generator needs a new version.

use std::collections::HashSet;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sprout_world::assets::{icon_count, icon_name, icon_words};
use sprout_world::captions::{article, number_word, plural};
use sprout_world::sampler::WORDS;
use sprout_world::seed::{purpose, rng_for};
use sprout_world::{AspectRatio, Color, ShapeKind};

use crate::EvalError;

pub const VERSION: &str = "worldeval-v1";
const COMMITTED: &str = include_str!("../data/worldeval-v1.json");
pub const PROMPTS_PER_CATEGORY: usize = 60;
const GENERATOR_SEED: u64 = 20_261_126;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    SingleObject,
    TwoObject,
    Counting,
    Colors,
    Position,
    ColorAttr,
    Text,
    Icon,
    Aspect,
}

impl Category {
    pub const ALL: [Category; 9] = [
        Category::SingleObject,
        Category::TwoObject,
        Category::Counting,
        Category::Colors,
        Category::Position,
        Category::ColorAttr,
        Category::Text,
        Category::Icon,
        Category::Aspect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::SingleObject => "single_object",
            Category::TwoObject => "two_object",
            Category::Counting => "counting",
            Category::Colors => "colors",
            Category::Position => "position",
            Category::ColorAttr => "color_attr",
            Category::Text => "text",
            Category::Icon => "icon",
            Category::Aspect => "aspect",
        }
    }

    pub fn parse(s: &str) -> Result<Category, EvalError> {
        Category::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Category::ALL.iter().map(|c| c.name()).collect();
                EvalError::UnknownCategory(s.to_string(), names.join(", "))
            })
    }
}

/// What an object is, as a prompt asserts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    Shape { shape: ShapeKind },
    Icon { icon: String },
}

impl Target {
    pub fn noun(&self) -> String {
        match self {
            Target::Shape { shape } => shape.name().to_string(),
            Target::Icon { icon } => icon_words(icon),
        }
    }
}

/// A target, optionally with the colour it must have.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sel {
    #[serde(flatten)]
    pub target: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<Color>,
}

impl Sel {
    fn phrase(&self) -> String {
        let noun = match self.color {
            Some(c) => format!("{} {}", c.name(), self.target.noun()),
            None => self.target.noun(),
        };
        format!("{} {noun}", article(&noun))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    pub fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }
}

/// One checkable assertion of a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Constraint {
    /// At least one object matches.
    Present { what: Sel },
    /// Exactly `n` objects match.
    Count { what: Sel, n: usize },
    /// Some object matching `a` stands in `relation` to some other object matching `b`.
    Relation { a: Sel, relation: Relation, b: Sel },
    /// Some line of text reads exactly `text`.
    Text { text: String },
    /// The image's aspect ratio is nearest to `ratio` among the named ratios.
    Aspect { ratio: AspectRatio },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub id: String,
    pub category: Category,
    pub text: String,
    /// The canvas a generator should use (the aspect category needs its ratio).
    pub width: u32,
    pub height: u32,
    pub constraints: Vec<Constraint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSet {
    pub version: String,
    pub prompts: Vec<Prompt>,
}

impl PromptSet {
    /// The committed, versioned prompt set.
    pub fn builtin() -> PromptSet {
        // Parsed from a file compiled into the binary; a test guards it, so failure is a build defect.
        serde_json::from_str(COMMITTED).expect("committed prompt set parses")
    }

    pub fn get(&self, id: &str) -> Result<&Prompt, EvalError> {
        self.prompts
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| EvalError::UnknownPrompt(id.to_string()))
    }

    /// The first `count` prompts in round-robin order over the categories (so any `count` ≥ 9
    /// covers all of them), optionally restricted to some categories.
    pub fn select(
        &self,
        count: Option<usize>,
        categories: &[Category],
    ) -> Result<Vec<&Prompt>, EvalError> {
        let mut by_cat: Vec<Vec<&Prompt>> = Category::ALL
            .iter()
            .filter(|c| categories.is_empty() || categories.contains(c))
            .map(|c| self.prompts.iter().filter(|p| p.category == *c).collect())
            .collect();
        let total: usize = by_cat.iter().map(|v| v.len()).sum();
        let count = match count {
            None => total,
            Some(n) if n == 0 || n > total => {
                return Err(EvalError::CountOutOfRange { got: n, max: total })
            }
            Some(n) => n,
        };
        let mut out = Vec::with_capacity(count);
        let mut i = 0;
        while out.len() < count {
            for v in by_cat.iter_mut() {
                if i < v.len() && out.len() < count {
                    out.push(v[i]);
                }
            }
            i += 1;
        }
        Ok(out)
    }
}

fn shape<R: Rng>(rng: &mut R) -> ShapeKind {
    *ShapeKind::ALL.choose(rng).expect("shapes")
}

fn color<R: Rng>(rng: &mut R) -> Color {
    *Color::ALL.choose(rng).expect("colours")
}

fn icon<R: Rng>(rng: &mut R) -> String {
    icon_name(rng.random_range(0..icon_count())).to_string()
}

fn target<R: Rng>(rng: &mut R, icon_prob: f64) -> Target {
    if rng.random_bool(icon_prob) {
        Target::Icon { icon: icon(rng) }
    } else {
        Target::Shape { shape: shape(rng) }
    }
}

fn sel(target: Target, color: Option<Color>) -> Sel {
    Sel { target, color }
}

const FRAMES: [&str; 4] = ["", "an image of ", "a picture of ", "a drawing of "];

fn text_string<R: Rng>(rng: &mut R) -> String {
    if rng.random_bool(0.5) {
        let words: Vec<&&str> = WORDS.iter().filter(|w| w.len() >= 2).collect();
        words.choose(rng).expect("words").to_string()
    } else {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let n = rng.random_range(2..=6);
        (0..n)
            .map(|_| *CHARS.choose(rng).expect("chars") as char)
            .collect()
    }
}

/// Generate the prompt set of [`VERSION`] (used once to write the committed file).
pub fn generate() -> PromptSet {
    let mut prompts = Vec::new();
    for cat in Category::ALL {
        let mut rng = rng_for(GENERATOR_SEED, purpose::PROMPTS, cat as u64);
        let mut seen: HashSet<String> = HashSet::new();
        let mut i = 0;
        let mut icon_order: Vec<usize> = (0..icon_count()).collect();
        icon_order.shuffle(&mut rng);
        let mut attempts = 0;
        while i < PROMPTS_PER_CATEGORY {
            attempts += 1;
            assert!(
                attempts < 100_000,
                "prompt generator cannot find distinct prompts for {cat:?}"
            );
            let frame = if rng.random_bool(0.3) {
                *FRAMES.choose(&mut rng).expect("frames")
            } else {
                ""
            };
            let (mut width, mut height) = (256, 256);
            let (text, constraints) = match cat {
                Category::SingleObject => {
                    let s = ShapeKind::ALL[i % ShapeKind::ALL.len()];
                    let frames = [
                        "a",
                        "one",
                        "an image of a",
                        "a picture of a",
                        "a drawing of a",
                        "an image of one",
                        "a picture of one",
                        "a drawing of one",
                    ];
                    let f = frames[(i / ShapeKind::ALL.len()) % frames.len()];
                    let f = if f.ends_with(" a") || f == "a" {
                        format!("{}{}", &f[..f.len() - 1], article(s.name()))
                    } else {
                        f.to_string()
                    };
                    let body = format!("{f} {}", s.name());
                    (
                        body,
                        vec![Constraint::Present {
                            what: sel(Target::Shape { shape: s }, None),
                        }],
                    )
                }
                Category::Icon => {
                    let t = Target::Icon {
                        icon: icon_name(icon_order[i % icon_order.len()]).to_string(),
                    };
                    let s = sel(t, None);
                    (
                        format!("{frame}{}", s.phrase()),
                        vec![Constraint::Present { what: s }],
                    )
                }
                Category::TwoObject => {
                    let a = sel(target(&mut rng, 0.4), None);
                    let b = sel(target(&mut rng, 0.4), None);
                    if a.target == b.target {
                        continue;
                    }
                    (
                        format!("{frame}{} and {}", a.phrase(), b.phrase()),
                        vec![
                            Constraint::Present { what: a },
                            Constraint::Present { what: b },
                        ],
                    )
                }
                Category::Counting => {
                    let n = rng.random_range(2..=4);
                    let t = target(&mut rng, 0.25);
                    let with_color = matches!(t, Target::Shape { .. }) && rng.random_bool(0.3);
                    let c = with_color.then(|| color(&mut rng));
                    let noun = plural(&t.noun());
                    let noun = match c {
                        Some(c) => format!("{} {noun}", c.name()),
                        None => noun,
                    };
                    (
                        format!("{frame}{} {noun}", number_word(n)),
                        vec![Constraint::Count { what: sel(t, c), n }],
                    )
                }
                Category::Colors => {
                    let s = sel(
                        Target::Shape {
                            shape: shape(&mut rng),
                        },
                        Some(color(&mut rng)),
                    );
                    (
                        format!("{frame}{}", s.phrase()),
                        vec![Constraint::Present { what: s }],
                    )
                }
                Category::ColorAttr => {
                    let (s1, s2) = (shape(&mut rng), shape(&mut rng));
                    let (c1, c2) = (color(&mut rng), color(&mut rng));
                    if s1 == s2 || c1 == c2 {
                        continue;
                    }
                    let a = sel(Target::Shape { shape: s1 }, Some(c1));
                    let b = sel(Target::Shape { shape: s2 }, Some(c2));
                    (
                        format!("{frame}{} and {}", a.phrase(), b.phrase()),
                        vec![
                            Constraint::Present { what: a },
                            Constraint::Present { what: b },
                        ],
                    )
                }
                Category::Position => {
                    let a = sel(target(&mut rng, 0.3), None);
                    let b = sel(target(&mut rng, 0.3), None);
                    if a.target == b.target {
                        continue;
                    }
                    let r = *Relation::ALL.choose(&mut rng).expect("relations");
                    (
                        format!("{} {} {}", a.phrase(), r.phrase(), b.phrase()),
                        vec![Constraint::Relation { a, relation: r, b }],
                    )
                }
                Category::Text => {
                    let t = text_string(&mut rng);
                    let lead = ["the text", "the word", "the letters", "text reading"]
                        .choose(&mut rng)
                        .expect("leads");
                    (
                        format!("{lead} \"{t}\""),
                        vec![Constraint::Text { text: t }],
                    )
                }
                Category::Aspect => {
                    let ratio = AspectRatio::ALL[i % AspectRatio::ALL.len()];
                    (width, height) = ratio.canvas(256);
                    let t = target(&mut rng, 0.3);
                    let c = matches!(t, Target::Shape { .. }).then(|| color(&mut rng));
                    let s = sel(t, c);
                    let lead = if rng.random_bool(0.5) {
                        format!(
                            "{} {} {} image of",
                            article(ratio.describe()),
                            ratio.describe(),
                            ratio.label()
                        )
                    } else {
                        format!("a {} image showing", ratio.label())
                    };
                    (
                        format!("{lead} {}", s.phrase()),
                        vec![
                            Constraint::Aspect { ratio },
                            Constraint::Present { what: s },
                        ],
                    )
                }
            };
            if !seen.insert(text.clone()) {
                continue;
            }
            prompts.push(Prompt {
                id: format!("{}_{i:03}", cat.name()),
                category: cat,
                text,
                width,
                height,
                constraints,
            });
            i += 1;
        }
    }
    PromptSet {
        version: VERSION.to_string(),
        prompts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_set_is_the_generated_one() {
        let generated = generate();
        let committed = PromptSet::builtin();
        assert_eq!(committed.version, VERSION);
        assert!(
            committed == generated,
            "data/worldeval-v1.json differs from generate(); a changed generator needs a new version"
        );
    }

    #[test]
    fn set_shape() {
        let set = PromptSet::builtin();
        assert!(set.prompts.len() >= 500);
        let ids: HashSet<_> = set.prompts.iter().map(|p| &p.id).collect();
        assert_eq!(ids.len(), set.prompts.len());
        for c in Category::ALL {
            assert_eq!(
                set.prompts.iter().filter(|p| p.category == c).count(),
                PROMPTS_PER_CATEGORY
            );
        }
        let pick = set.select(Some(20), &[]).unwrap();
        let cats: HashSet<_> = pick.iter().map(|p| p.category).collect();
        assert_eq!(cats.len(), 9);
        assert!(set.select(Some(0), &[]).is_err());
        assert!(set.select(Some(10_000), &[]).is_err());
        assert_eq!(
            set.select(None, &[Category::Text]).unwrap().len(),
            PROMPTS_PER_CATEGORY
        );
        assert!(Category::parse("colour").is_err());
        assert!(set.get("nope_000").is_err());
    }
}
