//! Each test is an attempt to get out of, or past the limits of, the
//! sandbox; each must fail from inside.

mod common;

use std::time::Duration;

use common::{unique_id, Fixture};
use ftl_sandbox::{spec_for_step, Limits, Outcome, RunRequest, Sandbox, StepSpec};

fn run_with(fx: &Fixture, script: &str, f: impl FnOnce(&mut StepSpec)) -> Outcome {
    let mut step = StepSpec::new(&fx.rootfs, ["sh", "-c", script]);
    f(&mut step);
    let spec = spec_for_step(&step);
    let req = RunRequest::from_spec(unique_id("contain"), &fx.rootfs, spec)
        .with_state_root(&fx.state)
        .with_timeout(Duration::from_secs(30));
    let out = Sandbox::default().run(&req).unwrap();
    assert!(
        std::fs::read_dir(&fx.state).map(|d| d.count()).unwrap_or(0) == 0,
        "state left behind"
    );
    out
}

fn run(fx: &Fixture, script: &str) -> Outcome {
    run_with(fx, script, |_| {})
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn cannot_read_host_files() {
    let fx = Fixture::new();
    let marker = fx.dir.path().join("host-secret");
    std::fs::write(&marker, "secret").unwrap();
    let out = run(
        &fx,
        &format!(
            "cat {} /etc/shadow; cat /proc/1/root/etc/hostname",
            marker.display()
        ),
    );
    assert!(!text(&out.stdout).contains("secret"), "{out:?}");
    assert_ne!(out.code, Some(0));
}

#[test]
fn cannot_see_host_processes() {
    let fx = Fixture::new();
    let out = run(
        &fx,
        "ls /proc | grep -E '^[0-9]+$' | wc -l; cat /proc/1/cmdline",
    );
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    let count: usize = lines[0].trim().parse().unwrap();
    assert!(count <= 4, "sees {count} processes: {out:?}");
    // Process 1 is the container's own (busybox sh execs its last command).
    assert!(lines[1].starts_with("cat"), "{out:?}");
}

#[test]
fn cannot_reach_host_loopback_with_network_none() {
    let fx = Fixture::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = run(&fx, &format!("ip link show lo | grep -c UP; nc -w 2 127.0.0.1 {port} </dev/null && echo CONNECTED; ip -o link | wc -l"));
    let t = text(&out.stdout);
    assert!(!t.contains("CONNECTED"), "{out:?}");
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("1"),
        "loopback must be up: {out:?}"
    );
    assert_eq!(lines.last().copied(), Some("1"), "only loopback: {out:?}");
}

#[test]
fn cannot_mount() {
    let fx = Fixture::new();
    let out = run(
        &fx,
        "mount -t tmpfs x /tmp 2>&1; mount --bind /bin /tmp; echo rc=$?",
    );
    assert!(
        text(&out.stdout).contains("rc=1") || text(&out.stdout).contains("rc=255"),
        "{out:?}"
    );
    assert!(
        text(&out.stdout).contains("not permitted") || text(&out.stdout).contains("denied"),
        "{out:?}"
    );
}

/// ptrace and process_vm_readv of another process of the step are refused
/// (seccomp). The probe waits until its target has executed, so it cannot
/// race an `exec` (the old probe, `cat /proc/$p/mem`, read a dying mm as
/// EOF under load and passed or failed by chance).
#[test]
fn a_step_cannot_ptrace_or_read_another_process() {
    let fx = Fixture::new();
    common::install_probe(&fx.rootfs);
    let out = run(
        &fx,
        "probe x32 >/dev/null 2>&1; sleep 10 & p=$!; \
         i=0; while [ \"$(cat /proc/$p/comm 2>/dev/null)\" != sleep ] && [ $i -lt 500 ]; do i=$((i+1)); done; \
         echo ptrace=$(probe ptrace $p); echo vmread=$(probe vmread $p); \
         unshare -U true 2>&1; echo rc=$?; kill $p",
    );
    let t = text(&out.stdout);
    assert!(t.contains("ptrace=EPERM"), "{out:?}");
    assert!(t.contains("vmread=EPERM"), "{out:?}");
    assert!(t.contains("rc=1"), "{out:?}");
}

