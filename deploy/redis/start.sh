#!/bin/sh
# Starts Redis in the compose deployment (deploy/compose.yaml mounts deploy/redis/ at /usr/local/etc/kagi-redis):
#   1. makes, once, a random password for each user that users.acl turns on, one file per user in PASSWORD_DIR
#      (a volume that only Redis and the init job mount; the init job writes each component's store URL from it);
#   2. writes /data/users.acl: users.acl with each user's password hash (users-acl.sh), the `aclfile` of redis.conf;
#   3. runs redis-server with redis.conf, through the image's own entrypoint where it has one (the official
#      image's drops root before starting the server).
#
#   sh start.sh [PASSWORD_DIR]        (default /var/lib/kagi-redis)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
passwords=${1:-/var/lib/kagi-redis}
umask 022  # the init job, another user, reads the passwords; only Redis and it mount the volume

mkdir -p "$passwords"
for user in $(awk '$1 == "user" && / on / { print $2 }' "$here/users.acl"); do
  if [ ! -s "$passwords/$user" ]; then
    head -c 32 /dev/urandom | od -An -vtx1 | tr -d ' \n' > "$passwords/$user.new"
    mv "$passwords/$user.new" "$passwords/$user"
  fi
done
sh "$here/users-acl.sh" "$here/users.acl" "$passwords" > /data/users.acl.new
mv /data/users.acl.new /data/users.acl

entrypoint=$(command -v docker-entrypoint.sh || true)
exec $entrypoint redis-server "$here/redis.conf"
