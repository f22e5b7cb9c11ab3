const http = require("http");
const { Epoll } = require("epoll");

const port = process.env.PORT || 8080;
http
  .createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`native module loaded: ${typeof Epoll === "function"}\n`);
  })
  .listen(port, () => console.log(`listening on ${port}`));
