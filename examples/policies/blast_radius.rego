# One commit changes at most max_percent of an environment's hosts (of 4 or more) unless an
# approver overrides: `Plumb-Override: blast_radius.deny_too_many_hosts <reason>`.
package plumb.blast_radius

import rego.v1

max_percent := 50

overridable := {"deny_too_many_hosts"}

deny_too_many_hosts contains msg if {
	input.mode == "plan"
	input.environment.hosts_total >= 4
	(input.environment.hosts_changed * 100) > (max_percent * input.environment.hosts_total)
	some step in input.steps
	step.change.kind != "in_sync"
	msg := sprintf("this commit changes %d of %d hosts of %s (more than %d%%)", [input.environment.hosts_changed, input.environment.hosts_total, input.environment.name, max_percent])
}
