#!/bin/sh
# Makes the certificates of docker-compose.cluster.yml's SSL listeners: a CA
# of its own, and for each broker named (its compose service name) a PKCS#12
# keystore holding a key and a certificate the CA signed, valid for that name
# and for localhost (the brokers' health checks). It runs in the one-shot
# service kafka-certs, in the apache/kafka image, whose keytool it uses:
#
#   make-certs.sh SECRETS_DIR CA_DIR BROKER...
#
# SECRETS_DIR (the brokers' /etc/kafka/secrets) gets BROKER.p12, the
# passwords the image's start script reads (keystore-password, key-password),
# ca.pem for the brokers' own connections to each other, and
# client.properties for their health checks. CA_DIR gets ca.pem alone: the
# claim services mount it to check the brokers' certificates.
#
# The CA's key is deleted once the brokers' certificates are signed, so no
# container holds it. The certificates are made once per volume: a later
# `up` keeps them; `down -v` makes new ones.
set -eu

secrets=$1
ca_dir=$2
shift 2

if [ -s "$secrets/ca.pem" ]; then
  missing=""
  for broker in "$@"; do
    [ -s "$secrets/$broker.p12" ] || missing="$missing $broker"
  done
  if [ -z "$missing" ]; then
    cp "$secrets/ca.pem" "$ca_dir/ca.pem"
    echo "kafka certificates: made before, kept"
    exit 0
  fi
  echo "kafka certificates: none for$missing, and the CA's key is gone;" \
       "'docker compose down -v' and 'up' make new ones for every broker" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One random password for the CA's and the brokers' stores. Each PKCS#12
# keystore protects its key with its store's password, so Kafka's
# ssl.key.password and ssl.keystore.password are the same.
password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
days=825

keytool -genkeypair -alias ca -keyalg EC -groupname secp256r1 \
  -dname "CN=Turnstile compose Kafka CA" -ext bc:c -validity "$days" \
  -keystore "$work/ca.p12" -storetype PKCS12 -storepass "$password"
keytool -exportcert -rfc -alias ca -keystore "$work/ca.p12" -storepass "$password" \
  -file "$work/ca.pem"

for broker in "$@"; do
  store="$work/$broker.p12"
  keytool -genkeypair -alias "$broker" -keyalg EC -groupname secp256r1 \
    -dname "CN=$broker" -validity "$days" \
    -keystore "$store" -storetype PKCS12 -storepass "$password"
  keytool -certreq -alias "$broker" -keystore "$store" -storepass "$password" \
    -file "$work/$broker.csr"
  # serverAuth for the clients, clientAuth for the brokers' connections to
  # each other (replication and the controller quorum).
  keytool -gencert -alias ca -keystore "$work/ca.p12" -storepass "$password" \
    -infile "$work/$broker.csr" -outfile "$work/$broker.pem" -rfc -validity "$days" \
    -ext "SAN=dns:$broker,dns:localhost" -ext KU=digitalSignature \
    -ext EKU=serverAuth,clientAuth
  keytool -importcert -noprompt -alias ca -file "$work/ca.pem" \
    -keystore "$store" -storepass "$password"
  keytool -importcert -alias "$broker" -file "$work/$broker.pem" \
    -keystore "$store" -storepass "$password"
done

printf '%s' "$password" > "$work/keystore-password"
printf '%s' "$password" > "$work/key-password"
cat > "$work/client.properties" <<EOF
security.protocol=SSL
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/ca.pem
EOF

# The brokers run as the image's appuser; the keys and passwords are for it
# alone. ca.pem goes last: the check at the top takes it to mean "done".
for broker in "$@"; do
  install -m 600 "$work/$broker.p12" "$secrets/$broker.p12"
done
install -m 600 "$work/keystore-password" "$work/key-password" "$secrets/"
install -m 644 "$work/client.properties" "$secrets/"
if id appuser >/dev/null 2>&1; then
  chown appuser "$secrets"/*.p12 "$secrets"/*-password "$secrets/client.properties"
fi
install -m 644 "$work/ca.pem" "$ca_dir/ca.pem"
install -m 644 "$work/ca.pem" "$secrets/ca.pem"
echo "kafka certificates: made for $*"
