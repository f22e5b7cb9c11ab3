//! The warm compiler: when only Java sources changed since a Maven run,
//! compile them with javac in a resident, JIT-warm JVM in the sandbox
//! instead of a cold Maven, with exactly the options Maven used.
//!
//! Maven's part of a classes-only rebuild is a second of JVM start-up and
//! plugin loading around 50 ms of javac; this removes the second. It is used
//! only where it provably changes nothing:
//!
//! 1. **Recording.** Every Maven run that may feed it logs the compiler
//!    plugin at debug level. The *recipe* is javac's command line from that
//!    log, kept when:
//!    - the log shows the build up to `process-classes` ran nothing but the
//!      resources and compiler plugins (and the dependency plugin's copy);
//!      a quiet log, which shows none, does not qualify;
//!    - no annotation processor can run: `-proc:none`, or no processor
//!      service (nor manifest `Class-Path`) on the class or module path, and
//!      no processor option in either spelling (`--opt value`, `--opt=value`);
//!    - the project is one module with no reactor, names no snapshot or
//!      version range, runs no `java.maven_goal`, and its poms configure no
//!      compiler fork, executable, toolchain, includes or excludes; there is
//!      no `.mvn/jvm.config` (Maven's JVM settings reach its javac); the JDK
//!      is 16 or later (Unix sockets);
//!    - Maven compiled every `.java` file of the source roots and nothing
//!      generated.
//!
//!    Anything else: Maven, always. A rejected recipe is remembered: the
//!    same configuration is not tried again.
//! 2. **Proof.** The resident compiler compiles the very sources Maven
//!    compiled with the recipe; the recipe is used only if every file it
//!    writes equals Maven's byte for byte (`recipe.json` says `proven` or
//!    `rejected`, with the first difference).
//! 3. **Use.** A build whose only missed layer is the classes layer, where
//!    every project file but the sources is as recorded (the recipe's key
//!    covers poms, settings, toolchain and resources; `module-info.java`
//!    counts as configuration), sends the current sources to the compiler.
//!    Only regular files are copied to it: a symbolic link could name a host
//!    file that Maven, in the sandbox, would not read. Any failure (a
//!    compile error, a compiler that is not running, a busy recipe, a link)
//!    falls back to Maven, whose error messages the user gets.
//!
//! The compiler runs javac only, never project code; it is keyed by
//! everything its output depends on but the sources, mounts the local Maven
//! repository read-only, and exits after `java.warm_idle` seconds without a
//! request, when its directory goes, or when a request takes longer than
//! `java.build_timeout`. One per recipe key
//! (`<cache>/persistent/java-warm-<key>/`); recipes unused for a week are
//! removed, and a new recipe of a project stops its older compilers.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ftl::beneath::{Dir, Kind};
use ftl::{Beneath, ExecMount, ExecRequest, PluginError, SourceTree, StepContext, StepNetwork};
use serde::{Deserialize, Serialize};

use crate::step::{select_files, REPO, WORK};

/// The resident compiler's source, run with the JDK's source launcher.
const SERVER: &str = include_str!("FtlJavac.java");
/// The Maven flag that makes the compiler plugin log javac's command line.
pub(crate) const CAPTURE_FLAG: &str =
    "-Dorg.slf4j.simpleLogger.log.org.apache.maven.plugin.compiler=debug";
/// The plugin goals a recorded build may run (`maven-X-plugin` as `X`).
const ALLOWED_GOALS: &[(&str, &str)] = &[
    ("resources", "resources"),
    ("compiler", "compile"),
    ("dependency", "copy-dependencies"),
];
const SOCKET: &str = "javac.sock";
const WARMUP: &str = "warmup.args";
/// The build report's name for a compilation by the warm compiler.
pub(crate) const STEP_LABEL: &str = "javac (warm compiler)";
/// Recipes unused for this long are removed when another is recorded.
const STALE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Touched on every use of a recipe.
const USED: &str = "used";
/// A bound for seconds handed to the JVM (a `long` of milliseconds there).
const MAX_SECS: u64 = 365 * 24 * 3600;
/// How long a build waits for a compiler that is starting.
const STARTING: Duration = Duration::from_secs(5);

/// What a Maven run's log says about its compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Captured {
    /// javac's options, `-d` and all, without the source files.
    pub options: Vec<String>,
    /// How many source files Maven compiled.
    pub files: usize,
}

