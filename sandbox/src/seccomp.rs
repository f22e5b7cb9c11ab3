//! Seccomp: the OCI `linux.seccomp` section compiled to a classic BPF
//! program, and ftl's default profile for build steps.
//!
//! The compiler is first-match: rules are checked in the order the spec lists
//! them (names in order inside a rule), the first rule whose syscall and
//! argument conditions match decides, and the default action applies
//! otherwise. Syscall names the table does not know are skipped, as runc
//! skips names libseccomp does not know.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use crate::error::SandboxError;
use crate::syscalls::SYSCALLS;

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xC000_00B7;

/// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

/// A compiled filter, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug, Clone)]
pub struct Program {
    pub(crate) filter: Vec<libc::sock_filter>,
    pub(crate) flags: libc::c_ulong,
}

/// Looks a syscall name up in the native table.
pub fn syscall_number(name: &str) -> Option<i64> {
    SYSCALLS.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn action_code(
    action: LinuxSeccompAction,
    errno: Option<u32>,
    field: &str,
) -> Result<u32, SandboxError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => {
            RET_ERRNO | (errno.unwrap_or(libc::EPERM as u32) & 0xffff)
        }
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | (errno.unwrap_or(0) & 0xffff),
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SandboxError::spec(
                field,
                "SCMP_ACT_NOTIFY is not supported by ftl's sandbox",
            ))
        }
    })
}

/// Where a failed condition jumps: patched to the end of the rule.
struct Fixup {
    at: usize,
}

/// Emits the checks for one argument condition. A failing check jumps to the
/// end of the rule (recorded in `fixups`); a passing one falls through.
fn emit_arg(
    prog: &mut Vec<libc::sock_filter>,
    fixups: &mut Vec<Fixup>,
    arg: &LinuxSeccompArg,
) -> Result<(), SandboxError> {
    let index = arg.index();
    if index > 5 {
        return Err(SandboxError::spec(
            "linux.seccomp.syscalls[].args[].index",
            format!("argument index {index} is out of range 0..=5"),
        ));
    }
    let lo_off = OFF_ARGS + 8 * index as u32;
    let hi_off = lo_off + 4;
    let value = arg.value();
    let (khi, klo) = ((value >> 32) as u32, value as u32);
    // `F` marks a jump to the end of the rule; patched below.
    const F: u8 = 0xff;
    let start = prog.len();
    match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => {
            prog.push(stmt(LD_W_ABS, hi_off));
            prog.push(jump(JEQ_K, khi, 0, F));
            prog.push(stmt(LD_W_ABS, lo_off));
            prog.push(jump(JEQ_K, klo, 0, F));
        }
        LinuxSeccompOperator::ScmpCmpNe => {
            prog.push(stmt(LD_W_ABS, hi_off));
            prog.push(jump(JEQ_K, khi, 0, 2));
            prog.push(stmt(LD_W_ABS, lo_off));
            prog.push(jump(JEQ_K, klo, F, 0));
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let want = arg.value_two().unwrap_or(0);
            let (whi, wlo) = ((want >> 32) as u32, want as u32);
            prog.push(stmt(LD_W_ABS, hi_off));
            prog.push(stmt(AND_K, khi));
            prog.push(jump(JEQ_K, whi, 0, F));
            prog.push(stmt(LD_W_ABS, lo_off));
            prog.push(stmt(AND_K, klo));
            prog.push(jump(JEQ_K, wlo, 0, F));
        }
        LinuxSeccompOperator::ScmpCmpGt => {
            prog.push(stmt(LD_W_ABS, hi_off));
            prog.push(jump(JGT_K, khi, 3, 0));
            prog.push(jump(JEQ_K, khi, 0, F));
            prog.push(stmt(LD_W_ABS, lo_off));
            prog.push(jump(JGT_K, klo, 0, F));
        }
        LinuxSeccompOperator::ScmpCmpGe => {
            prog.push(stmt(LD_W_ABS, hi_off));
            prog.push(jump(JGT_K, khi, 3, 0));
            prog.push(jump(JEQ_K, khi, 0, F));
            prog.push(stmt(LD_W_ABS, lo_off));
            prog.push(jump(JGE_K, klo, 0, F));
        }
        LinuxSeccompOperator::ScmpCmpLt => {
            prog.push(stmt(LD_W_ABS, hi_off));
            prog.push(jump(JGE_K, khi, 0, 3));
            prog.push(jump(JEQ_K, khi, 0, F));
            prog.push(stmt(LD_W_ABS, lo_off));
            prog.push(jump(JGE_K, klo, F, 0));
        }
        LinuxSeccompOperator::ScmpCmpLe => {
            prog.push(stmt(LD_W_ABS, hi_off));
            prog.push(jump(JGE_K, khi, 0, 3));
            prog.push(jump(JEQ_K, khi, 0, F));
            prog.push(stmt(LD_W_ABS, lo_off));
            prog.push(jump(JGT_K, klo, F, 0));
        }
    }
    for (i, insn) in prog.iter_mut().enumerate().skip(start) {
        if insn.jt == F {
            insn.jt = 0;
            // The low bit says which branch to patch: 0 = jt, 1 = jf.
            fixups.push(Fixup { at: i << 1 });
        }
        if insn.jf == F {
            insn.jf = 0;
            fixups.push(Fixup { at: (i << 1) | 1 });
        }
    }
    Ok(())
}

