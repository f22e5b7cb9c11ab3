//! Times `echo hi` on a bundle: `cargo run --release --example probe -- BUNDLE [ignore]`.
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let b = std::path::PathBuf::from(&args[1]);
    let ignore = args.get(2).is_some();
    let mut v = Vec::new();
    for i in 0..30 {
        let mut req = ftl_sandbox::RunRequest::new(
            format!("probe-{i}"),
            ftl_sandbox::Source::Bundle(b.clone()),
        )
        .with_state_root("/tmp/rt/probe-state");
        req.ignore_cgroups = ignore;
        let t = Instant::now();
        let o = ftl_sandbox::Sandbox::default().run(&req).unwrap();
        assert_eq!(o.stdout, b"hi\n");
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("median {:.2} ms min {:.2} max {:.2}", v[15], v[0], v[29]);
}
