const http = require("http");
// Written by the postinstall script (gen.js); not in the source.
const info = require("./generated/version.js");
const port = process.env.PORT || 8080;
http
  .createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`version ${info.version}, ttl ${info.ttl}\n`);
  })
  .listen(port);