/// Reads javac's options and the number of files from Maven's output, or
/// says why this build cannot feed the warm compiler.
pub(crate) fn capture(log: &str) -> Result<Captured, String> {
    let mut options = None;
    let mut files = None;
    let mut compiled = false;
    let mut lines = log.lines().map(|l| l.trim_end());
    while let Some(line) = lines.next() {
        let text = line
            .strip_prefix("[INFO] ")
            .or_else(|| line.strip_prefix("[DEBUG] "))
            .unwrap_or(line);
        if let Some(rest) = text.strip_prefix("--- ") {
            // `--- maven-compiler-plugin:3.10.1:compile (default-compile) @ hello ---`
            let id = rest.split_whitespace().next().unwrap_or("");
            let parts: Vec<&str> = id.split(':').collect();
            let (plugin, goal) = match parts.as_slice() {
                [p, _, g] | [_, p, _, g] => (*p, *g),
                _ => return Err(format!("unrecognized plugin execution `{rest}`")),
            };
            let short = plugin
                .trim_start_matches("maven-")
                .trim_end_matches("-maven-plugin")
                .trim_end_matches("-plugin");
            if !ALLOWED_GOALS.contains(&(short, goal)) {
                return Err(format!("the build runs {plugin}:{goal}"));
            }
            compiled |= (short, goal) == ("compiler", "compile");
        } else if text == "Command line options:" {
            let next = lines.next().unwrap_or("");
            let opts = next.strip_prefix("[DEBUG] ").unwrap_or(next);
            if options.is_some() {
                return Err("more than one compilation".into());
            }
            options = Some(opts.split_whitespace().map(str::to_string).collect());
        } else if let Some(rest) = text.strip_prefix("Compiling ") {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                files = Some(n);
            }
        }
    }
    if !compiled {
        // A quiet log (`-q`) hides which plugins ran: nothing to vouch for.
        return Err("Maven's log names no compiler:compile execution".into());
    }
    match (options, files) {
        (Some(options), Some(files)) => Ok(Captured { options, files }),
        (None, _) => Err("no javac command line in Maven's output".into()),
        (_, None) => Err("Maven compiled nothing".into()),
    }
}

/// The value of option `names` in `options`.
fn option<'a>(options: &'a [String], names: &[&str]) -> Option<&'a str> {
    options
        .iter()
        .position(|o| names.contains(&o.as_str()))
        .and_then(|i| options.get(i + 1))
        .map(String::as_str)
}

/// `--name=value` as two words, as javac reads it.
fn normalized(options: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for o in options {
        match o.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                out.push(name.to_string());
                out.push(value.to_string());
            }
            _ => out.push(o.clone()),
        }
    }
    out
}

/// What the options say about the compilation.
#[derive(Debug)]
struct Checked {
    /// Source roots in the project (relative).
    roots: Vec<String>,
    /// Source roots in the build directory (`target/generated-sources/…`).
    generated: Vec<String>,
    /// Class and module path entries.
    paths: Vec<String>,
}

/// Checks the options: what the compiler may replay.
fn check_options(options: &[String]) -> Result<Checked, String> {
    let options = &normalized(options);
    let project = format!("{WORK}/src/");
    if option(options, &["-d"]) != Some(&format!("{project}target/classes")) {
        return Err("javac writes elsewhere than target/classes".into());
    }
    for o in options {
        if o.starts_with("-J")
            || o.starts_with('@')
            || o.starts_with("-Xplugin")
            || o.contains('\n')
            || matches!(
                o.as_str(),
                "-processorpath"
                    | "--processor-path"
                    | "-processor"
                    | "--processor-module-path"
                    | "--module-source-path"
            )
        {
            return Err(format!("javac option `{o}`"));
        }
    }
    let (mut roots, mut generated) = (Vec::new(), Vec::new());
    for r in option(options, &["-sourcepath", "--source-path"])
        .unwrap_or("")
        .split(':')
        .filter(|r| !r.is_empty())
    {
        let rel = r
            .strip_prefix(&project)
            .ok_or_else(|| format!("source root {r} is outside the project"))?;
        if rel.split('/').any(|c| c == "..") {
            return Err(format!("source root {r}"));
        }
        let rel = rel.trim_end_matches('/').to_string();
        if rel == "target" || rel.starts_with("target/") {
            generated.push(rel);
        } else {
            roots.push(rel);
        }
    }
    if roots.is_empty() {
        return Err("no source roots".into());
    }
    // Where javac looks for processors without -processorpath.
    let mut paths = Vec::new();
    for names in [
        &["-classpath", "-cp", "--class-path"][..],
        &["--module-path", "-p"][..],
    ] {
        paths.extend(
            option(options, names)
                .unwrap_or("")
                .split(':')
                .filter(|e| !e.is_empty())
                .map(str::to_string),
        );
    }
    Ok(Checked {
        roots,
        generated,
        paths,
    })
}

/// The path `rel` below `at`, as one [`Beneath`].
fn below(at: &Beneath, rel: impl AsRef<Path>) -> Beneath {
    Beneath::new(&at.base, at.rel.join(rel))
}

