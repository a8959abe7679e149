package plumb.ssh_test

import rego.v1

import data.plumb.ssh

pkg(name, state) := {"steps": [{"address": "base/ssh", "module": "package", "target": name, "parameters": {"name": name, "state": state}}]}

test_removing_openssh_server_is_denied if {
	msgs := ssh.deny_remove with input as pkg("openssh-server", "absent")
	count(msgs) == 1
}

test_installing_openssh_server_is_allowed if {
	count(ssh.deny_remove) == 0 with input as pkg("openssh-server", "present")
}

test_removing_another_package_is_allowed if {
	count(ssh.deny_remove) == 0 with input as pkg("telnetd", "absent")
}

test_stopping_sshd_is_denied if {
	inp := {"steps": [{"address": "base/sshd", "module": "service", "target": "ssh", "parameters": {"name": "ssh", "state": "stopped"}}]}
	count(ssh.deny_stop) == 1 with input as inp
}

test_disabling_sshd_is_denied if {
	inp := {"steps": [{"address": "base/sshd", "module": "service", "target": "sshd", "parameters": {"name": "sshd", "enabled": false}}]}
	count(ssh.deny_stop) == 1 with input as inp
}

test_running_sshd_is_allowed if {
	inp := {"steps": [{"address": "base/sshd", "module": "service", "target": "ssh", "parameters": {"name": "ssh", "state": "running", "enabled": true}}]}
	count(ssh.deny_stop) == 0 with input as inp
}
