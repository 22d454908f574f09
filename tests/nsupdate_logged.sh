#!/bin/sh
# Test stand-in for an operator's nsupdate_command: `nsupdate_logged.sh LOG [nsupdate args]`
# records the arguments, the key file's mode and the update script, then runs nsupdate.
log=$1
shift
script=$(cat)
{
    echo "args: $*"
    [ "$1" = "-k" ] && echo "key mode: $(stat -L -c %a "$2")"
    echo "$script"
} >> "$log"
printf '%s\n' "$script" | exec nsupdate "$@"
