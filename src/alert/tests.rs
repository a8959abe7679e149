use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::{Json, Router};
use tokio::sync::mpsc;

use super::*;

/// What a sink posted: path, content type, JSON body.
type Captured = (String, String, Value);

/// A server on 127.0.0.1 that records every POST; `/fail` answers 500, `/slow` sleeps.
async fn capture_server() -> (String, mpsc::UnboundedReceiver<Captured>) {
    let (tx, rx) = mpsc::unbounded_channel::<Captured>();
    async fn record(
        State(tx): State<mpsc::UnboundedSender<Captured>>,
        uri: Uri,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> StatusCode {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let path = uri.path().to_string();
        let _ = tx.send((path.clone(), ct, body));
        match path.as_str() {
            "/fail" => StatusCode::INTERNAL_SERVER_ERROR,
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                StatusCode::OK
            }
            _ => StatusCode::OK,
        }
    }
    let app = Router::new().route("/{*path}", post(record)).with_state(tx);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("http://{addr}"), rx)
}

/// An alerter that ignores proxies from the environment (the sinks are on 127.0.0.1).
fn alerter(sinks: Vec<Sink>) -> Result<Alerter, AlertError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    Alerter::with_client(sinks, client)
}

fn alert(event: AlertEvent) -> Alert {
    Alert {
        event,
        environment: Some("prod".into()),
        commit: Some("0123456789abcdef".into()),
        hosts: vec!["web-1".into(), "web-2".into()],
        message: "step file:/etc/app.conf failed on web-1 <exit 1>".into(),
        details: json!({ "run": "r42" }),
        time: time::macros::datetime!(2024-05-01 12:00:00 UTC),
        link: Some("http://plumb.internal:9180/api/runs/r42".into()),
        audit_head: Some(ChainHead {
            seq: 42,
            hash: "9f86d081884c7d65".into(),
        }),
        signer: Some("alice@example.com".into()),
        subject: None,
        status: AlertStatus::Firing,
        ends_at: None,
    }
}

fn sink(kind: SinkKind, url: String) -> Sink {
    Sink {
        kind,
        url,
        events: None,
        timeout: HumanDuration::from_secs(5),
    }
}

