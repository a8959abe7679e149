package plumb.maintenance_test

import rego.v1

import data.plumb.maintenance

sysctl(kind, weekday, hour) := {"now": {"weekday": weekday, "hour": hour, "minute": 0}, "steps": [{"address": "kernel/swappiness", "module": "sysctl", "target": "vm.swappiness", "change": {"kind": kind}}]}

test_a_change_on_tuesday_is_denied if {
	count(maintenance.deny_sysctl) == 1 with input as sysctl("modify", 2, 14)
}

test_a_change_in_the_window_is_allowed if {
	count(maintenance.deny_sysctl) == 0 with input as sysctl("modify", 6, 3)
}

test_in_sync_is_allowed_any_time if {
	count(maintenance.deny_sysctl) == 0 with input as sysctl("in_sync", 2, 14)
}
