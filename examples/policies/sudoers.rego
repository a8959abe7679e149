# Files under /etc/sudoers.d must be mode 0440 and owned by root (sudo ignores others, or worse).
package plumb.sudoers

import rego.v1

deny_mode contains msg if {
	some step in input.steps
	sudoers_file(step)
	not step.parameters.mode in {"0440", "440"}
	msg := sprintf("%s: %s must be mode 0440 (is %v)", [step.address, step.target, object.get(step.parameters, "mode", "unset")])
}

deny_owner contains msg if {
	some step in input.steps
	sudoers_file(step)
	object.get(step.parameters, "owner", "") != "root"
	msg := sprintf("%s: %s must be owned by root", [step.address, step.target])
}

sudoers_file(step) if {
	step.module == "file"
	startswith(step.target, "/etc/sudoers.d/")
	step.parameters.state == "present"
}
