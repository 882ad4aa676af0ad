#!/usr/bin/env bash
# Three catalogue instances on 127.0.0.1 sharing a Mycorrizal cache: a request on one instance is
# served from the cache another instance filled, and an update published on one reaches every
# instance's audit log. Needs curl. Stops the instances on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p catalogue
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/secret"
seeds=127.0.0.1:7961,127.0.0.1:7962,127.0.0.1:7963
for i in 1 2 3; do
  ./target/release/catalogue --node-id "cat-$i" --cluster "127.0.0.1:796$i" \
    --http "127.0.0.1:808$i" --seeds "$seeds" --secret-file "$dir/secret" &
done
for i in 1 2 3; do
  until curl -sf "http://127.0.0.1:808$i/audit" >/dev/null; do sleep 0.2; done
done
echo
echo '$ curl -si http://127.0.0.1:8081/products/sku-1     # instance 1: not cached yet'
curl -si http://127.0.0.1:8081/products/sku-1 | grep -iE '^(x-served-by|x-cache)|^\{'
echo
echo '$ curl -si http://127.0.0.1:8082/products/sku-1     # instance 2: filled by instance 1'
curl -si http://127.0.0.1:8082/products/sku-1 | grep -iE '^(x-served-by|x-cache)|^\{'
echo
echo '$ curl -s -X PUT http://127.0.0.1:8083/products/sku-1 -d {...}   # instance 3 updates it'
curl -s -X PUT -H 'content-type: application/json' \
  -d '{"sku":"sku-1","name":"Widget","cents":2499}' http://127.0.0.1:8083/products/sku-1
echo
echo
echo '$ curl -si http://127.0.0.1:8081/products/sku-1     # instance 1 sees the new price'
curl -si http://127.0.0.1:8081/products/sku-1 | grep -iE '^(x-served-by|x-cache)|^\{'
echo
sleep 0.5
echo '$ curl -s http://127.0.0.1:8082/audit               # every instance heard of the update'
curl -s http://127.0.0.1:8082/audit
echo
