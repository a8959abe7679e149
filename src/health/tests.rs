use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use super::*;
use crate::engine::LocalConnector;
use crate::model::yaml::Pos;
use crate::model::{HealthCheckDecl, HealthCheckError};
use crate::transport::LocalTransport;

/// The one template environment, as the daemon passes it (a repo without templates).
fn render(template: &str, ctx: &serde_json::Value) -> Result<String, String> {
    crate::render::render_inline(&crate::model::Repo::default(), template, ctx)
}

fn host(address: &str) -> Host {
    Host {
        name: "web-1".into(),
        address: address.into(),
        port: 22,
        user: None,
        become_: false,
        labels: BTreeMap::from([("role".to_string(), "web".to_string())]),
        vars: Default::default(),
        path: "environments/test/hosts.yaml".into(),
        pos: Pos::default(),
    }
}

fn fast(attempts: u32) -> Policy {
    Policy {
        timeout: Duration::from_secs(5),
        attempts,
        interval: Duration::from_millis(10),
    }
}

fn decl(name: &str) -> HealthCheckDecl {
    HealthCheckDecl {
        name: name.into(),
        command: None,
        http: None,
        tcp: None,
        prometheus: None,
        timeout: crate::model::HumanDuration::from_secs(5),
        retries: 1,
        interval: None,
    }
}

/// A port nothing listens on: bind, read the port, close.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// Serves 200 on /ok and 500 on /fail on 127.0.0.1.
async fn http_server() -> u16 {
    let app = Router::new().route("/ok", get(|| async { "fine" })).route(
        "/fail",
        get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

#[tokio::test]
async fn tcp_ok_against_a_listener() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let r = check_tcp("port", port, &host("127.0.0.1"), fast(1)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.attempts, 1);
    assert_eq!(r.kind, "tcp");
    assert_eq!(r.host, "web-1");
    assert!(r.error.is_none());
}

#[tokio::test]
async fn tcp_fails_on_a_closed_port_after_every_retry() {
    let port = closed_port().await;
    let r = check_tcp("port", port, &host("127.0.0.1"), fast(3)).await;
    assert!(!r.ok);
    assert_eq!(r.attempts, 3);
    assert_eq!(r.code.as_deref(), Some("connect"));
    let err = r.error.expect("error");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn http_2xx_is_healthy_and_the_url_is_rendered_per_host() {
    let port = http_server().await;
    let client = http_client().expect("client");
    let url = format!("http://{{{{ host.address }}}}:{port}/ok");
    let r = check_http("web", &url, &host("127.0.0.1"), &client, fast(1), &render).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.attempts, 1);
}

#[tokio::test]
async fn http_500_fails_with_its_status() {
    let port = http_server().await;
    let client = http_client().expect("client");
    let url = format!("http://{{{{ host.address }}}}:{port}/fail");
    let r = check_http("web", &url, &host("127.0.0.1"), &client, fast(2), &render).await;
    assert!(!r.ok);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.code.as_deref(), Some("http_status"));
    assert_eq!(r.error.as_deref(), Some("HTTP status 500"));
}

#[tokio::test]
async fn http_undefined_variable_fails_once_without_retrying() {
    let client = http_client().expect("client");
    let r = check_http(
        "web",
        "http://{{ host.nope }}/",
        &host("127.0.0.1"),
        &client,
        fast(5),
        &render,
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.attempts, 1);
    assert_eq!(r.code.as_deref(), Some("template"));
}

#[test]
fn url_template_sees_name_address_port_labels() {
    let url = render_url(
        "http://{{ host.address }}:{{ host.port }}/{{ host.name }}?r={{ host.labels.role }}",
        &host("10.0.0.5"),
        &render,
    )
    .expect("renders");
    assert_eq!(url, "http://10.0.0.5:22/web-1?r=web");
}

#[tokio::test]
async fn command_exit_zero_is_healthy() {
    let t = LocalTransport::new();
    let r = check_command("cmd", "test 1 = 1", &host("127.0.0.1"), &t, fast(1)).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.kind, "command");
}

#[tokio::test]
async fn command_nonzero_fails_with_status_and_stderr() {
    let t = LocalTransport::new();
    let r = check_command(
        "cmd",
        "echo 'not ready' >&2; exit 7",
        &host("127.0.0.1"),
        &t,
        fast(2),
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.code.as_deref(), Some("exit"));
    assert_eq!(
        r.error.as_deref(),
        Some("command exited with status 7: not ready")
    );
}

