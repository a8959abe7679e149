package plumb.pinned_test

import rego.v1

import data.plumb.pinned

pkg(env, params) := {"environment": {"name": env}, "steps": [{"address": "app/pkg", "module": "package", "target": "nginx", "parameters": object.union({"name": "nginx", "state": "present"}, params)}]}

test_unpinned_in_production_is_denied if {
	count(pinned.deny_unpinned) == 1 with input as pkg("production", {})
}

test_pinned_in_production_is_allowed if {
	count(pinned.deny_unpinned) == 0 with input as pkg("production", {"version": "1.24.0-1"})
}

test_unpinned_in_staging_is_allowed if {
	count(pinned.deny_unpinned) == 0 with input as pkg("staging", {})
}

test_removal_needs_no_version if {
	count(pinned.deny_unpinned) == 0 with input as pkg("production", {"state": "absent"})
}
