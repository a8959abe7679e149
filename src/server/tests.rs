use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

const SECRET: &[u8] = b"s3cret";

#[derive(Default)]
struct FakeStatus {
    queries: Mutex<Vec<String>>,
}

impl StatusSource for FakeStatus {
    fn status(&self) -> Result<Value, StatusError> {
        Ok(json!({ "environments": { "prod": { "commit": "abc" } } }))
    }
    fn runs(&self, q: &RunsQuery) -> Result<Value, StatusError> {
        self.queries
            .lock()
            .map_err(|e| StatusError::Internal(e.to_string()))?
            .push(format!("runs {:?} {:?}", q.environment, q.limit));
        if q.environment.as_deref() == Some("nope") {
            return Err(StatusError::NotFound("no environment nope".into()));
        }
        Ok(json!([{ "id": "r1" }]))
    }
    fn run(&self, id: &str) -> Result<Option<Value>, StatusError> {
        match id {
            "r1" => Ok(Some(json!({ "id": "r1", "hosts": [] }))),
            "boom" => Err(StatusError::Internal("disk on fire at /var/lib".into())),
            _ => Ok(None),
        }
    }
    fn drift(&self, q: &DriftQuery) -> Result<Value, StatusError> {
        Ok(json!({ "environment": q.environment, "hosts": [] }))
    }
}

struct Harness {
    app: Router,
    rx: mpsc::Receiver<Trigger>,
    metrics: Arc<Metrics>,
    ready: Readiness,
    status: Arc<FakeStatus>,
}

fn harness_with(secrets: WebhookSecrets, capacity: usize) -> Harness {
    let (tx, rx) = mpsc::channel(capacity);
    let metrics = Arc::new(Metrics::new());
    let ready = Readiness::new();
    let status = Arc::new(FakeStatus::default());
    let app = router(AppState {
        metrics: Arc::clone(&metrics),
        triggers: tx,
        secrets: Arc::new(secrets),
        ready: ready.clone(),
        status: status.clone(),
        on_refusal: None,
        access: AccessRule::Open,
        console: None,
    });
    Harness {
        app,
        rx,
        metrics,
        ready,
        status,
    }
}

fn harness() -> Harness {
    harness_with(
        WebhookSecrets {
            github: vec![SECRET.to_vec()],
            generic: vec![b"other".to_vec(), SECRET.to_vec()],
        },
        8,
    )
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String) {
    let req = Request::get(uri).body(Body::empty()).expect("request");
    let (s, _, b) = call(app, req).await;
    (s, b)
}

fn github(event: &str, signature: Option<String>, body: &'static [u8]) -> Request<Body> {
    let mut req = Request::post("/hooks/github")
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", "d-1");
    if let Some(sig) = signature {
        req = req.header("x-hub-signature-256", sig);
    }
    req.body(Body::from(body)).expect("request")
}

