// Connects once with MQTT.js and prints the CONNACK result as JSON:
// {"rc": 0} on success, {"rc": <return or reason code>, "message": ...} on refusal,
// {"rc": null} when nothing arrived within 8 s.
// Usage: node connack_mqttjs.js URL CLIENT_ID USERNAME PASSWORD {4|5}
const mqtt = require('mqtt');

const [url, clientId, username, password, version] = process.argv.slice(2);
let done = false;
const finish = (result) => {
  if (done) return;
  done = true;
  console.log(JSON.stringify(result));
  process.exit(0);
};
const client = mqtt.connect(url, {
  clientId,
  username,
  password,
  protocolVersion: Number(version),
  reconnectPeriod: 0,
  connectTimeout: 5000,
});
client.on('connect', () => {
  client.end(false, {}, () => finish({ rc: 0 }));
});
client.on('error', (e) => finish({ rc: e.code === undefined ? null : e.code, message: e.message }));
setTimeout(() => finish({ rc: null }), 8000);
