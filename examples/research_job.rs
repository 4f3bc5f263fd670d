//! A seed-investment decision as a convergent job: agents look at a company
//! from several sides, each in its own process, until nothing changes.
//!
//! The web-search agent calls a flaky tool (a local program that fails at
//! random; here it is down: `RESEARCH_TOOL_FAILURE=30` makes it fail 30% of
//! the time instead of always). Its failure stays its own: relationship
//! analysis still runs, and the strategy agent proceeds at a lower tier. The
//! trace and the explanation of the strategy are printed.
//!
//! Run with `cargo run --example research_job`.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use converge::job::{Agent, Confidence, Effects, Input, Job, Outcome, Tool};

/// Tier 1 (optional): asks the search tool about the company.
fn web_search(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    if let Some(company) = input.get::<String>("company") {
        out.call("search", &company, "news");
    }
    Ok(out)
}

/// Tier 0: who the company is tied to (from what the job was given).
fn relationships(input: Input) -> Result<Effects, String> {
    let mut out = Effects::new();
    for investor in input.values::<String>("investors") {
        out.put_with("ties", &format!("shares investor {investor}"), Confidence::percent(90));
    }
    Ok(out)
}

/// Tier 2: the decision, as sure as the evidence allows.
fn strategy(input: Input) -> Result<Effects, String> {
    let ties = input.values::<String>("ties");
    let news = input.values::<String>("news");
    let mut out = Effects::new();
    let (plan, sure) = match (ties.len(), news.is_empty()) {
        (0, _) => ("pass", 70),
        (_, false) => ("invest", 85),
        (_, true) => ("invest a first tranche, revisit when search is back", 55),
    };
    out.put_with("strategy", &plan.to_owned(), Confidence::percent(sure));
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = converge::init()?;
    let failure: u32 = std::env::var("RESEARCH_TOOL_FAILURE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tool = std::env::temp_dir().join(format!("research-search-{}.sh", std::process::id()));
    std::fs::write(
        &tool,
        format!(
            "#!/bin/sh\nread -r company\nroll=$(od -An -N1 -tu1 /dev/urandom | tr -d ' ')\n\
             [ $((roll * 100 / 256)) -lt {failure} ] && {{ echo 'search backend unavailable' >&2; exit 1; }}\n\
             echo \"\\\"funding round reported for $(echo $company | tr -d '\\\"')\\\"\"\n"
        ),
    )?;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o700))?;

    let mut job = Job::new("seed-decision");
    job.single::<String>("company");
    job.union::<String>("investors");
    job.union::<String>("news");
    job.union::<String>("ties");
    job.single::<String>("strategy").required();
    job.input("company", &"Acme Robotics".to_owned());
    job.input("investors", &"Northwind Ventures".to_owned());
    job.agent(Agent::new("relationships", relationships).reads(&["investors"]));
    job.agent(
        Agent::new("web_search", web_search)
            .reads(&["company"])
            .tier(1)
            .optional(),
    );
    job.agent(Agent::new("strategy", strategy).reads(&["ties", "news"]).tier(2));
    job.tool(Tool::program::<String, String>("search", &tool, &[]).timeout(Duration::from_secs(2)));
    let result = job.run()?;
    let _ = std::fs::remove_file(&tool);

    print!("{}", result.trace.render());
    match &result.outcome {
        Outcome::Converged { tier, degraded } => {
            println!("converged, complete through tier {tier:?}");
            for (agent, why) in degraded {
                println!("  degraded: {agent}: {why}");
            }
        }
        other => println!("{other:?}"),
    }
    println!("why this strategy:\n{}", result.explain("strategy"));
    node.shutdown(Duration::from_secs(5));
    Ok(())
}
