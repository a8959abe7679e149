#!/bin/sh
# SSH_CONFIG and HOST from the environment (e.g. integration/testhosts up 1; ssh_config in its dir)
# one plain ssh session running one script
printf 'echo hi\n' | ssh -F "$SSH_CONFIG" "$HOST" sh -s >/dev/null