#[test]
fn cannot_load_kernel_module() {
    let fx = Fixture::new();
    std::fs::write(fx.rootfs.join("root/x.ko"), b"\x7fELFnot-a-module").unwrap();
    let out = run(&fx, "insmod /root/x.ko 2>&1; echo rc=$?");
    let t = text(&out.stdout);
    assert!(t.contains("not permitted") || t.contains("rc=1"), "{out:?}");
    assert!(!t.contains("rc=0"), "{out:?}");
}

#[test]
fn cannot_raise_rlimit() {
    let fx = Fixture::new();
    let out = run(
        &fx,
        "ulimit -Hn; ulimit -n $(( $(ulimit -Hn) + 1 )) 2>&1; echo rc=$?",
    );
    assert!(!text(&out.stdout).contains("rc=0"), "{out:?}");
}

#[test]
fn cannot_write_read_only_root() {
    let fx = Fixture::new();
    let out = run(
        &fx,
        "touch /bin/x 2>&1; echo rc=$?; touch /tmp/ok && echo tmp-ok",
    );
    let t = text(&out.stdout);
    assert!(t.contains("Read-only file system"), "{out:?}");
    assert!(t.contains("tmp-ok"), "{out:?}");
    assert!(!fx.rootfs.join("bin/x").exists());
}

#[test]
fn fork_bomb_is_stopped_by_pids_limit() {
    let fx = Fixture::new();
    let out = run_with(
        &fx,
        "i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done 2>/dev/null; echo started $(jobs -p | wc -l)",
        |s| {
            s.limits = Limits {
                pids: Some(32),
                ..Limits::default()
            }
        },
    );
    let t = text(&out.stdout) + &text(&out.stderr);
    assert!(!t.contains("started 200"), "{out:?}");
}

#[test]
fn memory_bomb_is_stopped_and_reported() {
    let fx = Fixture::new();
    let out = run_with(&fx, "x=y; while true; do x=$x$x; done", |s| {
        s.limits = Limits {
            memory_bytes: Some(32 << 20),
            ..Limits::default()
        }
    });
    if common::is_root() || out.oom_killed {
        assert!(out.oom_killed, "{out:?}");
        assert_eq!(out.signal, Some(9), "{out:?}");
    } else {
        // Without a cgroup of its own (a user on cgroup v1), the memory
        // limit is RLIMIT_AS: the allocation fails and the shell says so.
        assert_ne!(out.code, Some(0), "{out:?}");
        assert!(text(&out.stderr).contains("out of memory"), "{out:?}");
    }
}

/// A step's output was held whole in the caller's memory (`ftl serve`'s):
/// a step printing without end grew it until the OOM killer came. The
/// capture keeps the start and the end and says how much it left out.
#[test]
fn a_step_that_prints_without_end_does_not_grow_its_caller() {
    let fx = Fixture::new();
    let out = run(&fx, "yes | head -c 209715200; echo; echo THE-END");
    assert_eq!(out.code, Some(0), "{:?}", text(&out.stderr));
    assert!(
        out.stdout.len() < 40 << 20,
        "{} bytes held",
        out.stdout.len()
    );
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.starts_with("y\ny\n"));
    assert!(t.contains("bytes of output left out here]"));
    assert!(t.trim_end().ends_with("THE-END"));
}

#[test]
fn sigterm_ignoring_process_is_killed_at_timeout() {
    let fx = Fixture::new();
    let step = StepSpec::new(
        &fx.rootfs,
        ["sh", "-c", "trap '' TERM INT; while true; do sleep 1; done"],
    );
    let req = RunRequest::from_spec(unique_id("term"), &fx.rootfs, spec_for_step(&step))
        .with_state_root(&fx.state)
        .with_timeout(Duration::from_millis(500));
    let out = Sandbox::default().run(&req).unwrap();
    assert!(out.timed_out);
    assert!(out.duration < Duration::from_secs(3));
}