/// Compiles an OCI seccomp section for the native architecture.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<Program, SandboxError> {
    let default = action_code(
        seccomp.default_action(),
        seccomp.default_errno_ret(),
        "linux.seccomp.defaultAction",
    )?;
    let mut prog = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, NATIVE_ARCH, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    let mut acc_is_nr = false;
    #[cfg(target_arch = "x86_64")]
    let mut acc_is_nr;
    #[cfg(target_arch = "x86_64")]
    {
        // x32 syscalls carry bit 30 in the number: never a rule meant for
        // the 64-bit call. Unless the profile lists the x32 ABI among its
        // architectures they are refused outright (a deny-list profile
        // would otherwise let `mount` through as x32), as a foreign
        // architecture is; listed, they get the default action.
        let x32 = seccomp
            .architectures()
            .iter()
            .flatten()
            .any(|a| matches!(a, oci_spec::runtime::Arch::ScmpArchX32));
        prog.push(stmt(LD_W_ABS, OFF_NR));
        prog.push(jump(JGE_K, 0x4000_0000, 0, 1));
        prog.push(stmt(RET_K, if x32 { default } else { RET_KILL_PROCESS }));
        acc_is_nr = true;
    }
    for (ri, rule) in seccomp.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{ri}].action");
        let action = action_code(rule.action(), rule.errno_ret(), &field)?;
        for name in rule.names() {
            let Some(nr) = syscall_number(name) else {
                tracing::debug!(syscall = %name, "seccomp: unknown syscall name skipped");
                continue;
            };
            if action == default && rule.args().as_ref().is_none_or(|a| a.is_empty()) {
                // Same as the default: nothing to emit.
                continue;
            }
            if !acc_is_nr {
                prog.push(stmt(LD_W_ABS, OFF_NR));
            }
            let head = prog.len();
            prog.push(jump(JEQ_K, nr as u32, 0, 0));
            let mut fixups = Vec::new();
            for arg in rule.args().iter().flatten() {
                emit_arg(&mut prog, &mut fixups, arg)?;
            }
            prog.push(stmt(RET_K, action));
            let end = prog.len();
            let distance = |from: usize| -> Result<u8, SandboxError> {
                u8::try_from(end - from - 1)
                    .map_err(|_| SandboxError::Seccomp(format!("rule for {name} is too long")))
            };
            prog[head].jf = distance(head)?;
            for f in fixups {
                let at = f.at >> 1;
                let d = distance(at)?;
                if f.at & 1 == 1 {
                    prog[at].jf = d;
                } else {
                    prog[at].jt = d;
                }
            }
            // After a rule with argument checks the accumulator holds an
            // argument, not the number.
            acc_is_nr = rule.args().as_ref().is_none_or(|a| a.is_empty());
        }
    }
    prog.push(stmt(RET_K, default));
    if prog.len() > 4096 {
        return Err(SandboxError::Seccomp(format!(
            "the compiled filter has {} instructions, the kernel allows 4096",
            prog.len()
        )));
    }
    let mut flags = 0;
    for flag in seccomp.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
            #[allow(unreachable_patterns)]
            _ => 0,
        };
    }
    Ok(Program {
        filter: prog,
        flags,
    })
}