/// Whether a classpath entry (in the Maven repository or the project, both
/// written by sandboxed code: read without following links) offers javac
/// an annotation processor.
fn offers_processor(entry: &Beneath) -> Result<bool, String> {
    const SERVICE: &str = "META-INF/services/javax.annotation.processing.Processor";
    let shown = entry.path();
    let err = |e: ftl::BeneathError| format!("{}: {}", shown.display(), ftl::error_chain(&e));
    let base = Dir::open(&entry.base).map_err(err)?;
    let file = match base.stat(&entry.rel).map_err(err)?.map(|n| n.kind) {
        Some(Kind::Dir) => {
            return Ok(base
                .dir(&entry.rel)
                .map_err(err)?
                .stat(Path::new(SERVICE))
                .map_err(err)?
                .is_some())
        }
        Some(Kind::File) => base.open_file(&entry.rel).map_err(err)?,
        Some(Kind::Symlink) => return Err(format!("{} is a symlink", shown.display())),
        _ => return Ok(false),
    };
    let entry = &shown;
    let mut jar =
        crate::jar::Jar::from_file(file).map_err(|e| format!("{}: {e}", entry.display()))?;
    if jar.entries.iter().any(|e| e.name == SERVICE) {
        return Ok(true);
    }
    // A manifest Class-Path widens the classpath javac searches.
    let manifest = jar
        .manifest()
        .map_err(|e| format!("{}: {e}", entry.display()))?;
    Ok(manifest
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("Class-Path") && !v.trim().is_empty()))
}

/// The `.java` files below `roots` of `project` (relative, sorted).
fn java_files(project: &Beneath, roots: &[String]) -> Result<Vec<PathBuf>, PluginError> {
    let mut out = Vec::new();
    for root in roots {
        let files = select_files(&below(project, root), |p| {
            p.extension().is_some_and(|e| e == "java")
        })?;
        out.extend(
            files
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "java"))
                .map(|p| Path::new(root).join(p)),
        );
    }
    out.sort();
    Ok(out)
}

/// Whether `p` is a source the compiler may take from a build: a `.java`
/// file below `roots`, other than a module declaration (which switches
/// Maven to the module path: a change to it is a change of configuration).
fn is_source(p: &Path, roots: &[String]) -> bool {
    is_java_below(p, roots) && p.file_name().is_some_and(|n| n != "module-info.java")
}

/// Whether `p` is a `.java` file below one of `roots`.
fn is_java_below(p: &Path, roots: &[String]) -> bool {
    p.extension().is_some_and(|e| e == "java") && roots.iter().any(|r| p.starts_with(r))
}

/// Key of every project file that is not a source ([`is_source`]).
fn others_key(source: &SourceTree, roots: &[String]) -> Result<String, PluginError> {
    let files: Vec<PathBuf> = source
        .entries()
        .iter()
        .filter(|p| !crate::plan::is_build_output(source, p) && !is_source(p, roots))
        .cloned()
        .collect();
    Ok(ftl::app::content_key(crate::plan::PLUGIN, "warm-others", source, &files, "")?.hex)
}

/// A recipe: how Maven ran javac for one project configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recipe {
    options: Vec<String>,
    roots: Vec<String>,
    /// [`others_key`] when recorded.
    others: String,
    /// `pending` (to prove), `proven` or `rejected`.
    status: String,
    note: Option<String>,
    /// The project's coordinates: a new recipe of the same project stops
    /// the compilers of its older ones.
    #[serde(default)]
    project: String,
    /// How the proof is made: `warmup` (the compiler compiled it at start,
    /// into `warmup.args.done`) or `request`.
    #[serde(default)]
    proof: String,
}

/// The warm compiler of one recipe key.
pub(crate) struct Warm {
    /// `<cache>/persistent/java-warm-<key>`.
    dir: PathBuf,
    name: String,
    idle: Duration,
    builder: ftl::StepRoot,
    /// How long one compilation may take (`java.build_timeout`).
    timeout: Duration,
    /// The project's local Maven repository ([`crate::step::repo_dir`]),
    /// which the compiler mounts read-only.
    repo: String,
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

impl Warm {
    /// The warm compiler of recipe `key`, or `None` when there is no place
    /// for it (the build then runs Maven as always).
    pub(crate) fn new(
        ctx: &StepContext<'_>,
        key: &str,
        settings: &crate::Settings,
        repo: String,
    ) -> Option<Warm> {
        let name = format!("java-warm-{key}");
        let dir = ctx
            .exec
            .persistent_dir(&name)
            .map_err(|e| tracing::debug!(error = %e, "no warm javac"))
            .ok()?;
        Some(Warm {
            dir,
            name,
            idle: settings.warm_idle,
            builder: settings.builder.clone(),
            timeout: settings.build_timeout,
            repo,
        })
    }

    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// This recipe's lock ([`lock_recipe`]).
    fn lock(&self) -> Result<std::fs::File, String> {
        lock_recipe(&self.dir)
    }

    /// Marks the recipe used now (see [`prune`]).
    fn touch(&self) {
        let _ = std::fs::write(self.dir.join(USED), b"");
    }

    fn load(&self) -> Option<Recipe> {
        load_recipe(&self.dir)
    }

    fn save(&self, recipe: &Recipe) -> Result<(), String> {
        let path = self.dir.join("recipe.json");
        let tmp = self.dir.join("recipe.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(recipe).expect("serializes"))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| io("cannot write", &path, e))
    }

    /// A connection to the running compiler. The socket is reached through
    /// the directory's descriptor: its path may be longer than a socket
    /// address holds.
    fn connect(&self) -> Option<UnixStream> {
        let dir = std::fs::File::open(self.work()).ok()?;
        use std::os::fd::AsRawFd;
        UnixStream::connect(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd())).ok()
    }

