"""The SDK scenario through the generated Python bindings (uniffi, ctypes).

Driven by bindings/tests/sdk_python.rs, which starts the server, generates the bindings
into TIDINGS_BINDINGS_DIR and restarts the server when this script prints RESTART
(answering OK on stdin). Prints a JSON result as its last line and ends with os._exit:
uniffi callbacks run on the SDK's tokio threads, which abort the interpreter at exit.
"""
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.environ["TIDINGS_BINDINGS_DIR"])
import tidings_core as t  # noqa: E402

# TLS only: the test harness's proxy, whose throwaway CA is pinned.
HTTP = os.environ["TIDINGS_HTTP"]
BROKER = os.environ["TIDINGS_BROKER"]
CA_PEM = os.environ["TIDINGS_CA_PEM"]


def config(path, device):
    return t.ClientConfig(http_url=HTTP, broker_url=BROKER, data_path=path, device_id=device,
                          keep_alive_secs=30, pinned_ca_pem=CA_PEM)


class Recorder(t.TidingsListener):
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def on_event(self, event):
        with self.lock:
            self.events.append(event)
        if isinstance(event, t.ClientEvent.TYPING):
            raise RuntimeError("a listener that throws must not stop later events")

    def snapshot(self):
        with self.lock:
            return list(self.events)

    async def wait_for(self, what, pred, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for e in self.snapshot():
                v = pred(e)
                if v:
                    return v
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.snapshot()!r}")

    async def connected(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            states = [e.state for e in self.snapshot() if isinstance(e, t.ClientEvent.CONNECTION_STATE)]
            if states and states[-1] == t.ConnectionState.CONNECTED:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"never connected: {self.snapshot()!r}")

    def messages(self, body):
        return [e.message for e in self.snapshot()
                if isinstance(e, t.ClientEvent.MESSAGE) and e.message.body == body]

    async def message(self, body):
        return await self.wait_for(f"message {body!r}", lambda e: e.message if (
            isinstance(e, t.ClientEvent.MESSAGE) and e.message.body == body) else None)


class DictKeystore(t.SecretStore):
    """The app's keystore (Keychain / Android Keystore on a device), here a dict."""

    def __init__(self, locked=False):
        self.items = {}
        self.locked = locked

    def get(self, key):
        return self.items.get(key)

    def set(self, key, value):
        if self.locked:
            raise t.SdkError.Keystore(detail="the keystore is locked")
        self.items[key] = value

    def delete(self, key):
        self.items.pop(key, None)


def file_bytes(path):
    out = b""
    for name in os.listdir(path):
        with open(os.path.join(path, name), "rb") as f:
            out += f.read()
    return out


async def keystore_checks(result):
    """Tokens only in the foreign keystore, never in the data path; a keystore that
    throws is a typed error; wipe() leaves nothing behind."""
    dc = tempfile.mkdtemp()
    store = DictKeystore()
    carol = t.TidingsClient.with_secret_store(config(dc, "carol-py"), store)
    await carol.register("carol", "carol-password")
    await carol.create_conversation("group", "carol notes", [])
    tokens = json.loads(store.items["tidings.session"])
    on_disk = file_bytes(dc)
    assert b"carol notes" in on_disk, "positive control: the cache is on disk"
    for tok in (tokens["access_token"], tokens["refresh_token"]):
        assert tok and tok.encode() not in on_disk, "a token is in the data path"
    assert "tidings-secrets.json" not in os.listdir(dc)
    carol.shutdown()
    again = t.TidingsClient.with_secret_store(config(dc, "carol-py"), store)
    assert (await again.session()).username == "carol"
    await again.wipe()
    assert os.listdir(dc) == [], os.listdir(dc)
    assert store.items == {}, store.items
    locked = t.TidingsClient.with_secret_store(config(tempfile.mkdtemp(), "dan-py"),
                                               DictKeystore(locked=True))
    try:
        await locked.register("dan", "dan-password")
        raise AssertionError("a locked keystore was ignored")
    except t.SdkError.Keystore as e:
        result["keystore_error"] = str(e)
    locked.shutdown()


def new_client(path, device):
    c = t.TidingsClient(config(path, device))
    rec = Recorder()
    c.set_listener(rec)
    return c, rec


