//! Load and validate a synthetic config repository of 1,000 environments × 5 services from a git
//! commit (blobs read from the object database, no checkout), and from a directory. Prints the
//! times and the peak RSS. Target (issue 2): under 300 ms from a commit, under 200 MB.
//!
//! `cargo bench --bench config_load [-- ENVS SERVICES]`

use std::time::{Duration, Instant};

use keystone::config;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// User + system CPU time of this process so far (all threads): on a shared machine the wall
/// time depends on the load, this does not.
fn cpu_time() -> Duration {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let d = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    d(u.ru_utime) + d(u.ru_stime)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let envs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let services: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let runs = 7;

    let git_dir = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init_bare(git_dir.path()).unwrap();
    let t = Instant::now();
    config::synthetic::commit_repo(&repo, envs, services).unwrap();
    let generate = t.elapsed();
    let files = config::synthetic::files(envs, services);
    let bytes: usize = files.iter().map(|(_, c)| c.len()).sum();

    let mut from_git = Vec::new();
    let mut loaded = None;
    let cpu_before = cpu_time();
    for _ in 0..runs {
        let t = Instant::now();
        let l = config::load_rev(&repo, "refs/heads/main").unwrap();
        from_git.push(t.elapsed());
        loaded = Some(l);
    }
    let cpu_per_load = (cpu_time() - cpu_before) / runs as u32;
    let loaded = loaded.unwrap();
    assert!(
        loaded.diagnostics.is_empty(),
        "the synthetic repository must be valid:\n{}",
        loaded.render_diagnostics()
    );
    let rss_after_git = peak_rss_mb();

    let dir = tempfile::tempdir().unwrap();
    config::synthetic::write_repo(dir.path(), envs, services).unwrap();
    let mut from_dir = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let l = config::load_dir(dir.path()).unwrap();
        from_dir.push(t.elapsed());
        assert!(l.diagnostics.is_empty());
    }

    // Parsing alone (serde-saphyr into the positioned tree), to see where the time goes.
    let t = Instant::now();
    for (path, text) in &files {
        if !path.ends_with(".json") && !path.ends_with(".env") {
            config::yaml::parse(text).unwrap();
        }
    }
    let parse_only = t.elapsed();

    println!(
        "config_load: {envs} environments x {services} services: {} files, {:.1} MB of YAML ({})",
        files.len(),
        bytes as f64 / 1e6,
        loaded.summary()
    );
    println!(
        "  generate + commit:           {:>8.1} ms",
        generate.as_secs_f64() * 1e3
    );
    println!(
        "  load + validate, git commit: {:>8.1} ms median, {:.1} ms min of {runs} (target < 300 ms)",
        median(from_git.clone()).as_secs_f64() * 1e3,
        from_git.iter().min().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  CPU time per load (all threads): {:>5.1} ms",
        cpu_per_load.as_secs_f64() * 1e3
    );
    println!(
        "  of which YAML parsing alone:  {:>8.1} ms",
        parse_only.as_secs_f64() * 1e3
    );
    println!(
        "  load + validate, directory:  {:>8.1} ms median, {:.1} ms min of {runs}",
        median(from_dir.clone()).as_secs_f64() * 1e3,
        from_dir.iter().min().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  peak RSS (VmHWM): {rss_after_git:.1} MB after the git loads, {:.1} MB at the end (target < 200 MB)",
        peak_rss_mb()
    );
}
