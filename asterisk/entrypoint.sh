#!/bin/sh
# Render the configuration from the environment, then run Asterisk in the foreground.
# Credentials have no defaults: the container refuses to start without them.
set -eu
: "${HUB_ARI_USER:?set HUB_ARI_USER}" "${HUB_ARI_PASSWORD:?set HUB_ARI_PASSWORD}"
: "${HUB_AMI_USER:?set HUB_AMI_USER}" "${HUB_AMI_PASSWORD:?set HUB_AMI_PASSWORD}"
: "${HUB_TRUNK_CONTACT:?set HUB_TRUNK_CONTACT (host:port of your SIP provider)}"
export HUB_ASTERISK_HTTP_BIND="${HUB_ASTERISK_HTTP_BIND:-0.0.0.0}"
export HUB_ASTERISK_AMI_BIND="${HUB_ASTERISK_AMI_BIND:-0.0.0.0}"
export HUB_SIP_BIND="${HUB_SIP_BIND:-0.0.0.0:5060}"
export HUB_ASTERISK_HTTP_PORT="${HUB_ASTERISK_HTTP_PORT:-8088}" HUB_AMI_PORT="${HUB_AMI_PORT:-5038}"
export HUB_RTP_START="${HUB_RTP_START:-10000}" HUB_RTP_END="${HUB_RTP_END:-20000}"
export HUB_AGI_ADDR="${HUB_AGI_ADDR:-127.0.0.1:4573}"  # `hub voice`'s FastAGI server
export HUB_TRUNK_MATCH="${HUB_TRUNK_MATCH:-${HUB_TRUNK_CONTACT%%:*}}"
# Where the voice controller serves FastAGI (inside `hub voice`), for dialplan callbacks.
export HUB_AGI_ADDR="${HUB_AGI_ADDR:-127.0.0.1:4573}"
for f in /usr/share/connect-hub/asterisk/*.conf; do
    perl -pe 's/\$\{(HUB_\w+)\}/exists $ENV{$1} ? $ENV{$1} : die "unset $1\n"/ge' "$f" \
        > "/etc/asterisk/$(basename "$f")"
done
exec asterisk -f -U asterisk -G asterisk