#[tokio::test]
async fn webhook_posts_the_generic_document() {
    let (base, mut rx) = capture_server().await;
    let a = alerter(vec![sink(SinkKind::Webhook, format!("{base}/hook"))]).expect("valid");
    let res = a.send(&alert(AlertEvent::RunFailed)).await;
    assert_eq!(res, vec![Ok(())]);
    let (path, ct, body) = rx.try_recv().expect("posted");
    assert_eq!(path, "/hook");
    assert_eq!(ct, "application/json");
    assert_eq!(
        body,
        json!({
            "id": "run_failed/prod",
            "event": "run_failed",
            "status": "firing",
            "environment": "prod",
            "commit": "0123456789abcdef",
            "signer": "alice@example.com",
            "hosts": ["web-1", "web-2"],
            "check": null,
            "message": "step file:/etc/app.conf failed on web-1 <exit 1>",
            "details": { "run": "r42" },
            "link": "http://plumb.internal:9180/api/runs/r42",
            "time": "2024-05-01T12:00:00Z",
            "ends_at": null,
            "audit_head": { "seq": 42, "hash": "9f86d081884c7d65" },
        })
    );
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn slack_posts_text_and_blocks() {
    let (base, mut rx) = capture_server().await;
    let a = alerter(vec![sink(
        SinkKind::Slack,
        format!("{base}/services/T/B/X"),
    )])
    .expect("valid");
    assert_eq!(a.send(&alert(AlertEvent::DriftFound)).await, vec![Ok(())]);
    let (path, _, body) = rx.try_recv().expect("posted");
    assert_eq!(path, "/services/T/B/X");
    assert_eq!(
        body,
        json!({
            "text": "[plumb] Drift found in prod on web-1: step file:/etc/app.conf failed on web-1 <exit 1>",
            "blocks": [
                { "type": "header", "text": { "type": "plain_text", "text": "plumb: Drift found in prod on web-1" } },
                { "type": "section", "text": { "type": "mrkdwn",
                    "text": "step file:/etc/app.conf failed on web-1 &lt;exit 1&gt;\n<http://plumb.internal:9180/api/runs/r42|Details>" } },
                { "type": "context", "elements": [ { "type": "mrkdwn",
                    "text": "*environment:* prod  ·  *commit:* `0123456789abcdef`  ·  *signed by:* alice@example.com  ·  *hosts:* web-1, web-2  ·  *time:* 2024-05-01T12:00:00Z  ·  *audit head:* `42:9f86d081884c7d65`" } ] },
            ],
        })
    );
}

#[tokio::test]
async fn alertmanager_posts_one_alert_per_host_to_api_v2() {
    let (base, mut rx) = capture_server().await;
    // A trailing slash on the base URL is fine.
    let a = alerter(vec![sink(SinkKind::Alertmanager, format!("{base}/am/"))]).expect("valid");
    assert_eq!(
        a.send(&alert(AlertEvent::SignatureRefused)).await,
        vec![Ok(())]
    );
    let (path, _, body) = rx.try_recv().expect("posted");
    assert_eq!(path, "/am/api/v2/alerts");
    let one = |host: &str| {
        json!({
            "labels": {
                "alertname": "PlumbSignatureRefused",
                "environment": "prod",
                "host": host,
                "severity": "critical",
            },
            "annotations": {
                "summary": "Signature refused in prod",
                "description": "step file:/etc/app.conf failed on web-1 <exit 1> (commit 0123456789abcdef)",
                "audit_head": "42:9f86d081884c7d65",
                "signer": "alice@example.com",
            },
            "startsAt": "2024-05-01T12:00:00Z",
            "generatorURL": "http://plumb.internal:9180/api/runs/r42",
        })
    };
    assert_eq!(body, json!([one("web-1"), one("web-2")]));
}

#[test]
fn alertmanager_without_hosts_or_environment_sends_one_alert() {
    let a = Alert {
        environment: None,
        commit: None,
        hosts: vec![],
        link: None,
        audit_head: None,
        signer: None,
        message: "commit 0123 has no good signature".into(),
        ..alert(AlertEvent::SignatureRefused)
    };
    assert_eq!(
        alertmanager_payload(&a),
        json!([{
            "labels": { "alertname": "PlumbSignatureRefused", "severity": "critical" },
            "annotations": { "summary": "Signature refused", "description": "commit 0123 has no good signature" },
            "startsAt": "2024-05-01T12:00:00Z",
        }])
    );
    assert_eq!(webhook_payload(&a)["environment"], Value::Null);
}

#[tokio::test]
async fn event_filter_and_failures_do_not_stop_other_sinks() {
    let (base, mut rx) = capture_server().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        drop(l);
        p
    };
    let a = alerter(vec![
        Sink {
            events: Some(vec![AlertEvent::DriftFound]),
            ..sink(SinkKind::Webhook, format!("{base}/drift-only"))
        },
        sink(SinkKind::Webhook, format!("{base}/fail")),
        sink(
            SinkKind::Webhook,
            format!("http://127.0.0.1:{closed}/secret-token"),
        ),
        Sink {
            timeout: HumanDuration::from_millis(200),
            ..sink(SinkKind::Webhook, format!("{base}/slow"))
        },
        sink(SinkKind::Webhook, format!("{base}/ok")),
    ])
    .expect("valid");
    let res = a.send(&alert(AlertEvent::RunFailed)).await;
    let codes: Vec<_> = res
        .iter()
        .map(|r| r.as_ref().map(|_| ()).map_err(|e| e.code()))
        .collect();
    assert_eq!(
        codes,
        vec![Err("http_status"), Err("request"), Err("timeout"), Ok(())]
    );
    // The error does not carry the URL, which may hold a token.
    if let Err(e) = &res[1] {
        assert!(!e.to_string().contains("secret-token"), "{e}");
    }
    let mut paths = Vec::new();
    while let Ok((p, _, _)) = rx.try_recv() {
        paths.push(p);
    }
    paths.sort();
    assert_eq!(paths, vec!["/fail", "/ok", "/slow"]);
}

