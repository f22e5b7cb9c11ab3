package com.example.lib;

import org.apache.commons.lang3.StringUtils;

/** The library module: the greeting. */
public final class Greeter {
    private Greeter() {}

    public static String greet(String who) {
        return "Hello, " + StringUtils.capitalize(who) + "\n";
    }
}
