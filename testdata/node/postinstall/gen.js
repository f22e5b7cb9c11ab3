// The postinstall script: runs after the dependencies are installed (it
// uses one) and writes a module the server requires.
const fs = require("fs");
const ms = require("ms");
const pkg = require("./package.json");

fs.mkdirSync("generated", { recursive: true });
fs.writeFileSync(
  "generated/version.js",
  `module.exports = ${JSON.stringify({ version: pkg.version, ttl: ms("1h") })};\n`
);
console.log("wrote generated/version.js");
