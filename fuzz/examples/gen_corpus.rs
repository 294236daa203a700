//! Write the seed corpus (`sgswitch_fuzz::seeds`) to `corpus/<target>/<name>`.
//! Run from `fuzz/`: `cargo run --example gen_corpus`.

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut n = 0;
    for (target, name, bytes) in sgswitch_fuzz::seeds::all() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)?;
        n += 1;
    }
    println!("wrote {n} seeds under {}", dir.display());
    Ok(())
}
