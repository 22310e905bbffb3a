#!/bin/sh
# Writes the Redis ACL file on standard output: each user of POLICY (deploy/redis/users.acl, which holds no
# password) with the SHA-256 of its password, read from PASSWORD_DIR/<user name>. Redis keeps only the hash.
#
#   sh deploy/redis/users-acl.sh deploy/redis/users.acl /path/to/passwords > users.acl
#   redis-server --aclfile users.acl ...          # or `aclfile` in redis.conf; reload a running server: ACL LOAD
#
# A user that is `on` needs its password file (a trailing newline is ignored, as kagi does with *_FILE); a user
# that is `off` (`default`) is copied as it is. Missing files stop the script with an error naming them.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 POLICY PASSWORD_DIR > users.acl" >&2; exit 2; }
policy=$1 passwords=$2
status=0
while IFS= read -r line || [ -n "$line" ]; do
  [ -n "$line" ] || continue
  # shellcheck disable=SC2086 # split the rule into words on purpose
  set -- $line
  if [ "$1" != user ] || [ $# -lt 2 ]; then
    echo "$0: $policy: not an ACL user line: $line" >&2
    exit 1
  fi
  name=$2
  case " $line " in
    *" off "*)
      printf '%s\n' "$line"
      continue
      ;;
  esac
  if [ ! -s "$passwords/$name" ]; then
    echo "$0: no password for Redis user $name: write one to $passwords/$name" >&2
    status=1
    continue
  fi
  hash=$(printf '%s' "$(cat "$passwords/$name")" | sha256sum | cut -d' ' -f1)
  printf '%s #%s\n' "$line" "$hash"
done < "$policy"
exit $status
