//! The simplest "run lots of work in parallel": one process per item, each
//! computing a value that comes back through `join`, with failures reported
//! by reason instead of taking the program down.
//!
//! Run with `cargo run --example parallel_closures`.

use converge::Ctx;

/// Counts the primes below `n` (slowly: it is the work).
fn primes_below(n: u64) -> u64 {
    (2..n)
        .filter(|&k| (2..k).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u64
}

fn main() -> Result<(), converge::Error> {
    let _node = converge::init()?; // shuts the processes down when main returns
    let inputs = [10_000u64, 20_000, 30_000, 0, 40_000, 50_000];
    let handles: Vec<_> = inputs
        .iter()
        .map(|&n| {
            converge::spawn_join(move |_: Ctx<()>| {
                assert!(n > 0, "an empty range is a bug in the input");
                primes_below(n)
            })
        })
        .collect::<Result<_, _>>()?;
    for (n, handle) in inputs.iter().zip(handles) {
        match handle.join() {
            Ok(count) => println!("{count:>6} primes below {n}"),
            Err(e) => println!("   --- input {n} failed: {e}"),
        }
    }
    Ok(())
}
