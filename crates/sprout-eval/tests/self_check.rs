//! The evaluator is proven on the full prompt set: ground truth scores ≥ 0.99, degraded ground
//! truth ≥ 0.95, and blank, noise and wrong-prompt images ≤ 0.05.

use sprout_eval::run::{score_dir, self_check, source_image, Source};
use sprout_eval::{PromptSet, Report};

fn run(source: Source, seed: u64) -> Report {
    let set = PromptSet::builtin();
    let prompts = set.select(None, &[]).unwrap();
    assert!(prompts.len() >= 500);
    let r = self_check(&set, &prompts, source, seed, None, &|| {}).unwrap();
    eprintln!("{}", r.summary());
    assert_eq!(r.categories.len(), 9);
    r
}

#[test]
fn ground_truth_scores_at_least_0_99() {
    let r = run(Source::GroundTruth, 0);
    assert!(r.overall >= 0.99, "{}", r.markdown());
    // Also on scenes drawn from another seed.
    let r = run(Source::GroundTruth, 7);
    assert!(r.overall >= 0.99, "{}", r.markdown());
}

#[test]
fn degraded_ground_truth_scores_at_least_0_95() {
    let r = run(Source::Degraded, 0);
    assert!(r.overall >= 0.95, "{}", r.markdown());
}

#[test]
fn baselines_score_at_most_0_05() {
    for source in [Source::Blank, Source::Noise, Source::WrongPrompt] {
        let r = run(source, 0);
        assert!(r.overall <= 0.05, "{source:?}: {}", r.markdown());
    }
}

#[test]
fn scoring_a_directory_matches_the_self_check_and_reports_gaps() {
    let set = PromptSet::builtin();
    let prompts = set.select(Some(27), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (k, p) in prompts.iter().enumerate() {
        let img = source_image(&set, p, Source::GroundTruth, 0).unwrap();
        // Some prompts get two samples (`<id>_<k>.png`), one of them a blank that fails.
        if k % 5 == 0 {
            img.save(dir.path().join(format!("{}_0.png", p.id)))
                .unwrap();
            let blank = source_image(&set, p, Source::Blank, 0).unwrap();
            blank
                .save(dir.path().join(format!("{}_1.png", p.id)))
                .unwrap();
        } else if k != 3 {
            img.save(dir.path().join(format!("{}.png", p.id))).unwrap();
        }
    }
    std::fs::write(
        dir.path().join(format!("{}.png", prompts[3].id)),
        b"not an image",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let r = score_dir(&set, &prompts, dir.path(), &|| {}).unwrap();
    assert!(r.missing.is_empty(), "{:?}", r.missing);
    assert!(r.unknown.is_empty(), "{:?}", r.unknown);
    assert_eq!(r.unreadable.len(), 1, "{:?}", r.unreadable);
    assert!(r.unreadable[0].contains(&prompts[3].id));
    for (k, res) in r.results.iter().enumerate() {
        match (k % 5 == 0, k == 3) {
            (true, _) => assert_eq!((res.correct, res.images), (1, 2), "{}", res.id),
            (false, true) => assert_eq!(res.images, 0),
            _ => assert_eq!(
                (res.correct, res.images),
                (1, 1),
                "{}: {:?}",
                res.id,
                res.failed
            ),
        }
    }
    // A removed image is reported missing, by id.
    std::fs::remove_file(dir.path().join(format!("{}.png", prompts[1].id))).unwrap();
    let r = score_dir(&set, &prompts, dir.path(), &|| {}).unwrap();
    assert_eq!(r.missing, vec![prompts[1].id.clone()]);
    // An image named after no prompt is reported as unknown.
    std::fs::write(dir.path().join("colors_999.png"), b"x").unwrap();
    let r = score_dir(&set, &prompts, dir.path(), &|| {}).unwrap();
    assert_eq!(r.unknown.len(), 1);
    assert!(r.unknown[0].ends_with("colors_999.png"));
}
