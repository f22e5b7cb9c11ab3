const express = require("express");
const { message } = require("./lib/message");

const app = express();
app.get("/", (req, res) => res.send(message() + "\n"));
const port = process.env.PORT || 8080;
app.listen(port, () => console.log(`listening on ${port} (NODE_ENV=${process.env.NODE_ENV})`));