#[test]
fn background_process_is_killed_at_exit() {
    let fx = Fixture::new();
    let marker = format!("ftl-bg-{}", std::process::id());
    let out = run(
        &fx,
        &format!("sleep 1000 {marker} >/dev/null 2>&1 & echo bg"),
    );
    assert_eq!(out.stdout, b"bg\n");
    std::thread::sleep(Duration::from_millis(100));
    let ps = std::process::Command::new("ps")
        .arg("-eo")
        .arg("args")
        .output()
        .unwrap();
    assert!(
        !text(&ps.stdout).contains(&marker),
        "background process survived"
    );
}

/// A loop device over a file that holds [`DISK_MARKER`]: a host disk whose
/// bytes a test can recognise. Detached on drop.
struct LoopDisk {
    dev: String,
    _file: tempfile::NamedTempFile,
}

const DISK_MARKER: &str = "FTL-HOST-DISK-SECRET";

impl LoopDisk {
    fn new() -> LoopDisk {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(DISK_MARKER.as_bytes()).unwrap();
        file.write_all(&[0u8; 4096]).unwrap();
        file.flush().unwrap();
        let losetup = common::require("losetup", "mount");
        let out = std::process::Command::new(losetup)
            .args(["--find", "--show", "--read-only"])
            .arg(file.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        LoopDisk {
            dev: String::from_utf8(out.stdout).unwrap().trim().to_string(),
            _file: file,
        }
    }

    /// `(major, minor)` of the device.
    fn numbers(&self) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        (
            nix::sys::stat::major(rdev) as u64,
            nix::sys::stat::minor(rdev) as u64,
        )
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["--detach", &self.dev])
            .status();
    }
}

/// As root there used to be no user namespace, `CAP_MKNOD` was kept, the
/// devices cgroup allowed everything and `/dev` was not `nodev`: a step
/// made a node of the host's disk and read it.
#[test]
fn a_step_cannot_mknod_a_block_device() {
    if !common::is_root() {
        // Without root nothing can make a node anyway; the test is root's.
        return;
    }
    let fx = Fixture::new();
    common::install_probe(&fx.rootfs);
    let disk = LoopDisk::new();
    let (major, minor) = disk.numbers();
    let out = run(
        &fx,
        &format!(
            "for d in /dev /tmp /dev/shm; do \
               echo $d mknod=$(probe mknod $d/disk {major} {minor}) read=$(probe readdev $d/disk); \
             done"
        ),
    );
    let t = text(&out.stdout);
    assert_eq!(t.lines().count(), 3, "{out:?}");
    for line in t.lines() {
        assert!(line.contains("mknod=EPERM"), "{line}: {out:?}");
        assert!(!line.contains("read=ok"), "{line}: {out:?}");
    }
    assert!(!t.contains(DISK_MARKER), "{out:?}");
}

/// Each layer of the device defence holds on its own: with `CAP_MKNOD`
/// given back, no user namespace and a `/dev` that allows devices, the
/// devices cgroup still refuses to make or open the node. The same spec
/// without the cgroup rules (the control) reads the disk, so the test
/// reaches the layer it means to test.
#[test]
fn the_devices_cgroup_refuses_a_block_device_even_with_cap_mknod() {
    if !common::is_root() {
        return;
    }
    let fx = Fixture::new();
    common::install_probe(&fx.rootfs);
    let disk = LoopDisk::new();
    let (major, minor) = disk.numbers();
    let attempt = |cgroup_rules: bool| {
        let mut step = StepSpec::new(
            &fx.rootfs,
            [
                "sh",
                "-c",
                &format!(
                    "echo mknod=$(probe mknod /dev/disk {major} {minor}) read=$(probe readdev /dev/disk)"
                ),
            ],
        );
        step.ids = None;
        let mut spec = spec_for_step(&step);
        let caps: oci_spec::runtime::Capabilities =
            ftl_sandbox::DEFAULT_CAPABILITIES.iter().copied().collect();
        let p = spec.process_mut().as_mut().unwrap();
        let mut c = p.capabilities().clone().unwrap();
        c.set_bounding(Some(caps.clone()));
        c.set_effective(Some(caps.clone()));
        c.set_permitted(Some(caps));
        p.set_capabilities(Some(c));
        for m in spec.mounts_mut().as_mut().unwrap() {
            if m.destination() == std::path::Path::new("/dev") {
                m.options_mut().as_mut().unwrap().retain(|o| o != "nodev");
            }
        }
        if !cgroup_rules {
            let linux = spec.linux_mut().as_mut().unwrap();
            let mut r = linux.resources().clone().unwrap();
            r.set_devices(None);
            linux.set_resources(Some(r));
        }
        let req = RunRequest::from_spec(unique_id("devcg"), &fx.rootfs, spec)
            .with_state_root(&fx.state)
            .with_timeout(Duration::from_secs(30));
        let out = Sandbox::default().run(&req).unwrap();
        (text(&out.stdout), out)
    };
    let (control, out) = attempt(false);
    assert!(
        control.contains(&format!("mknod=ok read=ok:{DISK_MARKER}")),
        "the control did not reach the disk, so the test proves nothing: {out:?}"
    );
    let (t, out) = attempt(true);
    assert!(t.contains("mknod=EPERM"), "{out:?}");
    assert!(!t.contains(DISK_MARKER), "{out:?}");
}

