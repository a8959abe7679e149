//! `prometheus` health checks against a real Prometheus (the Debian package), started by the
//! test on its own port with its own config and data directory, scraping itself, and stopped
//! at the end: a query whose values satisfy the condition passes, one whose value does not
//! fails (naming the value), one that returns no data is inconclusive.
//!
//! Without the `prometheus` binary the test is skipped loudly (it fails under
//! `PLUMB_REQUIRE_E2E`, as CI sets).

use std::time::{Duration, Instant};

#[path = "common/prometheus.rs"]
mod prometheus;

use plumb::health::prometheus::check_prometheus;
use plumb::health::Policy;
use plumb::model::yaml::Pos;
use plumb::model::{Condition, Host, HumanDuration, PrometheusQuery};

fn host() -> Host {
    Host {
        name: "web-1".into(),
        address: "127.0.0.1".into(),
        port: 22,
        user: None,
        become_: false,
        labels: Default::default(),
        vars: Default::default(),
        path: "environments/test/hosts.yaml".into(),
        pos: Pos::default(),
    }
}

fn render(template: &str, ctx: &serde_json::Value) -> Result<String, String> {
    plumb::render::render_inline(&plumb::model::Repo::default(), template, ctx)
}

fn query(port: u16, q: &str, condition: &str) -> PrometheusQuery {
    PrometheusQuery {
        url: format!("http://127.0.0.1:{port}"),
        query: q.into(),
        condition: Condition::parse(condition).expect("condition"),
        for_: HumanDuration::from_secs(0),
        interval: HumanDuration::from_secs(1),
    }
}

#[tokio::test]
async fn a_prometheus_check_passes_fails_or_is_inconclusive() {
    let Some(p) = prometheus::Prometheus::start() else {
        return;
    };
    let client = plumb::health::http_client().expect("client");
    let policy = Policy {
        timeout: Duration::from_secs(5),
        attempts: 1,
        interval: Duration::from_secs(1),
    };
    let up = "up{job=\"self\", instance=\"{{ host.address }}:PORT\"}"
        .replace("PORT", &p.port.to_string());
    // Wait (bounded) for the first scrape: until then the query has no data.
    let start = Instant::now();
    loop {
        let r = check_prometheus(
            "up",
            &query(p.port, &up, "== 1"),
            &host(),
            &client,
            policy,
            &render,
        )
        .await;
        if r.ok {
            break;
        }
        assert!(r.inconclusive, "no failure while waiting for data: {r:?}");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no scrape within 60 s: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let failed = check_prometheus(
        "up",
        &query(p.port, &up, "> 5"),
        &host(),
        &client,
        policy,
        &render,
    )
    .await;
    assert!(!failed.ok && !failed.inconclusive, "{failed:?}");
    assert_eq!(failed.code.as_deref(), Some("condition_not_met"));
    let error = failed.error.unwrap_or_default();
    assert!(
        error.starts_with("the query returned 1 for {") && error.ends_with("which is not > 5"),
        "{error}"
    );

    let none = check_prometheus(
        "none",
        &query(p.port, "plumb_no_such_metric", "== 1"),
        &host(),
        &client,
        policy,
        &render,
    )
    .await;
    assert!(!none.ok && none.inconclusive, "{none:?}");
    assert_eq!(
        none.error.as_deref(),
        Some("inconclusive: the query returned no data")
    );

    // A check held `for` a while evaluates every `interval` and passes when every one did.
    let mut held = query(p.port, &up, ">= 1");
    held.for_ = HumanDuration::from_secs(2);
    let r = check_prometheus("held", &held, &host(), &client, policy, &render).await;
    assert!(r.ok, "{r:?}");
    assert!(r.attempts >= 2, "{r:?}");

    // A bad query is an error Prometheus names: inconclusive, never a pass.
    let bad = check_prometheus(
        "bad",
        &query(p.port, "up{", "== 1"),
        &host(),
        &client,
        policy,
        &render,
    )
    .await;
    assert!(!bad.ok && bad.inconclusive, "{bad:?}");
    assert!(bad.error.unwrap_or_default().contains("query failed"));
}
