// Runs at build time only: uses a dev dependency to generate dist/.
const fs = require("fs");
const leftPad = require("left-pad");

fs.mkdirSync("dist", { recursive: true });
const banner = leftPad("built by gcp-build", 24, "*");
fs.writeFileSync(
  "dist/server.js",
  `const http = require("http");
const ms = require("ms");
const port = process.env.PORT || 8080;
http.createServer((req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(${JSON.stringify(banner)} + " " + ms("1h") + "\\n");
}).listen(port);
`
);
console.log("wrote dist/server.js");