async def scenario():
    result = {}
    da, db, dk = tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp()
    alice, ra = new_client(da, "alice-py")
    bob, rb = new_client(db, "bob-py")
    sa = await alice.register("alice", "alice-password")
    sb = await bob.register("bob", "bob-password")
    await alice.connect()
    await bob.connect()
    await ra.connected()
    await rb.connected()

    conv = await alice.create_conversation("direct", None, [sb.user_id])
    await rb.wait_for("conversation", lambda e: isinstance(e, t.ClientEvent.CONVERSATION)
                      and e.conversation.id == conv.id)
    await alice.send_text(conv.id, "hello from python", None, [sb.user_id])
    got = await rb.message("hello from python")
    assert got.sender == sa.user_id and got.mentions == [sb.user_id], got
    await bob.mark_read(conv.id, got.seq)
    receipt = await ra.wait_for("receipt", lambda e: e.receipt if (
        isinstance(e, t.ClientEvent.RECEIPT) and e.receipt.user_id == sb.user_id) else None)
    assert receipt.kind == t.ReceiptKind.READ and receipt.seq == got.seq

    await bob.send_text(conv.id, "hi back", got.id, [])
    reply = await ra.message("hi back")
    assert reply.reply_to == got.id

    deadline = time.time() + 20
    while True:
        await bob.set_typing(conv.id, True)
        await asyncio.sleep(0.3)
        if any(isinstance(e, t.ClientEvent.TYPING) and e.user_id == sb.user_id and e.typing
               for e in ra.snapshot()):
            break
        assert time.time() < deadline, "alice never saw bob typing"

    # Typed errors cross the boundary.
    try:
        await alice.send_text("not-an-id", "x", None, [])
        raise AssertionError("invalid conversation id accepted")
    except t.SdkError.InvalidArgument as e:
        result["typed_error"] = str(e)

    history = (await alice.history(conv.id, None, 50)).messages
    assert [m.body for m in history] == ["hello from python", "hi back"], history

    # Offline: bob queues two messages while disconnected; the server restarts.
    bob.disconnect()
    q1 = await bob.send_text(conv.id, "queued one", None, [])
    q2 = await bob.send_text(conv.id, "queued two", None, [])
    assert bob.pending() == [q1, q2]
    print("RESTART", flush=True)
    assert sys.stdin.readline().strip() == "OK"
    await bob.connect()
    await ra.message("queued one")
    await ra.message("queued two")
    deadline = time.time() + 30
    while bob.pending():
        assert time.time() < deadline, "outbox never drained"
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    assert len(ra.messages("queued one")) == 1 and len(ra.messages("queued two")) == 1

    # A process killed (SIGKILL) with two messages in its outbox: the next process on
    # the same data path delivers them once.
    await bob.connect()  # no-op when already running
    bob.shutdown()
    child = subprocess.run([sys.executable, __file__, "queue-and-die", db, conv.id],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -9, (child.returncode, child.stdout, child.stderr)
    bob2, rb2 = new_client(db, "bob-py")
    assert (await bob2.session()).user_id == sb.user_id
    assert len(bob2.pending()) == 2, bob2.pending()
    await bob2.connect()
    await ra.message("after kill 1")
    await ra.message("after kill 2")
    deadline = time.time() + 30
    while bob2.pending():
        assert time.time() < deadline, "outbox never drained after kill"
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    assert len(ra.messages("after kill 1")) == 1 and len(ra.messages("after kill 2")) == 1
    history = (await alice.history(conv.id, None, 50)).messages
    bodies = [m.body for m in history]
    for b in ["queued one", "queued two", "after kill 1", "after kill 2"]:
        assert bodies.count(b) == 1, bodies
    result["bodies"] = bodies
    await keystore_checks(result)
    alice.shutdown()
    bob2.shutdown()
    result["ok"] = True
    return result


def queue_and_die(path, conv):
    async def go():
        c = t.TidingsClient(config(path, "bob-py"))
        await c.send_text(conv, "after kill 1", None, [])
        await c.send_text(conv, "after kill 2", None, [])
        os.kill(os.getpid(), 9)
    asyncio.run(go())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "queue-and-die":
        queue_and_die(sys.argv[2], sys.argv[3])
    code = 1
    try:
        out = asyncio.run(scenario())
        print(json.dumps(out), flush=True)
        code = 0
    except BaseException as e:  # report everything, then exit hard
        traceback.print_exc()
        print(json.dumps({"ok": False, "error": repr(e)}), flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
