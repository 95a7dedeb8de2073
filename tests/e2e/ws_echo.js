// WebSocket peers for the end-to-end test, using the `ws` package (a real third-party client).
//   node ws_echo.js server            -> echo server on 127.0.0.1:<random>, prints "PORT <n>"
//   node ws_echo.js client URL COUNT  -> sends COUNT messages of growing size, checks each echo
const WebSocket = require("ws");
const crypto = require("crypto");

const [mode, url, countText] = process.argv.slice(2);
if (mode === "server") {
  const wss = new WebSocket.Server({ host: "127.0.0.1", port: 0 });
  wss.on("listening", () => console.log(`PORT ${wss.address().port}`));
  wss.on("connection", (ws) => ws.on("message", (data, binary) => ws.send(data, { binary })));
} else {
  const count = Number(countText);
  const ws = new WebSocket(url);
  let sent = 0;
  let expected = null;
  const timer = setTimeout(() => { console.error("timed out"); process.exit(2); }, 30000);
  const sendNext = () => {
    expected = crypto.randomBytes(1 + sent * 997);  // up to ~100 KiB frames
    ws.send(expected);
    sent++;
  };
  ws.on("open", sendNext);
  ws.on("message", (data) => {
    if (!Buffer.from(data).equals(expected)) { console.error(`echo ${sent} differs`); process.exit(1); }
    if (sent === count) {
      ws.close(1000, "done");
    } else sendNext();
  });
  ws.on("close", (code) => {
    clearTimeout(timer);
    if (sent !== count || code !== 1000) { console.error(`closed early: ${sent} ${code}`); process.exit(1); }
    console.log(`OK ${count} echoes`);
    process.exit(0);
  });
  ws.on("error", (e) => { console.error(`error: ${e.message}`); process.exit(1); });
}
