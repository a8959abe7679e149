package plumb.destructive_test

import rego.v1

import data.plumb.destructive

cmd(env, run) := {"environment": {"name": env}, "steps": [{"address": "db/migrate", "module": "command", "target": run, "parameters": {"run": run}}]}

test_drop_table_in_production_is_denied if {
	count(destructive.deny_command) == 1 with input as cmd("production", "psql -c 'DROP TABLE users'")
}

test_drop_database_lowercase_is_denied if {
	count(destructive.deny_command) == 1 with input as cmd("production", "mysql -e 'drop  database app'")
}

test_truncate_is_denied if {
	count(destructive.deny_command) == 1 with input as cmd("prod", "psql -c 'TRUNCATE events'")
}

test_rm_rf_root_is_denied if {
	count(destructive.deny_command) == 1 with input as cmd("production", "rm -rf /")
}

test_rm_rf_a_directory_is_allowed if {
	count(destructive.deny_command) == 0 with input as cmd("production", "rm -rf /var/cache/app")
}

test_drop_table_in_staging_is_allowed if {
	count(destructive.deny_command) == 0 with input as cmd("staging", "psql -c 'DROP TABLE users'")
}

test_harmless_sql_is_allowed if {
	count(destructive.deny_command) == 0 with input as cmd("production", "psql -c 'SELECT 1 FROM dropped_tables'")
}
