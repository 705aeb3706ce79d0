#!/bin/sh
# certbot --deploy-hook: copy the renewed certificate where the phala-router service user can
# read it (/etc/letsencrypt/live keys are root-only). The router watches the files and
# switches certificates for new connections by itself; nothing is restarted.
#   certbot renew --deploy-hook /etc/phala-router/deploy-hook.sh
set -eu
dest=${PHALA_ROUTER_TLS_DIR:-/etc/phala-router/tls}
group=${PHALA_ROUTER_GROUP:-phala-router}
install -d -m 0750 -g "$group" "$dest"
install -m 0644 "$RENEWED_LINEAGE/fullchain.pem" "$dest/fullchain.pem.new"
install -m 0640 -g "$group" "$RENEWED_LINEAGE/privkey.pem" "$dest/privkey.pem.new"
# Key first, then chain: the router reloads when either changes and refuses a mismatched pair
# (keeping the old one) until both are in place.
mv "$dest/privkey.pem.new" "$dest/privkey.pem"
mv "$dest/fullchain.pem.new" "$dest/fullchain.pem"
