//! `vsky-lab`: runs one scenario of the VM lab inside the VM (lab/init
//! calls it once per scenario), or lists them for lab/run.
//!
//! ```text
//! vsky-lab --list      names, one per line: "<name> default" or "<name> extra"
//! vsky-lab --help      every scenario and what it proves
//! vsky-lab <scenario>  runs it: progress lines, then `LAB-DETAIL <text>` and
//!                      exit 0, or `LAB-WHY <reason>` and exit 1
//! ```
//!
//! lab/init turns `LAB-DETAIL`/`LAB-WHY` into the `LAB PASS|FAIL` lines.
//!
//! Environment (set by lab/init): `VSKY_LAB_DIR` (the storage servers' disk
//! images, on ext4), `VSKY_LAB_BIN` (the daemons and the CLI, default
//! `/lab/bin`), `VSKY_LAB_KERNEL_TESTS` (the kernel test binary, default
//! `/lab/vsky-kernel-lab`) and `VSKY_LAB_SERVER` (its NBD server, read by
//! the kernel tests, which `vsky-lab` runs with `VSKY_LAB=1`).

mod api;
mod data;
mod faults;
mod fixture;
mod http;
mod jobs;
mod kernel;
mod netns;
mod out;
mod scenario;
mod scenarios;
mod tool;
mod wait;

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result, bail};

use scenarios::{Run, SCENARIOS};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--list"] => {
            for s in SCENARIOS {
                println!("{} {}", s.name, if s.default { "default" } else { "extra" });
            }
            ExitCode::SUCCESS
        }
        [name] if !name.starts_with('-') => run(name),
        args => {
            println!(
                "usage: vsky-lab --list | <scenario>\n\nscenarios (lab/run runs those marked * when none is named):"
            );
            for s in SCENARIOS {
                let mark = if s.default { '*' } else { ' ' };
                println!("{mark} {:<22} {}", s.name, s.proves);
            }
            if args == ["--help"] {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn run(name: &str) -> ExitCode {
    let Some(scenario) = scenarios::find(name) else {
        println!("LAB-WHY unknown scenario '{name}' (vsky-lab --list names them)");
        return ExitCode::from(2);
    };
    out::set_prefix(if name == "demo" { "demo" } else { "cluster" });
    let result = match scenario.run {
        Run::Kernel(test) => kernel_test(test),
        Run::Cluster(f) => f(),
    };
    match result {
        Ok(detail) => {
            if !detail.is_empty() {
                println!("LAB-DETAIL {detail}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let why = format!("{e:#}").replace('\n', " ");
            out::say(format!("FAIL: {why}"));
            println!("LAB-WHY {why}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one kernel test; it prints its own `LAB-DETAIL` line. Passes only
/// if exactly that test ran and passed (a filter that matched nothing
/// would pass with 0 tests). On failure the reason is its panic message.
fn kernel_test(test: &str) -> Result<String> {
    let bin =
        std::env::var("VSKY_LAB_KERNEL_TESTS").unwrap_or_else(|_| "/lab/vsky-kernel-lab".into());
    let mut child = Command::new(&bin)
        .args([
            test,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VSKY_LAB", "1")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {bin}"))?;
    let stderr = child.stderr.take().context("kernel test stderr")?;
    let stderr = std::thread::spawn(move || {
        let mut panic = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if (line.contains("panicked") || !panic.is_empty()) && panic.len() < 3 {
                panic.push(line);
            }
        }
        panic.join(" ")
    });
    let stdout = child.stdout.take().context("kernel test stdout")?;
    let mut passed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        passed |= line.starts_with("test result: ok. 1 passed");
        println!("{line}");
    }
    let status = child.wait()?;
    let panic = stderr.join().unwrap_or_default();
    if !status.success() || !passed {
        bail!("kernel test {test} failed ({status}): {panic}");
    }
    // The test printed its own LAB-DETAIL line.
    Ok(String::new())
}
