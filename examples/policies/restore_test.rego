package plumb.restore_test

import rego.v1

import data.plumb.restore

hour := 3600

# A backup whose last restore test ended `result`, the last success `age` seconds ago.
backup(result, age) := {
	"name": "app",
	"step": "backup/app",
	"observed": {"repository": "ok", "restore_test": {"result": result, "restore_ms": 1500, "files_compared": 12, "files_mismatched": 0}},
	"restore_verified_age_seconds": age,
	"problems": [],
}

never_restored := {"name": "app", "step": "backup/app", "observed": {"repository": "ok"}, "problems": ["restore_test_stale"]}

unobserved := {"name": "app", "step": "backup/app", "problems": []}

plan(step, backups) := {"mode": "plan", "host": {"name": "db-1", "backups": backups}, "steps": [step]}

remove_dir := {"address": "app/old", "module": "directory", "change": {"kind": "remove", "irreversible": "directory removal (its contents are not restored)"}}

downgrade := {"address": "app/pkg", "module": "package", "change": {"kind": "modify", "irreversible": "package downgrade"}}

edit_file := {"address": "app/conf", "module": "file", "change": {"kind": "modify"}}

new_backup := {"address": "backup/app", "module": "backup", "change": {"kind": "create", "irreversible": "it initialises a backup repository, which an older state does not remove"}}

test_a_removal_after_a_recent_verified_restore_is_allowed if {
	count(restore.deny_unverified_restore) == 0 with input as plan(remove_dir, [backup("ok", 20 * hour)])
}

test_a_removal_after_an_old_restore_is_denied if {
	msgs := restore.deny_unverified_restore with input as plan(remove_dir, [backup("ok", 200 * hour)])
	count(msgs) == 1
	some m in msgs
	m.step == "app/old"
	contains(m.msg, "the last verified restore is 200 hours old")
}

test_an_irreversible_change_after_a_failed_restore_test_is_denied if {
	msgs := restore.deny_unverified_restore with input as plan(downgrade, [backup("failed", 2 * hour)])
	count(msgs) == 1
	some m in msgs
	contains(m.msg, "package downgrade")
	contains(m.msg, "its last restore test failed")
}

test_a_removal_on_a_never_restored_backup_is_denied if {
	count(restore.deny_unverified_restore) == 1 with input as plan(remove_dir, [never_restored])
}

test_a_backup_whose_probe_failed_counts_as_unverified if {
	count(restore.deny_unverified_restore) == 1 with input as plan(remove_dir, [unobserved])
}

test_the_limit_is_inclusive if {
	limit := restore.max_restore_age_hours * hour
	count(restore.deny_unverified_restore) == 0 with input as plan(remove_dir, [backup("ok", limit)])
	count(restore.deny_unverified_restore) == 1 with input as plan(remove_dir, [backup("ok", limit + 1)])
}

test_every_backup_must_be_verified if {
	count(restore.deny_unverified_restore) == 1 with input as plan(remove_dir, [backup("ok", hour), backup("ok", 300 * hour)])
}

test_a_reversible_change_is_allowed if {
	count(restore.deny_unverified_restore) == 0 with input as plan(edit_file, [never_restored])
}

test_setting_up_the_backup_itself_is_allowed if {
	count(restore.deny_unverified_restore) == 0 with input as plan(new_backup, [never_restored])
}

test_a_host_without_backups_is_allowed if {
	count(restore.deny_unverified_restore) == 0 with input as plan(remove_dir, [])
}

test_the_desired_state_alone_is_not_judged if {
	inp := object.union(plan(remove_dir, [never_restored]), {"mode": "desired"})
	count(restore.deny_unverified_restore) == 0 with input as inp
}

test_the_rule_is_overridable if {
	"deny_unverified_restore" in restore.overridable
}
