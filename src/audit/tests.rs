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