/// Loads a compiled program into the calling thread. Async-signal-safe: only
/// system calls, no allocation (used between clone and exec).
pub(crate) fn load_raw(program: &Program) -> libc::c_long {
    let fprog = libc::sock_fprog {
        len: program.filter.len() as u16,
        filter: program.filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at a live filter for the duration of the call.
    unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1, /* SECCOMP_SET_MODE_FILTER */
            program.flags,
            &fprog as *const libc::sock_fprog,
        )
    }
}

fn errno_rule(names: &[&str], errno: i32) -> LinuxSyscall {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno as u32)
        .build()
        .expect("valid syscall rule")
}

fn arg_rule(name: &str, action: LinuxSeccompAction, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(action)
        .args(args)
        .build()
        .expect("valid syscall rule")
}

fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let mut b = oci_spec::runtime::LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    b.build().expect("valid seccomp arg")
}

/// The syscalls Docker's default profile refuses to a container without
/// extra capabilities; ftl's default profile refuses them with EPERM.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "open_tree_attr",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "syslog",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// The namespace flags `clone` may not carry under the default profile.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// ftl's default profile for build steps: everything is allowed except what
/// Docker's default profile refuses (see [`DENIED_SYSCALLS`]), `clone` with
/// namespace flags (EPERM) and `clone3` (ENOSYS, so libc falls back to
/// `clone`). No rule depends on the order of another, so runc and crun
/// (libseccomp) enforce the profile exactly as ftl does.
pub fn default_profile() -> LinuxSeccomp {
    use LinuxSeccompOperator::*;
    // One rule per namespace flag, each matching on its own, so that the
    // profile means the same under first-match (ftl) and libseccomp's
    // most-specific-rule semantics (runc, crun).
    let mut rules: Vec<LinuxSyscall> = (0..64)
        .map(|bit| 1u64 << bit)
        .filter(|flag| CLONE_NAMESPACE_FLAGS & flag != 0)
        .map(|flag| {
            let mut r = arg_rule(
                "clone",
                LinuxSeccompAction::ScmpActErrno,
                vec![arg(0, ScmpCmpMaskedEq, flag, Some(flag))],
            );
            r.set_errno_ret(Some(libc::EPERM as u32));
            r
        })
        .collect();
    rules.push(errno_rule(&["clone3"], libc::ENOSYS));
    rules.push(errno_rule(DENIED_SYSCALLS, libc::EPERM));
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![Arch::ScmpArchX86_64, Arch::ScmpArchAarch64])
        .syscalls(rules)
        .build()
        .expect("valid default seccomp profile")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_compiles_small() {
        let p = compile(&default_profile()).unwrap();
        assert!(p.filter.len() < 300, "{}", p.filter.len());
        assert!(syscall_number("mount").is_some());
    }

    #[test]
    fn notify_is_refused_naming_the_field() {
        let s = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActNotify)
            .build()
            .unwrap();
        let e = compile(&s).unwrap_err().to_string();
        assert!(e.contains("linux.seccomp.defaultAction"), "{e}");
    }
}