async fn metrics_text(app: &Router) -> String {
    let (s, b) = get(app, "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    b
}

const PUSH: &[u8] = br#"{"ref":"refs/heads/main","after":"0123abcd","commits":[]}"#;

#[tokio::test]
async fn github_push_with_good_hmac_triggers_exactly_once() {
    let mut h = harness();
    let (s, _, body) = call(&h.app, github("push", Some(sign(SECRET, PUSH)), PUSH)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let t = h.rx.try_recv().expect("one trigger");
    assert_eq!(
        t,
        Trigger::Webhook(HookEvent {
            source: HookSource::GitHub,
            event: "push".into(),
            delivery: Some("d-1".into()),
            git_ref: Some("refs/heads/main".into()),
            after: Some("0123abcd".into()),
        })
    );
    assert!(h.rx.try_recv().is_err(), "a second trigger");
    assert!(!metrics_text(&h.app)
        .await
        .contains("plumb_signature_refusals_total{"));
}

#[tokio::test]
async fn bad_or_missing_hmac_is_401_without_trigger_and_counted() {
    let mut h = harness();
    let wrong_key = sign(b"not the secret", PUSH);
    let other_body = sign(SECRET, b"{}");
    let cases = [
        Some(wrong_key),
        Some(other_body),
        None,
        Some("sha256=zz".to_string()),
        Some("sha1=0123".to_string()),
        Some(sign(SECRET, PUSH).replace("sha256=", "sha256=00")),
    ];
    for (i, sig) in cases.into_iter().enumerate() {
        let (s, _, body) = call(&h.app, github("push", sig, PUSH)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "case {i}: {body}");
        assert!(h.rx.try_recv().is_err(), "case {i} triggered");
        let line = format!(
            "plumb_signature_refusals_total{{source=\"webhook\"}} {}",
            i + 1
        );
        let text = metrics_text(&h.app).await;
        assert!(text.lines().any(|l| l == line), "case {i}: {text}");
    }
    // The generic hook, signed under the GitHub header name, is refused too.
    let req = Request::post("/hooks/generic")
        .header("x-hub-signature-256", sign(SECRET, b"x"))
        .body(Body::from("x"))
        .expect("request");
    let (s, _, body) = call(&h.app, req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body.contains("signature_missing"), "{body}");
    assert!(h.rx.try_recv().is_err());
}

#[tokio::test]
async fn ping_is_200_without_trigger() {
    let mut h = harness();
    let body: &'static [u8] = br#"{"zen":"Keep it logically awesome."}"#;
    let (s, _, b) = call(&h.app, github("ping", Some(sign(SECRET, body)), body)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains("pong"));
    assert!(h.rx.try_recv().is_err());
    // Other events are acknowledged and ignored.
    let (s, _, b) = call(&h.app, github("issues", Some(sign(SECRET, body)), body)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains("ignored"));
    assert!(h.rx.try_recv().is_err());
}

#[tokio::test]
async fn a_ping_with_a_bad_signature_is_refused() {
    let mut h = harness();
    let (s, _, _) = call(&h.app, github("ping", Some(sign(b"x", b"{}")), b"{}")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(h.rx.try_recv().is_err());
}

#[tokio::test]
async fn oversized_body_is_413_without_trigger() {
    let mut h = harness();
    let big = vec![b'a'; MAX_BODY_BYTES + 1];
    let sig = sign(SECRET, &big);
    let req = Request::post("/hooks/github")
        .header("x-github-event", "push")
        .header("x-hub-signature-256", sig)
        .body(Body::from(big))
        .expect("request");
    let (s, _, _) = call(&h.app, req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(h.rx.try_recv().is_err());
    // Exactly at the limit is fine.
    let max = vec![b' '; MAX_BODY_BYTES];
    let req = Request::post("/hooks/generic")
        .header("x-plumb-signature", sign(SECRET, &max))
        .body(Body::from(max))
        .expect("request");
    let (s, _, _) = call(&h.app, req).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(h.rx.try_recv().is_ok());
}

#[tokio::test]
async fn generic_hook_with_any_configured_secret_triggers() {
    let mut h = harness();
    let body = br#"{"ref":"refs/heads/main"}"#;
    let req = Request::post("/hooks/generic")
        .header("x-plumb-signature", sign(SECRET, body))
        .body(Body::from(&body[..]))
        .expect("request");
    let (s, _, _) = call(&h.app, req).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    match h.rx.try_recv() {
        Ok(Trigger::Webhook(e)) => {
            assert_eq!(e.source, HookSource::Generic);
            assert_eq!(e.git_ref.as_deref(), Some("refs/heads/main"));
        }
        other => panic!("{other:?}"),
    }
    assert!(h.rx.try_recv().is_err());
}

#[tokio::test]
async fn a_hook_without_secret_is_disabled() {
    let mut h = harness_with(WebhookSecrets::default(), 1);
    let (s, _, _) = call(&h.app, github("push", Some(sign(b"", PUSH)), PUSH)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(h.rx.try_recv().is_err());
}

#[tokio::test]
async fn full_channel_coalesces_and_closed_channel_is_503() {
    let mut h = harness_with(
        WebhookSecrets {
            github: vec![SECRET.to_vec()],
            generic: vec![],
        },
        1,
    );
    for want in ["triggered", "coalesced"] {
        let (s, _, b) = call(&h.app, github("push", Some(sign(SECRET, PUSH)), PUSH)).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        assert!(b.contains(want), "{b}");
    }
    assert!(h.rx.try_recv().is_ok());
    assert!(h.rx.try_recv().is_err());
    drop(h.rx);
    let (s, _, _) = call(&h.app, github("push", Some(sign(SECRET, PUSH)), PUSH)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn verify_signature_matches_githubs_documented_example() {
    // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
    let secret = b"It's a Secret to Everybody".to_vec();
    let sig = HeaderValue::from_static(
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    );
    assert_eq!(
        verify_signature(std::slice::from_ref(&secret), Some(&sig), b"Hello, World!"),
        Ok(())
    );
    assert_eq!(
        verify_signature(&[secret], Some(&sig), b"Hello, World?"),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature(&[b"other".to_vec()], Some(&sig), b"Hello, World!"),
        Err(SignatureError::Mismatch)
    );
}

#[tokio::test]
async fn probes() {
    let h = harness();
    assert_eq!(get(&h.app, "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        get(&h.app, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    h.ready.set_ready(true);
    assert_eq!(get(&h.app, "/readyz").await.0, StatusCode::OK);
    h.ready.set_chain_broken(true);
    let (s, b) = get(&h.app, "/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(b.contains("audit_chain_broken"), "{b}");
    h.ready.set_chain_broken(false);
    assert_eq!(get(&h.app, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_has_every_family_after_one_update_each() {
    let h = harness();
    let m = &h.metrics;
    m.run_finished(
        "prod",
        (metrics::RunKind::Apply, RunResult::Succeeded),
        Duration::from_secs(3),
        4,
        0,
    );
    m.run_finished(
        "prod",
        (metrics::RunKind::Apply, RunResult::Failed),
        Duration::from_secs(1),
        1,
        2,
    );
    m.run_finished(
        "prod",
        (metrics::RunKind::DriftCheck, RunResult::DriftFound),
        Duration::ZERO,
        0,
        0,
    );
    let at = time::macros::datetime!(2024-05-01 12:00:00 UTC);
    m.host_applied("prod", "web-1", at);
    m.host_drift_checked("prod", "web-1", at, Some(3));
    m.host_drift_checked("prod", "web-3", at, None);
    m.health_checked("prod", "web-1", "http-up", true);
    m.health_checked("prod", "web-2", "http-up", false);
    m.set_rollout_blocked("prod", true);
    m.alert_delivery_failed("slack");
    let commit_time = time::macros::datetime!(2024-05-01 12:00:00 UTC);
    m.applied(
        "prod",
        "aaaa",
        commit_time + Duration::from_secs(30),
        Some(commit_time),
    );
    m.applied(
        "prod",
        "bbbb",
        commit_time + Duration::from_secs(90),
        Some(commit_time + Duration::from_secs(60)),
    );
    m.set_drifted("prod", "web-1", 2);
    m.set_host_reachable("prod", "web-1", true);
    m.set_host_reachable("prod", "web-2", false);
    m.signature_refused(Some("prod"), RefusalSource::Commit);
    m.set_audit_head(6, "0ld");
    m.set_audit_head(7, "9f86d081884c7d65");

    let req = Request::get("/metrics")
        .body(Body::empty())
        .expect("request");
    let (s, headers, text) = call(&h.app, req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some(metrics::CONTENT_TYPE)
    );
    for line in [
        "plumb_last_applied_timestamp_seconds{env=\"prod\"} 1714564890.0",
        "plumb_last_applied_commit_info{env=\"prod\",commit=\"bbbb\"} 1",
        "plumb_run_duration_seconds_count{env=\"prod\"} 3",
        "plumb_run_duration_seconds_sum{env=\"prod\"} 4.0",
        "plumb_steps_changed_total{env=\"prod\"} 5",
        "plumb_steps_failed_total{env=\"prod\"} 2",
        "plumb_drifted_resources{env=\"prod\",host=\"web-1\"} 2",
        "plumb_host_reachable{env=\"prod\",host=\"web-1\"} 1",
        "plumb_host_reachable{env=\"prod\",host=\"web-2\"} 0",
        "plumb_signature_refusals_total{env=\"prod\",source=\"commit\"} 1",
        "plumb_commit_to_applied_seconds_count{env=\"prod\"} 2",
        "plumb_commit_to_applied_seconds_sum{env=\"prod\"} 60.0",
        "plumb_runs_total{env=\"prod\",result=\"succeeded\",kind=\"apply\"} 1",
        "plumb_runs_total{env=\"prod\",result=\"failed\",kind=\"apply\"} 1",
        "plumb_runs_total{env=\"prod\",result=\"drift_found\",kind=\"drift_check\"} 1",
        "plumb_host_last_applied_timestamp_seconds{env=\"prod\",host=\"web-1\"} 1714564800.0",
        "plumb_host_last_drift_check_timestamp_seconds{env=\"prod\",host=\"web-1\"} 1714564800.0",
        "plumb_host_reachable{env=\"prod\",host=\"web-3\"} 0",
        "plumb_health_check_up{env=\"prod\",host=\"web-1\",check=\"http-up\"} 1",
        "plumb_health_check_up{env=\"prod\",host=\"web-2\",check=\"http-up\"} 0",
        "plumb_health_check_failures_total{env=\"prod\",check=\"http-up\"} 1",
        "plumb_rollout_blocked{env=\"prod\"} 1",
        "plumb_alert_delivery_failures_total{sink=\"slack\"} 1",
        concat!(
            "plumb_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\"} 1"
        ),
        "plumb_audit_head_seq 7",
        "plumb_audit_head_info{hash=\"9f86d081884c7d65\"} 1",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // Every family names the environment `env` (as `plumb_health_check_up{env,host,check}`).
    assert!(!text.contains("environment="), "{text}");
    // A host that could not be observed has no drift count (unknown, never 0).
    assert!(
        !text.contains("plumb_drifted_resources{env=\"prod\",host=\"web-3\"}"),
        "{text}"
    );
    // Only the last applied commit is shown.
    assert!(!text.contains("commit=\"aaaa\""), "{text}");
    // Only the current audit head is shown.
    assert!(!text.contains("hash=\"0ld\""), "{text}");
    m.forget_host("prod", "web-2");
    assert!(!metrics_text(&h.app).await.contains("web-2"));
    m.forget_host("prod", "web-1");
    assert!(!metrics_text(&h.app).await.contains("web-1"));
}

/// A host that left the inventory stops being reported; the others stay.
#[tokio::test]
async fn hosts_that_left_the_inventory_are_forgotten() {
    let h = harness();
    let m = &h.metrics;
    for host in ["web-1", "web-2", "db-1"] {
        m.set_host_reachable("prod", host, true);
        m.set_drifted("prod", host, 1);
    }
    m.set_host_reachable("staging", "web-2", true);
    m.retain_hosts("prod", ["web-1", "db-1"]);
    let text = metrics_text(&h.app).await;
    assert!(!text.contains("env=\"prod\",host=\"web-2\""), "{text}");
    assert!(text.contains("env=\"prod\",host=\"web-1\""), "{text}");
    assert!(text.contains("env=\"prod\",host=\"db-1\""), "{text}");
    // Another environment's series of the same host name are not touched.
    assert!(text.contains("env=\"staging\",host=\"web-2\""), "{text}");
}

#[tokio::test]
async fn api_routes_answer_from_the_status_source() {
    let h = harness();
    let (s, b) = get(&h.app, "/api/status").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&b).expect("json"),
        json!({ "environments": { "prod": { "commit": "abc" } } })
    );

    assert_eq!(get(&h.app, "/api/runs").await.0, StatusCode::OK);
    assert_eq!(
        get(&h.app, "/api/runs?env=prod&limit=5").await.0,
        StatusCode::OK
    );
    assert_eq!(get(&h.app, "/api/runs?env=&limit=").await.0, StatusCode::OK);
    for (bad, named) in [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("hots=web-1", "hots"),
        ("host=a&host=b", "host"),
        ("commit=xyz", "commit"),
        ("kind=deploy", "kind"),
        ("result=ok", "result"),
        ("since=yesterday", "since"),
        ("until=7y", "until"),
    ] {
        let (s, b) = get(&h.app, &format!("/api/runs?{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert!(b.contains("bad_query"), "{b}");
        assert!(b.contains(&format!("`{named}`")), "{bad}: {b}");
    }
    for (bad, named) in [("signer=alice", "signer"), ("status=closed", "status")] {
        let (s, b) = get(&h.app, &format!("/api/drift?{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert!(b.contains(&format!("`{named}`")), "{bad}: {b}");
    }
    let (s, b) = get(&h.app, "/api/runs?env=nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(b.contains("not_found"), "{b}");
    assert_eq!(
        *h.status.queries.lock().expect("lock"),
        vec![
            "runs None Some(20)".to_string(),
            "runs Some(\"prod\") Some(5)".to_string(),
            "runs None Some(20)".to_string(),
            "runs Some(\"nope\") Some(20)".to_string(),
        ]
    );

    let (s, b) = get(&h.app, "/api/runs/r1").await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains("\"hosts\""));
    assert_eq!(get(&h.app, "/api/runs/r2").await.0, StatusCode::NOT_FOUND);
    let (s, b) = get(&h.app, "/api/runs/boom").await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!b.contains("disk on fire"), "internal detail leaked: {b}");

    let (s, b) = get(&h.app, "/api/drift?env=prod").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&b).expect("json"),
        json!({ "environment": "prod", "hosts": [] })
    );
}

/// Serves a router with `limits` on a fresh port; returns its address.
async fn serve_limited(limits: Limits) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, _rx) = mpsc::channel(1);
    let state = AppState {
        metrics: Arc::new(Metrics::new()),
        triggers: tx,
        secrets: Arc::new(WebhookSecrets::default()),
        ready: Readiness::new(),
        status: Arc::new(FakeStatus::default()),
        on_refusal: None,
        access: AccessRule::Open,
        console: None,
    };
    tokio::spawn(serve_with(listener, state, limits, std::future::pending()));
    addr
}

/// Reads until the server closes the connection; `None` when it did not within `wait`.
async fn read_until_closed(s: &mut tokio::net::TcpStream, wait: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    match tokio::time::timeout(wait, s.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: plumb\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_client_that_sends_nothing_is_dropped_after_the_header_timeout() {
    let addr = serve_limited(Limits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        max_connections: 4,
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let start = std::time::Instant::now();
    let answer = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some(""), "closed without an answer");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );

    // A trickling client (one byte at a time, never a complete request) is dropped too.
    use tokio::io::AsyncWriteExt as _;
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let dropped = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: plumb\r\n".iter().cycle() {
            if slow.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), dropped)
            .await
            .is_ok(),
        "a slowloris is dropped"
    );

    // A client that sends a request is answered.
    let mut ok = tokio::net::TcpStream::connect(addr).await.expect("connect");
    ok.write_all(HEALTHZ).await.expect("write");
    let answer = read_until_closed(&mut ok, Duration::from_secs(10)).await;
    assert!(answer.unwrap_or_default().starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn the_connection_cap_holds() {
    use tokio::io::AsyncWriteExt as _;
    let addr = serve_limited(Limits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_connections: 2,
    })
    .await;
    let first = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third connection waits: both permits are held by silent clients.
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    third.write_all(HEALTHZ).await.expect("write");
    assert_eq!(
        read_until_closed(&mut third, Duration::from_millis(800)).await,
        None,
        "not served past the cap"
    );
    // One silent client leaves: the third is served.
    drop(first);
    let answer = read_until_closed(&mut third, Duration::from_secs(10)).await;
    assert!(
        answer
            .as_deref()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
}

/// A console source that renders a page naming what it was asked, and who asked.
struct EchoConsole;

impl ConsoleSource for EchoConsole {
    fn page(&self, page: &Page, who: &Principal) -> Result<Option<String>, StatusError> {
        Ok(match page {
            Page::Run { id } if id == "missing" => None,
            _ => Some(format!("<p>{page:?} for {who:?}</p>")),
        })
    }
    fn login(&self, next: &str, failed: bool) -> String {
        format!("<form>next={next} failed={failed}</form>")
    }
}

fn protected_app() -> Router {
    let (tx, _rx) = mpsc::channel(1);
    let salt =
        argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let hash = argon2::PasswordHasher::hash_password(&argon2::Argon2::default(), b"pw", &salt)
        .expect("hash")
        .to_string();
    let access = access::Access::new(
        Some("tok"),
        vec![access::User {
            name: "alice".into(),
            password_hash: hash,
        }],
        true,
    );
    router(AppState {
        metrics: Arc::new(Metrics::new()),
        triggers: tx,
        secrets: Arc::new(WebhookSecrets::default()),
        ready: Readiness::new(),
        status: Arc::new(FakeStatus::default()),
        on_refusal: None,
        access: AccessRule::Protected(Arc::new(access)),
        console: Some(Arc::new(EchoConsole)),
    })
}

/// Protected mode: the API, metrics and pages need the token or a session; probes do not;
/// a page without credentials redirects to the login form, data answers 401.
#[tokio::test]
async fn the_access_rule_guards_api_metrics_and_pages() {
    let app = protected_app();
    for open in ["/healthz", "/readyz", "/login", "/static/console.css"] {
        let (s, _) = get(&app, open).await;
        assert_ne!(s, StatusCode::UNAUTHORIZED, "{open}");
    }
    for guarded in ["/api/status", "/api/runs", "/metrics", "/runs/01X", "/"] {
        let (s, _) = get(&app, guarded).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{guarded}");
        let req = Request::get(guarded)
            .header("authorization", "Bearer nope")
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            call(&app, req).await.0,
            StatusCode::UNAUTHORIZED,
            "{guarded}"
        );
        let req = Request::get(guarded)
            .header("authorization", "Bearer tok")
            .body(Body::empty())
            .expect("request");
        assert_eq!(call(&app, req).await.0, StatusCode::OK, "{guarded}");
    }
    let page = Request::get("/runs/01X")
        .header("accept", "text/html")
        .body(Body::empty())
        .expect("request");
    let (s, h, _) = call(&app, page).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/login?next=/runs/01X");
}

/// The login form: a wrong password is 401; a right one sets a Secure, HttpOnly,
/// SameSite=Strict session cookie that opens the pages (and never an off-site redirect).
#[tokio::test]
async fn login_sets_a_strict_session_cookie() {
    let app = protected_app();
    let form = |body: &'static str| {
        Request::post("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .expect("request")
    };
    let (s, _, body) = call(&app, form("user=alice&password=wrong&next=%2Fdrift")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body.contains("failed=true"), "{body}");
    let (s, h, _) = call(&app, form("user=alice&password=pw&next=%2Fdrift")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(h["location"], "/drift");
    let cookie = h["set-cookie"].to_str().expect("ascii").to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let session = cookie.split(';').next().expect("pair").to_string();
    let req = Request::get("/drift")
        .header("cookie", &session)
        .body(Body::empty())
        .expect("request");
    let (s, _, body) = call(&app, req).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("User(\"alice\")"), "{body}");
    let (_, h, _) = call(&app, form("user=alice&password=pw&next=%2F%2Fevil.example")).await;
    assert_eq!(h["location"], "/", "no off-site redirect");
}

/// Every answer carries a strict CSP, X-Frame-Options DENY and nosniff.
#[tokio::test]
async fn every_answer_has_the_security_headers() {
    let app = protected_app();
    for uri in ["/healthz", "/api/status", "/login", "/runs/missing"] {
        let req = Request::get(uri)
            .header("authorization", "Bearer tok")
            .body(Body::empty())
            .expect("request");
        let (_, h, _) = call(&app, req).await;
        assert_eq!(h["content-security-policy"], access::CSP, "{uri}");
        assert_eq!(h["x-frame-options"], "DENY", "{uri}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{uri}");
    }
}

/// The daemon serves HTTPS with a certificate made here (openssl): a client that trusts it
/// gets the probe over TLS; plain HTTP to the same port gets no answer.
#[tokio::test]
async fn https_is_served_with_the_configured_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acceptor = tls::acceptor(&cert, &key).expect("acceptor");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, _rx) = mpsc::channel(1);
    let state = AppState {
        metrics: Arc::new(Metrics::new()),
        triggers: tx,
        secrets: Arc::new(WebhookSecrets::default()),
        ready: Readiness::new(),
        status: Arc::new(FakeStatus::default()),
        on_refusal: None,
        access: AccessRule::Open,
        console: None,
    };
    tokio::spawn(serve_tls(
        listener,
        state,
        Limits::default(),
        acceptor,
        std::future::pending(),
    ));
    let pem = std::fs::read(&cert).expect("cert");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let res = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .expect("https answers");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let plain = reqwest::Client::new()
        .get(format!("http://localhost:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP is not served: {plain:?}");
    assert!(matches!(
        tls::acceptor(&key, &key),
        Err(tls::TlsError::NoCertificate { .. })
    ));
}

/// `plumb_environment_pinned` counts an environment's pinned hosts; `plumb_commit_quarantined`
/// shows its one quarantined commit, replaced by the next and dropped when a commit applies.
#[test]
fn pinned_hosts_and_the_quarantined_commit_are_metrics() {
    let m = Metrics::new();
    m.set_pinned("prod", 2);
    m.set_quarantined("prod", Some("bad1"));
    m.set_quarantined("prod", Some("bad2"));
    let text = m.encode().expect("encode");
    assert!(
        text.contains("plumb_environment_pinned{env=\"prod\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("plumb_commit_quarantined{env=\"prod\",commit=\"bad2\"} 1"),
        "{text}"
    );
    assert!(!text.contains("bad1"), "{text}");
    m.set_quarantined("prod", None);
    m.set_pinned("prod", 0);
    let text = m.encode().expect("encode");
    assert!(!text.contains("bad2"), "{text}");
    assert!(
        text.contains("plumb_environment_pinned{env=\"prod\"} 0"),
        "{text}"
    );
}

#[test]
fn backup_series_show_a_missing_snapshot_as_inf_and_leave_with_their_backup() {
    use crate::server::metrics::BackupSample;
    let m = Metrics::new();
    let sample = BackupSample {
        snapshot_age_seconds: None,
        restore_test_last_success: Some(1_800_000_000.0),
        restore_seconds: Some(1.5),
        restore_test_failed: true,
        interval_seconds: 86_400.0,
        restore_test_interval_seconds: 604_800.0,
    };
    m.set_backups("production", [("web-1", "db", sample)]);
    let text = m.encode().expect("encode");
    let labels = r#"{env="production",host="web-1",backup="db"}"#;
    for line in [
        format!("plumb_backup_snapshot_age_seconds{labels} inf"),
        format!("plumb_backup_restore_seconds{labels} 1.5"),
        format!("plumb_backup_restore_test_failed{labels} 1"),
        format!("plumb_backup_restore_test_last_success_timestamp_seconds{labels} 1800000000.0"),
    ] {
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
    m.set_backups("production", []);
    assert!(!m.encode().expect("encode").contains(labels));
}