/// Container root is an unprivileged host id when ftl runs as root; files
/// it writes through a writable mount still belong to host root (the mount
/// is idmapped), and host-root-only files of the rootfs read as root's.
#[test]
fn a_steps_root_is_not_host_root() {
    let fx = Fixture::new();
    let out_dir = fx.dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = run_with(
        &fx,
        "cat /proc/self/uid_map; cat /proc/self/gid_map; id -u; stat -c %u /bin/busybox; \
         echo x > /out/made && stat -c %u /out/made; sleep 2 & echo pid=$$",
        |s| {
            s.mounts.push(ftl_sandbox::BindMount {
                host: out_dir.clone(),
                target: "/out".into(),
                writable: true,
            })
        },
    );
    assert!(out.success(), "{out:?}");
    let t = text(&out.stdout);
    let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
    let host_root = if common::is_root() {
        ftl_sandbox::IdRange::DEFAULT.uid.to_string()
    } else {
        nix::unistd::geteuid().as_raw().to_string()
    };
    assert_eq!(lines[0][..2], ["0", host_root.as_str()], "uid_map: {out:?}");
    assert_ne!(lines[1][1], "0", "gid_map maps host root: {out:?}");
    assert_eq!(lines[2], ["0"], "{out:?}");
    assert_eq!(lines[3], ["0"], "the rootfs is not idmapped: {out:?}");
    assert_eq!(lines[4], ["0"], "{out:?}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(out_dir.join("made")).unwrap().uid(),
        nix::unistd::geteuid().as_raw()
    );
}

/// A step's `/tmp` is a tmpfs of a fixed size: writing past it fails with
/// ENOSPC instead of taking the host's memory.
#[test]
fn a_step_cannot_write_past_its_tmp_size() {
    let fx = Fixture::new();
    let out = run_with(
        &fx,
        "dd if=/dev/zero of=/tmp/big bs=1M count=32 2>&1; echo rc=$?; df -k /tmp | tail -1",
        |s| s.limits.tmp_bytes = 8 << 20,
    );
    let t = text(&out.stdout);
    assert!(t.contains("No space left"), "{out:?}");
    assert!(!t.contains("rc=0"), "{out:?}");
}

