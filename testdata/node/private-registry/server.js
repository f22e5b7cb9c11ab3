const http = require("http");
const hello = require("@ftlt/hello");

const port = process.env.PORT || 8080;
http
  .createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(hello + "\n");
  })
  .listen(port);
