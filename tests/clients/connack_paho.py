"""Connects once with paho-mqtt (MQTT 3.1.1 or 5) and prints the CONNACK result as JSON.

Usage: connack_paho.py HOST PORT CLIENT_ID USERNAME PASSWORD {311|5}
Prints {"rc": <reason code value>, "name": "<paho's name for it>"}, or {"rc": null}
when no CONNACK arrived within 10 seconds. paho reports a 3.1.1 refusal as the
equivalent MQTT 5 reason code (4 -> 134, 5 -> 135), so "v3_rc" keeps the raw value.
"""
import json
import sys
import time

import paho.mqtt.client as mqtt

host, port, client_id, username, password, version = sys.argv[1:7]
proto = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
result = {}


def on_connect(client, userdata, flags, reason_code, properties):
    result["rc"] = reason_code.value
    result["name"] = reason_code.getName()
    client.disconnect()


def on_connect_fail(client, userdata):
    result.setdefault("rc", None)


client = mqtt.Client(
    callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
    client_id=client_id,
    protocol=proto,
)
client.username_pw_set(username, password)
client.on_connect = on_connect
client.on_connect_fail = on_connect_fail
client.connect(host, int(port), keepalive=30)
deadline = time.time() + 10
while "rc" not in result and time.time() < deadline:
    client.loop(timeout=0.2)
print(json.dumps({"rc": result.get("rc"), "name": result.get("name")}))