/// A writable mount on a volume ([`ftl_sandbox::volume`]) is idmapped like
/// any bind, and a step that writes past the volume's size gets ENOSPC
/// there: the host's disk holds no more than the volume. Unmounted when
/// dropped, with no loop device left.
#[test]
fn a_step_cannot_write_past_a_volume() {
    if !common::is_root() {
        return;
    }
    let fx = Fixture::new();
    let out_dir = fx.dir.path().join("out");
    let image = fx.dir.path().join(".out.img");
    let volume = ftl_sandbox::volume::Volume::create(&image, &out_dir, 32 << 20).unwrap();
    let out = run_with(
        &fx,
        "echo x > /out/made && stat -c %u /out/made; \
         dd if=/dev/zero of=/out/big bs=1M count=256 2>&1; echo rc=$?",
        |s| {
            s.mounts.push(ftl_sandbox::BindMount {
                host: out_dir.clone(),
                target: "/out".into(),
                writable: true,
            })
        },
    );
    let t = text(&out.stdout);
    assert!(t.starts_with("0\n"), "{out:?}");
    assert!(
        t.contains("No space left") && !t.contains("rc=0"),
        "{out:?}"
    );
    use std::os::unix::fs::MetadataExt;
    let on_disk = std::fs::metadata(&image).unwrap().blocks() * 512;
    assert!(on_disk <= 32 << 20, "{on_disk}");
    let usage = ftl_sandbox::volume::usage(&out_dir).unwrap();
    assert!(usage.is_full(), "{usage:?}");
    assert_eq!(
        std::fs::metadata(out_dir.join("made")).unwrap().uid(),
        0,
        "written as host root through the idmap"
    );
    drop(volume);
    assert!(!image.exists() && !out_dir.exists());
    let backing: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|b| b.contains(&*fx.dir.path().to_string_lossy()))
        .collect();
    assert!(backing.is_empty(), "{backing:?}");
}

/// Raw and packet sockets need `CAP_NET_RAW`, which steps do not get.
#[test]
fn a_step_cannot_open_a_raw_socket() {
    let fx = Fixture::new();
    common::install_probe(&fx.rootfs);
    let out = run(&fx, "echo raw=$(probe rawsock)");
    assert!(text(&out.stdout).contains("raw=EPERM"), "{out:?}");
}

/// The x32 ABI is refused: under a deny-list profile, an x32 `mount` would
/// otherwise bypass every rule (its number carries bit 30).
#[test]
fn a_step_cannot_use_the_x32_abi() {
    let fx = Fixture::new();
    common::install_probe(&fx.rootfs);
    let out = run(&fx, "probe x32; echo rc=$?");
    // Killed by SIGSYS (31): the shell reports 128 + 31.
    assert!(text(&out.stdout).contains("rc=159"), "{out:?}");
}

// Egress steps: their own network namespace behind a user-mode network
// stack that cannot reach the host. Each test runs for both stacks, with
// and without a user namespace (container root mapped to 100000).

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};

use ftl_sandbox::{Network, Stack};

const STACKS: [Stack; 2] = [Stack::Slirp4netns, Stack::Pasta];

/// Runs `script` as an egress step of `stack`, in a user namespace when
/// `userns` is set.
fn run_egress(
    fx: &Fixture,
    rootfs: &std::path::Path,
    script: &str,
    stack: Stack,
    userns: bool,
) -> Outcome {
    run_egress_allowing(fx, rootfs, script, stack, userns, &[])
}

/// [`run_egress`] with TCP endpoints the step may reach.
fn run_egress_allowing(
    fx: &Fixture,
    rootfs: &std::path::Path,
    script: &str,
    stack: Stack,
    userns: bool,
    allow: &[std::net::SocketAddr],
) -> Outcome {
    let mut step = StepSpec::new(rootfs, ["sh", "-c", script]);
    step.network = Network::Egress(stack);
    step.egress_allow = allow.to_vec();
    let mut spec = spec_for_step(&step);
    if userns {
        let linux = spec.linux_mut().as_mut().unwrap();
        let mut ns = linux.namespaces().clone().unwrap();
        ns.push(
            oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(oci_spec::runtime::LinuxNamespaceType::User)
                .build()
                .unwrap(),
        );
        linux.set_namespaces(Some(ns));
        let map = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(100000u32)
            .size(65536u32)
            .build()
            .unwrap();
        linux.set_uid_mappings(Some(vec![map]));
        linux.set_gid_mappings(Some(vec![map]));
    }
    let req = RunRequest::from_spec(unique_id("egress"), rootfs, spec)
        .with_state_root(&fx.state)
        .with_timeout(Duration::from_secs(60));
    // One egress container at a time: its stack is the one new child.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let before = our_stacks();
    let mut running = Sandbox::default().spawn(&req).unwrap();
    let stack_pids: Vec<u32> = our_stacks()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(stack_pids.len(), 1, "one {stack:?} for the container");
    let out = running.wait().unwrap();
    drop(running);
    assert!(
        std::fs::read_dir(&fx.state).map(|d| d.count()).unwrap_or(0) == 0,
        "state left behind"
    );
    for p in stack_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "{stack:?} (pid {p}) left running"
        );
    }
    out
}

