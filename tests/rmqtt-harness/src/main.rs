//! One rmqtt node for the multi-node test: MQTT 3.1.1/5 on TCP, shared subscriptions,
//! the broadcast cluster plugin (gRPC between nodes), and auth/ACL through Tidings'
//! rmqtt hooks, with rmqtt's own ACL reduced to "deny all" so that nothing the hooks
//! do not allow gets through. Configured by environment variables, all required:
//!
//! RMQTT_NODE_ID      this node's id (1, 2, ...)
//! RMQTT_MQTT_ADDR    MQTT listener, e.g. 127.0.0.1:18841
//! RMQTT_GRPC_ADDR    this node's gRPC listener, e.g. 127.0.0.1:5364
//! RMQTT_PEERS        every node's gRPC address, e.g. 1@127.0.0.1:5364,2@127.0.0.1:5365
//! RMQTT_HOOKS        base URL of a Tidings hooks listener, e.g. http://127.0.0.1:9181
//!
//! Client connects and disconnects are posted to Tidings' `/v1/hooks/rmqtt/events`
//! by rmqtt's web-hook plugin: that is how presence works behind this broker.

use std::net::SocketAddr;

use rmqtt::context::ServerContext;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

fn addr(name: &str) -> Result<SocketAddr, String> {
    var(name)?.parse().map_err(|e| format!("{name}: {e}"))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("rmqtt harness: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let node_id: u64 = var("RMQTT_NODE_ID")?
        .parse()
        .map_err(|e| format!("RMQTT_NODE_ID: {e}"))?;
    let mqtt = addr("RMQTT_MQTT_ADDR")?;
    let grpc = addr("RMQTT_GRPC_ADDR")?;
    let peers: Vec<String> = var("RMQTT_PEERS")?
        .split(',')
        .map(|p| format!("\"{}\"", p.trim()))
        .collect();
    let hooks = var("RMQTT_HOOKS")?;

    let auth_http = format!(
        r#"
http_timeout = "5s"
deny_if_error = true
disconnect_if_pub_rejected = true

[http_auth_req]
url = "{hooks}/v1/hooks/rmqtt/auth"
method = "POST"
headers = {{ content-type = "application/x-www-form-urlencoded" }}
params = {{ clientid = "%c", username = "%u", password = "%P" }}

[http_acl_req]
url = "{hooks}/v1/hooks/rmqtt/acl"
method = "POST"
headers = {{ content-type = "application/x-www-form-urlencoded" }}
params = {{ access = "%A", username = "%u", clientid = "%c", topic = "%t" }}
"#
    );
    // Only the two events presence needs; the plugin's other events (every publish)
    // would cost a request each.
    let web_hook = format!(
        r#"
urls = ["{hooks}/v1/hooks/rmqtt/events"]
http_timeout = "5s"
retry_max_elapsed_time = "10s"
rule.client_connected = [{{action = "client_connected"}}]
rule.client_disconnected = [{{action = "client_disconnected"}}]
"#
    );
    let acl = r#"rules = [["deny", "all"]]"#;
    let cluster = format!("node_grpc_addrs = [{}]", peers.join(", "));

    let scx = ServerContext::new()
        .node_id(node_id)
        .plugins_config_map_add("rmqtt-auth-http", auth_http)
        .plugins_config_map_add("rmqtt-acl", acl)
        .plugins_config_map_add("rmqtt-web-hook", web_hook)
        .plugins_config_map_add("rmqtt-cluster-broadcast", cluster)
        // With the default `round_robin`, every command went to the same one of two
        // workers in this two-node cluster (observed, not explained); `random` spreads
        // them, which is what the test needs to kill a node that holds a share.
        .plugins_config_map_add("rmqtt-shared-subscription", r#"strategy = "random""#)
        .build()
        .await;
    scx.node.start_grpc_server(scx.clone(), grpc, true, false);

    rmqtt_plugins::acl::register_named(&scx, "rmqtt-acl", true, false)
        .await
        .map_err(|e| format!("rmqtt-acl: {e}"))?;
    rmqtt_plugins::auth_http::register_named(&scx, "rmqtt-auth-http", true, false)
        .await
        .map_err(|e| format!("rmqtt-auth-http: {e}"))?;
    rmqtt_plugins::web_hook::register_named(&scx, "rmqtt-web-hook", true, false)
        .await
        .map_err(|e| format!("rmqtt-web-hook: {e}"))?;
    rmqtt_plugins::shared_subscription::register_named(
        &scx,
        "rmqtt-shared-subscription",
        true,
        false,
    )
    .await
    .map_err(|e| format!("rmqtt-shared-subscription: {e}"))?;
    rmqtt_plugins::cluster_broadcast::register_named(&scx, "rmqtt-cluster-broadcast", true, false)
        .await
        .map_err(|e| format!("rmqtt-cluster-broadcast: {e}"))?;

    let listener = Builder::new()
        .name("tcp")
        .laddr(mqtt)
        .bind()
        .and_then(|l| l.tcp())
        .map_err(|e| format!("listening on {mqtt}: {e}"))?;
    println!("rmqtt node {node_id} listening on {mqtt}");
    MqttServer::new(scx)
        .listener(listener)
        .build()
        .run()
        .await
        .map_err(|e| format!("serving: {e}"))
}
