#!/bin/sh
# SSH_CONFIG and HOST from the environment (e.g. integration/testhosts up 1; ssh_config in its dir)
S=${TMPDIR:-/tmp}/plumb-cm-$$
ssh -F "$SSH_CONFIG" -f -N -o ControlMaster=yes -o ControlPath=$S -o ControlPersist=yes "$HOST"
for i in 1 2 3; do printf 'echo hi\n' | ssh -F "$SSH_CONFIG" -o ControlPath=$S "$HOST" sh -s >/dev/null; done
ssh -F "$SSH_CONFIG" -o ControlPath=$S -O exit "$HOST" 2>/dev/null
