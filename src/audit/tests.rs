use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use super::*;

#[test]
fn key_is_created_private_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = DaemonKey::load_or_create(dir.path()).unwrap();
    let mode = std::fs::metadata(dir.path().join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
    assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let k2 = DaemonKey::load_or_create(dir.path()).unwrap();
    assert_eq!(k1.fingerprint(), k2.fingerprint());
    assert!(k1.fingerprint().starts_with("SHA256:"));
    let public = k1.public_key_openssh();
    assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
    assert!(public.ends_with(" plumb-daemon"), "{public}");
    assert_eq!(parse_public_key(&public).unwrap(), k1.verifying_key());
    // allowed-signers style line
    assert_eq!(
        parse_public_key(&format!("# daemon\nplumb@prod {public}\n")).unwrap(),
        k1.verifying_key()
    );
    assert!(parse_public_key("ssh-rsa AAAA nope").is_err());
    assert!(parse_public_key("").is_err());
}

#[test]
fn key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    DaemonKey::load_or_create(dir.path()).unwrap();
    let path = dir.path().join(KEY_FILE);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = DaemonKey::load(&path).unwrap_err();
    assert_eq!(err.code(), "audit.key_permissions");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, "garbage").unwrap();
    assert_eq!(DaemonKey::load(&path).unwrap_err().code(), "audit.key");
}

#[test]
fn canonical_json_sorts_keys_and_has_no_whitespace() {
    let v = json!({"b": 1, "a": {"d": [1, {"z": null, "y": "x"}], "c": true}});
    assert_eq!(
        canonical_json(&v),
        r#"{"a":{"c":true,"d":[1,{"y":"x","z":null}]},"b":1}"#
    );
}

#[test]
fn audit_head_parses_seq_colon_hash() {
    let hash = "AB".repeat(32);
    let h: AuditHead = format!("42:{hash}").parse().unwrap();
    assert_eq!((h.seq, h.hash.as_str()), (42, "ab".repeat(32).as_str()));
    assert_eq!(h.to_string(), format!("42:{}", "ab".repeat(32)));
    for bad in [
        String::new(),
        "42".into(),
        ":abc".into(),
        format!("0:{hash}"),
        format!("x:{hash}"),
        "42:abc".into(),
    ]
    .iter()
    {
        assert!(bad.parse::<AuditHead>().is_err(), "{bad}");
    }
}

#[test]
fn report_names_truncation_and_prints_the_head() {
    let head = AuditHead {
        seq: 3,
        hash: "cd".repeat(32),
    };
    let ok = AuditVerifyReport::new(
        Ok(VerifiedChain {
            records: 3,
            head: Some(head.clone()),
        }),
        3,
        "SHA256:k".into(),
    );
    assert!(ok.ok && ok.error_text().is_none());
    assert_eq!(
        ok.summary_text(),
        format!("3 records verified; head {head} (key SHA256:k)")
    );
    let cut = AuditVerifyReport::new(
        Err(AuditError::Truncated {
            expected: 7,
            found: Some(head),
        }),
        3,
        "SHA256:k".into(),
    );
    assert!(!cut.ok);
    assert_eq!(cut.error_code.as_deref(), Some("audit.truncated"));
    assert_eq!(cut.head_seq, Some(3));
    let e = cut.error_text().unwrap();
    assert!(e.contains("records #4..#7 were removed"), "{e}");
}
