//! Audits how reliably the reader identifies each vendored icon: renders every icon at each
//! size on several backgrounds, clean and degraded, and prints one line per icon:
//! `name correct/total confusions...` (used to curate the vendored set).
use sprout_eval::degrade::degrade;
use sprout_eval::reader::Reader;
use sprout_world::scene::{Background, Direction};
use sprout_world::{assets, BgColor, Object, ObjectKind, Renderer, Scene, SizeClass};

fn main() {
    let reader = Reader::new();
    let bgs = [
        Background::Solid {
            color: BgColor::White,
        },
        Background::Solid {
            color: BgColor::PaleGreen,
        },
        Background::Stripes {
            a: BgColor::Lavender,
            b: BgColor::Cream,
            direction: Direction::Diagonal,
            period: 0.15,
        },
        Background::Checker {
            a: BgColor::PaleBlue,
            b: BgColor::PalePink,
            cells: 8,
        },
    ];
    for i in 0..assets::icon_count() {
        let name = assets::icon_name(i);
        let (mut ok, mut total) = (0, 0);
        let mut confusions = Vec::new();
        for (b, bg) in bgs.iter().enumerate() {
            for size in SizeClass::ALL {
                for deg in [false, true] {
                    let scene = Scene {
                        width: 256,
                        height: 256,
                        background: bg.clone(),
                        objects: vec![Object {
                            kind: ObjectKind::Icon {
                                icon: name.to_string(),
                            },
                            size,
                            center: [0.4 + 0.05 * b as f32, 0.55],
                            rotation: 0.0,
                            scale: 1.0,
                        }],
                    };
                    let mut img = Renderer::new().render(&scene).unwrap();
                    if deg {
                        img = degrade(&img, 1, (i * 100 + b * 10) as u64);
                    }
                    let r = reader.read(&img);
                    total += 1;
                    let good = r.objects.len() == 1
                        && matches!(&r.objects[0].kind, ObjectKind::Icon { icon } if icon == name);
                    if good {
                        ok += 1;
                    } else {
                        let seen: Vec<String> = r
                            .objects
                            .iter()
                            .map(|o| match &o.kind {
                                ObjectKind::Icon { icon } => icon.clone(),
                                ObjectKind::Shape { shape, color } => {
                                    format!("{}:{}", color.name(), shape.name())
                                }
                                ObjectKind::Text { text, .. } => format!("text:{text}"),
                            })
                            .collect();
                        confusions.push(format!("[{}]", seen.join(",")));
                    }
                }
            }
        }
        println!("{name} {ok}/{total} {}", confusions.join(" "));
    }
}
