#!/bin/sh
# SSH_CONFIG and HOST from the environment (e.g. integration/testhosts up 1; ssh_config in its dir)
# what a one-shot run does with a ControlMaster: start the master, one session through it, close it
S=${TMPDIR:-/tmp}/plumb-cm-$$
ssh -F "$SSH_CONFIG" -f -N -o ControlMaster=yes -o ControlPath=$S -o ControlPersist=yes "$HOST"
printf 'echo hi\n' | ssh -F "$SSH_CONFIG" -o ControlPath=$S "$HOST" sh -s >/dev/null
ssh -F "$SSH_CONFIG" -o ControlPath=$S -O exit "$HOST" 2>/dev/null