    /// A connection, waiting up to [`STARTING`] for a compiler that is
    /// running but not listening yet.
    fn connect_starting(&self) -> Option<UnixStream> {
        let deadline = std::time::Instant::now() + STARTING;
        loop {
            if let Some(c) = self.connect() {
                return Some(c);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the compiler unless it is running (then `false`); it first
    /// compiles `warmup.args` when present.
    fn start(&self, ctx: &StepContext<'_>) -> Result<bool, String> {
        let server = self.work().join("FtlJavac.java");
        std::fs::write(&server, SERVER).map_err(|e| io("cannot write", &server, e))?;
        let repo = ctx
            .exec
            .package_cache_dir(&self.repo, ftl::CacheTrust::AddOnly)
            .map_err(|e| e.to_string())?;
        let script = format!(
            // Niced: its start and warm-up (a second or two of CPU) yield
            // to the builds running meanwhile. A detached container is a
            // session of its own, so with autogroup scheduling its group is
            // niced too. C1 alone warms up on half the CPU of tiered
            // compilation, and javac runs as fast on it.
            "echo 10 >/proc/self/autogroup 2>/dev/null; \
             n=; if command -v nice >/dev/null 2>&1; then n='nice -n 10'; fi; \
             exec $n \"${{JAVA_HOME:+$JAVA_HOME/bin/}}java\" -XX:+UseSerialGC \
             -XX:TieredStopAtLevel=1 -XX:-UsePerfData -Djava.io.tmpdir=/tmp \
             {WORK}/FtlJavac.java {WORK}/{SOCKET} {} {WORK}/{WARMUP} {}",
            self.idle.as_secs().clamp(1, MAX_SECS),
            self.timeout.as_secs().clamp(1, MAX_SECS),
        );
        let mut req = ExecRequest::new("warm javac", ["sh", "-c", &script]);
        req.root = self.builder.clone();
        req.cwd = WORK.into();
        req.network = StepNetwork::None;
        req.env = vec![
            ("HOME".into(), "/tmp".into()),
            ("TMPDIR".into(), "/tmp".into()),
        ];
        req.mounts = vec![
            ExecMount {
                host: self.work(),
                target: WORK.into(),
                writable: true,
            },
            ExecMount {
                host: repo,
                target: REPO.into(),
                writable: false,
            },
        ];
        let (log, started) = ctx
            .exec
            .start_resident(&self.name, &req)
            .map_err(|e| e.to_string())?;
        tracing::debug!(log = %log.display(), started, "warm javac");
        Ok(started)
    }

    /// Sends one compilation; returns javac's exit code and output.
    fn compile(&self, conn: UnixStream, args: &[String]) -> Result<(i32, String), String> {
        let mut conn = conn;
        conn.set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        let mut request = format!("{}\n", args.len());
        for a in args {
            request.push_str(a);
            request.push('\n');
        }
        conn.write_all(request.as_bytes())
            .map_err(|e| format!("warm javac: {e}"))?;
        let mut reader = BufReader::new(conn);
        let mut first = String::new();
        reader
            .read_line(&mut first)
            .map_err(|e| format!("warm javac: {e}"))?;
        let code = first
            .trim()
            .parse()
            .map_err(|_| format!("warm javac answered {first:?}"))?;
        let mut output = String::new();
        let _ = reader.read_to_string(&mut output);
        Ok((code, output))
    }

    /// javac's arguments: the recipe with the output directory `out` (in
    /// the sandbox), then the sources of `project` (on the host).
    fn args(recipe: &Recipe, out: &str, project: &Path) -> Result<Vec<String>, String> {
        let mut args = recipe.options.clone();
        if let Some(i) = args.iter().position(|a| a == "-d") {
            args[i + 1] = out.to_string();
        }
        // The project's last component too is read without links: the
        // compiler's mount holds it.
        let at = match (project.parent(), project.file_name()) {
            (Some(parent), Some(name)) => Beneath::new(parent, name),
            _ => Beneath::root(project),
        };
        for f in java_files(&at, &recipe.roots).map_err(|e| e.to_string())? {
            let f = format!("{WORK}/src/{}", f.display());
            if f.contains('\n') {
                return Err(format!("file name {f:?}"));
            }
            args.push(f);
        }
        Ok(args)
    }

    /// Records the recipe of a successful Maven run whose project copy
    /// (with `target/classes`) is `maven_src` (as Maven left it: read
    /// without following links); the log is Maven's stdout.
    /// Errors only say why this run cannot feed the compiler.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        ctx: &StepContext<'_>,
        project_id: &str,
        log: &str,
        maven_src: &Beneath,
        repo: &Path,
        is_resource: &dyn Fn(&Path) -> bool,
    ) -> Result<(), String> {
        let captured = capture(log)?;
        let checked = check_options(&captured.options)?;
        let normalized = normalized(&captured.options);
        if !normalized.iter().any(|o| o == "-proc:none") {
            for entry in &checked.paths {
                let host = if let Some(rest) = entry.strip_prefix(&format!("{REPO}/")) {
                    Beneath::new(repo, rest)
                } else if let Some(rest) = entry.strip_prefix(&format!("{WORK}/src/")) {
                    below(maven_src, rest)
                } else {
                    return Err(format!(
                        "classpath entry {entry} outside the Maven repository"
                    ));
                };
                if offers_processor(&host)? {
                    return Err(format!("{entry} offers an annotation processor"));
                }
            }
        }
        for g in &checked.generated {
            if !java_files(maven_src, std::slice::from_ref(g))
                .map_err(|e| e.to_string())?
                .is_empty()
            {
                return Err(format!("Maven compiled generated sources in {g}"));
            }
        }
        let sources = java_files(maven_src, &checked.roots).map_err(|e| e.to_string())?;
        if sources.len() != captured.files {
            return Err(format!(
                "Maven compiled {} of the {} source files",
                captured.files,
                sources.len()
            ));
        }
        let others = others_key(ctx.source, &checked.roots).map_err(|e| e.to_string())?;
        let _lock = self.lock()?;
        self.touch();
        prune(&self.dir);
        if let Some(old) = self.load().filter(|r| r.status == "rejected") {
            if old.options == captured.options && old.others == others {
                return Err(format!(
                    "rejected before: {}",
                    old.note.as_deref().unwrap_or("")
                ));
            }
        }
        let work = self.work();
        let project = work.join("src");
        let expected = self.dir.join("expected");
        for d in [&project, &expected, &work.join("check")] {
            remove_dir(d)?;
        }
        let open = |b: &Beneath| b.open().map_err(|e| ftl::error_chain(&e));
        copy_files(&open(maven_src)?, &sources, &project)?;
        let classes = below(maven_src, "target/classes");
        let classes_dir = open(&classes)?;
        let outputs: Vec<PathBuf> = select_files(&classes, |r| !is_resource(r))
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| is_file(&classes_dir, r))
            .collect();
        copy_files(&classes_dir, &outputs, &expected)?;
        prepare_output(&project, &captured.options)?;
        let mut recipe = Recipe {
            others,
            options: captured.options,
            roots: checked.roots,
            status: "pending".into(),
            note: None,
            project: project_id.to_string(),
            proof: "request".into(),
        };
        self.stop_older(project_id);
        let args = Self::args(&recipe, &format!("{WORK}/check"), &project)?;
        std::fs::create_dir_all(work.join("check")).map_err(|e| io("cannot create", &work, e))?;
        let warmup = work.join(WARMUP);
        let _ = std::fs::remove_file(work.join(format!("{WARMUP}.done")));
        let _ = std::fs::remove_file(&warmup);
        let conn = match self.connect() {
            Some(c) => Some(c),
            None => {
                // Not running: it proves at start, from `warmup.args`.
                std::fs::write(&warmup, args.join("\n") + "\n")
                    .map_err(|e| io("cannot write", &warmup, e))?;
                recipe.proof = "warmup".into();
                self.save(&recipe)?;
                if self.start(ctx)? {
                    return Ok(());
                }
                // It was starting for an older recipe: prove over a
                // request once it listens (else the next build does).
                let _ = std::fs::remove_file(&warmup);
                recipe.proof = "request".into();
                self.save(&recipe)?;
                self.connect_starting()
            }
        };
        if let Some(conn) = conn {
            let (code, output) = self.compile(conn, &args)?;
            self.judge(&mut recipe, code, &output);
        }
        self.save(&recipe)
    }

    /// Stops the compilers of the other recipes of `project` (their
    /// configuration changed: they would idle until `java.warm_idle`),
    /// unless a build is using them. Removing the socket makes one exit.
    fn stop_older(&self, project: &str) {
        for (dir, _) in other_recipes(&self.dir) {
            if load_recipe(&dir).is_some_and(|r| r.project == project) {
                if let Ok(_lock) = lock_recipe(&dir) {
                    let _ = std::fs::remove_file(dir.join("work").join(SOCKET));
                }
            }
        }
    }

    /// Compares the proof compile (`work/check`) with Maven's classes; a
    /// rejected recipe's compiler is stopped.
    fn judge(&self, recipe: &mut Recipe, code: i32, output: &str) {
        let verdict = if code != 0 {
            Err(format!("javac exited with {code}: {}", output.trim()))
        } else {
            same_files(
                &Beneath::new(self.work(), "check"),
                &Beneath::new(&self.dir, "expected"),
            )
        };
        match verdict {
            Ok(()) => recipe.status = "proven".into(),
            Err(why) => {
                tracing::info!(dir = %self.dir.display(), %why, "warm javac does not reproduce Maven: Maven it is");
                recipe.status = "rejected".into();
                recipe.note = Some(why);
                let _ = std::fs::remove_file(self.work().join(SOCKET));
            }
        }
    }

    /// Compiles the current sources into a directory below the step's
    /// scratch directory and returns it, or says why Maven must run.
    pub(crate) fn compile_sources(&self, ctx: &StepContext<'_>) -> Result<Beneath, String> {
        let _lock = self.lock()?;
        let mut recipe = self.load().ok_or("no recipe yet")?;
        if recipe.status == "rejected" {
            return Err(format!(
                "rejected: {}",
                recipe.note.as_deref().unwrap_or("")
            ));
        }
        if others_key(ctx.source, &recipe.roots).map_err(|e| e.to_string())? != recipe.others {
            return Err("files other than Java sources changed".into());
        }
        self.touch();
        // The running compiler reads the Maven repository: leased for this
        // build like any step's, so `ftl cache gc` keeps it.
        ctx.exec
            .package_cache_dir(&self.repo, ftl::CacheTrust::AddOnly)
            .map_err(|e| e.to_string())?;
        let conn = match self.connect() {
            Some(c) => c,
            // Not running: Maven is as quick as a cold JVM (and records
            // the recipe again); the started compiler serves the next build.
            None if self.start(ctx)? => return Err("the compiler was not running".into()),
            // Running but not listening yet: it is starting (a second or
            // two, from the end of the build that recorded the recipe).
            None => self
                .connect_starting()
                .ok_or("the compiler is still starting")?,
        };
        let work = self.work();
        let conn = if recipe.status == "pending" {
            let done = work.join(format!("{WARMUP}.done"));
            let proved_at_start = match std::fs::read_to_string(&done) {
                Ok(text) if recipe.proof == "warmup" => {
                    let (code, output) = text.split_once('\n').unwrap_or((&text, ""));
                    Some((code.trim().parse().unwrap_or(-1), output.to_string()))
                }
                _ => None,
            };
            let (code, output, conn) = match proved_at_start {
                Some((code, output)) => (code, output, conn),
                None => {
                    let args = Self::args(&recipe, &format!("{WORK}/check"), &work.join("src"))?;
                    let (code, output) = self.compile(conn, &args)?;
                    let conn = self.connect().ok_or("the compiler went away")?;
                    (code, output, conn)
                }
            };
            self.judge(&mut recipe, code, &output);
            self.save(&recipe)?;
            if recipe.status != "proven" {
                return Err("the recipe was rejected".into());
            }
            conn
        } else {
            conn
        };
        let project = work.join("src");
        remove_dir(&project)?;
        let sources: Vec<PathBuf> = ctx
            .source
            .entries()
            .iter()
            .filter(|p| {
                is_java_below(p, &recipe.roots) && !crate::plan::is_build_output(ctx.source, p)
            })
            .cloned()
            .collect();
        copy_files(ctx.source.dir(), &sources, &project)?;
        prepare_output(&project, &recipe.options)?;
        let args = Self::args(&recipe, &format!("{WORK}/src/target/classes"), &project)?;
        let t = std::time::Instant::now();
        let (code, output) = self.compile(conn, &args)?;
        ctx.exec.step_done(STEP_LABEL, t.elapsed());
        if code != 0 {
            return Err(format!("javac exited with {code}: {}", output.trim()));
        }
        let out = ctx.scratch.join("warm-classes");
        let classes = project.join("target/classes");
        move_tree(&classes, &out)?;
        // javac's output, read below the scratch directory without links.
        Ok(Beneath::new(ctx.scratch, "warm-classes"))
    }
}

/// Moves the directory `from` to `to`. Across filesystems (the warm
/// compiler's directory and a step's scratch are size-limited volumes of
/// their own), a copy of its directories and regular files, reached
/// without links (anything else is refused), then `from` removed.
fn move_tree(from: &Path, to: &Path) -> Result<(), String> {
    match std::fs::rename(from, to) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() != std::io::ErrorKind::CrossesDevices => {
            return Err(io("cannot move", from, e))
        }
        Err(_) => {}
    }
    let dir = Dir::open(from).map_err(|e| ftl::error_chain(&e))?;
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    dir.walk::<ftl::BeneathError>(&mut |rel, node| match node.kind {
        Kind::Dir => {
            dirs.push(rel.to_path_buf());
            Ok(true)
        }
        Kind::File => {
            files.push(rel.to_path_buf());
            Ok(false)
        }
        _ => Err(ftl::BeneathError::WrongKind {
            path: from.join(rel),
            wanted: "directory or regular file",
        }),
    })
    .map_err(|e| ftl::error_chain(&e))?;
    for d in &dirs {
        let at = to.join(d);
        std::fs::create_dir_all(&at).map_err(|e| io("cannot create", &at, e))?;
    }
    for f in &files {
        dir.copy_file(f, &to.join(f))
            .map_err(|e| ftl::error_chain(&e))?;
    }
    remove_dir(from)
}

/// Removes a directory tree; a missing one is fine.
fn remove_dir(d: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("cannot remove", d, e)),
        _ => Ok(()),
    }
}

