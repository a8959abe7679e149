package plumb.sudoers_test

import rego.v1

import data.plumb.sudoers

file(path, params) := {"steps": [{"address": "admin/sudo", "module": "file", "target": path, "parameters": object.union({"path": path, "state": "present"}, params)}]}

test_0440_root_is_allowed if {
	inp := file("/etc/sudoers.d/ops", {"mode": "0440", "owner": "root"})
	count(sudoers.deny_mode) == 0 with input as inp
	count(sudoers.deny_owner) == 0 with input as inp
}

test_0644_is_denied if {
	count(sudoers.deny_mode) == 1 with input as file("/etc/sudoers.d/ops", {"mode": "0644", "owner": "root"})
}

test_missing_mode_is_denied if {
	count(sudoers.deny_mode) == 1 with input as file("/etc/sudoers.d/ops", {"owner": "root"})
}

test_other_owner_is_denied if {
	count(sudoers.deny_owner) == 1 with input as file("/etc/sudoers.d/ops", {"mode": "0440", "owner": "deploy"})
}

test_files_elsewhere_are_allowed if {
	count(sudoers.deny_mode) == 0 with input as file("/etc/app.conf", {"mode": "0644"})
}
