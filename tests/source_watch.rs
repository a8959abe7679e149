//! Watching: a push into a local bare repo is noticed; polls and triggers arrive.

#[path = "source_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use plumb::source::{Source, WatchEvent};
use support::Fx;

#[tokio::test]
async fn push_into_local_bare_repo_is_noticed() {
    let fx = Fx::new();
    let origin = fx.init("origin.git", true);
    let work = fx.init("work", false);
    fx.git(
        &work,
        &["remote", "add", "origin", &origin.to_string_lossy()],
    );
    fx.commit(&work, "c1", None);
    fx.git(&work, &["push", "-q", "origin", "main"]);

    let src = Source::new(&origin.to_string_lossy(), fx.path("state")).unwrap();
    let (handle, mut rx) = src.watch(None).unwrap();
    // Nothing has changed yet.
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err());

    fx.commit(&work, "c2", None);
    let start = Instant::now();
    fx.git(&work, &["push", "-q", "origin", "main"]);
    let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event within 10 s")
        .expect("channel closed");
    let took = start.elapsed();
    eprintln!("push noticed after {took:?}");
    assert_eq!(ev, WatchEvent::RefsChanged);
    assert!(took < Duration::from_secs(10));

    // packed-refs changes count too (git gc / pack-refs).
    while rx.try_recv().is_ok() {}
    fx.git(&origin, &["pack-refs", "--all"]);
    let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert_eq!(ev.ok().flatten(), Some(WatchEvent::RefsChanged));

    drop(handle);
}

#[tokio::test]
async fn trigger_and_poll() {
    let fx = Fx::new();
    let src = Source::new("ssh://git@example.invalid/config.git", fx.path("state")).unwrap();
    let (handle, mut rx) = src.watch(Some(Duration::from_millis(100))).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert_eq!(ev.ok().flatten(), Some(WatchEvent::Poll));

    let (handle2, mut rx2) = src.watch(None).unwrap();
    let webhook = handle2.trigger_handle();
    tokio::spawn(async move { webhook.trigger() });
    let ev = tokio::time::timeout(Duration::from_secs(5), rx2.recv()).await;
    assert_eq!(ev.ok().flatten(), Some(WatchEvent::Triggered));
    handle2.trigger();
    assert_eq!(rx2.recv().await, Some(WatchEvent::Triggered));
    drop(handle);
    drop(handle2);
}