#[test]
fn sink_config_parses_validates_and_redacts() {
    let s: Sink = serde_json::from_value(json!({
        "kind": "slack",
        "url": "https://hooks.slack.com/services/T000/B000/XXXX",
        "events": ["run_failed"],
    }))
    .expect("parses");
    assert_eq!(s.timeout, HumanDuration::from_secs(10));
    assert!(s.accepts(AlertEvent::RunFailed));
    assert!(!s.accepts(AlertEvent::DriftFound));
    assert_eq!(s.validate(), Ok(()));
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("XXXX"), "{dbg}");
    assert!(dbg.contains("https://hooks.slack.com/…"), "{dbg}");

    assert!(serde_json::from_value::<Sink>(json!({ "kind": "email", "url": "x" })).is_err());
    assert!(serde_json::from_value::<Sink>(
        json!({ "kind": "webhook", "url": "http://a", "extra": 1 })
    )
    .is_err());
    for (url, timeout) in [
        ("ftp://example.com/", "1s"),
        ("not a url", "1s"),
        ("http://example.com/", "soon"),
        ("http://example.com/", "0s"),
    ] {
        // A timeout that is not a duration is refused when the config is parsed.
        let Ok(bad) = serde_json::from_value::<Sink>(
            json!({ "kind": "webhook", "url": url, "timeout": timeout }),
        ) else {
            assert_eq!(timeout, "soon", "{url} {timeout}");
            continue;
        };
        assert_eq!(
            bad.validate().map_err(|e| e.code()),
            Err("config"),
            "{url} {timeout}"
        );
        assert!(Alerter::new(vec![bad]).is_err());
    }
}

#[test]
fn slack_escapes_and_truncates() {
    let mut a = alert(AlertEvent::RunFailed);
    a.hosts = (0..25).map(|i| format!("h{i}")).collect();
    a.message = "x".repeat(5000);
    let p = slack_payload(&a);
    let section = p["blocks"][1]["text"]["text"].as_str().expect("text");
    assert_eq!(section.chars().count(), 3000);
    assert!(section.ends_with('…'));
    let ctx = p["blocks"][2]["elements"][0]["text"]
        .as_str()
        .expect("text");
    assert!(ctx.contains("h19, and 5 more"), "{ctx}");
    assert!(!ctx.contains("h20"), "{ctx}");
}

/// A resolution says so on every sink: Alertmanager gets `endsAt` (and the same labels as
/// the firing alert, so it ends that alert), Slack a "Resolved:" message, the webhook
/// `status: resolved`; a health check alert's check is a label and part of its id.
#[test]
fn resolved_alerts_end_on_every_sink_with_the_same_identity() {
    let firing = Alert {
        event: AlertEvent::HealthCheckFailed,
        hosts: vec!["web-1".into()],
        subject: Some("http-up".into()),
        ends_at: Some(time::macros::datetime!(2024-05-01 12:20:00 UTC)),
        ..alert(AlertEvent::HealthCheckFailed)
    };
    let resolved = Alert {
        status: AlertStatus::Resolved,
        ends_at: Some(time::macros::datetime!(2024-05-01 12:05:00 UTC)),
        ..firing.clone()
    };
    assert_eq!(firing.key(), resolved.key());
    assert_eq!(
        firing.key().to_string(),
        "health_check_failed/prod/web-1/http-up"
    );
    let (f, r) = (
        alertmanager_payload(&firing),
        alertmanager_payload(&resolved),
    );
    assert_eq!(f[0]["labels"], r[0]["labels"]);
    assert_eq!(f[0]["labels"]["check"], "http-up");
    assert_eq!(f[0]["endsAt"], "2024-05-01T12:20:00Z");
    assert_eq!(r[0]["endsAt"], "2024-05-01T12:05:00Z");
    assert_eq!(r[0]["startsAt"], "2024-05-01T12:00:00Z");
    assert_eq!(webhook_payload(&resolved)["status"], "resolved");
    assert_eq!(webhook_payload(&firing)["status"], "firing");
    let slack = slack_payload(&resolved);
    assert!(
        slack["text"].as_str().is_some_and(
            |t| t.starts_with("[plumb] Resolved: Health check failed in prod on web-1")
        ),
        "{slack:#}"
    );
}