/// Copies `files` (relative) from `from` to `to`: what javac reads of a
/// project is its sources (the rest is in the recipe's key). Only regular
/// files, reached without links: a link could name a file outside the
/// project, which Maven reads in the sandbox and this copy would read on
/// the host.
fn copy_files(from: &Dir, files: &[PathBuf], to: &Path) -> Result<(), String> {
    for rel in files {
        if !is_file(from, rel) {
            return Err(format!("{} is not a regular file", rel.display()));
        }
        let dst = to.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("cannot create", parent, e))?;
        }
        from.copy_file(rel, &dst)
            .map_err(|e| ftl::error_chain(&e))?;
    }
    Ok(())
}

/// Whether `rel` below `dir` is a regular file reached without links.
fn is_file(dir: &Dir, rel: &Path) -> bool {
    dir.stat(rel)
        .ok()
        .flatten()
        .is_some_and(|n| n.kind == Kind::File)
}

/// The directories (and names) of the recipes beside `dir`.
fn other_recipes(dir: &Path) -> Vec<(PathBuf, String)> {
    let Some(parent) = dir.parent() else {
        return Vec::new();
    };
    // Recipes of this build's cache scope only (`java-warm-KEY~SCOPE`).
    let scope = |name: &str| name.split_once('~').map(|(_, s)| s.to_string());
    let own = scope(&dir.file_name().unwrap_or_default().to_string_lossy());
    std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
        .filter(|(p, name)| p != dir && name.starts_with("java-warm-") && scope(name) == own)
        .collect()
}

