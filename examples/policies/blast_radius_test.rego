package plumb.blast_radius_test

import rego.v1

import data.plumb.blast_radius

plan(changed, total) := {"mode": "plan", "environment": {"name": "production", "hosts_total": total, "hosts_changed": changed}, "steps": [{"address": "app/conf", "change": {"kind": "modify"}}]}

test_most_hosts_changed_is_denied if {
	count(blast_radius.deny_too_many_hosts) == 1 with input as plan(3, 4)
}

test_half_the_hosts_is_allowed if {
	count(blast_radius.deny_too_many_hosts) == 0 with input as plan(2, 4)
}

test_small_environments_are_allowed if {
	count(blast_radius.deny_too_many_hosts) == 0 with input as plan(2, 2)
}

test_the_rule_is_overridable if {
	"deny_too_many_hosts" in blast_radius.overridable
}
