# No command in production whose text drops data: DROP TABLE, DROP DATABASE, TRUNCATE, rm -rf /.
package plumb.destructive

import rego.v1

production := {"production", "prod"}

patterns := [
	`(?i)\bdrop\s+(table|database)\b`,
	`(?i)\btruncate\b`,
	`\brm\s+(-[a-zA-Z]*\s+)*-[a-zA-Z]*[rR][a-zA-Z]*[fF]?[a-zA-Z]*\s+(-[a-zA-Z]+\s+)*/(\s|\*|;|$)`,
]

deny_command contains msg if {
	input.environment.name in production
	some step in input.steps
	step.module == "command"
	some p in patterns
	regex.match(p, step.parameters.run)
	msg := sprintf("%s runs a destructive command in %s", [step.address, input.environment.name])
}