/// This process's children that are network stacks.
fn our_stacks() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                return false;
            };
            // pid (comm) state ppid ...
            let Some((comm, rest)) = stat.split_once(") ") else {
                return false;
            };
            let comm = comm.split_once(" (").map_or("", |c| c.1);
            rest.split_whitespace().nth(1) == Some(me.as_str())
                && (comm == "slirp4netns" || comm.starts_with("pasta") || comm.starts_with("passt"))
        })
        .collect()
}

/// Whether this caller can give a step egress: the stacks open
/// `/dev/net/tun` in the step's namespaces, which a user can only where
/// the device is world-writable (Debian's default; not on every machine).
fn egress_possible() -> bool {
    let ok = common::is_root()
        || std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .is_ok();
    if !ok {
        eprintln!("not run: /dev/net/tun is not open to this user");
    }
    ok
}

/// Every combination of stack and user namespace. Not as root, a step
/// always has a user namespace of the caller's ids, and a spec cannot map
/// others: each stack once.
fn each_egress(mut f: impl FnMut(Stack, bool)) {
    let namespaces: &[bool] = if common::is_root() {
        &[false, true]
    } else {
        &[false]
    };
    for stack in STACKS {
        for &userns in namespaces {
            f(stack, userns);
        }
    }
}

/// The host's global IPv4 addresses (`ip -o -4 addr`).
fn host_ipv4s() -> Vec<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    let v: Vec<Ipv4Addr> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
        .collect();
    assert!(!v.is_empty(), "no global IPv4 address on this host");
    v
}

/// The first nameserver of the host's resolv.conf.
fn host_dns() -> Ipv4Addr {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("nameserver")?.trim().parse().ok())
        .expect("an IPv4 nameserver in /etc/resolv.conf")
}

fn nothing_accepted(l: &TcpListener) -> bool {
    l.set_nonblocking(true).unwrap();
    matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[test]
fn an_egress_step_cannot_reach_host_loopback() {
    if !egress_possible() {
        return;
    }
    let fx = Fixture::new();
    let lo = TcpListener::bind("127.0.0.1:0").unwrap();
    let lo_port = lo.local_addr().unwrap().port();
    let hosts: Vec<(Ipv4Addr, TcpListener)> = host_ipv4s()
        .into_iter()
        .map(|ip| (ip, TcpListener::bind((ip, 0)).unwrap()))
        .collect();
    let mut script = String::from("ip -o link | wc -l; ip route | grep -c default; ");
    // 10.0.2.2 is slirp's alias of the host's loopback, the gateway is
    // pasta's when it maps it: neither may lead there.
    for target in ["127.0.0.1", "10.0.2.2", "10.0.2.100"] {
        script += &format!("nc -w 3 {target} {lo_port} </dev/null && echo CONNECTED {target}; ");
    }
    for (ip, l) in &hosts {
        let port = l.local_addr().unwrap().port();
        script += &format!("nc -w 3 {ip} {port} </dev/null && echo CONNECTED {ip}; ");
        script += &format!("nc -w 3 {ip} {lo_port} </dev/null && echo CONNECTED {ip}:lo; ");
    }
    script += "ip route | awk '/default/ {print $3}' | while read gw; do nc -w 3 $gw ";
    script += &format!("{lo_port} </dev/null && echo CONNECTED gateway; done; echo done");
    each_egress(|stack, userns| {
        let out = run_egress(&fx, &fx.rootfs, &script, stack, userns);
        let t = text(&out.stdout);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some("2"),
            "{stack:?} userns={userns}: loopback and the stack's interface: {out:?}"
        );
        assert_eq!(
            lines.get(1).copied(),
            Some("1"),
            "{stack:?} userns={userns}: a default route: {out:?}"
        );
        assert!(
            !t.contains("CONNECTED"),
            "{stack:?} userns={userns}: {out:?}"
        );
        assert!(t.contains("done"), "{stack:?} userns={userns}: {out:?}");
        assert!(
            nothing_accepted(&lo),
            "{stack:?} userns={userns}: the host's loopback listener got a connection"
        );
        for (ip, l) in &hosts {
            assert!(
                nothing_accepted(l),
                "{stack:?} userns={userns}: the listener on {ip} got a connection"
            );
            l.set_nonblocking(false).unwrap();
        }
        lo.set_nonblocking(false).unwrap();
    });
}

