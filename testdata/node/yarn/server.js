const http = require("http");
const ms = require("ms");

const port = process.env.PORT || 8080;
http
  .createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`installed by yarn: ${ms("2h")}\n`);
  })
  .listen(port);
