require("ftl-no-such-package-7c1e9a");
