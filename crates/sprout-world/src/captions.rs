//! Captions at three levels of detail, with paraphrase variety (synonyms, word order,
//! articles, framing), so a text encoder cannot latch onto one template.
//!
//! Every caption is true of its scene: details may be left out, never invented.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::assets::icon_words;
use crate::canvas::{AspectRatio, Region};
use crate::scene::{Background, Object, ObjectKind, Scene, ShapeKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionLevel {
    Short,
    Medium,
    Long,
}

impl CaptionLevel {
    pub const ALL: [CaptionLevel; 3] = [
        CaptionLevel::Short,
        CaptionLevel::Medium,
        CaptionLevel::Long,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captions {
    pub short: String,
    pub medium: String,
    pub long: String,
}

impl Captions {
    pub fn get(&self, level: CaptionLevel) -> &str {
        match level {
            CaptionLevel::Short => &self.short,
            CaptionLevel::Medium => &self.medium,
            CaptionLevel::Long => &self.long,
        }
    }
}

pub fn captions<R: Rng>(scene: &Scene, rng: &mut R) -> Captions {
    Captions {
        short: caption(scene, CaptionLevel::Short, rng),
        medium: caption(scene, CaptionLevel::Medium, rng),
        long: caption(scene, CaptionLevel::Long, rng),
    }
}

/// Objects that look alike (same kind and colour, or the same text) form a group.
struct Group<'a> {
    members: Vec<&'a Object>,
}

fn same_look(a: &ObjectKind, b: &ObjectKind) -> bool {
    match (a, b) {
        (ObjectKind::Text { .. }, _) | (_, ObjectKind::Text { .. }) => false,
        _ => a == b,
    }
}

fn groups(scene: &Scene) -> Vec<Group<'_>> {
    let mut out: Vec<Group> = Vec::new();
    for o in &scene.objects {
        match out
            .iter_mut()
            .find(|g| same_look(&g.members[0].kind, &o.kind))
        {
            Some(g) => g.members.push(o),
            None => out.push(Group { members: vec![o] }),
        }
    }
    out
}

pub fn number_word(n: usize) -> String {
    match n {
        2 => "two".into(),
        3 => "three".into(),
        4 => "four".into(),
        5 => "five".into(),
        6 => "six".into(),
        _ => n.to_string(),
    }
}

/// "a" or "an" for a following word.
pub fn article(word: &str) -> &'static str {
    match word.chars().next() {
        Some(c) if "aeiou".contains(c) => "an",
        _ => "a",
    }
}

pub fn plural(noun: &str) -> String {
    let (head, last) = match noun.rsplit_once(' ') {
        Some((h, l)) => (format!("{h} "), l),
        None => (String::new(), noun),
    };
    let p = match last {
        "fish" | "deer" | "sheep" | "moose" | "bison" | "shrimp" | "sushi" | "popcorn"
        | "broccoli" => last.to_string(),
        "mouse" => "mice".into(),
        "leaf" => "leaves".into(),
        "knife" => "knives".into(),
        _ if last.ends_with('s')
            || last.ends_with("sh")
            || last.ends_with("ch")
            || last.ends_with('x') =>
        {
            format!("{last}es")
        }
        _ if last.ends_with('y')
            && !last.ends_with("ey")
            && !last.ends_with("ay")
            && !last.ends_with("oy") =>
        {
            format!("{}ies", &last[..last.len() - 1])
        }
        _ => format!("{last}s"),
    };
    format!("{head}{p}")
}

/// The noun for a shape, with synonyms.
fn shape_noun<R: Rng>(k: ShapeKind, rng: &mut R) -> &'static str {
    let options: &[&str] = match k {
        ShapeKind::Circle => &["circle", "circle", "disk"],
        ShapeKind::Square => &["square"],
        ShapeKind::Triangle => &["triangle"],
        ShapeKind::Star => &["star", "star", "five-pointed star"],
        ShapeKind::Hexagon => &["hexagon"],
        ShapeKind::Heart => &["heart"],
        ShapeKind::Ring => &["ring", "ring", "hoop"],
        ShapeKind::Cross => &["cross", "cross", "plus sign"],
    };
    options.choose(rng).expect("options")
}

