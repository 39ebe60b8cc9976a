#!/bin/sh
# Regenerates the TLS fixtures of tests/nats_tls.rs: a CA, a server certificate for 127.0.0.1 and
# a client certificate, valid for 100 years. Test-only keys: never use them anywhere else.
set -eu
cd "$(dirname "$0")"
days=36500
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days $days \
  -subj "/CN=bus test CA" -keyout ca-key.pem -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=bus test $who" -keyout $who-key.pem -out $who.csr
  if [ $who = server ]; then eku=serverAuth; else eku=clientAuth; fi
  printf 'basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\n' $eku > $who.ext
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days $days \
    -extfile $who.ext -out $who.pem
  # PKCS#8, the key format every TLS stack reads.
  openssl pkcs8 -topk8 -nocrypt -in $who-key.pem -out $who-key.pk8 && mv $who-key.pk8 $who-key.pem
  rm $who.csr $who.ext
done
rm -f ca.srl ca-key.pem
