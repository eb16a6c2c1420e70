// An Eclipse Tahu (npm sparkplug-client) edge node for tests/integration/test_sparkplug.py.
// argv: serverUrl group node device seconds. Births on connect and on every
// Node Control/Rebirth NCMD (prints REBIRTH); DDATA alias-only every 100 ms.
const sparkplug = require("sparkplug-client");
const [url, group, node, device, seconds] = process.argv.slice(2);
const client = sparkplug.newClient({
  serverUrl: url, username: "", password: "", groupId: group, edgeNode: node,
  clientId: `tahu-${node}`, version: "spBv1.0",
});
let n = 0;
const devMetrics = () => [
  { name: "Ints/i8", alias: 1, type: "Int8", value: -5 },
  { name: "Ints/i16", alias: 2, type: "Int16", value: -300 },
  { name: "Ints/i32", alias: 3, type: "Int32", value: -70000 },
  { name: "temp", alias: 4, type: "Float", value: 21.5,
    properties: { engUnit: { type: "String", value: "celsius" } } },
];
function births() {
  client.publishNodeBirth({ timestamp: Date.now(), metrics: [
    { name: "Node Control/Rebirth", type: "Boolean", value: false },
  ] });
  client.publishDeviceBirth(device, { timestamp: Date.now(), metrics: devMetrics() });
}
client.on("birth", births);
client.on("ncmd", (payload) => {
  for (const m of payload.metrics) {
    if (m.name === "Node Control/Rebirth" && m.value) { console.log("REBIRTH"); births(); }
  }
});
const timer = setInterval(() => {
  if (!client.connected) return;
  n += 1;
  client.publishDeviceData(device, { timestamp: Date.now(), metrics: [
    { alias: 1, type: "Int8", value: -(n % 100) },
    { alias: 4, type: "Float", value: 20 + (n % 10) / 10 },
  ] });
}, 100);
setTimeout(() => { clearInterval(timer); client.stop(); process.exit(0); }, Number(seconds) * 1000);
