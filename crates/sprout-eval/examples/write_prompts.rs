//! Writes the generated prompt set to data/worldeval-v1.json (run when creating a new version).
fn main() {
    let set = sprout_eval::prompts::generate();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/worldeval-v1.json");
    std::fs::write(
        path,
        serde_json::to_string_pretty(&set).expect("serialises") + "\n",
    )
    .expect("write");
    println!("wrote {} prompts to {path}", set.prompts.len());
}
