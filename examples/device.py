#!/usr/bin/env python3
"""A Tidings device with nothing but MQTT (paho-mqtt) and a device credential.

It never logs in or refreshes: the credential's secret is its MQTT password for as long
as the credential lives. It sends a message, prints what it receives, and remembers the
last inbox sequence number (iseq) in a state file, so after being offline it catches up
over MQTT with the `sync` command.

    pip install 'paho-mqtt>=2'
    TIDINGS_USER=<user id> TIDINGS_SECRET=tdk_... python3 examples/device.py \
        --conv <conversation id> --send "21.5 C" --seconds 10

Output, one line per event: `message <conversation> <sender> <body>`.
"""
import argparse
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default=os.environ.get("TIDINGS_MQTT_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("TIDINGS_MQTT_PORT", "1883")))
    ap.add_argument("--user", default=os.environ.get("TIDINGS_USER"))
    ap.add_argument("--secret", default=os.environ.get("TIDINGS_SECRET"))
    ap.add_argument("--device", default="py-device", help="the device part of the client id")
    ap.add_argument("--conv", help="conversation to send into")
    ap.add_argument("--send", help="a message to send once connected")
    ap.add_argument("--seconds", type=float, default=10, help="how long to stay connected")
    ap.add_argument("--state", default="device-state.json", help="where the last iseq is kept")
    args = ap.parse_args()
    if not args.user or not args.secret:
        sys.exit("set TIDINGS_USER and TIDINGS_SECRET (or --user/--secret)")

    inbox, outbox = f"u/{args.user}/in", f"u/{args.user}/out"
    state = {"iseq": 0}
    if os.path.exists(args.state):
        with open(args.state) as f:
            state = json.load(f)
    caught_up = threading.Event()
    counter = iter(range(1, 1 << 62))

    def command(client, op, **fields):
        cmd_id = f"{args.device}-{int(time.time() * 1000)}-{next(counter)}"
        client.publish(outbox, json.dumps({"op": op, "id": cmd_id, **fields}), qos=1)
        return cmd_id

    def handle(client, event):
        kind = event.get("type")
        if kind == "message":
            print("message", event["conv"], event["sender"], event["body"], flush=True)
        elif kind == "sync":  # a page of what we missed, oldest first
            for missed in event["events"]:
                handle(client, missed)
            if event["has_more"]:
                command(client, "sync", since=event["next"])
            else:
                caught_up.set()
        elif kind == "error":
            print("error", event.get("re"), event["code"], event["message"], flush=True)
        # Durable events carry iseq: remember the newest, for the next catch-up.
        if "iseq" in event and event["iseq"] > state["iseq"]:
            state["iseq"] = event["iseq"]

    def on_connect(client, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            print("refused", reason_code, flush=True)
            client.disconnect()
            return
        client.subscribe(inbox, qos=1)

    def on_subscribe(client, _userdata, _mid, _codes, _properties):
        # Subscribed first, so nothing sent after the sync page can fall in a gap.
        command(client, "sync", since=state["iseq"])

    def on_message(client, _userdata, msg):
        try:
            handle(client, json.loads(msg.payload))
        except (ValueError, KeyError) as e:
            print("unreadable event:", e, file=sys.stderr)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{args.user}:{args.device}")
    client.username_pw_set(args.user, args.secret)
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    try:
        if not caught_up.wait(timeout=min(args.seconds, 10)):
            print("no sync answer", file=sys.stderr)
        if args.send and args.conv:
            command(client, "send", conv=args.conv, body=args.send)
        time.sleep(args.seconds)
    finally:
        client.disconnect()
        client.loop_stop()
        with open(args.state, "w") as f:
            json.dump(state, f)


if __name__ == "__main__":
    main()
