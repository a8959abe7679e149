# Kernel parameters (sysctl) change only inside the maintenance window: Saturday 02:00-06:00 UTC.
package plumb.maintenance

import rego.v1

window_day := 6

window_hours := {2, 3, 4, 5}

in_window if {
	input.now.weekday == window_day
	input.now.hour in window_hours
}

deny_sysctl contains msg if {
	some step in input.steps
	step.module == "sysctl"
	step.change.kind != "in_sync"
	not in_window
	msg := sprintf("%s changes sysctl %s outside the maintenance window (Saturday 02:00-06:00 UTC)", [step.address, step.target])
}
