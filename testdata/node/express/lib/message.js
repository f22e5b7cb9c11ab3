exports.message = () => "Hello from Express on ftl";
