//! The README's main command, `pulse demo`, runs to completion and reports what it showed.

use std::process::Command;

#[test]
fn demo_runs_and_every_check_passes() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_pulse")).arg("demo").output().expect("run pulse demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "3000 orders written at quorum",
        "the loader ran once",
        "every node's audit log got all 1000, in each publisher's order",
        "billing (a consumer group) handled each order exactly once",
        "were delivered again to the survivors (attempt 2) and handled: all 30 done",
        "acknowledged orders readable at quorum on both survivors",
        "node-3 rejoined and holds all",
        "0 of 300 sessions readable",
        "Every check passed.",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
}