#[tokio::test]
async fn a_command_that_does_not_exist_says_command_not_found() {
    let t = LocalTransport::new();
    let r = check_command(
        "cmd",
        "plumb-no-such-command-here --ready",
        &host("127.0.0.1"),
        &t,
        fast(1),
    )
    .await;
    assert!(!r.ok);
    assert_eq!(r.code.as_deref(), Some("command_not_found"), "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(
        error.starts_with("command not found (exit status 127): ")
            && error.contains("plumb-no-such-command-here"),
        "{error}"
    );
}

#[tokio::test]
async fn command_is_quoted_as_one_argument() {
    // Were the command not quoted, `exit 3` would run in the outer shell: the quote makes the
    // single quote and the semicolon data of `sh -c`.
    let t = LocalTransport::new();
    let r = check_command(
        "cmd",
        "x='a;b'; test \"$x\" = 'a;b'",
        &host("127.0.0.1"),
        &t,
        fast(1),
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert_eq!(command_script("a'b"), "sh -c 'a'\\''b'\n");
}

#[tokio::test]
async fn command_timeout_is_reported() {
    let t = LocalTransport::new();
    let policy = Policy {
        timeout: Duration::from_millis(200),
        ..fast(1)
    };
    let r = check_command("cmd", "sleep 5", &host("127.0.0.1"), &t, policy).await;
    assert!(!r.ok);
    assert_eq!(r.code.as_deref(), Some("timeout"));
    assert!(r.duration_ms < 4000, "{r:?}");
}

#[test]
fn a_prometheus_check_needs_a_condition_and_an_interval() {
    let prom = |condition: &str, interval: u64| HealthCheckDecl {
        prometheus: Some(crate::model::PrometheusDecl {
            url: "http://prometheus:9090".into(),
            query: "up".into(),
            condition: condition.into(),
            for_: None,
            interval: Some(crate::model::HumanDuration::from_secs(interval)),
        }),
        ..decl("p")
    };
    let c = check(prom(">= 1", 2));
    assert_eq!(c.probe.kind(), "prometheus");
    let e = HealthCheck::from_decl(&prom("1", 0)).expect_err("bad condition and interval");
    assert_eq!(
        e.iter().map(|e| e.pointer()).collect::<Vec<_>>(),
        ["/prometheus/interval", "/prometheus/condition"]
    );
    assert!(
        e[1].to_string().contains("must start with one of"),
        "{}",
        e[1]
    );
}

/// A loaded check (as the loader makes it from `decl`).
fn check(decl: HealthCheckDecl) -> HealthCheck {
    HealthCheck::from_decl(&decl).expect("a valid check")
}

#[test]
fn a_check_needs_exactly_one_kind_and_a_valid_timeout() {
    let none = decl("none");
    assert_eq!(
        HealthCheck::from_decl(&none),
        Err(vec![HealthCheckError::Kinds {
            name: "none".into()
        }])
    );
    let two = HealthCheckDecl {
        command: Some("true".into()),
        tcp: Some(22),
        ..decl("two")
    };
    let e = HealthCheck::from_decl(&two).expect_err("two kinds");
    assert_eq!(
        e.iter().map(|e| e.code()).collect::<Vec<_>>(),
        ["health-check"]
    );
    let bad_timeout = HealthCheckDecl {
        tcp: Some(22),
        timeout: crate::model::HumanDuration::from_secs(0),
        ..decl("t")
    };
    let e = HealthCheck::from_decl(&bad_timeout).expect_err("zero timeout");
    assert_eq!(
        e.iter().map(|e| e.pointer()).collect::<Vec<_>>(),
        ["/timeout"]
    );
    let bad_port = HealthCheckDecl {
        tcp: Some(70000),
        ..decl("p")
    };
    let e = HealthCheck::from_decl(&bad_port).expect_err("port out of range");
    assert_eq!(e.iter().map(|e| e.pointer()).collect::<Vec<_>>(), ["/tcp"]);
    let ok = HealthCheckDecl {
        tcp: Some(22),
        retries: 3,
        ..decl("ok")
    };
    let c = check(ok);
    assert_eq!(c.probe, HealthProbe::Tcp(22));
    let p = Policy::of(&c);
    assert_eq!(p.attempts, 3);
    assert_eq!(p.timeout, Duration::from_secs(5));
    assert_eq!(p.interval, RETRY_INTERVAL);
}

/// Every probe kind survives declaration -> check -> declaration -> check unchanged.
#[test]
fn every_probe_kind_round_trips() {
    let probes = [
        HealthProbe::Command("systemctl is-active nginx".into()),
        HealthProbe::Http("http://{{ host.address }}:8080/".into()),
        HealthProbe::Tcp(1),
        HealthProbe::Tcp(65535),
        HealthProbe::Prometheus(crate::model::PrometheusQuery {
            url: "http://prometheus:9090".into(),
            query: "rate(errors{host=\"{{ host.name }}\"}[1m])".into(),
            condition: crate::model::Condition::parse("< 0.05").expect("condition"),
            for_: crate::model::HumanDuration::from_secs(30),
            interval: crate::model::HumanDuration::from_secs(10),
        }),
    ];
    for probe in probes {
        let c = HealthCheck {
            name: probe.kind().into(),
            probe: probe.clone(),
            timeout: crate::model::HumanDuration::from_millis(1500),
            retries: 4,
            interval: Some(crate::model::HumanDuration::from_secs(30)),
        };
        let d = c.to_decl();
        let kinds = [
            d.command.is_some(),
            d.http.is_some(),
            d.tcp.is_some(),
            d.prometheus.is_some(),
        ];
        assert_eq!(kinds.iter().filter(|k| **k).count(), 1, "{d:?}");
        assert_eq!(HealthCheck::from_decl(&d).as_ref(), Ok(&c));
        // Through the YAML/JSON shape too.
        let json = serde_json::to_value(&d).expect("serialize");
        assert!(!json[probe.kind()].is_null(), "{json}");
        let back: HealthCheckDecl = serde_json::from_value(json).expect("deserialize");
        assert_eq!(HealthCheck::from_decl(&back), Ok(c));
    }
}

#[tokio::test]
async fn check_wave_runs_every_check_on_every_host() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let open = l.local_addr().expect("addr").port();
    let hosts = vec![
        host("127.0.0.1"),
        Host {
            name: "web-2".into(),
            ..host("127.0.0.1")
        },
    ];
    let closed = closed_port().await;
    let checks = vec![
        check(HealthCheckDecl {
            command: Some("true".into()),
            ..decl("cmd")
        }),
        check(HealthCheckDecl {
            tcp: Some(u32::from(open)),
            ..decl("port")
        }),
        check(HealthCheckDecl {
            tcp: Some(u32::from(closed)),
            ..decl("broken")
        }),
    ];
    let wave = check_wave(&checks, &hosts, &LocalConnector::default(), &render).await;
    let got: Vec<_> = wave
        .results
        .iter()
        .map(|r| (r.check.as_str(), r.host.as_str(), r.ok))
        .collect();
    assert_eq!(
        got,
        vec![
            ("cmd", "web-1", true),
            ("cmd", "web-2", true),
            ("port", "web-1", true),
            ("port", "web-2", true),
            ("broken", "web-1", false),
            ("broken", "web-2", false),
        ]
    );
    assert!(!wave.ok());
    assert_eq!(wave.failures().count(), 2);
    assert!(
        check_wave(&checks[..2], &hosts, &LocalConnector::default(), &render)
            .await
            .ok()
    );
}

