// The SDK scenario through the generated Kotlin bindings (uniffi + JNA + coroutines).
// Driven by bindings/tests/sdk_kotlin.rs, which starts the server, compiles this file
// with the generated io.tidings.sdk sources, and restarts the server when this prints
// RESTART (answering OK on stdin). The last stdout line is a JSON result.

import io.tidings.sdk.*
import java.nio.file.Files
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking

class Recorder : TidingsListener {
    private val events = mutableListOf<ClientEvent>()

    override fun onEvent(event: ClientEvent) {
        synchronized(events) { events.add(event) }
    }

    fun snapshot(): List<ClientEvent> = synchronized(events) { events.toList() }

    suspend fun <T> waitFor(what: String, pred: (ClientEvent) -> T?): T {
        val deadline = System.currentTimeMillis() + 30_000
        while (System.currentTimeMillis() < deadline) {
            for (e in snapshot()) {
                val v = pred(e)
                if (v != null) return v
            }
            delay(50)
        }
        throw AssertionError("timed out waiting for $what: ${snapshot()}")
    }

    suspend fun connected() {
        val deadline = System.currentTimeMillis() + 30_000
        while (System.currentTimeMillis() < deadline) {
            val last = snapshot().filterIsInstance<ClientEvent.ConnectionState>().lastOrNull()
            if (last?.state == ConnectionState.CONNECTED) return
            delay(50)
        }
        throw AssertionError("never connected: ${snapshot()}")
    }

    fun messages(body: String): List<Message> =
        snapshot().filterIsInstance<ClientEvent.Message>().map { it.message }.filter { it.body == body }

    suspend fun message(body: String): Message =
        waitFor("message '$body'") { e -> (e as? ClientEvent.Message)?.message?.takeIf { it.body == body } }
}

fun check(cond: Boolean, msg: () -> String) {
    if (!cond) throw AssertionError(msg())
}

fun newClient(device: String): Pair<TidingsClient, Recorder> {
    val dir = Files.createTempDirectory("tidings-kt").toString()
    val cfg = ClientConfig(
        // TLS only: the test harness's proxy, whose throwaway CA is pinned.
        httpUrl = System.getenv("TIDINGS_HTTP"),
        brokerUrl = System.getenv("TIDINGS_BROKER"),
        dataPath = dir,
        deviceId = device,
        keepAliveSecs = 30u,
        pinnedCaPem = System.getenv("TIDINGS_CA_PEM"),
    )
    val c = TidingsClient(cfg)
    val rec = Recorder()
    c.setListener(rec)
    return Pair(c, rec)
}

suspend fun scenario(): String {
    val (alice, ra) = newClient("alice-kt")
    val (bob, rb) = newClient("bob-kt")
    val sa = alice.register("alice", "alice-password")
    val sb = bob.register("bob", "bob-password")
    alice.connect()
    bob.connect()
    ra.connected()
    rb.connected()

    val conv = alice.createConversation("direct", null, listOf(sb.userId))
    rb.waitFor("conversation") { e -> (e as? ClientEvent.Conversation)?.takeIf { it.conversation.id == conv.id } }
    alice.sendText(conv.id, "hello from kotlin", null, listOf(sb.userId))
    val got = rb.message("hello from kotlin")
    check(got.sender == sa.userId && got.mentions == listOf(sb.userId)) { "bad message $got" }

    bob.markRead(conv.id, got.seq)
    val receipt = ra.waitFor("receipt") { e ->
        (e as? ClientEvent.Receipt)?.receipt?.takeIf { it.userId == sb.userId }
    }
    check(receipt.kind == ReceiptKind.READ && receipt.seq == got.seq) { "bad receipt $receipt" }

    bob.sendText(conv.id, "hi back", got.id, listOf())
    val reply = ra.message("hi back")
    check(reply.replyTo == got.id) { "bad reply $reply" }

    val deadline = System.currentTimeMillis() + 20_000
    while (true) {
        bob.setTyping(conv.id, true)
        delay(300)
        val seen = ra.snapshot().any { it is ClientEvent.Typing && it.userId == sb.userId && it.typing }
        if (seen) break
        check(System.currentTimeMillis() < deadline) { "alice never saw bob typing" }
    }

    var typedError = ""
    try {
        alice.sendText("not-an-id", "x", null, listOf())
        throw AssertionError("invalid conversation id accepted")
    } catch (e: SdkException.InvalidArgument) {
        typedError = e.code
    }

    // Offline: bob queues two messages; the server restarts; bob reconnects.
    bob.disconnect()
    val q1 = bob.sendText(conv.id, "queued one", null, listOf())
    val q2 = bob.sendText(conv.id, "queued two", null, listOf())
    check(bob.pending() == listOf(q1, q2)) { "pending ${bob.pending()}" }
    println("RESTART")
    System.out.flush()
    check(readlnOrNull()?.trim() == "OK") { "no restart confirmation" }
    bob.connect()
    ra.message("queued one")
    ra.message("queued two")
    val drainBy = System.currentTimeMillis() + 30_000
    while (bob.pending().isNotEmpty()) {
        check(System.currentTimeMillis() < drainBy) { "outbox never drained" }
        delay(100)
    }
    delay(2000)
    check(ra.messages("queued one").size == 1 && ra.messages("queued two").size == 1) { "duplicates: ${ra.snapshot()}" }
    val bodies = alice.history(conv.id, null, 50u).messages.map { it.body }
    check(bodies.count { it == "queued one" } == 1 && bodies.count { it == "queued two" } == 1) { "history $bodies" }
    alice.shutdown()
    bob.shutdown()
    return "{\"ok\":true,\"typed_error\":\"$typedError\",\"messages\":${bodies.size}}"
}

fun main() {
    var code = 1
    try {
        val out = runBlocking { scenario() }
        println(out)
        code = 0
    } catch (e: Throwable) {
        e.printStackTrace()
        println("{\"ok\":false}")
    }
    System.out.flush()
    Runtime.getRuntime().halt(code)
}
