# Never lock plumb (and people) out: keep the SSH server installed and running.
package plumb.ssh

import rego.v1

protected := {"openssh-server", "ssh", "sshd"}

# Removing the server may be planned (a host being retired): an approver can override.
overridable := {"deny_remove"}

deny_remove contains msg if {
	some step in input.steps
	step.module == "package"
	step.target in protected
	step.parameters.state == "absent"
	msg := sprintf("%s removes %s: the host would lose SSH", [step.address, step.target])
}

deny_stop contains msg if {
	some step in input.steps
	step.module == "service"
	step.target in protected
	stops(step.parameters)
	msg := sprintf("%s stops or disables %s: the host would lose SSH", [step.address, step.target])
}

stops(p) if p.state == "stopped"

stops(p) if p.enabled == false
