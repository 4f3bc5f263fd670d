//! Feed items in, get results out, in order: `pool::map` runs a plain
//! function over an iterator on the scheduler pool, in batches. Then feed
//! items in and get commands out, which run as ports, a few at a time: the
//! pool decides what to run, external programs do it.
//!
//! Run with `cargo run --example pool_map`.

use std::collections::HashMap;
use std::time::Instant;

use converge::pool;
use converge::port::{Framing, PortBuilder, PortOutput};
use converge::{Ctx, Event, Pid};

/// The number of steps the Collatz sequence takes from `n` to 1.
fn collatz_steps(n: u64) -> u32 {
    let (mut n, mut steps) = (n, 0);
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

/// The command that checks one file: an argument vector.
fn command_for(file: String) -> Vec<String> {
    let script = if file.ends_with(".missing") {
        format!("test -e {file} && wc -c {file}")
    } else {
        format!("printf '%s' '{file}' | wc -c | sed 's/^/{file}: /'")
    };
    vec!["/bin/sh".into(), "-c".into(), script]
}

fn main() -> Result<(), converge::Error> {
    let node = converge::init()?;

    // 1. Items in, results out, in the items' order.
    let n = 300_000u64;
    let t = Instant::now();
    let steps: Vec<u32> = pool::map(collatz_steps, 1..=n).collect::<Result<_, _>>()?;
    let (best, most) = steps.iter().enumerate().max_by_key(|(_, s)| **s).unwrap();
    println!(
        "collatz over 1..={n} on {} schedulers in {:.0?}: {} takes the most steps ({most})",
        pool::schedulers().len(),
        t.elapsed(),
        best + 1
    );
    assert_eq!(steps[26], 111, "27 takes 111 steps");

    // 2. Items in, commands out, and the commands run as ports, at most 3 at once.
    let files: Vec<String> = (1..=8)
        .map(|i| {
            if i == 5 {
                format!("report-{i}.missing")
            } else {
                format!("report-{i}.txt")
            }
        })
        .collect();
    let commands: Vec<Vec<String>> = pool::map(command_for, files.clone()).collect::<Result<_, _>>()?;
    let ctx: Ctx<()> = node.ctx();
    let mut waiting = files.into_iter().zip(commands).collect::<Vec<_>>().into_iter();
    let mut running: HashMap<Pid, String> = HashMap::new();
    loop {
        while running.len() < 3
            && let Some((file, argv)) = waiting.next()
        {
            let port = PortBuilder::new(&argv[0])
                .args(&argv[1..])
                .framing(Framing::Lines { max: 4096 })
                .spawn()?;
            running.insert(port.pid(), file);
        }
        if running.is_empty() {
            break;
        }
        if let Event::Port { port, output } = ctx.recv_event()? {
            match output {
                PortOutput::Line { data, .. } => println!("  {}", String::from_utf8_lossy(&data)),
                PortOutput::Exit(reason) => {
                    let file = running.remove(&port).expect("a port of ours");
                    if !reason.is_normal() {
                        println!("  {file}: {reason}");
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}
