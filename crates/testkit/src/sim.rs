//! Runtimes for seeded simulations.
//!
//! A simulation replays exactly from its seed only if everything that orders its tasks is
//! seeded too. The simulated network is; tokio is not by default: `select!` picks among ready
//! branches at random, and a `watch` channel spreads its waiters over several queues chosen at
//! random, so two tasks woken by one membership change run in either order. Build a
//! simulation's runtime with [`runtime`]: tokio's generator is then seeded from the
//! simulation's seed (this needs `--cfg tokio_unstable`, which the workspace's
//! `.cargo/config.toml` sets; built without it, the runtime is the same but unseeded).

/// A current-thread runtime on tokio's paused clock whose random choices are drawn from
/// `seed`: one per seed of a simulation, so a failing seed replays.
pub fn runtime(seed: u64) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    #[cfg(not(tokio_unstable))]
    let _ = seed;
    builder.build().expect("a current-thread runtime builds")
}
