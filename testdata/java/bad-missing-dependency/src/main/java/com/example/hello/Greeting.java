package com.example.hello;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import org.apache.commons.lang3.StringUtils;

/** The greeting: a resource, capitalized with commons-lang3. */
final class Greeting {
    private Greeting() {}

    static String text() {
        try (InputStream in = Greeting.class.getResourceAsStream("/greeting.txt")) {
            String raw = in == null ? "hello" : new String(in.readAllBytes(), StandardCharsets.UTF_8);
            return StringUtils.capitalize(raw.trim()) + " from ftl\n";
        } catch (IOException e) {
            return "hello\n";
        }
    }
}
