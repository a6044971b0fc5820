"""Two people chat through Tidings using only paho-mqtt (a client we did not write).

Bob is on MQTT over TCP, Alice on MQTT over WebSocket. Each publishes a JSON `send`
command to their outbox and must see their ack and the other's message in their inbox.
Driven by tests/third_party.rs; settings arrive as JSON on stdin. Prints one JSON line
with what happened and exits 0 only if everything arrived.
"""
import json
import os
import sys
import threading

import paho.mqtt.client as mqtt

cfg = json.load(sys.stdin)
TIMEOUT = 15


class Person:
    def __init__(self, name, who, transport, port):
        self.name = name
        self.id = who["id"]
        self.inbox = f"u/{self.id}/in"
        self.events = []
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{self.id}:paho-{transport}",
            transport=transport,
        )
        self.client.username_pw_set(self.id, who["token"])
        self.client.on_connect = self.on_connect
        self.client.on_message = self.on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.client.connect(cfg["host"], port, keepalive=30)
        self.client.loop_start()

    def on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(self.inbox, qos=1)

    def on_message(self, client, userdata, msg):
        with self.cond:
            self.events.append(json.loads(msg.payload))
            self.cond.notify_all()

    def send(self, command_id, conv, body):
        cmd = {"op": "send", "id": command_id, "conv": conv, "body": body}
        self.client.publish(f"u/{self.id}/out", json.dumps(cmd), qos=1).wait_for_publish(TIMEOUT)

    def wait_for(self, pred):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(pred(e) for e in self.events), TIMEOUT)
            return next((e for e in self.events if pred(e)), None) if ok else None


result = {"ok": False}
try:
    bob = Person("bob", cfg["bob"], "tcp", cfg["mqtt_port"])
    alice = Person("alice", cfg["alice"], "websockets", cfg["ws_port"])
    if not (bob.subscribed.wait(TIMEOUT) and alice.subscribed.wait(TIMEOUT)):
        raise RuntimeError("subscriptions were not acknowledged")
    conv = cfg["conv"]
    alice.send("paho-a1", conv, "hello from paho over websocket")
    result["alice_ack"] = alice.wait_for(lambda e: e.get("type") == "ack" and e.get("re") == "paho-a1")
    result["bob_got"] = bob.wait_for(lambda e: e.get("type") == "message" and e.get("client_msg_id") == "paho-a1")
    bob.send("paho-b1", conv, "hello back over tcp")
    result["bob_ack"] = bob.wait_for(lambda e: e.get("type") == "ack" and e.get("re") == "paho-b1")
    result["alice_got"] = alice.wait_for(lambda e: e.get("type") == "message" and e.get("client_msg_id") == "paho-b1")
    result["ok"] = all(result.get(k) for k in ("alice_ack", "bob_got", "bob_ack", "alice_got"))
except Exception as e:  # reported to the Rust test, which fails with it
    result["error"] = repr(e)

print(json.dumps(result), flush=True)
# paho's network threads are daemons, but exit hard so nothing lingers.
os._exit(0 if result["ok"] else 1)