/// Health checks are checked when the repo is validated, each problem at its position: a
/// zero timeout (which used to pass validation and fail only during the rollout), a check
/// with two kinds, a timeout that is not a duration.
#[test]
fn health_checks_are_validated_with_their_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let write = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write("plumb.yaml", "name: t\n");
    write(
        "environments/prod/hosts.yaml",
        "hosts:\n  - name: web-1\n    address: 10.0.0.1\n",
    );
    write(
        "units/web.yaml",
        "steps:\n  - id: motd\n    file:\n      path: /etc/motd\n      content: hi\n",
    );
    let errors = |env_yaml: &str| -> Vec<String> {
        write("environments/prod/env.yaml", env_yaml);
        let (_, diags, _) = crate::validate::validate_and_render(root, "prod", None);
        diags
            .into_sorted()
            .into_iter()
            .map(|d| format!("{}:{}:{}: {}", d.path, d.line, d.col, d.message))
            .collect()
    };
    assert_eq!(
        errors("health_checks:\n  - name: ssh\n    tcp: 22\n    timeout: 5s\n"),
        Vec::<String>::new()
    );
    let e = errors("health_checks:\n  - name: ssh\n    tcp: 22\n    timeout: 0s\n");
    assert_eq!(
        e,
        vec!["environments/prod/env.yaml:4:14: health check `ssh`: the timeout must be longer than zero"]
    );
    let e = errors("health_checks:\n  - name: both\n    tcp: 22\n    command: \"true\"\n");
    assert_eq!(
        e,
        vec!["environments/prod/env.yaml:2:5: health check `both` needs exactly one of `command`, `http`, `tcp`, `prometheus`"]
    );
    let e = errors("health_checks:\n  - name: ssh\n    tcp: 22\n    timeout: soon\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("environments/prod/env.yaml:4:14:"),
        "{e:?}"
    );
}