/// Takes the lock of the recipe in `dir` (held while its files change or
/// its compiler serves a build), or says that a build holds it.
fn lock_recipe(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io("cannot create", &path, e))?;
    f.try_lock()
        .map_err(|_| "another build is using it".to_string())?;
    Ok(f)
}

fn load_recipe(dir: &Path) -> Option<Recipe> {
    serde_json::from_slice(&std::fs::read(dir.join("recipe.json")).ok()?).ok()
}

/// Removes the directories of other recipes unused for [`STALE`] (and
/// their compilers' logs), unless a build holds them.
fn prune(dir: &Path) {
    for (p, name) in other_recipes(dir) {
        let used = std::fs::metadata(p.join(USED)).or_else(|_| std::fs::metadata(&p));
        let stale = used
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE);
        if !stale {
            continue;
        }
        let Ok(_lock) = lock_recipe(&p) else {
            continue;
        };
        tracing::debug!(dir = %p.display(), "removing an unused warm compiler directory");
        let _ = std::fs::remove_file(p.join("work").join(SOCKET));
        let _ = std::fs::remove_dir_all(&p);
        // <cache>/persistent/<name> → <cache>/resident/<name>.log
        if let Some(cache) = dir.parent().and_then(Path::parent) {
            let _ = std::fs::remove_file(cache.join("resident").join(format!("{name}.log")));
        }
    }
}

