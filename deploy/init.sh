#!/bin/sh
# The compose deployment's one-shot init job: creates, once, the CA hierarchy, every component's secrets and the
# internal mTLS credentials (each component's own volume), and the operator's; a rerun keeps what exists.
#
# Volumes, mounted here under /var/lib/kagi-init and in each component at /var/lib/kagi:
#   root/        the offline root key and its passphrase (no running component mounts it)
#   ca/          ca/ (the CA directory: online keys, CRLs), secrets/ca-key-passphrase, tls/
#   otp/         secrets/otp-pepper, secrets/otp-kek, tls/
#   enrollment/  secrets/password-pepper, secrets/signing-keys.pem and its passphrase, tls/
#   gateway/     tls/
#   operator/    tls/ (for `kagi admin`)
#   store-users/ (read-only) the Redis users' passwords, made by Redis's start script (deploy/redis/start.sh)
# Each tls/ holds service.pem (certificate + internal CA), service-key.pem and ca.pem (the root). With Redis, each
# component's secrets/store-url is its store URL as its own Redis user (read through KAGI_STORE_URL_FILE).
#
# Reads KAGI_PKI_BASE_URL (written into the certificates), KAGI_STORE_URL (the store; for Redis, the server without a
# user: this job records each credential in the CA's store as kagi-ca) and KAGI_GATEWAY_DNS_NAMES /
# KAGI_GATEWAY_IP_ADDRESSES (the names browsers reach the gateway by).
set -eu
umask 077
I=/var/lib/kagi-init

random_text() {  # a fresh random secret in file $1, unless it has one
  [ -s "$1" ] || python3 -c 'import secrets, sys; sys.stdout.write(secrets.token_urlsafe(48))' > "$1"
}

random_key() {  # a fresh base64 256-bit key in file $1, unless it has one
  [ -s "$1" ] || python3 -c 'import base64, secrets, sys; sys.stdout.write(base64.b64encode(secrets.token_bytes(32)).decode())' > "$1"
}

# Redis: one user per component, each limited to its own keys (deploy/redis/users.acl); Redis's start script makes
# their passwords. Each component's URL names its own user; this job uses the CA's. Redis may still be starting
# (not every compose honours `service_healthy`): wait for the passwords, then for an answer, up to a minute each.
case "${KAGI_STORE_URL:-}" in
  redis://* | rediss://*)
    for _ in $(seq 60); do
      [ -s "$I/store-users/kagi-ca" ] && break
      sleep 1
    done
    [ -s "$I/store-users/kagi-ca" ] || { echo "kagi init: no Redis user passwords in $I/store-users" >&2; exit 1; }
    scheme=${KAGI_STORE_URL%%://*}
    server=${KAGI_STORE_URL#*://}
    server=${server#*@}  # a user given in KAGI_STORE_URL gives way to each component's own
    for component in ca otp enrollment gateway; do
      mkdir -p "$I/$component/secrets"
      printf '%s://kagi-%s:%s@%s\n' "$scheme" "$component" "$(cat "$I/store-users/kagi-$component")" "$server" \
        > "$I/$component/secrets/store-url"
    done
    KAGI_STORE_URL=$(cat "$I/ca/secrets/store-url")
    export KAGI_STORE_URL
    python3 - <<'PY'
import os, sys, time
import redis
client = redis.Redis.from_url(os.environ["KAGI_STORE_URL"], socket_timeout=2)
for _ in range(60):
    try:
        if client.ping():
            sys.exit(0)
    except redis.RedisError:
        time.sleep(1)
sys.exit("kagi init: the store at KAGI_STORE_URL did not answer within a minute")
PY
    ;;
esac

for d in root ca/secrets ca/tls otp/secrets otp/tls enrollment/secrets enrollment/tls gateway/tls operator/tls; do
  mkdir -p "$I/$d"
done
random_text "$I/root/root-key-passphrase"
random_text "$I/ca/secrets/ca-key-passphrase"
random_text "$I/otp/secrets/otp-pepper"
random_key "$I/otp/secrets/otp-kek"
random_text "$I/enrollment/secrets/password-pepper"
random_text "$I/enrollment/secrets/signing-key-passphrase"

export KAGI_CA_KEY_PASSPHRASE_FILE="$I/ca/secrets/ca-key-passphrase"
if [ ! -e "$I/root/root-key.pem" ]; then
  kagi admin --state-dir "$I/ca" init-ca --ca-dir "$I/ca/ca" --root-key-out "$I/root/root-key.pem" \
    --root-passphrase-file "$I/root/root-key-passphrase"
fi

credential() {  # role, volume, then --dns/--ip options
  role=$1 volume=$2
  shift 2
  if [ ! -e "$I/$volume/tls/service.pem" ]; then
    kagi admin --state-dir "$I/ca" issue-credential --offline --ca-dir "$I/ca/ca" --role "$role" \
      --name service --out "$I/$volume/tls" "$@"
  fi
}

# Each service's certificate carries its role name (ca.kagi.internal, ...: issue-credential adds it for the ca, otp
# and enrollment roles), which its clients verify whatever address they dial; the service name and localhost are for
# tools that check the address they dialled. The gateway's certificate also names what browsers type.
credential ca ca --dns ca --dns localhost
credential otp otp --dns otp --dns localhost
credential enrollment enrollment --dns enrollment --dns localhost
gateway_names=""
for name in gateway localhost $(echo "${KAGI_GATEWAY_DNS_NAMES:-}" | tr ',' ' '); do
  gateway_names="$gateway_names --dns $name"
done
for address in 127.0.0.1 $(echo "${KAGI_GATEWAY_IP_ADDRESSES:-}" | tr ',' ' '); do
  gateway_names="$gateway_names --ip $address"
done
# shellcheck disable=SC2086 # the options are words on purpose
credential gateway gateway $gateway_names
credential operator operator

if [ ! -e "$I/enrollment/secrets/signing-keys.pem" ]; then
  kagi admin --state-dir "$I/enrollment" rotate-signing-key --key-file "$I/enrollment/secrets/signing-keys.pem" \
    --passphrase-file "$I/enrollment/secrets/signing-key-passphrase" --activate-in 0
fi
echo "kagi init: CA, secrets and credentials are in place"