/// Noun phrase for a group: "a red circle", "three blue stars", "the word \"CAT\"".
fn group_phrase<R: Rng>(
    g: &Group,
    rng: &mut R,
    with_color: bool,
    text_color: bool,
    size: bool,
) -> String {
    let n = g.members.len();
    let o = g.members[0];
    let size_word = if size && n == 1 {
        format!("{} ", o.size.name())
    } else {
        String::new()
    };
    match &o.kind {
        ObjectKind::Shape { shape, color } => {
            let noun = shape_noun(*shape, rng);
            let noun = if n > 1 {
                plural(noun)
            } else {
                noun.to_string()
            };
            let body = if with_color {
                if n == 1 && rng.random_bool(0.15) {
                    format!("{size_word}{noun} in {}", color.name())
                } else {
                    format!("{size_word}{} {noun}", color.name())
                }
            } else {
                format!("{size_word}{noun}")
            };
            quantify(n, &body, rng)
        }
        ObjectKind::Icon { icon } => {
            let w = icon_words(icon);
            let noun = if n > 1 { plural(&w) } else { w };
            quantify(n, &format!("{size_word}{noun}"), rng)
        }
        ObjectKind::Text { text, color } => {
            let lead = ["the text", "the word", "the letters", "text reading"]
                .choose(rng)
                .expect("options");
            let mut s = format!("{lead} \"{text}\"");
            if text_color {
                let c = color.name();
                s = match rng.random_range(0..3) {
                    0 => format!("{s} in {c}"),
                    1 => format!("{s} written in {c}"),
                    _ if *lead == "text reading" => format!("{c} text reading \"{text}\""),
                    _ => format!("{s} in {c} letters"),
                };
            }
            s
        }
    }
}

fn quantify<R: Rng>(n: usize, body: &str, rng: &mut R) -> String {
    if n == 1 {
        if rng.random_bool(0.1) {
            format!("one {body}")
        } else {
            format!("{} {body}", article(body))
        }
    } else if rng.random_bool(0.1) {
        format!("{n} {body}")
    } else {
        format!("{} {body}", number_word(n))
    }
}

fn join_list(items: &[String]) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        _ => format!(
            "{} and {}",
            items[..items.len() - 1].join(", "),
            items[items.len() - 1]
        ),
    }
}

fn position_phrase<R: Rng>(r: Region, rng: &mut R) -> String {
    match r {
        Region::Center => ["in the center", "in the middle", "at the center"]
            .choose(rng)
            .expect("o")
            .to_string(),
        Region::Left | Region::Right => format!(
            "{} the {}",
            ["on", "at"].choose(rng).expect("o"),
            r.phrase()
        ),
        Region::Top | Region::Bottom => format!("at the {}", r.phrase()),
        _ => format!(
            "{} the {}{}",
            ["in", "at"].choose(rng).expect("o"),
            r.phrase(),
            if rng.random_bool(0.3) { " corner" } else { "" }
        ),
    }
}

fn background_phrase<R: Rng>(bg: &Background, detailed: bool, rng: &mut R) -> String {
    let backdrop = ["background", "background", "backdrop"]
        .choose(rng)
        .expect("o");
    match bg {
        Background::Solid { color } => {
            let plain = if detailed { "plain " } else { "" };
            format!("on a {plain}{} {backdrop}", color.name())
        }
        Background::Gradient {
            from,
            to,
            direction,
        } => {
            if detailed {
                format!(
                    "on a {} gradient from {} to {}",
                    direction.name(),
                    from.name(),
                    to.name()
                )
            } else {
                format!("on a {} to {} gradient", from.name(), to.name())
            }
        }
        Background::Stripes {
            a, b, direction, ..
        } => {
            if detailed {
                format!(
                    "on {} stripes of {} and {}",
                    direction.name(),
                    a.name(),
                    b.name()
                )
            } else {
                format!("on a striped {backdrop}")
            }
        }
        Background::Checker { a, b, .. } => {
            if detailed {
                format!("on a {} and {} checkerboard", a.name(), b.name())
            } else {
                format!("on a checkered {backdrop}")
            }
        }
    }
}

fn relation(a: &Object, b: &Object) -> &'static str {
    let dx = b.center[0] - a.center[0];
    let dy = b.center[1] - a.center[1];
    if dx.abs() >= dy.abs() {
        if dx > 0.0 {
            "to the left of"
        } else {
            "to the right of"
        }
    } else if dy > 0.0 {
        "above"
    } else {
        "below"
    }
}