/// Creates javac's output directories (`-d`, `-s`) in `project`; javac
/// does not create them.
fn prepare_output(project: &Path, options: &[String]) -> Result<(), String> {
    let options = &normalized(options);
    for name in ["-d", "-s"] {
        if let Some(dir) = option(options, &[name]) {
            if let Some(rel) = dir.strip_prefix(&format!("{WORK}/src/")) {
                let d = project.join(rel);
                std::fs::create_dir_all(&d).map_err(|e| io("cannot create", &d, e))?;
            }
        }
    }
    // Not made world-writable (unlike a step's scratch directory): this one
    // lives for weeks, and the sandbox's root is ftl's own user.
    Ok(())
}

/// Whether the files below `a` and `b` are the same, byte for byte (read
/// without following links).
fn same_files(a: &Beneath, b: &Beneath) -> Result<(), String> {
    let open = |b: &Beneath| b.open().map_err(|e| ftl::error_chain(&e));
    let (da, db) = (open(a)?, open(b)?);
    let list = |root: &Beneath, dir: &Dir| -> Result<Vec<PathBuf>, String> {
        select_files(root, |_| true)
            .map(|v| v.into_iter().filter(|p| is_file(dir, p)).collect())
            .map_err(|e| e.to_string())
    };
    let (la, lb) = (list(a, &da)?, list(b, &db)?);
    if la != lb {
        let only = la
            .iter()
            .find(|p| !lb.contains(p))
            .or_else(|| lb.iter().find(|p| !la.contains(p)));
        return Err(format!(
            "javac and Maven wrote different files (first: {})",
            only.map(|p| p.display().to_string()).unwrap_or_default()
        ));
    }
    for rel in &la {
        let (x, y) = (da.read(rel), db.read(rel));
        match (x, y) {
            (Ok(x), Ok(y)) if x == y => {}
            _ => return Err(format!("{} differs from Maven's", rel.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "[INFO] --- maven-resources-plugin:3.3.0:resources (default-resources) @ hello ---
[INFO] Copying 1 resource
[INFO] --- maven-compiler-plugin:3.10.1:compile (default-compile) @ hello ---
[DEBUG] Using compiler 'javac'.
[INFO] Changes detected - recompiling the module!
[DEBUG] Command line options:
[DEBUG] -d /tmp/ftl-java/src/target/classes -classpath /tmp/ftl-java/src/target/classes:/tmp/ftl-m2/org/apache/commons/commons-lang3/3.12.0/commons-lang3-3.12.0.jar: -sourcepath /tmp/ftl-java/src/src/main/java:/tmp/ftl-java/src/target/generated-sources/annotations: -s /tmp/ftl-java/src/target/generated-sources/annotations -g -nowarn --release 17 -encoding UTF-8
[INFO] Compiling 2 source files to /tmp/ftl-java/src/target/classes
[INFO] --- maven-dependency-plugin:3.5.0:copy-dependencies (default-cli) @ hello ---
[INFO] BUILD SUCCESS
";

    #[test]
    fn captures_javac_from_maven() {
        let c = capture(LOG).unwrap();
        assert_eq!(c.files, 2);
        assert_eq!(c.options[0], "-d");
        assert_eq!(c.options.last().unwrap(), "UTF-8");
        let checked = check_options(&c.options).unwrap();
        assert_eq!(checked.roots, ["src/main/java"]);
        assert_eq!(checked.generated, ["target/generated-sources/annotations"]);
        assert_eq!(checked.paths.len(), 2);
        // A modular build: the module path is searched for processors too,
        // in either spelling.
        for spelling in [
            "--module-path /tmp/ftl-m2/m.jar",
            "--module-path=/tmp/ftl-m2/m.jar",
        ] {
            let c = capture(&LOG.replace("-g -nowarn", &format!("-g {spelling} -nowarn"))).unwrap();
            let checked = check_options(&c.options).unwrap();
            assert_eq!(checked.paths.last().unwrap(), "/tmp/ftl-m2/m.jar");
        }
        // Maven 3.9's short plugin names.
        let short = LOG.replace("maven-compiler-plugin:", "compiler:");
        assert!(capture(&short).is_ok());
    }

    #[test]
    fn refuses_what_it_cannot_reproduce() {
        let other = LOG.replace(
            "[INFO] BUILD SUCCESS",
            "[INFO] --- exec-maven-plugin:3.1.0:java (gen) @ hello ---\n[INFO] BUILD SUCCESS",
        );
        assert!(capture(&other)
            .unwrap_err()
            .contains("exec-maven-plugin:java"));
        assert!(capture(&LOG.replace("Command line options:", "x"))
            .unwrap_err()
            .contains("no javac"));
        for processors in [
            "-processorpath /x.jar",
            "--processor-path=/x.jar",
            "-processor a.B",
        ] {
            let c = capture(&LOG.replace("-nowarn", &format!("-nowarn {processors}"))).unwrap();
            let why = check_options(&c.options).unwrap_err();
            assert!(why.contains("-processor"), "{processors}: {why}");
        }
        // A quiet log shows no plugin executions: nothing to vouch for.
        let quiet: String = LOG
            .lines()
            .filter(|l| !l.contains("--- "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(capture(&quiet).unwrap_err().contains("no compiler:compile"));
        let c =
            capture(&LOG.replace("-d /tmp/ftl-java/src/target/classes", "-d /elsewhere")).unwrap();
        assert!(check_options(&c.options).is_err());
        let c =
            capture(&LOG.replace("-sourcepath /tmp/ftl-java/src/", "-sourcepath /other/")).unwrap();
        assert!(check_options(&c.options).unwrap_err().contains("outside"));
    }

    #[test]
    fn copies_regular_files_only() {
        let t = tempfile::tempdir().unwrap();
        let (from, to) = (t.path().join("from"), t.path().join("to"));
        std::fs::create_dir_all(from.join("p")).unwrap();
        std::fs::write(from.join("p/A.java"), b"class A {}").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", from.join("p/B.java")).unwrap();
        let from = Dir::open(&from).unwrap();
        copy_files(&from, &[PathBuf::from("p/A.java")], &to).unwrap();
        assert_eq!(std::fs::read(to.join("p/A.java")).unwrap(), b"class A {}");
        // A link could name a host file that Maven, in the sandbox, would
        // not see: such a build is Maven's.
        let why = copy_files(&from, &[PathBuf::from("p/B.java")], &to).unwrap_err();
        assert!(why.contains("not a regular file"), "{why}");
        assert!(!to.join("p/B.java").exists());
    }

    #[test]
    fn compares_trees() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        let (ba, bb) = (Beneath::root(&a), Beneath::root(&b));
        let same_files = |_: &PathBuf, _: &PathBuf| same_files(&ba, &bb);
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("p")).unwrap();
            std::fs::write(d.join("p/A.class"), b"one").unwrap();
        }
        assert!(same_files(&a, &b).is_ok());
        std::fs::write(b.join("p/A.class"), b"two").unwrap();
        assert!(same_files(&a, &b).unwrap_err().contains("A.class"));
        std::fs::write(b.join("p/A.class"), b"one").unwrap();
        std::fs::write(b.join("p/B.class"), b"one").unwrap();
        assert!(same_files(&a, &b).unwrap_err().contains("B.class"));
    }
}
