package com.example.app;

import com.example.lib.Greeter;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;

/** The app module: 200 on / on $PORT with the library's greeting. */
public final class Main {
    private Main() {}

    public static void main(String[] args) throws IOException {
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8080"));
        String who;
        try (InputStream in = Main.class.getResourceAsStream("/who.txt")) {
            who = in == null ? "world" : new String(in.readAllBytes(), StandardCharsets.UTF_8).trim();
        }
        byte[] body = Greeter.greet(who).getBytes(StandardCharsets.UTF_8);
        HttpServer server = HttpServer.create(new InetSocketAddress(port), 0);
        server.createContext("/", exchange -> {
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.start();
    }
}
