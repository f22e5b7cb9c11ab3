console.log("never built")
