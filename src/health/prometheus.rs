//! `prometheus` checks: a PromQL query evaluated from plumb through Prometheus' HTTP API
//! (`GET <url>/api/v1/query?query=…`), like Argo Rollouts' analysis. Every value the query
//! returns must satisfy the check's condition:
//! - **success**: every evaluation over `for` (every `interval`; once when `for` is unset)
//!   returned values, all satisfying the condition;
//! - **failure**: an evaluation returned a value that does not (the wave fails);
//! - **inconclusive**: no failure, but the last evaluation returned no data (an empty vector,
//!   NaN) or Prometheus could not be asked: the wave pauses (see `daemon::policy`).
//!
//! Each evaluation is bounded by the check's `timeout`, and the answer read is capped at
//! [`MAX_ANSWER`] bytes.

use std::time::Instant;

use serde_json::Value;

use super::{render_url, CheckError, CheckResult, Policy, Renderer};
use crate::model::{Condition, Host, PrometheusQuery};

/// The most bytes of a Prometheus answer read.
pub const MAX_ANSWER: usize = 4 << 20;

/// What one evaluation found.
#[derive(Debug, Clone, PartialEq)]
pub enum Eval {
    Pass,
    /// A value that does not satisfy the condition (what, and its labels).
    Fail(String),
    /// No data, or Prometheus could not be asked.
    Inconclusive(String),
}

/// Judges a query answer (the JSON body) against `condition`. Pure.
pub fn judge(answer: &Value, condition: &Condition) -> Result<Eval, CheckError> {
    let bad = |what: &str| CheckError::Prometheus(format!("unexpected answer: {what}"));
    if answer["status"] != "success" {
        let error = answer["error"].as_str().unwrap_or("no status `success`");
        return Err(CheckError::Prometheus(format!("query failed: {error}")));
    }
    let data = &answer["data"];
    let samples: Vec<(String, &Value)> = match data["resultType"].as_str() {
        Some("scalar") => vec![(String::new(), &data["result"][1])],
        Some("vector") => data["result"]
            .as_array()
            .ok_or_else(|| bad("`result` is not a list"))?
            .iter()
            .map(|s| (s["metric"].to_string(), &s["value"][1]))
            .collect(),
        Some(other) => {
            return Err(bad(&format!(
                "result type `{other}` (use an instant vector or a scalar)"
            )))
        }
        None => return Err(bad("no `resultType`")),
    };
    if samples.is_empty() {
        return Ok(Eval::Inconclusive("the query returned no data".into()));
    }
    for (labels, v) in samples {
        let value: f64 = v
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("a sample value is not a number"))?;
        if value.is_nan() {
            return Ok(Eval::Inconclusive(format!(
                "the query returned NaN {labels}"
            )));
        }
        if !condition.holds(value) {
            let at = if labels.is_empty() || labels == "{}" {
                String::new()
            } else {
                format!(" for {labels}")
            };
            return Ok(Eval::Fail(format!(
                "the query returned {value}{at}, which is not {condition}"
            )));
        }
    }
    Ok(Eval::Pass)
}

async fn evaluate(
    client: &reqwest::Client,
    url: &str,
    query: &str,
    condition: &Condition,
    policy: Policy,
) -> Result<Eval, CheckError> {
    let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
    let ask = async {
        let mut resp = client
            .get(&endpoint)
            .query(&[("query", query)])
            .send()
            .await
            .map_err(|e| CheckError::Connect(crate::diag::error_chain(&e)))?;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| CheckError::Http(crate::diag::error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(CheckError::Prometheus(format!(
                    "the answer is over {MAX_ANSWER} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| CheckError::Prometheus(format!("the answer is not JSON: {e}")))
    };
    let answer = tokio::time::timeout(policy.timeout, ask)
        .await
        .map_err(|_| CheckError::Timeout(policy.timeout))??;
    judge(&answer, condition)
}

/// A `prometheus` check for one host: the URL and query rendered with `host`, evaluated
/// every `interval` for `for` (once when zero).
pub async fn check_prometheus(
    name: &str,
    q: &PrometheusQuery,
    host: &Host,
    client: &reqwest::Client,
    policy: Policy,
    render: Renderer<'_>,
) -> CheckResult {
    let start = Instant::now();
    let rendered = render_url(&q.url, host, render)
        .and_then(|url| render_url(&q.query, host, render).map(|query| (url, query)));
    let mut evaluations = 0;
    let verdict = match rendered {
        Err(e) => Err(e),
        Ok((url, query)) => loop {
            evaluations += 1;
            let eval = evaluate(client, &url, &query, &q.condition, policy)
                .await
                .unwrap_or_else(|e| Eval::Inconclusive(e.to_string()));
            let done = start.elapsed() + q.interval.get() > q.for_.get();
            match eval {
                Eval::Fail(why) => break Err(CheckError::ConditionNotMet(why)),
                Eval::Inconclusive(why) if done => break Err(CheckError::Inconclusive(why)),
                Eval::Pass if done => break Ok(()),
                _ => tokio::time::sleep(q.interval.get()).await,
            }
        },
    };
    let err = verdict.err();
    CheckResult {
        check: name.to_string(),
        kind: "prometheus".into(),
        host: host.name.clone(),
        ok: err.is_none(),
        inconclusive: matches!(err, Some(CheckError::Inconclusive(_))),
        code: err.as_ref().map(|e| e.code().to_string()),
        error: err.map(|e| e.to_string()),
        attempts: evaluations,
        duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vector(values: &[&str]) -> Value {
        let result: Vec<Value> = values
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"metric": {"instance": format!("h{i}")}, "value": [1.5, v]}))
            .collect();
        json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }

    #[test]
    fn every_value_must_hold_no_data_is_inconclusive() {
        let below = Condition::parse("< 0.05").expect("condition");
        assert_eq!(judge(&vector(&["0.01", "0.02"]), &below), Ok(Eval::Pass));
        assert_eq!(
            judge(&vector(&["0.01", "0.5"]), &below),
            Ok(Eval::Fail(
                "the query returned 0.5 for {\"instance\":\"h1\"}, which is not < 0.05".into()
            ))
        );
        assert_eq!(
            judge(&vector(&[]), &below),
            Ok(Eval::Inconclusive("the query returned no data".into()))
        );
        assert!(matches!(
            judge(&vector(&["NaN"]), &below),
            Ok(Eval::Inconclusive(_))
        ));
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1.5, "0"]}});
        assert_eq!(judge(&scalar, &below), Ok(Eval::Pass));
    }

    #[test]
    fn errors_and_odd_answers_are_errors_never_a_pass() {
        let c = Condition::parse("< 1").expect("condition");
        for answer in [
            json!({"status": "error", "error": "parse error"}),
            json!({"status": "success", "data": {"resultType": "matrix", "result": []}}),
            json!({"status": "success", "data": {}}),
            json!({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "x"]}]}}),
            json!("not an object"),
        ] {
            assert!(judge(&answer, &c).is_err(), "{answer}");
        }
    }
}
