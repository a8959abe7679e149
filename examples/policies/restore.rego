# No destructive change on a host with a backup unless a restore of that backup was verified
# recently: the last restore test succeeded, and no longer ago than max_restore_age_hours.
# Destructive: a `remove` change, or a change its module declares irreversible (a package
# removed or downgraded, a user or a directory removed, a command run). The backup step's own
# changes are not: setting up a backup must not need a restore of it first.
# The facts come from the plan itself (the backup step's probe, same round trip), so they are
# as fresh as the plan; a backup whose probe failed counts as unverified.
# An approver may lift it: `Plumb-Override: restore.deny_unverified_restore <reason>`.
package plumb.restore

import rego.v1

# The configurable age: 8 days covers a weekly restore test that ran a day late. Edit it here
# (an operator's policy), not in a host label: the repo must not loosen its own guardrail.
max_restore_age_hours := 192

overridable := {"deny_unverified_restore"}

destructive(step) if step.change.kind == "remove"

destructive(step) if step.change.irreversible

what(step) := step.change.irreversible if step.change.irreversible

else := "removes something"

verified(b) if {
	b.observed.restore_test.result == "ok"
	b.restore_verified_age_seconds <= max_restore_age_hours * 3600
}

why(b) := "its probe failed, so nothing is known about it" if {
	not b.observed
} else := "its last restore test failed" if {
	b.observed.restore_test.result == "failed"
} else := "no restore test has succeeded yet" if {
	not b.restore_verified_age_seconds
} else := sprintf("the last verified restore is %d hours old", [floor(b.restore_verified_age_seconds / 3600)])

# The backups come first: a host without an unverified backup (most hosts) is done before
# any of its steps is looked at.
deny_unverified_restore contains {"msg": msg, "step": step.address} if {
	input.mode == "plan"
	some b in input.host.backups
	not verified(b)
	some step in input.steps
	step.module != "backup"
	destructive(step)
	msg := sprintf("%s is destructive (%s) but backup %s of %s has no verified restore in the last %d hours: %s", [step.address, what(step), b.name, input.host.name, max_restore_age_hours, why(b)])
}