/// A proxy or package mirror on the host's loopback, allowed for a step,
/// is reached at its own address inside the step's namespace (relayed by
/// the runtime); the host's other loopback ports stay out of reach, at
/// that address and through slirp's alias of the host.
#[test]
fn an_egress_step_reaches_an_allowed_loopback_endpoint_and_nothing_else() {
    if !egress_possible() {
        return;
    }
    let fx = Fixture::new();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = allowed.local_addr().unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = other.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for c in allowed.incoming().flatten() {
            use std::io::Write;
            let mut c = c;
            let _ = c.write_all(b"HELLO-FROM-THE-HOST\n");
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let script = format!(
        "nc -w 3 127.0.0.1 {p} </dev/null; \
         nc -w 3 127.0.0.1 {b} </dev/null && echo CONNECTED other; \
         nc -w 3 10.0.2.2 {b} </dev/null && echo CONNECTED alias; \
         nc -w 3 10.0.2.2 {p} </dev/null && echo CONNECTED alias-allowed; echo done",
        p = a.port()
    );
    let mut runs = 0;
    each_egress(|stack, userns| {
        let out = run_egress_allowing(&fx, &fx.rootfs, &script, stack, userns, &[a]);
        runs += 1;
        let t = text(&out.stdout);
        assert!(
            t.contains("HELLO-FROM-THE-HOST"),
            "{stack:?} userns={userns}: {out:?}"
        );
        assert!(
            !t.contains("CONNECTED"),
            "{stack:?} userns={userns}: {out:?}"
        );
        assert!(t.contains("done"), "{stack:?} userns={userns}: {out:?}");
        assert!(
            nothing_accepted(&other),
            "{stack:?} userns={userns}: another port of the host's loopback got a connection"
        );
        other.set_nonblocking(false).unwrap();
    });
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), runs);
}

/// The relay of an allowed loopback endpoint runs in the caller's process
/// (`ftl serve`): each connection there is two threads and four
/// descriptors. A step that opens a hundred connections gets a bounded
/// number relayed, and the caller's threads stay bounded.
#[test]
fn a_step_cannot_exhaust_the_runtime_through_the_relay() {
    if !egress_possible() {
        return;
    }
    let fx = Fixture::new();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = allowed.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in allowed.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(c);
        }
    });
    let tasks = || {
        std::fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = tasks();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut most = 0;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            most = most.max(tasks());
            std::thread::sleep(Duration::from_millis(20));
        }
        most
    });
    let script = format!(
        "for i in $(seq 100); do nc 127.0.0.1 {} </dev/null >/dev/null 2>&1 & done; sleep 3; echo done",
        a.port()
    );
    let out = run_egress_allowing(&fx, &fx.rootfs, &script, Stack::Slirp4netns, false, &[a]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.join().unwrap();
    assert!(text(&out.stdout).contains("done"), "{out:?}");
    let relayed = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=32).contains(&relayed), "{relayed} connections relayed");
    assert!(
        most < before + 2 * 32 + 16,
        "the caller's threads grew from {before} to {most}"
    );
}

