# Sourced by scripts that run the services over TLS (the demo with
# TURNSTILE_DEMO_TLS=1, the measurements with API_TLS): certificates made
# with openssl for loopback.

# make_tls DIR: a CA (ca.pem) and a certificate it signed for 127.0.0.1 and
# localhost (api.pem, api.key), valid for two days; kept if already there.
make_tls() {
  [ -f "$1/api.pem" ] && [ -f "$1/api.key" ] && [ -f "$1/ca.pem" ] && return 0
  mkdir -p "$1"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$1/ca.key" -out "$1/ca.pem" -subj "/CN=turnstile local CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1/api.key" -out "$1/api.csr" -subj "/CN=127.0.0.1" 2>/dev/null
  openssl x509 -req -in "$1/api.csr" -CA "$1/ca.pem" -CAkey "$1/ca.key" -CAcreateserial -days 2 \
    -out "$1/api.pem" -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost') 2>/dev/null
}

# wait_url URL [CA]: until URL answers (over https, trusting CA), for 60 s.
wait_url() {
  for _ in $(seq 300); do
    python3 -c "
import ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[2]) if len(sys.argv) > 2 else None
urllib.request.urlopen(sys.argv[1], timeout=1, context=context)" "$@" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}
