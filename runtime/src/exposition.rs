//! What both binaries' `/metrics` share beyond the Prometheus exporter's recorder: the
//! `process_*` series, read from `/proc/self` at scrape time, and a stable order for the
//! exposition (the exporter renders its families in hash-map order, so two scrapes of the
//! same process list them differently).
//!
//! The `process_*` names, types, help texts and units are the Prometheus client libraries'
//! (client_golang's process collector), so dashboards built for any Prometheus-instrumented
//! process work unchanged. They are rendered as text here rather than recorded through the
//! `metrics` facade, whose counters are integers: CPU seconds would move in whole seconds.
//! Every read is bounded in size; a file that cannot be read (not Linux, a hardened `/proc`)
//! leaves its series out rather than reporting a made-up value. Not a general collector:
//! no per-thread or cgroup figures.

use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

/// Linux reports CPU times in USER_HZ ticks, which the kernel fixes at 100 on every
/// architecture it exports them for; Prometheus's own procfs library assumes the same.
const USER_HZ: f64 = 100.0;
/// The `/proc` files read here are a few KiB; `/proc/stat` grows with the number of CPUs
/// and interrupts, hence its own larger bound.
const MAX_PROC_FILE: u64 = 64 * 1024;
const MAX_PROC_STAT: u64 = 1024 * 1024;
/// Descriptors counted at most (a process past this has bigger problems than a gauge that
/// stops counting).
const MAX_FDS_COUNTED: usize = 1 << 20;

/// The `process_*` families, in the order they are rendered.
pub const PROCESS_FAMILIES: [&str; 6] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
];

/// This process, as read from `/proc/self` now. `None` for what could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub resident_memory_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads this process's figures (a handful of small `/proc` files).
    pub fn read() -> Self {
        let stat = read_bounded(Path::new("/proc/self/stat"), MAX_PROC_FILE).and_then(|s| Stat::parse(&s));
        let status = read_bounded(Path::new("/proc/self/status"), MAX_PROC_FILE);
        let limits = read_bounded(Path::new("/proc/self/limits"), MAX_PROC_FILE);
        Self {
            cpu_seconds: stat.as_ref().map(|s| (s.utime + s.stime) as f64 / USER_HZ),
            open_fds: count_fds(),
            max_fds: limits.as_deref().and_then(max_open_files),
            virtual_memory_bytes: stat.as_ref().map(|s| s.vsize),
            resident_memory_bytes: status.as_deref().and_then(|s| status_kib(s, "VmRSS:")).map(|k| k * 1024),
            start_time_seconds: start_time(stat.as_ref()),
        }
    }

    /// The Prometheus text for these figures: HELP, TYPE and one sample per family known.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, value: Option<String>| {
            if let Some(v) = value {
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n");
            }
        };
        let [cpu, open, max, virt, res, start] = PROCESS_FAMILIES;
        family(cpu, "counter", "Total user and system CPU time spent in seconds.", self.cpu_seconds.map(num));
        family(open, "gauge", "Number of open file descriptors.", self.open_fds.map(|v| v.to_string()));
        family(max, "gauge", "Maximum number of open file descriptors.", self.max_fds.map(|v| v.to_string()));
        let v = self.virtual_memory_bytes.map(|v| v.to_string());
        family(virt, "gauge", "Virtual memory size in bytes.", v);
        let v = self.resident_memory_bytes.map(|v| v.to_string());
        family(res, "gauge", "Resident memory size in bytes.", v);
        let v = self.start_time_seconds.map(num);
        family(start, "gauge", "Start time of the process since unix epoch in seconds.", v);
        out
    }
}

fn num(v: f64) -> String {
    format!("{v}")
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    /// Ticks after boot.
    starttime: u64,
    vsize: u64,
}

impl Stat {
    /// `pid (comm) state ppid ...`: the command name may hold spaces and parentheses, so
    /// fields are counted from the last `)`.
    fn parse(s: &str) -> Option<Self> {
        let rest = &s[s.rfind(')')? + 1..];
        // Field 3 (state) is index 0 here: utime is field 14, stime 15, starttime 22, vsize 23.
        let f: Vec<&str> = rest.split_whitespace().take(21).collect();
        let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        Some(Stat { utime: at(11)?, stime: at(12)?, starttime: at(19)?, vsize: at(20)? })
    }
}

fn read_bounded(path: &Path, limit: u64) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(path).ok()?.take(limit).read_to_string(&mut s).ok()?;
    Some(s)
}

fn count_fds() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory's own descriptor, open while it is read, is not counted.
    Some(dir.take(MAX_FDS_COUNTED).count().saturating_sub(1) as u64)
}

/// The soft limit of `Max open files` in `/proc/self/limits` (0 when unlimited).
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(0);
    }
    soft.parse().ok()
}

/// A `Key:   1234 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// When this process started, in Unix seconds: boot time plus the start in ticks. Read once:
/// it never changes, and `/proc/stat` is the largest file here.
fn start_time(stat: Option<&Stat>) -> Option<f64> {
    static BOOT: OnceLock<Option<u64>> = OnceLock::new();
    let boot = (*BOOT.get_or_init(|| {
        let s = read_bounded(Path::new("/proc/stat"), MAX_PROC_STAT)?;
        s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
    }))?;
    Some(boot as f64 + stat?.starttime as f64 / USER_HZ)
}