fn frame<R: Rng>(body: String, aspect: Option<AspectRatio>, rng: &mut R) -> String {
    match aspect {
        Some(a) => {
            let lead = match rng.random_range(0..3) {
                0 => format!(
                    "{} {} {} image of",
                    article(a.describe()),
                    a.describe(),
                    a.label()
                ),
                1 => format!("{} {} picture of", article(a.describe()), a.describe()),
                _ => format!("a {} image showing", a.label()),
            };
            format!("{lead} {body}")
        }
        None => {
            let lead = ["", "", "", "an image of ", "a picture of ", "a drawing of "]
                .choose(rng)
                .expect("o");
            format!("{lead}{body}")
        }
    }
}

/// One caption of `scene` at `level`.
pub fn caption<R: Rng>(scene: &Scene, level: CaptionLevel, rng: &mut R) -> String {
    let mut gs = groups(scene);
    gs.shuffle(rng);
    let aspect = AspectRatio::nearest(scene.width, scene.height);
    let aspect = (aspect != AspectRatio::Square).then_some(aspect);
    if gs.is_empty() {
        let body = format!(
            "an empty canvas {}",
            background_phrase(&scene.background, level == CaptionLevel::Long, rng)
        );
        return body;
    }
    match level {
        CaptionLevel::Short => {
            let with_color = rng.random_bool(0.85);
            // Two single objects: sometimes their relation, bare ("a circle to the right of
            // a square"), as position prompts ask.
            if gs.len() == 2 && gs.iter().all(|g| g.members.len() == 1) && rng.random_bool(0.4) {
                let (a, b) = (&gs[0], &gs[1]);
                let pa = group_phrase(a, rng, with_color, false, false);
                let pb = group_phrase(b, rng, with_color, false, false);
                let aspect = aspect.filter(|_| rng.random_bool(0.3));
                return frame(
                    format!("{pa} {} {pb}", relation(a.members[0], b.members[0])),
                    aspect,
                    rng,
                );
            }
            let parts: Vec<String> = gs
                .iter()
                .map(|g| group_phrase(g, rng, with_color, false, false))
                .collect();
            let aspect = aspect.filter(|_| rng.random_bool(0.3));
            frame(join_list(&parts), aspect, rng)
        }
        CaptionLevel::Medium => {
            let body =
                if gs.len() == 2 && gs.iter().all(|g| g.members.len() == 1) && rng.random_bool(0.6)
                {
                    let (a, b) = (&gs[0], &gs[1]);
                    let pa = group_phrase(a, rng, true, false, false);
                    let pb = group_phrase(b, rng, true, false, false);
                    format!("{pa} {} {pb}", relation(a.members[0], b.members[0]))
                } else {
                    let parts: Vec<String> = gs
                        .iter()
                        .map(|g| {
                            let p = group_phrase(g, rng, true, false, false);
                            if g.members.len() == 1 {
                                format!("{p} {}", position_phrase(g.members[0].region(), rng))
                            } else {
                                p
                            }
                        })
                        .collect();
                    join_list(&parts)
                };
            let bg = background_phrase(&scene.background, false, rng);
            let aspect = aspect.filter(|_| rng.random_bool(0.6));
            frame(format!("{body}, {bg}"), aspect, rng)
        }
        CaptionLevel::Long => {
            let parts: Vec<String> = gs
                .iter()
                .map(|g| {
                    let p = group_phrase(g, rng, true, true, true);
                    let mut regions: Vec<String> = Vec::new();
                    for m in &g.members {
                        let r = m.region().phrase().to_string();
                        if !regions.contains(&r) {
                            regions.push(r);
                        }
                    }
                    let mut s = if g.members.len() == 1 {
                        format!("{p} {}", position_phrase(g.members[0].region(), rng))
                    } else {
                        let sizes: Vec<&str> = g.members.iter().map(|m| m.size.name()).collect();
                        let size_note = if sizes.iter().all(|s| *s == sizes[0]) {
                            format!(", all {}", sizes[0])
                        } else {
                            String::new()
                        };
                        format!("{p}{size_note} (at the {})", join_list(&regions))
                    };
                    if g.members.len() == 1 && g.members[0].rotation != 0.0 {
                        s.push_str(&format!(
                            " rotated by {} degrees",
                            g.members[0].rotation.round() as i32
                        ));
                    }
                    s
                })
                .collect();
            let bg = background_phrase(&scene.background, true, rng);
            let frame_aspect = aspect
                .or(Some(AspectRatio::Square))
                .filter(|a| *a != AspectRatio::Square || rng.random_bool(0.3));
            frame(format!("{}, {bg}", parts.join("; ")), frame_aspect, rng)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colors::{BgColor, Color};
    use crate::scene::{Direction, SizeClass};
    use crate::seed::rng_for;

    fn obj(kind: ObjectKind, center: [f32; 2]) -> Object {
        Object {
            kind,
            size: SizeClass::Medium,
            center,
            rotation: 0.0,
            scale: 1.0,
        }
    }

    fn two_shapes() -> Scene {
        Scene {
            width: 256,
            height: 256,
            background: Background::Stripes {
                a: BgColor::White,
                b: BgColor::PalePink,
                direction: Direction::Vertical,
                period: 0.2,
            },
            objects: vec![
                obj(
                    ObjectKind::Shape {
                        shape: ShapeKind::Circle,
                        color: Color::Red,
                    },
                    [0.2, 0.5],
                ),
                obj(
                    ObjectKind::Shape {
                        shape: ShapeKind::Star,
                        color: Color::Blue,
                    },
                    [0.8, 0.5],
                ),
            ],
        }
    }

    #[test]
    fn captions_state_the_facts() {
        let s = two_shapes();
        let mut saw_variants = std::collections::HashSet::new();
        for i in 0..60 {
            let mut rng = rng_for(3, 9, i);
            let c = captions(&s, &mut rng);
            assert!(c.short.contains("star"), "{}", c.short);
            assert!(
                c.long.contains("red") && c.long.contains("blue"),
                "{}",
                c.long
            );
            assert!(
                c.long.contains("stripes of white and pale pink"),
                "{}",
                c.long
            );
            assert!(c.long.contains("medium"), "{}", c.long);
            assert!(c.medium.contains("striped"), "{}", c.medium);
            if c.medium.contains("to the left of") {
                assert!(
                    c.medium.find("circle").or(c.medium.find("disk")) < c.medium.find("star"),
                    "{}",
                    c.medium
                );
            }
            if c.medium.contains("to the right of") {
                assert!(
                    c.medium.find("star") < c.medium.find("circle").or(c.medium.find("disk")),
                    "{}",
                    c.medium
                );
            }
            assert!(!c.long.contains("green"));
            saw_variants.insert(c.short.clone());
        }
        assert!(
            saw_variants.len() >= 6,
            "only {} distinct short captions",
            saw_variants.len()
        );
    }

    #[test]
    fn counts_and_plurals() {
        let mut s = two_shapes();
        s.objects[1] = obj(
            ObjectKind::Shape {
                shape: ShapeKind::Circle,
                color: Color::Red,
            },
            [0.8, 0.2],
        );
        s.objects.push(obj(
            ObjectKind::Shape {
                shape: ShapeKind::Circle,
                color: Color::Red,
            },
            [0.5, 0.8],
        ));
        let mut rng = rng_for(1, 1, 1);
        for _ in 0..20 {
            let c = caption(&s, CaptionLevel::Short, &mut rng);
            assert!(c.contains("three") || c.contains('3'), "{c}");
            assert!(c.contains("circles") || c.contains("disks"), "{c}");
        }
        assert_eq!(plural("cross"), "crosses");
        assert_eq!(plural("red apple"), "red apples");
        assert_eq!(plural("butterfly"), "butterflies");
        assert_eq!(plural("monkey"), "monkeys");
        assert_eq!(plural("fish"), "fish");
    }

    #[test]
    fn text_is_quoted_exactly() {
        let s = Scene {
            width: 352,
            height: 192,
            background: Background::Solid {
                color: BgColor::Cream,
            },
            objects: vec![obj(
                ObjectKind::Text {
                    text: "HELLO".into(),
                    color: Color::Green,
                },
                [0.5, 0.5],
            )],
        };
        let mut rng = rng_for(1, 2, 3);
        let c = captions(&s, &mut rng);
        for t in [&c.short, &c.medium, &c.long] {
            assert!(t.contains("\"HELLO\""), "{t}");
        }
        assert!(c.long.contains("green"), "{}", c.long);
        assert!(
            c.long.contains("16:9") || c.long.contains("wide"),
            "{}",
            c.long
        );
    }
}
