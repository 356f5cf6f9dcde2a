//! The reader against ground-truth renders of random world scenes: kinds, colours, positions
//! and text come back as the scene says.

use sprout_eval::reader::Reader;
use sprout_world::sampler::{sample_scene, CanvasChoice, Overlap, SamplerConfig};
use sprout_world::Renderer;

#[test]
fn random_scenes_read_back() {
    let cfg = SamplerConfig {
        min_objects: 1,
        max_objects: 4,
        rotate_prob: 0.5,
        repeat_prob: 0.0,
        overlap: Overlap::Forbid,
        canvas: CanvasChoice::AnyAspect,
        ..SamplerConfig::default()
    };
    let reader = Reader::new();
    let (mut objects, mut found, mut exact_scenes) = (0, 0, 0);
    let n = 200;
    for i in 0..n {
        let scene = sample_scene(&cfg, 99, i);
        let img = Renderer::new().render(&scene).unwrap();
        let reading = reader.read(&img);
        let mut all = reading.objects.len() == scene.objects.len();
        for o in &scene.objects {
            objects += 1;
            let hit = reading.objects.iter().any(|d| {
                let close = (d.center[0] - o.center[0]).abs() < 0.05
                    && (d.center[1] - o.center[1]).abs() < 0.05;
                let same = o.kind == d.kind;
                close && same
            });
            found += hit as usize;
            all &= hit;
        }
        exact_scenes += all as usize;
    }
    let recall = found as f32 / objects as f32;
    let exact = exact_scenes as f32 / n as f32;
    eprintln!("objects {objects}, recall {recall:.3}, scenes read exactly {exact:.3}");
    assert!(recall >= 0.97, "recall {recall}");
    assert!(exact >= 0.93, "exact {exact}");
}