/// `text` (Prometheus text format, families separated by blank lines as the exporter writes
/// them) with its families in `order` (the others after them, by name) and, within each
/// family, its series sorted by their labels: the same process renders the same layout on
/// every scrape. A histogram's lines of one series keep their order (buckets ascending, then
/// `_sum` and `_count`): the sort key leaves out `le`, and the sort is stable.
pub fn ordered(text: &str, order: &[&str]) -> String {
    let mut blocks: Vec<(usize, String, Vec<&str>)> = text
        .split("\n\n")
        .map(|b| b.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<&str>>())
        .filter(|lines| !lines.is_empty())
        .map(|mut lines| {
            let name = family_name(&lines);
            let rank = order.iter().position(|o| *o == name).unwrap_or(order.len());
            let split = lines.iter().position(|l| !l.starts_with('#')).unwrap_or(lines.len());
            lines[split..].sort_by(|a, b| series_key(a).cmp(series_key(b)));
            (rank, name, lines)
        })
        .collect();
    blocks.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut out = String::with_capacity(text.len());
    for (_, _, lines) in blocks {
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The family a block describes: its `# TYPE` line's name, else its first sample's.
fn family_name(lines: &[&str]) -> String {
    if let Some(t) = lines.iter().find_map(|l| l.strip_prefix("# TYPE ")) {
        return t.split_whitespace().next().unwrap_or_default().to_owned();
    }
    let first = lines.iter().find(|l| !l.starts_with('#')).copied().unwrap_or_default();
    first.split(['{', ' ']).next().unwrap_or_default().to_owned()
}

/// A sample line's labels without a trailing `le` (the exporter writes `le` last).
fn series_key(line: &str) -> &str {
    let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
        return "";
    };
    let labels = &line[open + 1..close.max(open + 1)];
    match labels.rfind("le=\"") {
        Some(i) if i == 0 || labels.as_bytes()[i - 1] == b',' => labels[..i].trim_end_matches(','),
        _ => labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 12345 987654 321 rest";
        let s = Stat::parse(line).expect("a stat line");
        assert_eq!(s, Stat { utime: 250, stime: 50, starttime: 12345, vsize: 987654 });
        assert_eq!(Stat::parse("4242 (short) S 1 2"), None);
    }

    #[test]
    fn limits_and_status_lines_are_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(max_open_files("Max open files  unlimited unlimited files\n"), Some(0));
        assert_eq!(status_kib("Name:\tx\nVmRSS:\t   5120 kB\n", "VmRSS:"), Some(5120));
    }

    #[test]
    fn this_process_reads_plausibly() {
        let p = ProcessStats::read();
        if !Path::new("/proc/self/stat").exists() {
            return;
        }
        assert!(p.resident_memory_bytes.is_some_and(|r| r > 0), "{p:?}");
        assert!(p.virtual_memory_bytes >= p.resident_memory_bytes, "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.max_fds.is_some(), "{p:?}");
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
        assert!(p.start_time_seconds.is_some_and(|t| t <= now + 1.0 && t > now - 86400.0), "{p:?}");
        let text = p.render();
        for name in PROCESS_FAMILIES {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} in\n{text}");
        }
    }

    #[test]
    fn families_follow_the_order_and_series_sort_keeping_histogram_buckets() {
        let text = "# TYPE b counter\nb{x=\"2\"} 1\nb{x=\"1\"} 1\n\n\
                    # TYPE h histogram\nh_bucket{x=\"b\",le=\"0.5\"} 0\nh_bucket{x=\"b\",le=\"+Inf\"} 0\nh_sum{x=\"b\"} 0\nh_count{x=\"b\"} 0\n\
                    h_bucket{x=\"a\",le=\"0.5\"} 1\nh_bucket{x=\"a\",le=\"+Inf\"} 1\nh_sum{x=\"a\"} 1\nh_count{x=\"a\"} 1\n\n\
                    # HELP a help\n# TYPE a gauge\na 1\n\n# TYPE z gauge\nz 0\n\n";
        let got = ordered(text, &["a", "h", "b"]);
        let want = "# HELP a help\n# TYPE a gauge\na 1\n\n\
                    # TYPE h histogram\nh_bucket{x=\"a\",le=\"0.5\"} 1\nh_bucket{x=\"a\",le=\"+Inf\"} 1\nh_sum{x=\"a\"} 1\nh_count{x=\"a\"} 1\n\
                    h_bucket{x=\"b\",le=\"0.5\"} 0\nh_bucket{x=\"b\",le=\"+Inf\"} 0\nh_sum{x=\"b\"} 0\nh_count{x=\"b\"} 0\n\n\
                    # TYPE b counter\nb{x=\"1\"} 1\nb{x=\"2\"} 1\n\n# TYPE z gauge\nz 0\n\n";
        assert_eq!(got, want);
        assert_eq!(ordered(&got, &["a", "h", "b"]), got, "ordering is idempotent");
    }
}
