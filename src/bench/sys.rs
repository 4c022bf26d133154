//! The load generator's own process: its open-files limit and its CPU time.

use rlimit::Resource;

/// The open-files limit after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises `RLIMIT_NOFILE`: the soft limit to the hard one, and, when the hard limit is below
/// `wanted` and the process may raise it (root, `CAP_SYS_RESOURCE`), the hard one too (up to
/// `/proc/sys/fs/nr_open`). Never fails: it reports whatever limit it ended with.
pub fn raise_nofile(wanted: u64) -> NofileLimit {
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((0, 0));
    if hard < wanted {
        let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20);
        let target = wanted.min(ceiling);
        if target > hard && Resource::NOFILE.set(target, target).is_ok() {
            return NofileLimit {
                soft: target,
                hard: target,
            };
        }
    }
    if soft < hard && Resource::NOFILE.set(hard, hard).is_ok() {
        return NofileLimit { soft: hard, hard };
    }
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((soft, hard));
    NofileLimit { soft, hard }
}

/// CPU seconds (user + system) this process has used; `None` off Linux.
pub fn self_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_seconds_from_stat(&stat)
}

/// `utime + stime` from a `/proc/<pid>/stat` line, in seconds (USER_HZ = 100).
pub fn cpu_seconds_from_stat(stat: &str) -> Option<f64> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // utime and stime are fields 14 and 15, i.e. the 12th and 13th after the ')'.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let line = "1234 (coolchat (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1 2 3";
        assert_eq!(cpu_seconds_from_stat(line), Some(3.25));
        assert_eq!(cpu_seconds_from_stat("garbage"), None);
        assert_eq!(cpu_seconds_from_stat("1 (x) S 1 2"), None);
        assert!(self_cpu_seconds().is_some());
    }

    #[test]
    fn raising_never_lowers() {
        let (soft_before, _) = Resource::NOFILE.get().unwrap_or((0, 0));
        let got = raise_nofile(16);
        assert!(got.soft >= soft_before);
        assert!(got.soft <= got.hard);
    }
}
