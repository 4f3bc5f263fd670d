//! Keeps a server program running under a supervisor. The server (this same
//! executable, run with `--server`) answers TCP connections on loopback; it is
//! killed from outside three times, and each time the supervisor starts it
//! again and says why it ended. The supervisor's `tracing` events (and the
//! server's output, which it logs) are printed as they happen.
//!
//! Run with `cargo run --example supervised_server`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use converge::Pid;
use converge::port::{Framing, PortBuilder};
use converge::supervisor::{ChildSpec, Restart, Strategy, Supervisor, SupervisorRef};

fn main() -> Result<(), converge::Error> {
    if std::env::args().nth(1).as_deref() == Some("--server") {
        serve();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let node = converge::init()?;
    let server = PortBuilder::new(std::env::current_exe()?)
        .arg("--server")
        .framing(Framing::Lines { max: 1024 });
    let sup = Supervisor::new(Strategy::OneForOne)
        .intensity(5, Duration::from_secs(10))
        .child(ChildSpec::port("server", server).restart(Restart::Permanent))
        .spawn()?;

    let mut current = server_pid(&sup, None);
    for round in 1..=3 {
        let os_pid = converge::process_info(current)
            .and_then(|i| i.os_pid)
            .expect("the server runs");
        println!("round {round}: the server is {current} (OS pid {os_pid}); killing it from outside");
        // As an operator would: a kill(1) from another program.
        let kill = PortBuilder::new("/bin/sh")
            .args(["-c", &format!("kill -KILL {os_pid}")])
            .spawn()?;
        while !matches!(kill.recv()?, converge::port::PortOutput::Exit(_)) {}
        let next = server_pid(&sup, Some(current));
        let info = sup
            .which_children()?
            .into_iter()
            .find(|c| c.id == "server")
            .expect("listed");
        println!(
            "round {round}: restarted as {next} after {} (restarts so far: {})",
            info.last_exit.map_or_else(|| "?".into(), |r| r.to_string()),
            info.restarts
        );
        current = next;
    }
    sup.stop()?;
    let stats = node.stats();
    println!("restarts: {}, exits: {:?}", stats.restarts, stats.exits);
    Ok(())
}

/// The server's pid, once it is not `old` (waits for the restart).
fn server_pid(sup: &SupervisorRef, old: Option<Pid>) -> Pid {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pid = sup
            .which_children()
            .ok()
            .and_then(|c| c.into_iter().find(|c| c.id == "server"))
            .and_then(|c| c.pid);
        if let Some(pid) = pid
            && Some(pid) != old
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "the server was not restarted");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The server: greets each connection on loopback with one line.
fn serve() -> ! {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let addr = listener.local_addr().expect("an address");
    println!("listening on {addr}");
    // Check our own listener once, as a health check would.
    let mut probe = TcpStream::connect(addr).expect("connect to self");
    let (mut conn, _) = listener.accept().expect("accept");
    writeln!(conn, "hello from {}", std::process::id()).expect("write");
    let mut line = String::new();
    BufReader::new(&mut probe).read_line(&mut line).expect("read");
    println!("health check: {}", line.trim_end());
    for conn in listener.incoming().flatten() {
        let mut conn = conn;
        let _ = writeln!(conn, "hello from {}", std::process::id());
    }
    std::process::exit(0)
}
