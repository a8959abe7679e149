# Packages installed in production name their exact version.
package plumb.pinned

import rego.v1

production := {"production", "prod"}

deny_unpinned contains msg if {
	input.environment.name in production
	some step in input.steps
	step.module == "package"
	step.parameters.state == "present"
	not step.parameters.version
	msg := sprintf("%s installs %s without a version in %s", [step.address, step.target, input.environment.name])
}
