#!/usr/bin/env bash
# A Tidings device in a shell: mosquitto-clients and a device credential, no HTTP.
#
#   TIDINGS_USER=<user id> TIDINGS_SECRET=tdk_... CONV=<conversation id> \
#       examples/device.sh "21.5 C"
#
# Prints the catch-up page (everything after $SINCE, default 0), sends the message, and
# prints what arrives on the inbox for $WAIT seconds (default 5). The message is put in
# JSON as is: keep it free of double quotes and backslashes.
set -euo pipefail
: "${TIDINGS_USER:?set TIDINGS_USER to the user id}"
: "${TIDINGS_SECRET:?set TIDINGS_SECRET to the device credential}"
: "${CONV:?set CONV to a conversation id}"
HOST=${TIDINGS_MQTT_HOST:-127.0.0.1}
PORT=${TIDINGS_MQTT_PORT:-1883}
SINCE=${SINCE:-0}
WAIT=${WAIT:-5}
AUTH=(-h "$HOST" -p "$PORT" -u "$TIDINGS_USER" -P "$TIDINGS_SECRET")
IN="u/$TIDINGS_USER/in"
OUT="u/$TIDINGS_USER/out"

# 1. Catch up. The answer to `sync` goes to the connection that asked, on its inbox:
#    mosquitto_rr publishes the request and prints the first message on the inbox.
mosquitto_rr "${AUTH[@]}" -i "$TIDINGS_USER:sh-sync" -t "$OUT" -e "$IN" -W "$WAIT" \
    -m "{\"op\":\"sync\",\"id\":\"sync-$$\",\"since\":$SINCE}"

# 2. Listen in the background (mosquitto_sub exits non-zero when -W runs out).
{ mosquitto_sub "${AUTH[@]}" -i "$TIDINGS_USER:sh-listen" -t "$IN" -W "$WAIT" || true; } &
LISTENER=$!
sleep 1

# 3. Send. With -q 1, mosquitto_pub returns once the PUBACK says "stored".
mosquitto_pub "${AUTH[@]}" -i "$TIDINGS_USER:sh-send" -q 1 -t "$OUT" \
    -m "{\"op\":\"send\",\"id\":\"sh-$$-$(date +%s)\",\"conv\":\"$CONV\",\"body\":\"${1:-hello from the shell}\"}"
wait "$LISTENER"