#[test]
fn an_egress_step_cannot_reach_private_ranges() {
    if !egress_possible() {
        return;
    }
    let fx = Fixture::new();
    let dns = host_dns();
    // `nc` says why it failed; each attempt must fail at once, not hang
    // until its timeout.
    let targets = [
        format!("{dns} 53"),
        "169.254.169.254 80".to_string(),
        "10.0.2.3 80".to_string(),
        "172.16.0.1 80".to_string(),
        "192.168.0.1 80".to_string(),
        "100.64.0.1 80".to_string(),
    ];
    let script: String = targets
        .iter()
        .map(|t| {
            format!("s=$(date +%s); nc -w 20 {t} </dev/null 2>&1 && echo CONNECTED {t}; echo \"took $(( $(date +%s) - s )) {t}\"; ")
        })
        .collect();
    each_egress(|stack, userns| {
        let out = run_egress(&fx, &fx.rootfs, &script, stack, userns);
        let t = text(&out.stdout);
        assert!(
            !t.contains("CONNECTED"),
            "{stack:?} userns={userns}: {out:?}"
        );
        let took: Vec<u64> = t
            .lines()
            .filter_map(|l| {
                l.strip_prefix("took ")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(
            took.len(),
            targets.len(),
            "{stack:?} userns={userns}: {out:?}"
        );
        assert!(
            took.iter().all(|&s| s <= 1),
            "{stack:?} userns={userns}: an attempt hung: {out:?}"
        );
        assert!(
            t.contains("Permission denied"),
            "{stack:?} userns={userns}: refused by the rules: {out:?}"
        );
    });
}

#[test]
fn an_egress_step_cannot_sniff_another_steps_traffic() {
    if !egress_possible() {
        return;
    }
    let fx = Fixture::new();
    // Another step's traffic on the host's loopback: a registry request
    // with credentials, sent over and over while the egress step listens.
    let secret = "Authorization: Basic c2VjcmV0OnNlY3JldA==";
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    let _ = std::io::Write::write_all(
                        &mut c,
                        format!("GET /v2/ HTTP/1.1\r\n{secret}\r\n\r\n").as_bytes(),
                    );
                }
                if let Ok((mut s, _)) = listener.accept() {
                    let mut b = [0u8; 256];
                    let _ = s.read(&mut b);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // busybox has no tcpdump: python-free raw sockets through nc are not
    // possible either, so ask for a packet socket as tcpdump would, via
    // busybox's `arping` (AF_PACKET) and `ping` (raw ICMP), and read every
    // interface the step can see.
    let script = "arping -c 1 -w 1 -I eth0 10.0.2.2 2>&1; arping -c 1 -w 1 -I tap0 10.0.2.2 2>&1; \
                  ping -c 1 -W 1 127.0.0.1 2>&1; cat /proc/net/tcp /proc/net/packet 2>&1; \
                  ip -o link | wc -l; echo done";
    each_egress(|stack, userns| {
        let out = run_egress(&fx, &fx.rootfs, script, stack, userns);
        let t = text(&out.stdout) + &text(&out.stderr);
        assert!(t.contains("done"), "{stack:?} userns={userns}: {out:?}");
        assert!(!t.contains("c2VjcmV0"), "{stack:?} userns={userns}: {t}");
        assert!(
            !t.contains(&format!("{:04X}", port)),
            "{stack:?} userns={userns}: sees the host's sockets: {t}"
        );
        assert!(
            t.matches("Operation not permitted").count() + t.matches("Permission denied").count()
                >= 2,
            "{stack:?} userns={userns}: packet and raw sockets must be refused: {t}"
        );
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    talker.join().unwrap();
}

#[test]
fn an_egress_step_reaches_a_package_index() {
    if !egress_possible() {
        return;
    }
    let fx = Fixture::new();
    // The host's root (read-only, as `runsc do` runs it) has curl and the
    // CA bundle of the TLS-intercepting proxy; DNS goes through the stack.
    let script =
        "cat /etc/resolv.conf; curl -sS --max-time 30 --cacert /etc/ssl/certs/ca-certificates.crt \
                  -o /dev/null -w 'HTTP %{http_code}\\n' https://pypi.org/simple/flask/";
    each_egress(|stack, userns| {
        if userns {
            // Host root files are unmapped in the user namespace (the
            // other engineer's idmapped mounts will change that): curl
            // still runs, the bundle is world-readable.
        }
        let out = run_egress(&fx, std::path::Path::new("/"), script, stack, userns);
        let t = text(&out.stdout);
        assert!(
            t.contains(&format!("nameserver {}", stack.dns())),
            "{stack:?}: {out:?}"
        );
        assert!(t.contains("HTTP 200"), "{stack:?} userns={userns}: {out:?}");
    });
}
