// ftl's warm javac: a resident compiler in the build sandbox, so that a
// build where only Java sources changed compiles in a JIT-warm JVM instead
// of a cold Maven (see languages/java/src/warm.rs for when ftl uses it and
// how it proves that its output equals Maven's).
//
//   java FtlJavac.java SOCKET IDLE_SECONDS WARMUP_ARGS MAX_REQUEST_SECONDS
//
// At start it compiles WARMUP_ARGS (one javac argument per line) if the file
// exists, writing "<exit code>\n<javac output>" to WARMUP_ARGS.done: that
// is the proof compile of a new recipe; a few more rounds warm the JIT. Then it serves
// requests on the Unix socket SOCKET, one at a time: a line with the number
// of arguments, one argument per line; the answer is "<exit code>\n" and
// javac's output. It runs javac only (the recipes it gets have no annotation
// processors), never project code. It exits when IDLE_SECONDS pass without
// a request, or when SOCKET is removed (its cache directory was deleted);
// a request (reading it and compiling) that takes longer than
// MAX_REQUEST_SECONDS ends the process, so that nothing waits on a stuck
// compiler twice.
import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.Channels;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;

public final class FtlJavac {
    private static final long POLL_MILLIS = 2000;
    private static final int WARMUP_ROUNDS = 4;
    private static final long WARMUP_MILLIS = 1500;

    public static void main(String[] argv) throws Exception {
        if (argv.length != 4) {
            System.err.println("usage: java FtlJavac.java SOCKET IDLE_SECONDS WARMUP_ARGS MAX_REQUEST_SECONDS");
            System.exit(2);
        }
        Path socket = Paths.get(argv[0]);
        long idleMillis = Long.parseLong(argv[1]) * 1000L;
        Path warmup = Paths.get(argv[2]);
        long maxRequestMillis = Long.parseLong(argv[3]) * 1000L;
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        if (javac == null) {
            System.err.println("ftl-javac: this is a JRE: no system Java compiler");
            System.exit(2);
        }
        if (Files.isRegularFile(warmup)) {
            List<String> args = Files.readAllLines(warmup, StandardCharsets.UTF_8);
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            int code = compile(javac, args, out);
            Path done = warmup.resolveSibling(warmup.getFileName() + ".done");
            Path tmp = warmup.resolveSibling(warmup.getFileName() + ".done.tmp");
            Files.writeString(tmp, code + "\n" + out.toString(StandardCharsets.UTF_8));
            Files.move(tmp, done, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            // A few more rounds for the JIT: the first requests then take
            // the steady-state time (a third of the first round's).
            long until = System.currentTimeMillis() + WARMUP_MILLIS;
            for (int i = 0; code == 0 && i < WARMUP_ROUNDS && System.currentTimeMillis() < until; i++) {
                compile(javac, args, new ByteArrayOutputStream());
            }
        }
        Files.deleteIfExists(socket);
        try (ServerSocketChannel server = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
                Selector selector = Selector.open()) {
            server.bind(UnixDomainSocketAddress.of(socket));
            server.configureBlocking(false);
            server.register(selector, SelectionKey.OP_ACCEPT);
            System.err.println("ftl-javac: serving on " + socket);
            long last = System.currentTimeMillis();
            while (true) {
                selector.select(Math.max(1, Math.min(idleMillis, POLL_MILLIS)));
                selector.selectedKeys().clear();
                SocketChannel client = server.accept();
                if (client != null) {
                    Thread watchdog = watchdog(maxRequestMillis);
                    serve(javac, client);
                    watchdog.interrupt();
                    last = System.currentTimeMillis();
                    continue;
                }
                if (!Files.exists(socket)) {
                    System.err.println("ftl-javac: the socket was removed: exiting");
                    return;
                }
                if (System.currentTimeMillis() - last >= idleMillis) {
                    System.err.println("ftl-javac: idle: exiting");
                    Files.deleteIfExists(socket);
                    return;
                }
            }
        }
    }

    /** A thread that ends the process unless interrupted within `millis`. */
    private static Thread watchdog(long millis) {
        Thread t = new Thread(() -> {
            try {
                Thread.sleep(millis);
            } catch (InterruptedException e) {
                return;
            }
            System.err.println("ftl-javac: a request took longer than " + millis / 1000 + " s: exiting");
            Runtime.getRuntime().halt(4);
        });
        t.setDaemon(true);
        t.start();
        return t;
    }

    private static void serve(JavaCompiler javac, SocketChannel client) {
        try (client) {
            client.configureBlocking(true);
            BufferedReader in = new BufferedReader(
                    new InputStreamReader(Channels.newInputStream(client), StandardCharsets.UTF_8));
            String count = in.readLine();
            if (count == null) {
                return;
            }
            int n = Integer.parseInt(count.trim());
            List<String> args = new ArrayList<>(n);
            for (int i = 0; i < n; i++) {
                String arg = in.readLine();
                if (arg == null) {
                    return;
                }
                args.add(arg);
            }
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            int code = compile(javac, args, out);
            OutputStream reply = Channels.newOutputStream(client);
            reply.write((code + "\n").getBytes(StandardCharsets.UTF_8));
            out.writeTo(reply);
            reply.flush();
        } catch (Exception e) {
            System.err.println("ftl-javac: request failed: " + e);
        }
    }

    private static int compile(JavaCompiler javac, List<String> args, ByteArrayOutputStream out) {
        long t0 = System.nanoTime();
        int code;
        try {
            code = javac.run(null, out, out, args.toArray(new String[0]));
        } catch (Throwable t) {
            out.writeBytes(("ftl-javac: javac threw " + t + "\n").getBytes(StandardCharsets.UTF_8));
            code = 3;
        }
        long files = args.stream().filter(a -> a.endsWith(".java")).count();
        System.err.printf("ftl-javac: compiled %d files: exit %d in %d ms%n",
                files, code, (System.nanoTime() - t0) / 1_000_000);
        return code;
    }
}
